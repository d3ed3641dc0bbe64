"""The event loop a run's process starts: uvloop where installed, asyncio's on request."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from thinktree import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_runs_on_uvloop_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    if importlib.util.find_spec("uvloop") is None:  # pragma: no cover - Windows
        assert event_loop.loop_name() == "asyncio"
        return
    assert event_loop.loop_name() == "uvloop"
    assert event_loop.run(_loop_module).startswith("uvloop")


def test_the_environment_asks_for_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.loop_name() == "asyncio"
    assert event_loop.run(_loop_module).startswith("asyncio")


def test_run_passes_arguments_and_returns_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert event_loop.run(add, 2, 3) == 5
