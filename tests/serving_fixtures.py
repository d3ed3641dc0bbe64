"""A vLLM started by `thinktree serve vllm` on a reasoning-model fixture, for the session.

The fixture is the embedded SmolLM2 as a reasoning model: the `<think>` chat template
written for the tests, and two unused special tokens renamed `<think>`/`</think>` (no new
weights), so vLLM's reasoning parser and its server-side thinking budget work on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinktree import embedded

THINK_TEMPLATE = Path(__file__).parent / "data" / "think_template.jinja"


def think_model(root: Path) -> Path:
    """The embedded model as a reasoning model: `<think>` template and think tokens."""
    source = embedded.ensure_converted_model()
    root.mkdir(parents=True)
    (root / "model.safetensors").symlink_to(source / "model.safetensors")
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        shutil.copy(source / name, root / name)
    shutil.copy(THINK_TEMPLATE, root / "chat_template.jinja")
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    renamed = {"<jupyter_script>": "<think>", "<empty_output>": "</think>"}
    for token in tokenizer["added_tokens"]:
        if token["content"] in renamed:
            token["content"] = renamed[token["content"]]
            token["special"] = False  # reasoning models keep their think tags in the text
    vocab = tokenizer["model"]["vocab"]
    for old, new in renamed.items():
        vocab[new] = vocab.pop(old)
    (root / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    return root


class Served:
    def __init__(self, proc: subprocess.Popen[str], base_url: str, line: str) -> None:
        self.proc = proc
        self.base_url = base_url
        self.line = line


@pytest.fixture(scope="session")
def think_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`thinktree serve vllm` on the reasoning fixture, shared by the session."""
    folder = think_model(tmp_path_factory.mktemp("think") / "smol-think")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "COLUMNS": "400"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "thinktree.cli", "serve", "vllm", str(folder)),
            *("--served-name", "smol-think", "--max-model-len", "2048"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        pytest.fail(f"thinktree serve vllm did not start: {line}{proc.stdout.read()[-3000:]}")
    print(f"serve vllm (reasoning fixture) ready in {time.monotonic() - started:.0f} s")
    base_url = next(w for w in line.split() if w.startswith("http://"))
    try:
        yield Served(proc, base_url.rstrip(";"), line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def llamacpp_url() -> Iterator[str]:
    """Base URL of the embedded GGUF on llama.cpp (`thinktree serve llamacpp`), for the session.

    Reuses a server recorded by an earlier `thinktree serve llamacpp` when one is up.
    """
    running = embedded.find_running_server("llamacpp")
    if running is not None:
        yield running.base_url
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktree.cli", "serve", "llamacpp", "--n-threads", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        pytest.fail(f"thinktree serve llamacpp did not start: {line}{proc.stdout.read()[-3000:]}")
    base_url = next(w for w in line.split() if w.startswith("http://"))
    try:
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
