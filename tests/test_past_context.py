"""A prompt longer than the model's context is refused for good, not a failed call.

A question past the context, or a line of revisions that outgrows it, is refused by the
server with the same 400 every time: a resume would send it again forever. Such a call
fails once, its line keeps what it had, and the run completes and says so. The servers
here are real HTTP servers on 127.0.0.1 that word the refusal as vLLM, OpenAI,
llama.cpp and TGI do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choice_set import beta_problems, write_dataset
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import WAIT_CUE
from thinktree.errors import ConfigError, ContextExceeded, EndpointError
from thinktree.orchestrator.events import PAST_CONTEXT
from thinktree.orchestrator.run import RunSettings, execute, load_resume
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread

pytestmark = pytest.mark.anyio

PROBLEMS = beta_problems(4)
VLLM = (
    "This model's maximum context length is 4096 tokens. However, your prompt contains at "
    "least 4097 input tokens, which exceeds this limit even without any output tokens."
)
MSGS = [{"role": "user", "content": "Question 1?"}]


def _too_long(marker: str, message: str = VLLM) -> Any:
    """Refuses every request whose conversation holds ``marker``, as past the context."""

    def reject(body: dict[str, Any]) -> str | None:
        return message if marker in json.dumps(body.get("messages")) else None

    return reject


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, VLLM),
        (400, "The decoder prompt (length 5000) is longer than the maximum model length of 4096."),
        (
            400,
            "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum "
            "context length is 4096 tokens and your request has 200 input tokens",
        ),
        (400, "context_length_exceeded: please reduce the length of the messages"),
        (400, "the request exceeds the available context size, try increasing it"),
        (422, "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048."),
    ],
)
async def test_each_servers_refusal_of_a_prompt_past_the_context_is_told_apart(
    status: int, message: str
) -> None:
    refused, asked = await _refusal(message, status)
    said = str(refused)
    assert isinstance(refused, ContextExceeded)
    assert said.startswith("endpoint 'fake' ") and "longer than the model's context" in said
    assert f"({status}): {message[:40]}" in said  # the server's words, without "Error code"
    assert asked == 1  # never retried


async def test_another_refusal_is_no_prompt_past_the_context() -> None:
    refused, _ = await _refusal("'context' is not a valid field", 400)
    assert not isinstance(refused, ContextExceeded)
    assert "rejected the request (400): 'context' is not a valid field" in str(refused)


async def _refusal(message: str, status: int) -> tuple[EndpointError, int]:
    """The error of one call that a server refuses with ``message``, and its requests."""
    behaviour = FakeBehaviour(reject=_too_long("Question 1?", message), reject_status=status)
    async with FakeServer(behaviour) as server:
        client = EndpointClient(
            EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        )
        try:
            with pytest.raises(EndpointError) as caught:
                await client.chat(MSGS, max_tokens=16)
        finally:
            await client.aclose()
        return caught.value, server.requests


async def test_a_question_past_the_context_is_answered_by_nobody_and_not_sent_again(
    tmp_path: Path,
) -> None:
    """parallel: Question 1's request (its 4 samples) is refused as too long. The run
    completes: that problem has no answer and counts as wrong (the model cannot read it,
    and no resume changes that), and there is nothing to resume."""
    folder = tmp_path / "run"
    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=_too_long("Question 1?"))
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(modes=ModeSettings(mode="parallel", n=4, budget=32), out=folder)
        result = await execute(PROBLEMS, endpoint, settings)
    assert result.failed_calls() == []
    metrics = result.metrics
    assert (metrics.past_context, metrics.failed, metrics.graded, metrics.correct) == (1, 0, 4, 3)
    long = next(t for t in result.trees if t.question == "Question 1?")
    assert long.answer is None and long.correct is False
    assert long.error is not None
    refusal = f"refused a prompt longer than the model's context (400): {VLLM}"
    assert long.error.startswith(
        f"no candidate stated an answer: 1 model call(s) {PAST_CONTEXT}, the first with: "
        "endpoint 'fake' "
    )
    assert long.error.endswith(refusal)
    samples = [n for n in long.walk() if n.kind == "generation"]
    assert len(samples) == 4
    assert all(n.status == "failed" and (n.error or "").startswith(PAST_CONTEXT) for n in samples)
    first = result.first_past_context()
    assert first is not None and first.startswith("endpoint 'fake' ") and first.endswith(refusal)
    saved = json.loads((folder / "results.json").read_text())
    assert saved["metrics"]["past_context"] == 1
    with pytest.raises(ConfigError, match="already completed, with no failed model call"):
        load_resume(folder)


async def test_a_line_that_outgrows_the_context_keeps_its_last_answer(tmp_path: Path) -> None:
    """sequential: step 1 states B; the conversation with "Wait" passes the context. The
    line ends at step 1 with its answer, nothing is forced (B stands), and no call is left
    for a resume."""
    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=_too_long(WAIT_CUE.strip()))
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="sequential", steps=3, budget=32)
        settings = RunSettings(modes=modes, out=tmp_path / "run")
        caps = Capabilities(continuation="chat")
        result = await execute(PROBLEMS[:1], endpoint, settings, capabilities=caps)
        sent = server.requests
    (tree,) = result.trees
    assert tree.answer == "B" and tree.correct is True and tree.error is None
    assert tree.vote is not None and tree.vote.winner_node == "q0/step1"
    assert sent == 2  # step 1, and step 2 refused once: no step 3, no forced answer
    step2 = tree.nodes["q0/step2"]
    assert step2.status == "failed" and (step2.error or "").startswith(PAST_CONTEXT)
    assert result.failed_calls() == [] and result.metrics.past_context == 1


def test_the_command_says_which_calls_passed_the_context_and_completes(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", PROBLEMS)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=_too_long("Question 1?"))
    with fake_server_in_thread(behaviour) as server:
        command = [sys.executable, "-m", "thinktree.cli", "run", str(data)]
        command += ["--endpoint", server.base_url, "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr  # complete: nothing a resume could mend
    assert "Traceback" not in done.stderr
    (line,) = [s for s in done.stderr.splitlines() if PAST_CONTEXT in s]
    assert line.startswith(f"1 model call(s) {PAST_CONTEXT} and will not be sent again")
    assert "maximum context length is 4096 tokens" in line
    assert "--resume" not in done.stderr
    assert "(0 retries, 1 past the model's context)" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "runs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "COLUMNS": "250"},
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("│ run ")]
    assert "completed" in row and "1 model call(s) past the model's context" in row
    assert "failed" not in row
