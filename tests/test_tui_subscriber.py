"""The live path: the bus subscriber never blocks the run and never loses a real event."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from textual.pilot import Pilot
from textual.widgets import Static

from thinktree.errors import RecordingError
from thinktree.hints import resume_command
from thinktree.orchestrator.bus import Subscriber, event_bus
from thinktree.orchestrator.events import Event, NodeDelta, NodeFinished, RunFinished
from thinktree.tui.app import ThinktreeApp
from thinktree.tui.quit_dialog import QuitLiveRun
from thinktree.tui.subscriber import TuiSubscriber, WatchQuit, watch_run
from thinktree.tui.synthetic import synthetic_run
from tui_pilot import engine_ended

pytestmark = pytest.mark.anyio


def _drain(receive: MemoryObjectReceiveStream[Event]) -> list[Event]:
    out: list[Event] = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return out


def _without_deltas(events: list[Event]) -> list[Event]:
    return [e for e in events if not isinstance(e, NodeDelta)]


def _text_by_node(events: list[Event]) -> dict[str, str]:
    text: dict[str, str] = {}
    for e in events:
        if isinstance(e, NodeDelta):
            text[e.node_id] = text.get(e.node_id, "") + e.text
    return text


async def test_a_full_buffer_merges_deltas_and_keeps_every_other_event() -> None:
    subscriber, receive = TuiSubscriber.open(buffer=8)
    assert isinstance(subscriber, Subscriber) and subscriber.wants_deltas
    events = synthetic_run(6, 4)
    got: list[Event] = []
    for i, event in enumerate(events):
        subscriber.handle(event)  # never blocks, however far behind the view is
        if i % 50 == 49:
            got += _drain(receive)  # the view catches up now and then
    assert subscriber.backlog > 0
    assert subscriber.merged > 0
    closing = anyio.Event()

    async def reader() -> None:
        async with receive:
            async for event in receive:
                got.append(event)
        closing.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await subscriber.aclose()
    assert closing.is_set()
    assert _without_deltas(got) == _without_deltas(events)
    assert _text_by_node(got) == _text_by_node(events)
    assert subscriber.dropped == 0


async def test_deltas_beyond_the_held_limit_are_dropped_but_nothing_else() -> None:
    send, receive = anyio.create_memory_object_stream[Event](1)
    subscriber = TuiSubscriber(send, max_held_chars=10)
    events = synthetic_run(3, 2)
    for event in events:
        subscriber.handle(event)
    assert subscriber.dropped > 0
    got: list[Event] = []

    async def reader() -> None:
        async with receive:
            async for event in receive:
                got.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await subscriber.aclose()
    assert _without_deltas(got) == _without_deltas(events)
    finished = {e.node_id: e.text for e in got if isinstance(e, NodeFinished)}
    assert finished == {e.node_id: e.text for e in events if isinstance(e, NodeFinished)}


async def test_a_closed_view_does_not_stop_the_run() -> None:
    subscriber, receive = TuiSubscriber.open(buffer=2)
    receive.close()
    for event in synthetic_run(2, 2):
        subscriber.handle(event)
    await subscriber.aclose()
    assert subscriber.backlog == 0


async def _emit_synthetic(subscriber: TuiSubscriber, *, problems: int = 4) -> str:
    """A stand-in for ``execute``: the real bus, fed synthetic events."""
    async with event_bus([subscriber], buffer=16) as bus:
        for event in synthetic_run(problems, 3):
            await bus.emit(event)
            await anyio.lowlevel.checkpoint()
    return "result"


async def test_the_live_app_shows_a_run_fed_through_the_bus() -> None:
    subscriber, receive = TuiSubscriber.open(buffer=4)
    from thinktree.tui.sources import LiveSource

    async def engine() -> str:
        return await _emit_synthetic(subscriber, problems=5)

    app = ThinktreeApp(LiveSource(receive, engine=engine))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.source_done.wait()
        app.refresh_view()
        await pilot.pause()
        assert not app.engine_running and app.engine_error is None
        assert app.view.done == 5 and isinstance(app.view.finished, RunFinished)
        assert app.problem_list.rows == ["p1", "p2", "p3", "p4", "p5"]
        assert "problems 5/5" in app.header.plain
        await pilot.press("q")


async def test_watch_run_returns_the_runs_result_after_the_user_quits() -> None:
    async def quit_when_done(pilot: Pilot[object]) -> None:
        app = pilot.app
        assert isinstance(app, ThinktreeApp)
        await app.source_done.wait()
        await pilot.press("q")

    result = await watch_run(_emit_synthetic, headless=True, auto_pilot=quit_when_done)
    assert result == "result"


async def _slow(subscriber: TuiSubscriber, cleaned: anyio.Event) -> str:
    try:
        async with event_bus([subscriber]) as bus:
            for event in synthetic_run(2, 2, running=1):
                await bus.emit(event)
            await anyio.sleep(3600)
    finally:
        cleaned.set()
    return "never"


async def _started(pilot: Pilot[object]) -> ThinktreeApp:
    app = pilot.app
    assert isinstance(app, ThinktreeApp)
    while app.view.started is None:
        await pilot.pause(0.01)
    return app


async def test_quitting_a_live_run_asks_and_esc_goes_back_to_the_view() -> None:
    cleaned = anyio.Event()
    asked: list[str] = []

    async def look(pilot: Pilot[object]) -> None:
        app = await _started(pilot)
        await pilot.press("q")
        assert isinstance(app.screen, QuitLiveRun)
        message = app.screen.query_one("#quit-message", Static).render()
        asked.append(str(message))
        await pilot.press("q")  # a second q does not stack another question
        assert len(app.screen_stack) == 2
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitLiveRun)
        assert app.engine_running and app.quit_choice is None
        await pilot.press("j")  # the view still answers
        await pilot.press("q", "s")

    with pytest.raises(WatchQuit):
        await watch_run(
            lambda sub: _slow(sub, cleaned),
            headless=True,
            auto_pilot=look,
            folder=lambda: Path("out/my-run"),
        )
    assert cleaned.is_set()
    assert "The run is still going" in asked[0]
    assert "thinktree run --resume out/my-run" in asked[0]


async def test_stop_cancels_the_run() -> None:
    cleaned = anyio.Event()
    asked: list[str] = []

    async def stop(pilot: Pilot[object]) -> None:
        app = await _started(pilot)
        await pilot.press("q")
        asked.append(str(app.screen.query_one("#quit-message", Static).render()))
        await pilot.press("s")

    with pytest.raises(WatchQuit):
        await watch_run(lambda sub: _slow(sub, cleaned), headless=True, auto_pilot=stop)
    assert cleaned.is_set()
    assert "--resume runs/20250101-000000-synth" in asked[0]  # the folder from RunStarted


async def test_the_stop_hint_names_the_config_as_the_clis_hint_does() -> None:
    """A run on an endpoint named in a config file resumes only with that file again."""
    asked: list[str] = []

    async def stop(pilot: Pilot[object]) -> None:
        app = await _started(pilot)
        await pilot.press("q")
        asked.append(str(app.screen.query_one("#quit-message", Static).render()))
        await pilot.press("s")

    with pytest.raises(WatchQuit):
        await watch_run(
            lambda sub: _slow(sub, anyio.Event()),
            headless=True,
            auto_pilot=stop,
            folder=lambda: Path("out/my-run"),
            config=Path("endpoints.toml"),
        )
    hint = resume_command(Path("out/my-run"), Path("endpoints.toml"))
    assert hint == "thinktree run --resume out/my-run --config endpoints.toml"
    assert hint in " ".join(asked[0].split())


async def test_keep_lets_the_run_finish_without_the_view() -> None:
    events = synthetic_run(6, 3)
    first = next(i for i, e in enumerate(events) if isinstance(e, NodeFinished))
    apps: list[ThinktreeApp] = []
    emitted: list[Event] = []
    kept: list[bool] = []

    async def run(subscriber: TuiSubscriber) -> str:
        async with event_bus([subscriber], buffer=2) as bus:
            for event in events[: first + 1]:
                await bus.emit(event)
            while not (apps and apps[0].detached):  # noqa: ASYNC110
                await anyio.sleep(0.01)
            for event in events[first + 1 :]:  # far more than the view's buffer holds
                await bus.emit(event)
                emitted.append(event)
        return "finished"

    async def keep(pilot: Pilot[object]) -> None:
        app = await _started(pilot)
        apps.append(app)
        while app.view.events <= first:
            await pilot.pause(0.01)
        await pilot.press("q", "k")

    with anyio.fail_after(20):
        result = await watch_run(
            run, headless=True, auto_pilot=keep, buffer=2, on_keep=lambda: kept.append(True)
        )
    assert result == "finished" and kept == [True]
    assert apps[0].quit_choice == "keep"
    assert len(emitted) == len(events) - first - 1
    assert apps[0].view.events <= first + 1  # the view saw nothing after it closed


async def test_a_finished_live_run_quits_without_asking() -> None:
    async def quit_when_done(pilot: Pilot[object]) -> None:
        await engine_ended(pilot)
        await pilot.press("q")

    assert await watch_run(_emit_synthetic, headless=True, auto_pilot=quit_when_done) == "result"


async def test_watch_run_raises_the_runs_error() -> None:
    async def broken(subscriber: TuiSubscriber) -> str:
        raise RuntimeError("endpoint unreachable")

    with pytest.raises(RuntimeError, match="endpoint unreachable"):
        await watch_run(broken, headless=True)


async def test_a_run_failing_midway_keeps_the_view_open_then_raises() -> None:
    async def half(subscriber: TuiSubscriber) -> str:
        async with event_bus([subscriber]) as bus:
            for event in synthetic_run(3, 2, running=2):
                await bus.emit(event)
        raise RuntimeError("the endpoint went away [bold]unclosed[/")

    async def look_then_quit(pilot: Pilot[object]) -> None:
        app = await engine_ended(pilot)
        assert "run failed: the endpoint went away" in app.header.plain
        assert app.view.done == 1
        await pilot.press("q")

    with pytest.raises(RuntimeError, match="went away"):
        await watch_run(half, headless=True, auto_pilot=look_then_quit)


async def test_a_run_that_cannot_write_its_files_says_why_and_how_to_resume(
    tmp_path: Path,
) -> None:
    """Exit status 74: the view said the error but not that the run goes on with a resume
    once there is room, as it says of an interrupted run."""
    folder = tmp_path / "r1"
    full = "cannot record a model call in calls.sqlite: database or disk is full"

    async def half(subscriber: TuiSubscriber) -> str:
        async with event_bus([subscriber]) as bus:
            for event in synthetic_run(3, 2, running=2)[:-1]:
                await bus.emit(event)
            await bus.emit(RunFinished(run_id="r1", status="failed"))
        raise RecordingError(full)

    async def look_then_quit(pilot: Pilot[object]) -> None:
        app = await engine_ended(pilot)
        assert "run failed" in app.header.plain and full in app.header.plain
        assert f"resume with: {resume_command(folder)}" in app.header.plain
        await pilot.press("q")

    with pytest.raises(RecordingError):
        await watch_run(half, headless=True, auto_pilot=look_then_quit, folder=lambda: folder)


@pytest.mark.parametrize("keys", [("ctrl+c",), ("q", "ctrl+c")])
async def test_ctrl_c_stops_a_live_run_as_stop_does(keys: tuple[str, ...]) -> None:
    cleaned = anyio.Event()
    choices: list[str | None] = []

    async def interrupt(pilot: Pilot[object]) -> None:
        app = await _started(pilot)
        await pilot.press(*keys)
        await pilot.pause()
        choices.append(app.quit_choice)

    with pytest.raises(WatchQuit):
        with anyio.fail_after(20):
            await watch_run(lambda sub: _slow(sub, cleaned), headless=True, auto_pilot=interrupt)
    assert cleaned.is_set()
    assert choices == ["stop"]


async def test_ctrl_c_closes_a_view_without_a_run(tmp_path: Path) -> None:
    from thinktree.tui.sources import ReplaySource
    from thinktree.tui.synthetic import write_trace

    app = ThinktreeApp(ReplaySource(write_trace(synthetic_run(2, 2), tmp_path / "t.jsonl")))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.source_done.wait()
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running


async def test_held_text_of_a_cut_off_attempt_gives_way_to_the_retrys() -> None:
    send, receive = anyio.create_memory_object_stream[Event](1)
    subscriber = TuiSubscriber(send)
    nid = "p1/b1/think"
    subscriber.handle(RunFinished(run_id="r", status="placeholder"))  # fills the stream
    for text in ("cut ", "off "):
        subscriber.handle(NodeDelta(node_id=nid, text=text))
    subscriber.handle(NodeDelta(node_id=nid, text="fresh ", restart=True))
    subscriber.handle(NodeDelta(node_id=nid, text="text"))
    got: list[Event] = []

    async def reader() -> None:
        async with receive:
            async for event in receive:
                got.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await subscriber.aclose()
    deltas = [e for e in got if isinstance(e, NodeDelta)]
    assert [(e.text, e.restart) for e in deltas] == [("fresh text", True)]


@pytest.mark.parametrize(
    ("given", "slower", "faster"),
    [(0.1, 0.1, 0.25), (0.25, 0.25, 0.5), (1.0, 0.5, 2.0), (3.0, 2.0, 4.0)],
)
def test_replay_speed_keys_move_from_the_speed_given(
    tmp_path: Path, given: float, slower: float, faster: float
) -> None:
    """'-' on a replay started below the slowest listed speed made it faster (0.1x to 0.25x)."""
    from thinktree.tui.sources import ReplaySource

    source = ReplaySource(tmp_path / "t.jsonl", speed=given)
    source.slower()
    assert source.speed == slower
    source.speed = given
    source.faster()
    assert source.speed == faster
