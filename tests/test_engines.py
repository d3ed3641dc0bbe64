"""Both embedded engines for real: the probe's table matches what each server does, and
every mode runs on llama.cpp, whose capabilities differ from vLLM's.

llama.cpp (llama-cpp-python's server) returns one choice for ``n>1``, ignores
``continue_final_message``, answers 500 to a ``json_schema`` response format but
constrains ``json_object`` with a ``schema``, and sends no usage in streams. Each claim
of the probe is checked against the server with a direct request of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from thinktree import embedded
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.serving.launcher import ServerHandle

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Count from one to ten in words."}
]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
}


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    if kind == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


CALLS = {NodeKind.GENERATION, NodeKind.EXTENSION, NodeKind.STEP, NodeKind.FORCED_ANSWER}


def llamacpp_endpoint(url: str) -> EndpointConfig:
    handle = ServerHandle(url, "smollm2", None, owned=False, log_path=None, engine="llamacpp")
    return embedded.endpoint_for(handle)


def probe(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "probe", "--json", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


async def reality(url: str) -> dict[str, Any]:
    """What the server does, found with direct requests (not through thinktree)."""
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    seen: dict[str, Any] = {}
    try:
        many = await client.chat.completions.create(
            model="smollm2", messages=ASK, max_tokens=4, n=3, temperature=1.0
        )
        seen["native_n"] = len(many.choices) == 3
        # the same seed twice, the prompt just asked (a server that caches prompts answers
        # both from its cache, as it does the probe's, asked right after its plain check)
        seeded = [
            await client.chat.completions.create(
                model="smollm2", messages=ASK, max_tokens=8, temperature=1.0, seed=1234
            )
            for _ in range(2)
        ]
        seen["seed"] = seeded[0].choices[0].message.content == seeded[1].choices[0].message.content
        prefix: list[ChatCompletionMessageParam] = [
            *ASK,
            {"role": "assistant", "content": "one two three"},
        ]
        closed = await client.chat.completions.create(
            model="smollm2", messages=prefix, max_tokens=2
        )
        cont = await client.chat.completions.create(
            model="smollm2",
            messages=prefix,
            max_tokens=2,
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
        assert cont.usage is not None and closed.usage is not None
        seen["chat_continuation"] = cont.usage.prompt_tokens < closed.usage.prompt_tokens
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=ASK,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        seen["stream_usage"] = any([chunk.usage is not None async for chunk in stream])
        structured = []
        for kind in ("json_schema", "json_object"):
            try:
                reply = await client.chat.completions.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": "Is 17 prime? Reply in JSON."}],
                    max_tokens=24,
                    temperature=0,
                    response_format=response_format(kind, SCHEMA),
                )  # type: ignore[call-overload]
            except openai.InternalServerError:
                structured.append((kind, "500"))
                continue
            text = reply.choices[0].message.content or ""
            try:
                ok = json.loads(text).get("answer") in ("yes", "no")
            except ValueError:
                ok = text.lstrip().startswith('{ "answer"') or text.lstrip().startswith('{"answer"')
            structured.append((kind, "ok" if ok else "ignored"))
        seen["structured"] = structured
    finally:
        await client.close()
    return seen


async def test_probe_matches_reality_on_llamacpp(llamacpp_url: str) -> None:
    found = probe("--engine", "llamacpp")  # the embedded engine: the recorded server
    assert found["endpoint"] == llamacpp_url
    seen = await reality(llamacpp_url)
    assert found["native_n"] is seen["native_n"] is False
    assert seen["chat_continuation"] is False
    # continue_final_message is ignored, so continuation goes over /v1/completions with
    # the GGUF's own chat template, applied on the client
    assert found["continuation"] == "completions"
    assert "ignored" in found["notes"]["continuation"]
    assert found["stream_usage"] is seen["stream_usage"] is False
    assert seen["structured"][0] == ("json_schema", "500")
    assert seen["structured"][1] == ("json_object", "ok")
    # answers continue over /v1/completions, which ignores response_format: only the
    # grammar field holds there
    assert found["constraints"] == ["gbnf"], found["notes"]["constraints"]
    assert "json_object ignored over /v1/completions" in found["notes"]["constraints"]
    assert found["completions"] is True
    assert found["thinking_budget"] == "cue"
    assert found["seed"] is seen["seed"] is True, found["notes"]["seed"]


async def test_probe_matches_reality_on_vllm(embedded_url: str) -> None:
    found = probe(embedded_url)
    assert found["endpoint"] == embedded_url
    seen = await reality(embedded_url)
    assert found["native_n"] is seen["native_n"] is True
    assert seen["chat_continuation"] is True and found["continuation"] == "chat"
    assert found["stream_usage"] is seen["stream_usage"] is True
    assert seen["structured"][0] == ("json_schema", "ok")
    assert "json_schema" in found["constraints"]
    assert found["thinking_budget"] == "cue"
    assert found["seed"] is seen["seed"] is True, found["notes"]["seed"]


async def test_engine_endpoint_continues_over_completions_on_llamacpp(llamacpp_url: str) -> None:
    from thinktree.agents.capabilities import probe as run_probe
    from thinktree.agents.endpoint import EndpointClient

    client = EndpointClient(llamacpp_endpoint(llamacpp_url))
    try:
        await client.resolve_model()
        caps = await run_probe(client, what={"continuation", "n"})
    finally:
        await client.aclose()
    assert caps.continuation == "completions"
    assert "chat template" in caps.notes["continuation"]
    assert caps.native_n is False


async def _run(url: str, tmp_path: Path, modes: ModeSettings, problems: int = 2) -> RunResult:
    demo = load_demo()
    settings = RunSettings(modes=modes, out=tmp_path / "run", seed=5, trace_deltas=True)
    return await execute(demo[:problems], llamacpp_endpoint(url), settings)


def _check_calls(result: RunResult) -> list[Any]:
    calls = [n for t in result.trees for n in t.walk() if n.kind in CALLS]
    assert calls
    for node in calls:
        assert node.status is NodeStatus.DONE, node.error
        # no usage in llama.cpp's streams: the counts come from plain responses instead
        assert node.prompt_tokens > 0
        assert node.completion_tokens <= (node.max_tokens or 0)
        assert (node.completion_tokens > 0) == bool(node.text)
    return calls


async def test_budget_mode_on_llamacpp(llamacpp_url: str, tmp_path: Path) -> None:
    result = await _run(llamacpp_url, tmp_path, ModeSettings(mode="budget", budget=16))
    assert result.capabilities.continuation == "completions"
    assert result.capabilities.stream_usage is False
    _check_calls(result)
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        assert think.completion_tokens <= 16
        if think.finish_reason == "length":
            (forced,) = tree.of_kind(NodeKind.FORCED_ANSWER)
            assert forced.continuation == "completions"
    trace = (result.folder / "trace.jsonl").read_text()
    assert '"node-delta"' in trace  # the text still reaches the trace, call by call


async def test_constrained_answers_on_llamacpp_hold_their_grammar(
    llamacpp_url: str, tmp_path: Path
) -> None:
    demo = load_demo()
    for fmt in ("constrained", "json"):
        settings = RunSettings(
            modes=ModeSettings(mode="budget", budget=16),
            answer_format=fmt,
            out=tmp_path / fmt,
            seed=5,
        )
        result = await execute(demo[:2], llamacpp_endpoint(llamacpp_url), settings)
        answers = [n for t in result.trees for n in t.of_kind(NodeKind.FORCED_ANSWER)]
        assert answers and all(n.extraction == "constrained (gbnf)" for n in answers), [
            (n.text, n.extraction) for n in answers
        ]


async def test_sequential_mode_on_llamacpp(llamacpp_url: str, tmp_path: Path) -> None:
    result = await _run(llamacpp_url, tmp_path, ModeSettings(mode="sequential", steps=2, budget=12))
    _check_calls(result)
    for tree in result.trees:
        steps = tree.of_kind(NodeKind.STEP)
        assert [s.continuation for s in steps] == ["new", "completions"]


async def test_parallel_mode_fans_out_on_llamacpp(llamacpp_url: str, tmp_path: Path) -> None:
    result = await _run(
        llamacpp_url, tmp_path, ModeSettings(mode="parallel", n=3, budget=12), problems=1
    )
    assert result.capabilities.native_n is False
    _check_calls(result)
    (tree,) = result.trees
    thinks = tree.of_kind(NodeKind.GENERATION)
    assert len(thinks) == 3 and len({t.call_id for t in thinks}) == 3
    assert tree.vote is not None


async def test_hybrid_mode_on_llamacpp(llamacpp_url: str, tmp_path: Path) -> None:
    result = await _run(
        llamacpp_url,
        tmp_path,
        ModeSettings(mode="hybrid", n=2, steps=2, total_budget=48),
        problems=1,
    )
    calls = _check_calls(result)
    assert sum(n.completion_tokens for n in calls) <= 48
    (tree,) = result.trees
    assert len(tree.of_kind(NodeKind.BRANCH)) == 2
    for step in tree.of_kind(NodeKind.STEP):
        if step.label == "step 2":
            assert step.continuation == "completions"


def test_run_with_the_llamacpp_engine(llamacpp_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "thinktree.cli", "run", "--engine", "llamacpp"),
            *("--limit", "2", "--mode", "budget", "--budget", "12", "--out", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: the small model stated no answer
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["endpoint"]["name"] == "embedded-llamacpp"
    assert results["endpoint"]["base_url"] == llamacpp_url  # the running server was reused
    assert results["capabilities"]["continuation"] == "completions"
