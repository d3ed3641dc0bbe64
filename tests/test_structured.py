"""Structured answers: constraints per answer type and dialect, validation, and fallbacks.

Endpoints are real HTTP servers on 127.0.0.1 (thinktree.testing.fake_server) that honour
a constraint, silently ignore it, or refuse it with a 400.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from thinktree.agents.capabilities import probe
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.structured import check_format, constraint_for, validate
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import CONSTRAINT_REFUSED, PAST_CONTEXT, NodeKind
from thinktree.orchestrator.run import RunSettings, execute, run_outcome
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

CHOICE = Problem(
    id="c1",
    question="Which?",
    answer_type=AnswerType.CHOICE,
    options={"A": "alpha", "B": "beta", "C": "gamma"},
    answer="B",
)
YESNO = Problem(id="y1", question="Is it?", answer_type=AnswerType.YESNO, answer="maybe")
NUMBER = Problem(id="n1", question="How much?", answer_type=AnswerType.NUMERIC, answer="1.5")
FREE = Problem(id="f1", question="Which drug?", answer_type=AnswerType.FREE, answer="aspirin")


def test_vllm_constrains_the_bare_answer_of_each_type() -> None:
    letters = constraint_for(CHOICE, "constrained", "vllm")
    assert letters.fields == {"structured_outputs": {"regex": "(A|B|C)"}}
    yesno = constraint_for(YESNO, "constrained", "vllm")
    assert yesno.fields == {"structured_outputs": {"regex": "(yes|no|maybe)"}}
    number = constraint_for(NUMBER, "constrained", "vllm")
    assert "regex" in number.fields["structured_outputs"]
    assert not letters.json and letters.max_tokens <= 8


def test_json_format_and_json_only_dialects_use_the_schema() -> None:
    on_vllm = constraint_for(CHOICE, "json", "vllm")
    pattern = on_vllm.fields["structured_outputs"]["regex"]  # the schema, bounded
    assert re.fullmatch(pattern, '{"answer": "B", "confidence": 0.75}')
    assert re.fullmatch(pattern, '{"answer":"C"}')
    assert not re.fullmatch(pattern, '{"answer": "D"}')
    assert not re.fullmatch(pattern, '{"answer": "A", "confidence": 0.123456}')
    openai_schema = constraint_for(CHOICE, "json", "json_schema").fields["response_format"]
    schema = openai_schema["json_schema"]["schema"]
    assert schema["properties"]["answer"]["enum"] == ["A", "B", "C"]
    assert "confidence" in schema["properties"] and schema["required"] == ["answer"]
    openai_style = constraint_for(YESNO, "constrained", "json_schema")
    assert openai_style.fields["response_format"]["type"] == "json_schema"
    assert openai_style.json
    llamacpp = constraint_for(NUMBER, "constrained", "json_object")
    assert llamacpp.fields["response_format"]["type"] == "json_object"
    assert llamacpp.fields["response_format"]["schema"]["properties"]["answer"]["pattern"]


def test_llamacpp_grammars_spell_the_answer_shapes() -> None:
    """Their parse by a real llama.cpp is checked in test_engines; here, what they say."""
    letters = constraint_for(CHOICE, "constrained", "gbnf")
    assert letters.fields == {"grammar": 'root ::= "A" | "B" | "C"'} and not letters.json
    yesno = constraint_for(YESNO, "json", "gbnf")
    rules = yesno.fields["grammar"].splitlines()
    assert rules[0] == 'root ::= "{\\"answer\\": \\"" answer "\\"" confidence? "}"'
    assert rules[1] == 'answer ::= "yes" | "no" | "maybe"' and yesno.json
    free = constraint_for(FREE, "json", "gbnf").fields["grammar"].splitlines()[1]
    assert free == 'answer ::= [^"\\\\\\n]+'  # no quote, backslash or newline in the string


@pytest.mark.parametrize(
    ("problem", "fmt", "text", "answer", "confidence"),
    [
        (CHOICE, "constrained", "B", "B", None),
        (CHOICE, "constrained", " C\n", "C", None),
        (YESNO, "constrained", "maybe", "maybe", None),
        (NUMBER, "constrained", "-1.25", "-1.25", None),
        (CHOICE, "json", '{"answer": "A", "confidence": 0.7}', "A", 0.7),
        (YESNO, "json", '{"answer":"no"}', "no", None),
    ],
)
def test_valid_outputs_validate(
    problem: Problem, fmt: Any, text: str, answer: str, confidence: float | None
) -> None:
    parsed = validate(text, constraint_for(problem, fmt, "vllm"), problem)
    assert parsed is not None
    assert parsed.answer == answer
    assert parsed.confidence == confidence


@pytest.mark.parametrize(
    ("problem", "fmt", "text"),
    [
        (CHOICE, "constrained", "D"),  # not an option
        (CHOICE, "constrained", "The answer is B"),  # the constraint was ignored
        (YESNO, "constrained", "perhaps"),
        (NUMBER, "constrained", "1.5 mL"),
        (CHOICE, "json", '{"answer": "B", "confidence": 3}'),  # confidence out of range
        (CHOICE, "json", '{"answer": "B"'),  # truncated
    ],
)
def test_outputs_that_break_the_constraint_do_not_validate(
    problem: Problem, fmt: Any, text: str
) -> None:
    assert validate(text, constraint_for(problem, fmt, "vllm"), problem) is None


def test_unknown_answer_format_is_one_line() -> None:
    with pytest.raises(ConfigError, match="choose one of: free, constrained, json"):
        check_format("strict")


def _honouring(body: dict[str, Any], index: int) -> str:
    """A server that honours vLLM's structured_outputs (and nothing else)."""
    so = body.get("structured_outputs")
    if so and "regex" in so:
        return "kiwi-42" if "kiwi" in so["regex"] else "B"
    return "Let me think. Answer: A"


@pytest.mark.anyio
async def test_probe_finds_only_the_dialects_really_honoured() -> None:
    async with FakeServer(FakeBehaviour(reply=_honouring)) as server:
        client = EndpointClient(EndpointConfig(name="f", base_url=server.base_url))
        try:
            await client.resolve_model()
            caps = await probe(client, what={"constraints"})
        finally:
            await client.aclose()
    assert caps.constraints == ["vllm"]
    assert "json_schema ignored" in caps.notes["constraints"]


async def _run(server: FakeServer, tmp_path: Path, fmt: str = "constrained") -> dict[str, Any]:
    endpoint = EndpointConfig(name="f", base_url=server.base_url, model="fake-model")
    settings = RunSettings(
        modes=ModeSettings(mode="budget", budget=32), answer_format=fmt, out=tmp_path / "run"
    )
    result = await execute([CHOICE], endpoint, settings)
    data: dict[str, Any] = json.loads((result.folder / "results.json").read_text())
    return data


def _answer_node(data: dict[str, Any]) -> dict[str, Any]:
    nodes = data["problems"][0]["nodes"]
    return next(n for n in nodes if n["kind"] == str(NodeKind.FORCED_ANSWER))


@pytest.mark.anyio
async def test_a_constrained_answer_is_recorded_with_its_dialect(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(reply=_honouring), record_bodies=True) as server:
        data = await _run(server, tmp_path)
    node = _answer_node(data)
    assert node["answer"] == "B"
    assert node["extraction"] == "constrained (vllm)"
    assert data["problems"][0]["answer"] == "B"
    assert data["settings"]["answer_format"] == "constrained"
    sent = [b for b in server.bodies if b.get("structured_outputs", {}).get("regex") == "(A|B|C)"]
    assert len(sent) == 1


@pytest.mark.anyio
async def test_an_endpoint_that_cannot_constrain_falls_back_to_extraction(
    tmp_path: Path,
) -> None:
    async with FakeServer(FakeBehaviour()) as server:  # ignores every constraint field
        data = await _run(server, tmp_path)
    assert data["capabilities"]["constraints"] == []
    node = _answer_node(data)
    assert node["extraction"].startswith("fallback: ")
    assert "honours no constraint dialect" in node["extraction"]
    assert node["answer"] == "B"  # extracted from "... Answer: B"


@pytest.mark.anyio
async def test_a_refused_constraint_falls_back_and_the_run_goes_on(tmp_path: Path) -> None:
    def refuse(body: dict[str, Any]) -> str | None:
        so = body.get("structured_outputs")
        if so and "kiwi" not in str(so):
            return "regex too complex for this server"
        return None

    behaviour = FakeBehaviour(reply=_honouring, reject=refuse)
    async with FakeServer(behaviour) as server:
        data = await _run(server, tmp_path)
    nodes = data["problems"][0]["nodes"]
    refused = next(n for n in nodes if n["id"].endswith("/answer"))
    assert refused["status"] == "failed" and "400" in refused["error"]
    free = next(n for n in nodes if n["id"].endswith("/answer-free"))
    assert "refused the vllm constraint" in free["extraction"]
    assert data["problems"][0]["answer"] == "A"
    # answered as documented: not a failed call that a resume would send again, forever
    assert refused["error"].startswith(CONSTRAINT_REFUSED)
    assert run_outcome(tmp_path / "run" / "results.json") == (None, 0)


@pytest.mark.anyio
async def test_an_answer_past_the_context_is_not_asked_again_without_its_constraint(
    tmp_path: Path,
) -> None:
    """A 400 for a prompt past the model's context is no refused constraint: asking the
    answer freely would pass it as well. The thinking's own answer stands, and the run has
    no failed call for a resume to send again."""

    def past_context(body: dict[str, Any]) -> str | None:
        so = body.get("structured_outputs")
        if so and "kiwi" not in str(so):  # the run's answer call, not the probe's
            return "This model's maximum context length is 4096 tokens. However, you requested 4200"
        return None

    behaviour = FakeBehaviour(reply=_honouring, reject=past_context)
    async with FakeServer(behaviour) as server:
        data = await _run(server, tmp_path)
    nodes = data["problems"][0]["nodes"]
    refused = next(n for n in nodes if n["id"].endswith("/answer"))
    assert refused["status"] == "failed" and refused["error"].startswith(PAST_CONTEXT)
    assert not any(n["id"].endswith("/answer-free") for n in nodes)
    assert data["problems"][0]["answer"] == "A"  # "Let me think. Answer: A"
    assert data["metrics"]["past_context"] == 1
    assert run_outcome(tmp_path / "run" / "results.json") == (None, 0)


@pytest.mark.anyio
async def test_answers_over_completions_count_only_dialects_that_path_honours() -> None:
    def chat_only(body: dict[str, Any], index: int) -> str:
        return _honouring(body, index) if "messages" in body else "Let me think."

    async with FakeServer(FakeBehaviour(reply=chat_only)) as server:
        for continuation, found in (("chat", ["vllm"]), ("completions", [])):
            config = EndpointConfig(
                name="f",
                base_url=server.base_url,
                continuation=continuation,  # type: ignore[arg-type]
            )
            client = EndpointClient(config)
            try:
                await client.resolve_model()
                caps = await probe(client, what={"continuation", "constraints"})
            finally:
                await client.aclose()
            assert caps.constraints == found, caps.notes["constraints"]
    assert "vllm ignored over /v1/completions" in caps.notes["constraints"]


@pytest.mark.anyio
async def test_a_constraint_a_server_errors_on_is_asked_twice_not_retried_away() -> None:
    asked: list[str] = []

    def error_on_constraints(body: dict[str, Any]) -> str | None:
        if "structured_outputs" in body:
            asked.append("vllm")
            return "boom"
        return None

    behaviour = FakeBehaviour(reject=error_on_constraints, reject_status=500)
    async with FakeServer(behaviour) as server:
        client = EndpointClient(EndpointConfig(name="f", base_url=server.base_url))
        try:
            await client.resolve_model()
            caps = await probe(client, what={"constraints"})
        finally:
            await client.aclose()
    assert "vllm" not in caps.constraints
    assert len(asked) == 2  # once more after a 5xx; two in a row turn it off
