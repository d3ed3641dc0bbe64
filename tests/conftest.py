"""Shared fixtures: the anyio backend and one embedded model server per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving_fixtures import llamacpp_url, think_server  # noqa: F401  (session fixtures)
from terminal import tmux  # noqa: F401  (a tmux server of each test's own)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Children started by the tests take Ctrl-C as a terminal's foreground process does.

    A suite started in the background by a shell without job control (``nohup pytest &``)
    inherits SIGINT ignored, and every process it starts would inherit that too: the tests
    that press Ctrl-C on a child (a run, a bench, ``thinktree serve``) would find it deaf
    and fail, and the session's servers would each wait out their stop before being killed.
    A handled signal is reset to its default in a child, so handling it here is enough.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """The base URL of a server that takes every connection and never answers a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:  # the listener is closed: the test is over
                return

    threading.Thread(target=accept, name="silent-server", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), as close() does not
        listener.close()
        for connection in held:
            connection.close()


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real embedded vLLM server, shared by the whole session.

    Reuses a server recorded by ``thinktree serve`` when one is up; otherwise starts
    ``thinktree serve`` (the real command) and stops it after the session.
    """
    from thinktree.embedded import find_running_server

    running = find_running_server()
    if running is not None:
        yield running.base_url
        return
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinktree.cli", "serve"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"thinktree serve exited early: {log.read_text()[-2000:]}")
            server = find_running_server()
            if server is not None and _healthy(server.base_url):
                yield server.base_url
                break
            time.sleep(2)
        else:
            pytest.fail("the embedded server did not become healthy in 15 minutes")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
