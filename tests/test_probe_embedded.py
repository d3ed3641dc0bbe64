"""`thinktree probe` against the real embedded vLLM server tells the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_probe_reports_vllm_capabilities(embedded_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "probe", embedded_url, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["model"] == "smollm2"
    assert found["native_n"] is True
    assert found["token_ids"] is True  # n choices are counted by their token ids
    assert found["continuation"] == "chat"
    assert found["completions"] is True
    assert found["logprobs"] is True
    assert found["seed"] is True
    assert found["reasoning"] == "none"
    assert found["constraints"][0] == "vllm"  # structured_outputs, tried for real
    assert "honoured" in found["notes"]["continuation"]


def test_probe_table_is_readable(embedded_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "probe", embedded_url],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode == 0, proc.stderr
    for row in (
        "n > 1 in one request",
        "token ids of each choice",
        "continuation: chat",
        "/v1/completions",
        "logprobs",
        "calls go through thinktree's lean HTTP/1.1 client",
    ):
        assert row in proc.stdout


@pytest.mark.anyio
async def test_token_ids_count_each_choice_as_its_logprobs_do(embedded_url: str) -> None:
    """What the counts are taken from instead of logprobs counts the same tokens."""
    import openai

    client = openai.AsyncOpenAI(base_url=embedded_url, api_key="EMPTY", max_retries=0)
    try:
        resp = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Name three colours, then explain why."}],
            max_tokens=24,
            n=4,
            temperature=1.0,
            seed=7,
            logprobs=True,
            extra_body={"return_token_ids": True},
        )
    finally:
        await client.close()
    by_ids = [len(getattr(c, "token_ids", None) or ()) for c in resp.choices]
    by_logprobs = [len(c.logprobs.content or ()) if c.logprobs else 0 for c in resp.choices]
    assert by_ids == by_logprobs and all(by_ids)
    assert resp.usage is not None and sum(by_ids) == resp.usage.completion_tokens


@pytest.mark.anyio
async def test_streamed_choices_are_counted_by_their_token_ids(embedded_url: str) -> None:
    """A watched run streams: each chunk's token ids add up to what the server reports."""
    from thinktree.agents.endpoint import EndpointClient, EndpointConfig

    client = EndpointClient(EndpointConfig(name="embedded", base_url=embedded_url))
    await client.resolve_model()
    messages = [{"role": "user", "content": "Name three colours, then explain why."}]
    seen: list[str] = []

    async def on_delta(index: int, text: str, *, first: bool) -> None:
        seen.append(text)

    try:
        counts = []
        for token_ids, delta in ((True, on_delta), (False, None)):
            result = await client.chat(
                messages,
                max_tokens=24,
                n=3,
                temperature=1.0,
                seed=11,
                on_delta=delta,
                token_ids=token_ids,
            )
            counts.append([c.completion_tokens for c in result.choices])
            assert sum(counts[-1]) == result.completion_tokens
    finally:
        await client.aclose()
    assert seen  # the first call streamed
    # the same seeded request, counted by token ids while streaming and by logprobs whole
    assert counts[0] == counts[1]


def _says_it_uses_the_served_model(stderr: str, embedded_url: str) -> None:
    said = [line for line in stderr.splitlines() if line.strip()]
    assert said[0] == (
        f"using the embedded model server (vLLM) that `thinktree serve` runs at {embedded_url}"
    ), stderr
    assert "starting the embedded model server" not in stderr


def test_probe_without_an_endpoint_says_it_uses_the_served_model(embedded_url: str) -> None:
    """With no endpoint, a command uses the embedded model's server that `thinktree serve`
    runs (the session's), and says so, not that it is starting one (which takes a while)."""
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "probe", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["endpoint"] == embedded_url
    _says_it_uses_the_served_model(proc.stderr, embedded_url)


def test_a_run_without_an_endpoint_says_it_uses_the_served_model(
    embedded_url: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "thinktree.cli", "run", "--limit", "1"),
            *("--budget", "8", "--answer-tokens", "8", "--out", str(tmp_path / "run")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: the tiny model stated no answer
    _says_it_uses_the_served_model(proc.stderr, embedded_url)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["endpoint"]["base_url"] == embedded_url
