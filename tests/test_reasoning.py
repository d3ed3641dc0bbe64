"""Reasoning models in budget mode: how the thinking is ended, and that the probe says so.

Three paths: the server caps the thinking (vLLM's ``thinking_token_budget``, with a
reasoning parser); the client writes the model's own end-of-thinking marker (``</think>``)
and forces the answer; or, for a model that does not think apart, the answer cue.

The template logic runs on a small chat template written for the tests (a `<think>`
opener in the generation prompt). The fast tests use the scripted server, whose request
bodies show exactly what was sent; the slow ones send the same requests to the embedded
vLLM (which has no reasoning parser, so it refuses a server-side budget) and to a vLLM
started by `thinktree serve vllm` on a reasoning fixture (which honours it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import FORCE_ANSWER_CUE
from thinktree.datasets import load_demo
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import DEFAULT_REPLY, FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio

TEMPLATE = (Path(__file__).parent / "data" / "think_template.jinja").read_text()
PROBLEMS = [
    Problem(
        id="q1",
        question="Is 17 prime?",
        answer_type=AnswerType.CHOICE,
        options={"A": "no", "B": "yes"},
        answer="B",
    )
]


async def _run(cfg: EndpointConfig, tmp_path: Path, modes: ModeSettings, **kw: object) -> RunResult:
    settings = RunSettings(modes=modes, out=tmp_path / "run", seed=3)
    problems = kw.get("problems", PROBLEMS)
    return await execute(problems, cfg, settings)  # type: ignore[arg-type]


def _thinking_template_endpoint(base_url: str, **kw: str) -> EndpointConfig:
    return EndpointConfig(
        name="think",
        base_url=base_url,
        chat_template=TEMPLATE,
        continuation="completions",
        **kw,  # type: ignore[arg-type]
    )


def _answers_when_forced(body: dict[str, object], index: int) -> str:
    forced = str(body.get("prompt", "")).endswith(FORCE_ANSWER_CUE)
    return " B" if forced else DEFAULT_REPLY


async def test_client_side_forcing_closes_with_the_models_own_marker(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_answers_when_forced)
    async with FakeServer(behaviour, record_bodies=True) as server:
        result = await _run(
            _thinking_template_endpoint(server.base_url),
            tmp_path,
            ModeSettings(mode="budget", budget=4, answer_tokens=8),
        )
        bodies = [b for b in server.bodies if "prompt" in b]
    caps = result.capabilities
    assert (caps.reasoning, caps.thinking_budget, caps.think_end) == ("tags", "marker", "</think>")
    assert "not enforced" in caps.notes["thinking"]
    tree = result.trees[0]
    think = tree.nodes["q1/think"]
    forced = tree.of_kind(NodeKind.FORCED_ANSWER)
    assert think.finish_reason == "length" and think.completion_tokens == 4
    assert len(forced) == 1 and forced[0].continuation == "completions"
    # the thinking started inside the template's <think>; the forced answer closes it
    think_prompt, forced_prompt = bodies[-2]["prompt"], bodies[-1]["prompt"]
    assert think_prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert forced_prompt == think_prompt + think.text + "\n</think>" + FORCE_ANSWER_CUE
    assert forced_prompt.count("</think>") == 1
    assert tree.answer == "B"


async def test_min_thinking_reopens_a_closed_thinking_before_wait(tmp_path: Path) -> None:
    reply = "short.</think>\n\nAnswer: B"
    async with FakeServer(FakeBehaviour(reply=reply), record_bodies=True) as server:
        result = await _run(
            _thinking_template_endpoint(server.base_url),
            tmp_path,
            ModeSettings(mode="budget", budget=40, min_thinking=20, answer_tokens=8),
        )
        prompts = [b["prompt"] for b in server.bodies if "prompt" in b]
    tree = result.trees[0]
    assert tree.of_kind(NodeKind.EXTENSION)
    waits = [p for p in prompts if p.endswith("\nWait")]
    assert len(waits) == len(tree.of_kind(NodeKind.EXTENSION))
    # s1: the end marker the model wrote is dropped, and "Wait" keeps it thinking
    assert waits[0].endswith("<|im_start|>assistant\n<think>\nshort.\nWait")
    assert all("</think>" not in w for w in waits)


async def test_a_model_that_does_not_think_apart_gets_the_answer_cue(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(), record_bodies=True) as server:
        cfg = EndpointConfig(name="plain", base_url=server.base_url)
        result = await _run(cfg, tmp_path, ModeSettings(mode="budget", budget=4))
        last = server.bodies[-1]
    assert result.capabilities.thinking_budget == "cue"
    assert result.capabilities.think_end == ""
    assert last["messages"][-1]["content"].endswith(FORCE_ANSWER_CUE)
    assert "</think>" not in last["messages"][-1]["content"]


# --- slow: real vLLM servers -------------------------------------------------------------------


@pytest.mark.slow
async def test_embedded_vllm_refuses_a_server_budget_so_the_client_forces(
    embedded_url: str, tmp_path: Path
) -> None:
    demo = load_demo()
    result = await _run(
        _thinking_template_endpoint(embedded_url, model="smollm2"),
        tmp_path,
        ModeSettings(mode="budget", budget=12, answer_tokens=16),
        problems=demo[:2],
    )
    caps = result.capabilities
    assert caps.thinking_budget == "marker"
    assert "refused thinking_token_budget" in caps.notes["thinking"]
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        assert think.status is NodeStatus.DONE and think.completion_tokens <= 12
        if think.finish_reason == "length":
            (forced,) = tree.of_kind(NodeKind.FORCED_ANSWER)
            assert forced.continuation == "completions"
            assert forced.completion_tokens <= 16


@pytest.mark.slow
async def test_server_side_thinking_budget_on_a_reasoning_vllm(
    think_server: object, tmp_path: Path
) -> None:
    base_url = think_server.base_url  # type: ignore[attr-defined]
    cfg = EndpointConfig(name="smol-think", base_url=base_url, model="smol-think")
    demo = load_demo()
    budget = 8
    result = await _run(
        cfg,
        tmp_path,
        ModeSettings(mode="budget", budget=budget, answer_tokens=16),
        problems=demo[:2],
    )
    caps = result.capabilities
    assert caps.reasoning == "field"
    assert caps.thinking_budget == "server", caps.notes
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        answer = tree.nodes[f"{tree.problem_id}/answer"]
        assert think.call_id == answer.call_id  # one call, two nodes
        assert 0 < think.completion_tokens <= budget
        assert answer.completion_tokens <= 16
        assert not tree.of_kind(NodeKind.EXTENSION)
