"""`thinktree probe` against the real embedded vLLM server tells the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    for row in ("n > 1 in one request", "continuation: chat", "/v1/completions", "logprobs"):
        assert row in proc.stdout
