"""Pilot tests of the live view over synthetic runs: navigation, follow, filters, text."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import math
import os
import re
import time
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Footer

from thinktree._files import folder_lock
from thinktree.orchestrator.events import (
    Event,
    NodeDelta,
    NodeFinished,
    NodeKind,
    NodeStarted,
    NodeStatus,
    ProblemFinished,
    ProblemStarted,
    RunFinished,
    RunStarted,
    VoteCast,
)
from thinktree.orchestrator.tree import ProblemTree
from thinktree.tui.app import KEYS_SETTLE_S, ThinktreeApp
from thinktree.tui.quit_dialog import QuitLiveRun
from thinktree.tui.sources import FollowSource, LiveSource, ReplaySource, source_for
from thinktree.tui.state import Outcome
from thinktree.tui.synthetic import synthetic_run, write_trace

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
NASTY = "[bold red]not bold[/] \x1b[2J\x1b]0;pwned\x07 :smile: [link=http://x]y[/link]"


def replay(tmp_path: Path, *args: int, **kwargs: object) -> ThinktreeApp:
    trace = write_trace(synthetic_run(*args, **kwargs), tmp_path / "trace.jsonl")  # type: ignore[arg-type]
    return ThinktreeApp(ReplaySource(trace), refresh_hz=0.001)


def focused(app: ThinktreeApp) -> Widget | None:
    """The widget with the focus now (read through a call: an attribute read would keep,
    for the type checker, what an earlier assert found, past the keys that move it)."""
    return app.focused


async def settle(app: ThinktreeApp, pilot: Pilot[None], events: int | None = None) -> None:
    """Wait until the pump has applied the events, then draw once (the timer is off)."""
    if events is None:
        await app.source_done.wait()
    else:
        with anyio.fail_after(10):
            while app.view.events < events:
                await pilot.pause(0.01)
    app.refresh_view()
    await pilot.pause()


async def test_problem_list_selects_and_the_tree_follows(tmp_path: Path) -> None:
    app = replay(tmp_path, 6, 3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.problem_list.rows == [f"p{i}" for i in range(1, 7)]
        assert app.selected_problem == "p1"
        assert app.problem_tree.root.data == "p1"
        await pilot.press("j", "j")
        assert app.problem_list.highlighted == "p3"
        await pilot.pause(KEYS_SETTLE_S * 2)  # keys typed fast: the tree follows once they settle
        assert app.selected_problem == "p3"
        assert app.problem_tree.root.data == "p3"
        assert app.detail.node_id == "p3"
        assert "What is" in app.detail.text
        await pilot.pause(KEYS_SETTLE_S * 2)
        await pilot.press("k")  # one key after a pause: the tree follows at once
        assert app.selected_problem == "p2"
        await pilot.pause(KEYS_SETTLE_S * 2)
        await pilot.press("end")
        assert app.selected_problem == "p6"
        await pilot.pause(KEYS_SETTLE_S * 2)
        await pilot.click("#problems", offset=(3, 4))  # below the border: the fourth row
        assert app.selected_problem == "p4"


async def test_keys_typed_fast_build_only_the_tree_they_stop_on(tmp_path: Path) -> None:
    app = replay(tmp_path, 8, 3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        shown: list[str | None] = []
        build = app.problem_tree.show

        def show(problem: ProblemTree | None) -> None:
            shown.append(None if problem is None else problem.problem_id)
            build(problem)

        app.problem_tree.show = show  # type: ignore[method-assign]
        app.clock = lambda: 1000.0  # however slowly the test machine delivers them
        await pilot.press("j", "j", "j", "j")
        assert app.problem_list.highlighted == "p5"
        await pilot.pause(KEYS_SETTLE_S * 2)
        assert app.problem_tree.root.data == "p5"
        assert shown == ["p2", "p5"]  # the first key at once, then where the keys stopped


async def test_a_filter_right_after_fast_keys_selects_none_it_leaves_out(tmp_path: Path) -> None:
    """ "j j 2" typed fast: the moves' settling selected, after the filter, the problem
    they stopped on, which "running" leaves out (a finished run has none running)."""
    app = replay(tmp_path, 5, 3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.clock = lambda: 1000.0  # the keys come at once, however slow the machine
        await pilot.press("j", "j", "2")
        await pilot.pause(KEYS_SETTLE_S * 2)
        assert app.filter == "running" and app.problem_list.rows == []
        assert app.selected_problem is None


async def test_a_problem_that_leaves_the_filtered_list_leaves_the_tree(tmp_path: Path) -> None:
    """Under "running", the selected problem finished and left the list, yet the tree
    kept showing it (and went on showing it once the list was empty)."""
    events = synthetic_run(3, 2)
    first_done = next(
        i for i, e in enumerate(events) if isinstance(e, ProblemFinished) and e.problem_id == "p1"
    )
    send, receive = anyio.create_memory_object_stream[Event](10_000)
    app = ThinktreeApp(LiveSource(receive), refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        for event in events[:first_done]:
            await send.send(event)
        await settle(app, pilot, first_done)
        await pilot.press("2")
        assert "p1" in app.problem_list.rows
        app.problem_list.select("p1")
        app._select_problem("p1")
        for event in events[first_done:]:
            await send.send(event)
        await settle(app, pilot, len(events))
        assert app.problem_list.rows == []
        assert app.selected_problem is None
        send.close()


async def test_tree_opens_nodes_and_expands_and_collapses(tmp_path: Path) -> None:
    app = replay(tmp_path, 3, 3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")  # open the problem: focus moves to its tree
        tree = app.problem_tree
        assert focused(app) is tree
        branches = list(tree.root.children)
        assert len(branches) == 3
        # branch 1 had a "Wait" and branch 2 a forced answer, under them; branch 3 is its call
        assert [len(b.children) for b in branches] == [1, 1, 0]
        assert all(b.is_expanded for b in branches[:2])
        await pilot.press("c")
        assert not any(b.is_expanded for b in branches)
        assert tree.root.is_expanded
        await pilot.press("e")
        assert all(b.is_expanded for b in branches[:2])
        await pilot.press("j")  # root → branch 1, its first call
        assert app.detail.node_id == "p1/b1"
        assert "We need" in app.detail.text
        await pilot.press("j")  # → the "Wait" under it
        assert app.detail.node_id == "p1/b1/wait1"
        assert "Let me check again" in app.detail.text
        await pilot.press("k", "c")  # collapse just branch 1
        assert not branches[0].is_expanded and branches[1].is_expanded
        await pilot.press("e", "j", "enter")
        assert focused(app) is app.detail
        assert app.detail.node_id == "p1/b1/wait1"
        await pilot.press("escape")
        assert focused(app) is tree


LONG_ID = "arithmetic-word-problem-0001-with-a-long-identifier"
LONG_ANSWER = "1234567890"


def long_run() -> list[Event]:
    """One problem with a long id, question and answer, in two branches, the vote cast."""
    question = "A train leaves at noon and travels across the plains; how far does it go? " * 2
    events: list[Event] = [
        RunStarted(run_id="r", mode="parallel", endpoint="e", model="m", problems=1),
        ProblemStarted(problem_id=LONG_ID, node_id=LONG_ID, question=question, gold=LONG_ANSWER),
    ]
    for j in (1, 2):
        branch, think = f"{LONG_ID}/b{j}", f"{LONG_ID}/b{j}/think"
        events += [
            NodeStarted(
                node_id=branch,
                problem_id=LONG_ID,
                parent_id=LONG_ID,
                kind=NodeKind.BRANCH,
                label=f"branch {j}",
            ),
            NodeStarted(
                node_id=think,
                problem_id=LONG_ID,
                parent_id=branch,
                kind=NodeKind.GENERATION,
                label="thinking",
                max_tokens=1024,
            ),
            NodeFinished(
                node_id=think,
                text=f"Answer: {LONG_ANSWER}",
                finish_reason="stop",
                prompt_tokens=40,
                completion_tokens=77,
                answer=LONG_ANSWER,
            ),
            NodeFinished(
                node_id=branch,
                text="",
                finish_reason=None,
                prompt_tokens=0,
                completion_tokens=0,
                answer=LONG_ANSWER,
            ),
        ]
    return [
        *events,
        VoteCast(
            problem_id=LONG_ID,
            node_id=LONG_ID,
            rule="shortest-majority",
            answer=LONG_ANSWER,
            winner_node=f"{LONG_ID}/b1/think",
            counts={LONG_ANSWER: 2},
        ),
        ProblemFinished(problem_id=LONG_ID, answer=LONG_ANSWER, correct=True, covered=True),
        RunFinished(run_id="r", status="completed"),
    ]


def pane_lines(pane: Widget) -> list[str]:
    """The lines a pane draws, without its border."""
    return [pane.render_line(y).text.rstrip() for y in range(pane.size.height)]


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (100, 30)])
async def test_lines_too_long_keep_their_answer_and_cut_their_label(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """A narrow pane cuts the id, label or question with "…", never the status or answer."""
    app = ThinktreeApp(
        ReplaySource(write_trace(long_run(), tmp_path / "t.jsonl")), refresh_hz=0.001
    )
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        [row] = [line for line in pane_lines(app.problem_list) if line]
        # the id is cut in its middle: ids often share a long start and differ at the end
        assert row.startswith("✓ arit") and row.endswith(f"r → {LONG_ANSWER}") and "…" in row
        await pilot.press("enter")  # the tree (the only pane shown below 80 columns)
        lines = [line for line in pane_lines(app.problem_tree) if line]
        assert len(lines) == 5
        for line in lines:
            assert len(line) <= app.problem_tree.size.width
            assert "✓" in line and "→ 1234567" in line  # the status and the answer
            assert LONG_ANSWER in line or line.endswith("…")
        root = lines[0]
        # its id is cut (its token count and vote left out, with no room for their "…")
        assert root.endswith(f"  → {LONG_ANSWER} ✓") and "…" in root.split("→")[0]
        if size[0] >= 100:  # room for the labels, not for the token counts
            assert lines[1].endswith(f"├── ▼ ✓ ★ branch 1  → {LONG_ANSWER}  …")


async def test_lines_fit_beside_the_scrollbar(tmp_path: Path) -> None:
    """A list or tree taller than its pane has a scrollbar: lines fit in what it leaves."""
    events = [
        dataclasses.replace(e, problem_id=f"{e.problem_id}-{LONG_ID}")
        if isinstance(e, ProblemStarted | ProblemFinished)
        else e
        for e in synthetic_run(30, 1)
    ]
    app = ThinktreeApp(ReplaySource(write_trace(events, tmp_path / "t.jsonl")), refresh_hz=0.001)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        listed = app.problem_list
        room = listed.scrollable_content_region.width
        assert room < listed.size.width  # the scrollbar is shown
        problems = app.view.tree.problems
        shown = [line for line in pane_lines(listed) if line]
        assert len(shown) == listed.size.height
        for line, pid in zip(shown, listed.rows, strict=False):
            assert len(line) <= room and line.endswith(f"tifier → {problems[pid].answer}")
            assert line[2:].startswith(pid[:3]) and "…" in line
    app = replay(tmp_path, 1, 12)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        tree = app.problem_tree
        room = tree.scrollable_content_region.width
        assert room < tree.size.width  # the scrollbar is shown
        lines = [line for line in pane_lines(tree) if line]
        assert lines and all(len(line) <= room for line in lines)
        # branch 1's answer, whole; its count left out, and no room for the "…" beside a
        # label that is cut already; where there is room, the "…" stands for the count
        assert lines[1] == "├── ▼ ✓ ★ branc…  → 122"
        assert lines[0] == "▼ ✓ p1  → 122 ✓  …"
        assert "├── ✓ branch 3  → 112" in lines  # whole, with no room left for the "…"


SHARED_START = "medqa-test-us-4-option-shared-by-every-problem-of-the-dataset"


def pane_titles(app: ThinktreeApp) -> list[str]:
    """The titles on the panes' top borders as drawn, but the problem list's."""
    return re.findall(r"╭─ (\S+) ─", screen_text(app))


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (60, 20)])
async def test_pane_titles_cut_ids_in_their_middle(tmp_path: Path, size: tuple[int, int]) -> None:
    """Ids of one dataset share their start: a tree's or a problem's title too long for
    its border is cut in the middle, as the rows cut ids, so two problems' titles differ."""
    events = [
        dataclasses.replace(e, problem_id=f"{SHARED_START}-{e.problem_id}")
        if isinstance(e, ProblemStarted | ProblemFinished)
        else e
        for e in synthetic_run(2, 1)
    ]
    app = ThinktreeApp(ReplaySource(write_trace(events, tmp_path / "t.jsonl")), refresh_hz=0.001)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        narrow = size[0] < 80
        seen = []
        for pid in app.problem_list.rows:
            if narrow:
                await pilot.press("enter")  # to the tree, the only pane shown, full width
            await pilot.pause()
            titles = pane_titles(app)
            assert len(titles) == (1 if narrow else 2)  # the tree's, the problem node's
            for title in titles:
                assert len(title) < len(pid) and title.startswith("medqa-") and "…" in title
                assert title.endswith(pid[-3:])  # "-p1", "-p2": where the ids differ
            seen.append(titles[0])
            if narrow:
                await pilot.press("escape")
            await pilot.press("j")
            await pilot.pause(KEYS_SETTLE_S * 2)
        assert len(set(seen)) == 2


async def test_the_winner_is_marked_after_the_vote(tmp_path: Path) -> None:
    app = replay(tmp_path, 2, 3)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        vote = app.view.tree.problems["p1"].vote
        assert vote is not None and vote.winner_node is not None
        item = app.problem_tree.item(vote.winner_node)
        assert item is not None
        assert str(item.label).startswith("✓ ★")
        app.problem_tree.focus_node(vote.winner_node)
        await pilot.pause()
        assert "★ the vote's winner" in app.detail.text


async def test_filters_show_problems_by_status(tmp_path: Path) -> None:
    app = replay(tmp_path, 12, 3, running=2)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        problems = app.view.tree.problems
        await pilot.press("2")
        assert app.filter == "running"
        assert app.problem_list.rows == ["p11", "p12"]
        assert app.selected_problem == "p11"
        await pilot.press("4")
        right = app.problem_list.rows
        assert right and all(problems[p].correct is True for p in right)
        assert app.selected_problem == right[0]
        await pilot.press("5")
        wrong = app.problem_list.rows
        assert wrong and all(problems[p].correct is False for p in wrong)
        await pilot.press("3")
        assert len(app.problem_list.rows) == 10
        await pilot.press("1")
        assert len(app.problem_list.rows) == 12
        assert app.problem_list.border_title == "problems · all 12"


async def test_all_counts_the_problems_yet_to_start_too(tmp_path: Path) -> None:
    """The run-started event says how many problems the run has: "all" counts them all."""
    events = synthetic_run(10, 2, running=7)
    fifth = next(
        i for i, e in enumerate(events) if isinstance(e, ProblemStarted) and e.problem_id == "p05"
    )
    trace = write_trace(events[:fifth], tmp_path / "trace.jsonl")  # p01 to p04 started
    app = ThinktreeApp(ReplaySource(trace), refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.problem_list.rows == ["p01", "p02", "p03", "p04"]
        assert app.problem_list.border_title == "problems · all 10"
        await pilot.press("2")
        assert app.problem_list.border_title == "problems · running 1"
        await pilot.press("3")
        assert app.problem_list.border_title == "problems · done 3"
        await pilot.press("1")
        assert app.problem_list.border_title == "problems · all 10"
    before_any = write_trace(events[:1], tmp_path / "started.jsonl")  # the run-started only
    app = ThinktreeApp(ReplaySource(before_any), refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.problem_list.rows == []
        assert app.problem_list.border_title == "problems · all 10"


async def test_follow_tracks_the_newest_node_of_a_live_run() -> None:
    send, receive = anyio.create_memory_object_stream[Event](10_000)
    app = ThinktreeApp(LiveSource(receive), refresh_hz=0.001)
    events = synthetic_run(4, 2)
    later = len(events) - 20  # far into the run, with nodes still to come
    async with app.run_test(size=SIZE) as pilot:
        await feed(send, events[:30])
        await settle(app, pilot, 30)
        await pilot.press("f")
        assert app.follow
        newest = app.view.newest_node
        assert newest is not None
        assert app.problem_tree.cursor_node is not None
        assert app.problem_tree.cursor_node.data == newest
        assert app.detail.node_id == newest
        await feed(send, events[30:later])
        await settle(app, pilot, later)
        newest = app.view.newest_node
        assert newest is not None
        assert app.selected_problem == app.view.tree.node(newest).problem_id
        assert app.detail.node_id == newest
        assert "following newest" in app.header.plain
        await pilot.press("k")  # moving by hand stops following
        assert not app.follow
        await feed(send, events[later:])
        await settle(app, pilot, len(events))
        assert app.detail.node_id != app.view.newest_node


def screen_text(app: ThinktreeApp) -> str:
    """The characters on screen, row after row, from the app's own screenshot."""
    svg = app.export_screenshot()
    return html.unescape("".join(re.findall(r">([^<]*)</text>", svg))).replace("\xa0", " ")


async def feed(send: MemoryObjectSendStream[Event], events: list[Event]) -> None:
    for event in events:
        await send.send(event)


async def test_streamed_text_shows_on_the_next_redraw_not_per_token() -> None:
    send, receive = anyio.create_memory_object_stream[Event](10_000)
    app = ThinktreeApp(LiveSource(receive), refresh_hz=0.001)
    events = synthetic_run(1, 1, running=1)
    started = next(e for e in events if isinstance(e, NodeStarted) and e.node_id.endswith("b1"))
    upto = events.index(started) + 1
    async with app.run_test(size=SIZE) as pilot:
        await feed(send, events[:upto])
        await settle(app, pilot, upto)
        await pilot.press("f")
        assert app.detail.node_id == started.node_id
        node = app.view.tree.node(started.node_id)
        assert node.status is NodeStatus.RUNNING
        shown = app.detail.text
        for i in range(200):
            await send.send(NodeDelta(node_id=started.node_id, text=f"tok{i} "))
        with anyio.fail_after(5):
            while app.view.events < upto + 200:
                await pilot.pause(0.01)
        assert node.text.endswith("tok199 ")
        assert app.detail.text == shown  # applied, not drawn: drawing waits for the timer
        app.refresh_view()
        await pilot.pause()
        assert "tok0 tok1 " in app.detail.text and "tok199" in app.detail.text
        item = app.problem_tree.item(started.node_id)
        assert item is not None and "streaming" in str(item.label)


async def test_model_text_is_shown_literally(tmp_path: Path) -> None:
    app = replay(tmp_path, 2, 2, texts={"p1/b1": NASTY})
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.problem_tree.focus_node("p1/b1")
        await pilot.pause()
        shown = app.detail.text
        assert "[bold red]not bold[/]" in shown
        assert "␛[2J␛]0;pwned␇" in shown
        assert ":smile:" in shown and "[link=http://x]y[/link]" in shown
        assert "\x1b" not in shown and "\x07" not in shown
        screen = screen_text(app)
        assert "[bold red]not bold[/] ␛[2J␛]0;pwned␇" in screen
        assert ":smile: [link=http://x]y[/link]" in screen
        assert "\x1b" not in app.export_screenshot()
        await pilot.press("q")


async def test_replay_speed_and_pause(tmp_path: Path) -> None:
    trace = write_trace(synthetic_run(3, 2), tmp_path / "trace.jsonl")
    source = ReplaySource(trace, speed=1.0)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("plus", "plus")
        assert source.speed == 4.0
        await pilot.press("minus")
        assert source.speed == 2.0
        await pilot.press("space")
        assert source.paused
        app.refresh_view()
        assert "replay paused" in app.header.plain
        seen, clock = app.view.events, source.clock
        await pilot.pause(0.2)
        assert (app.view.events, source.clock) == (seen, clock)
        for _ in range(8):  # paused, so the replay cannot end meanwhile
            await pilot.press("plus")
        assert source.speed == math.inf  # as fast as it goes
        await pilot.press("space")
        assert not source.paused and source.status == "replay"
        await settle(app, pilot)
        assert app.view.done == 3
        # once it has played, its keys leave the footer and do nothing
        assert not app.check_action("faster", ()) and not app.check_action("pause", ())
        await pilot.press("space")
        assert not source.paused


async def test_a_live_only_view_hides_replay_keys() -> None:
    send, receive = anyio.create_memory_object_stream[Event](10)
    app = ThinktreeApp(receive, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        assert app.check_action("pause", ()) is False
        await pilot.press("space")
        assert isinstance(app.source, LiveSource)
        send.close()
        await app.source_done.wait()


async def test_follow_source_reads_a_trace_as_it_grows(tmp_path: Path) -> None:
    events = synthetic_run(4, 2)
    path = tmp_path / "trace.jsonl"
    write_trace(events, path)
    data = path.read_bytes()
    cut = data.index(b"problem-started", len(data) // 2) - 12  # in the middle of a line
    path.write_bytes(data[:cut])
    source = FollowSource(path, poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        first = data[:cut].count(b"\n")
        await settle(app, pilot, first)
        assert app.view.events == first
        assert source.status == "following"
        assert 0 < app.view.done < 4
        with path.open("ab") as file:
            file.write(data[cut:])
        await settle(app, pilot)
        assert app.view.done == 4
        assert source.status == "finished"
        assert app.view.events == len(events)


async def test_a_follower_says_when_the_run_it_showed_is_resumed(tmp_path: Path) -> None:
    """A resumed run writes its trace anew: a view still open on the old one says so."""
    events = synthetic_run(2, 2)
    path = tmp_path / "trace.jsonl"
    write_trace(events, path)
    source = FollowSource(path, poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert source.status == "finished"
        path.write_bytes(path.read_bytes()[:100])  # the resume truncates it, then writes
        with anyio.fail_after(5):
            while "out of date" not in source.status:
                await pilot.pause(0.02)
        assert "the run was resumed" in source.status


async def test_following_the_newest_node_of_a_followed_trace_is_said_once(
    tmp_path: Path,
) -> None:
    """It read 'following · following newest', and kept the words once the run was gone."""
    path = write_trace(synthetic_run(2, 2, running=1), tmp_path / "trace.jsonl")
    source = FollowSource(path, poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot, len(synthetic_run(2, 2, running=1)))
        app.follow = True
        assert app.source_status() == "following newest"
        app.source_done.set()  # as when its process is found gone
        assert app.source_status() == "following"


async def test_a_replayed_run_says_when_it_is_resumed(tmp_path: Path) -> None:
    """A cancelled run is replayed (its trace has its end); a resume writes the trace anew
    and the view says it is out of date. It said 'run cancelled' for ever."""
    events = synthetic_run(2, 2)
    end = events[-1]
    assert isinstance(end, RunFinished)
    events[-1] = dataclasses.replace(end, status="cancelled")
    path = tmp_path / "trace.jsonl"
    write_trace(events, path)
    source = source_for(path)
    assert isinstance(source, ReplaySource)
    source.poll_s = 0.02
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert source.status == "replay"
        path.write_bytes(path.read_bytes()[:100])  # the resume truncates it, then writes
        with anyio.fail_after(5):
            while "out of date" not in source.status:
                await pilot.pause(0.02)
        app.refresh_view()
        assert "the run was resumed: this view is out of date" in app.header.plain


def run_folder(tmp_path: Path, events: list[Event]) -> Path:
    """A run folder as a run leaves it: its manifest, and its trace so far."""
    folder = tmp_path / "r1"
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    write_trace(events, folder / "trace.jsonl")
    return folder


def assert_interrupted(app: ThinktreeApp, source: FollowSource) -> None:
    """Shown as a run that ended: nothing running, the clock still, the way to go on."""
    assert source.interrupted and source.status == FollowSource.GONE
    assert app.view.outcomes[Outcome.RUNNING] == 0 and app.view.outcomes[Outcome.STOPPED] == 1
    assert all(
        node.status is not NodeStatus.RUNNING
        for problem in app.view.tree.problems.values()
        for node in problem.nodes.values()
    )
    app.refresh_view()
    assert "run interrupted" in app.header.plain and "running" not in app.header.plain
    assert f"resume with: thinktree run --resume {source.folder}" in app.header.plain
    # the clock no longer ticks, and stays where it was when the end was found: it went
    # back to the run's last event
    stopped = app.elapsed()
    time.sleep(0.05)
    assert app.elapsed() == stopped
    assert stopped > app.view.elapsed


async def test_watching_a_run_whose_process_died_says_it_was_interrupted(tmp_path: Path) -> None:
    """Nobody holds the run folder's lock (its process was killed): the view says so."""
    folder = run_folder(tmp_path, synthetic_run(3, 2, running=1))
    source = FollowSource(folder / "trace.jsonl", poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        with anyio.fail_after(5):
            await settle(app, pilot)
        assert_interrupted(app, source)
        # a resume writes the trace anew: the view is out of date, the hint to resume goes
        (folder / "trace.jsonl").write_bytes(b"")
        with anyio.fail_after(5):
            while "out of date" not in source.status:
                await pilot.pause(0.02)
        app.refresh_view()
        assert "--resume" not in app.header.plain


async def test_a_run_killed_before_its_first_event_is_not_waited_for(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, [])  # its trace created, and nothing in it yet
    source = FollowSource(folder / "trace.jsonl", poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        with anyio.fail_after(5):
            await settle(app, pilot)
        assert source.interrupted
        assert "waiting" not in app.header.plain
        assert "the run ended before it started" in app.header.plain
        assert "run interrupted" in app.header.plain


async def test_a_run_whose_process_dies_while_watched_is_no_longer_followed(
    tmp_path: Path,
) -> None:
    events = synthetic_run(3, 2, running=1)
    lines = write_trace(events, tmp_path / "whole.jsonl").read_bytes().splitlines(keepends=True)
    folder = run_folder(tmp_path, events[:10])
    source = FollowSource(folder / "trace.jsonl", poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    with contextlib.ExitStack() as writer:
        writer.enter_context(folder_lock(folder, "run"))  # held while the run's process lives
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot, 10)
            await pilot.pause(0.1)
            assert source.status == "following" and not app.source_done.is_set()
            with (folder / "trace.jsonl").open("ab") as file:  # its last events, then it dies
                file.writelines(lines[10:])
            writer.close()
            with anyio.fail_after(5):
                await settle(app, pilot)
            assert app.view.events == len(events)  # what it wrote before it died is shown
            assert_interrupted(app, source)


async def test_a_trace_on_its_own_is_followed_while_the_view_is_open(tmp_path: Path) -> None:
    """Outside a run folder nothing tells whether its writer lives: it is never called dead."""
    path = write_trace(synthetic_run(3, 2, running=1), tmp_path / "trace.jsonl")
    source = FollowSource(path, poll_s=0.02)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        assert source.status == "following" and not source.interrupted
        assert not app.source_done.is_set()


async def test_a_thousand_problems_by_sixteen_branches_stay_responsive(tmp_path: Path) -> None:
    app = replay(tmp_path, 1000, 16, deltas=False)
    async with app.run_test(size=SIZE) as pilot:
        with anyio.fail_after(30):
            await settle(app, pilot)
        assert len(app.problem_list.rows) == 1000
        for _ in range(5):
            await pilot.press("end", "home", "pagedown")
            app.refresh_view()
        await pilot.press("enter", "j", "j", "e", "c")
        await pilot.pause()
        app.refresh_view()
        assert app.problem_list.highlighted == app.selected_problem
        assert len(app.problem_tree.root.children) == 16


async def test_watch_picks_follow_or_replay_from_the_trace(tmp_path: Path) -> None:
    from thinktree.tui.sources import source_for

    done = tmp_path / "done"
    done.mkdir()
    write_trace(synthetic_run(2, 1), done / "trace.jsonl")
    live = tmp_path / ".going.abc.partial"
    live.mkdir()
    write_trace(synthetic_run(2, 1, running=1), live / "trace.jsonl")
    replayed = source_for(done)
    assert isinstance(replayed, ReplaySource) and replayed.status == "replay"
    timed = source_for(done / "trace.jsonl", speed=3)
    assert isinstance(timed, ReplaySource) and timed.status == "replay 3×"
    assert isinstance(source_for(tmp_path / "going"), FollowSource)
    with pytest.raises(ValueError):
        source_for(done, speed=0)
    with pytest.raises(FileNotFoundError):
        source_for(tmp_path / "missing")


async def test_watch_refuses_a_file_that_is_not_a_trace(tmp_path: Path) -> None:
    from thinktree.tui.sources import source_for

    for name, content in [
        ("afile", b"hello\n"),
        ("data.jsonl", b'{"question": "1+1?", "answer": "2"}\n'),
        ("typed.jsonl", b'{"type": ["run-started"]}\n'),
        ("empty.jsonl", b""),
        ("cut", b'{"type": "run-st'),
    ]:
        (tmp_path / name).write_bytes(content)
        refused = re.escape(f"{tmp_path / name} is not a run folder or a trace")
        with pytest.raises(ValueError, match=f"^{refused}$"):
            source_for(tmp_path / name)
    # a run that has just started: its trace has no whole line yet, beside its run.json
    folder = run_folder(tmp_path, [])
    assert isinstance(source_for(folder), FollowSource)
    (folder / "trace.jsonl").write_bytes(b'{"type": "run-started", "run_id"')
    assert isinstance(source_for(folder / "trace.jsonl"), FollowSource)
    # a folder whose trace.jsonl is another program's
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "trace.jsonl").write_bytes(b"[1, 2]\n")
    with pytest.raises(ValueError, match=r"trace\.jsonl is not a trace$"):
        source_for(tmp_path / "other")


async def test_ids_labels_and_answers_are_never_markup() -> None:
    from thinktree.orchestrator.events import (
        NodeFinished,
        NodeKind,
        ProblemFinished,
        ProblemStarted,
        RunStarted,
    )

    pid = "[bold]p[/"
    events: list[Event] = [
        RunStarted(run_id="[r]", mode="budget", endpoint="[e]", model="m[/]", problems=1),
        ProblemStarted(problem_id=pid, node_id=pid, question="[q]\x1b[2J?", gold="[g]"),
        NodeStarted(
            node_id=f"{pid}/think",
            problem_id=pid,
            parent_id=pid,
            kind=NodeKind.GENERATION,
            label="[/] think",
        ),
        NodeFinished(
            node_id=f"{pid}/think",
            text="Answer: [x]",
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=2,
            answer="[x][/x",
        ),
        ProblemFinished(problem_id=pid, answer="[x][/x", correct=False, covered=False),
    ]
    send, receive = anyio.create_memory_object_stream[Event](100)
    app = ThinktreeApp(receive, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await feed(send, events)
        send.close()
        await settle(app, pilot)
        app.problem_tree.focus_node(f"{pid}/think")
        await pilot.pause()
        screen = screen_text(app)
        for shown in (
            "run [r]",
            "endpoint [e]",
            "model m[/]",
            "✗ [bold]p[/ → [x][/x",
            "[/] think",
            "[q]␛[2J?",
        ):
            assert shown in screen, shown
        assert "Answer: [x]" in app.detail.text


@pytest.mark.parametrize("size", [(120, 40), (80, 24), (40, 12)])
async def test_the_quit_dialog_shows_its_text_and_its_keys(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    app = replay(tmp_path, 2, 2)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        app.push_screen(QuitLiveRun("runs/r1"))
        await pilot.pause()
        message = app.screen.query_one("#quit-message")
        assert message.region.width > 20 and message.region.height >= 4
        shown = screen_text(app)
        for words in ("The run is still going.", "[k]", "[s]", "[esc]", "keep", "stop"):
            assert words in shown
        assert "runs/r1" in shown.replace(" ", "")  # the resume hint may wrap, never vanish
        footer = app.screen.query_one(Footer)
        assert footer.region.height == 1 and footer.region.y == size[1] - 1
        assert "Filter" not in shown and "Expand" not in shown  # not the view's keys
        await pilot.press("escape")
        assert not isinstance(app.screen, QuitLiveRun)


def test_the_quit_dialog_before_the_run_begins_offers_no_resume() -> None:
    """It said "resume later with: thinktree run --resume RUN_DIR", a folder that never
    was: stopped before it begins, a run leaves nothing to resume."""
    from thinktree.tui.quit_dialog import quit_message

    said = quit_message(None).plain
    assert "RUN_DIR" not in said and "--resume" not in said
    assert "it has not started yet: nothing to resume" in said
    assert "thinktree run --resume runs/r1" in quit_message("runs/r1").plain


async def test_a_retried_nodes_text_starts_afresh_in_replay(tmp_path: Path) -> None:
    events = synthetic_run(1, 1, running=1)
    first = next(e for e in events if isinstance(e, NodeDelta))
    at = events.index(first)
    cut = NodeDelta(at=first.at, node_id=first.node_id, text="CUT-OFF ATTEMPT ")
    events[at : at + 1] = [cut, dataclasses.replace(first, restart=True)]
    trace = write_trace(events, tmp_path / "trace.jsonl")
    app = ThinktreeApp(ReplaySource(trace), refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.problem_tree.focus_node(first.node_id)
        await pilot.pause()
        assert app.detail.node_id == first.node_id
        assert first.text in app.detail.text
        assert "CUT-OFF" not in app.detail.text


def _header_lines(app: ThinktreeApp) -> list[str]:
    header = app.header
    return [
        "".join(s.text for s in strip).rstrip()
        for strip in header.render_lines(header.region.reset_offset)
    ]


@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_each_header_line_is_cut_never_wrapped(tmp_path: Path, size: tuple[int, int]) -> None:
    run_id = "20250101-000000-a-rather-long-run-name-to-show"
    app = replay(tmp_path, 3, 2, run_id=run_id)
    async with app.run_test(size=size) as pilot:
        await settle(app, pilot)
        lines = _header_lines(app)
        assert len(lines) == 2 and all(len(line) <= size[0] for line in lines)
        # the run's id gives way (cut in its middle), not the mode at the line's end
        assert lines[0].startswith(" thinktree   run 20") and "show  endpoint" in lines[0]
        assert "…" in lines[0]
        assert lines[0].endswith("  endpoint synthetic  model toy-model-1  mode parallel")
        assert lines[1].startswith(" problems 3/3")  # the progress line is always in view
        assert run_id in app.header.plain  # what the header says, uncut


async def test_a_narrow_header_keeps_the_mode_and_whether_the_run_is_over(tmp_path: Path) -> None:
    app = replay(tmp_path, 3, 2)
    async with app.run_test(size=(50, 24)) as pilot:
        await settle(app, pilot)
        wide = app.header.plain.splitlines()
        assert "tokens" in wide[1] and "run completed" in wide[1]
        lines = _header_lines(app)
        assert all(len(line) <= 50 for line in lines)
        # no room for the labels: the mode first, then what serves it
        assert lines[0] == " thinktree   parallel · toy-model-1 · synthetic"
        # the token count and the clock give way to how far the run got and its state
        assert lines[1].startswith(" problems 3/3  ✓ ")
        assert lines[1].endswith("  ·  replay  run completed")
        assert "tokens" not in lines[1] and "⏱" not in lines[1]
        await pilot.resize_terminal(120, 24)  # wider again: everything is back
        await pilot.pause()
        assert _header_lines(app) == wide


async def test_esc_goes_back_from_the_tree_to_the_problem_list(tmp_path: Path) -> None:
    app = replay(tmp_path, 3, 2)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("j")
        await pilot.pause(KEYS_SETTLE_S * 2)
        await pilot.press("enter")
        assert focused(app) is app.problem_tree
        await pilot.pause()
        assert "Back" in screen_text(app)  # the footer says esc goes back
        await pilot.press("escape")
        assert focused(app) is app.problem_list
        assert app.selected_problem == "p2"  # back where the user was
        await pilot.press("enter", "j", "enter", "escape", "escape")  # detail → tree → list
        assert focused(app) is app.problem_list


async def test_a_running_problems_detail_opens_at_its_top(tmp_path: Path) -> None:
    events = synthetic_run(2, 2, running=1)
    long = "A 45-year-old presents with a long history. " * 60 + "Which is most likely?"
    at, started = next(
        (i, e)
        for i, e in enumerate(events)
        if isinstance(e, ProblemStarted) and e.problem_id == "p2"
    )
    events[at] = dataclasses.replace(started, question=long)
    trace = write_trace(events, tmp_path / "trace.jsonl")
    app = ThinktreeApp(ReplaySource(trace), refresh_hz=0.001)
    async with app.run_test(size=(120, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("j")
        await pilot.pause()
        app.refresh_view()
        await pilot.pause()
        assert (
            app.detail.node_id == "p2"
            and app.view.tree.problems["p2"].root.status is NodeStatus.RUNNING
        )
        assert app.detail.max_scroll_y > 0  # the question is longer than the pane
        assert app.detail.scroll_y == 0
        shown = screen_text(app)
        assert "running" in shown and "gold" in shown


async def test_a_narrow_terminal_shows_one_pane_at_a_time(tmp_path: Path) -> None:
    app = replay(tmp_path, 3, 2)
    async with app.run_test(size=(40, 12)) as pilot:
        await settle(app, pilot)
        panes = (app.problem_list, app.problem_tree, app.detail)

        def shown() -> list[object]:
            return [pane for pane in panes if pane.display]

        assert shown() == [app.problem_list] and app.problem_list.region.width == 40
        await pilot.press("enter")
        assert shown() == [app.problem_tree] and focused(app) is app.problem_tree
        await pilot.press("j", "enter")
        assert shown() == [app.detail] and focused(app) is app.detail
        assert app.detail.region.width == 40
        lines = [line for line in screen_text(app).splitlines() if line.strip()]
        assert lines  # text reads across the width, not a letter a line
        await pilot.press("escape")
        assert shown() == [app.problem_tree]
        await pilot.press("escape")
        assert shown() == [app.problem_list] and focused(app) is app.problem_list
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert shown() == list(panes)  # wide again: side by side


async def test_a_narrow_terminals_keys_act_on_the_pane_shown(tmp_path: Path) -> None:
    """One pane at a time, the filter keys changed the hidden list under the tree, `e`/`c`
    the hidden tree under the list, and `f` followed out of sight: a pane's keys now work
    (and show in the footer) only while it is shown, and `f` shows the newest text."""
    app = replay(tmp_path, 3, 2)
    async with app.run_test(size=(60, 16)) as pilot:
        await settle(app, pilot)

        def enabled() -> dict[str, bool]:
            return {
                name: bool(app.check_action(name, params))
                for name, params in (("filter", ("done",)), ("expand", ()), ("collapse", ()))
            }

        def footer_keys() -> set[str]:
            return {key for key, active in app.screen.active_bindings.items() if active.enabled}

        assert focused(app) is app.problem_list
        assert enabled() == {"filter": True, "expand": False, "collapse": False}
        assert "3" in footer_keys() and "e" not in footer_keys()
        await pilot.press("enter")  # into the tree: the list is hidden
        assert app.problem_tree.display and not app.problem_list.display
        assert enabled() == {"filter": False, "expand": True, "collapse": True}
        assert "3" not in footer_keys() and "e" in footer_keys()
        await pilot.press("3")
        assert app.filter == "all"  # the hidden list was not filtered
        await pilot.press("escape", "f")  # from the list: following shows the newest text
        assert app.follow and app.detail.display and focused(app) is app.detail
        await pilot.resize_terminal(120, 40)  # wide: every pane shown, every key on
        await pilot.pause()
        assert enabled() == {"filter": True, "expand": True, "collapse": True}


async def test_a_problem_shown_before_its_text_was_laid_out_still_opens_at_its_top() -> None:
    send, receive = anyio.create_memory_object_stream[Event](10_000)
    app = ThinktreeApp(LiveSource(receive), refresh_hz=0.001)
    events = synthetic_run(1, 2, running=1)
    long = "A 45-year-old presents with a long history. " * 60 + "Which is most likely?"
    started = events[1]
    assert isinstance(started, ProblemStarted)
    events[1] = dataclasses.replace(started, question=long)
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(send, events[:2])
        await settle(app, pilot, 2)  # shown at once, before the pane has laid the text out
        await feed(send, events)
        await settle(app, pilot, 2 + len(events))
        app.refresh_view()
        await pilot.pause()
        assert app.detail.node_id == "p1" and app.detail.max_scroll_y > 0
        assert app.detail.scroll_y == 0


async def test_watch_says_in_one_line_what_it_cannot_read(tmp_path: Path) -> None:
    """Before the view starts (and before it asks for a terminal): each a ValueError or
    FileNotFoundError that ``thinktree watch`` prints as one line."""
    from thinktree.tui.sources import source_for

    folder = run_folder(tmp_path, synthetic_run(2, 1))
    trace = folder / "trace.jsonl"
    cases: list[tuple[Path, str]] = []
    trace.unlink()
    trace.mkdir()  # a folder where the trace should be
    cases += [(folder, f"no trace.jsonl in {folder} nor in a run folder in it")]
    cases += [(trace, f"no trace.jsonl in {trace}")]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    cases.append((fifo, f"{fifo} is not a run folder or a trace"))
    cases.append((tmp_path / "gone", "no run folder at"))
    for name, content in [
        ("latin1.jsonl", b'{"type": "run-started", "run_id": "\xff\xfe"}\n'),
        ("nested.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        ("nul.jsonl", b"\0" * 5000 + b"\n"),
    ]:
        (tmp_path / name).write_bytes(content)
        cases.append((tmp_path / name, "is not a run folder or a trace"))
    cases.append((tmp_path / ("x" * 300), "file name too long"))
    for path, says in cases:
        with anyio.fail_after(5), pytest.raises((ValueError, FileNotFoundError)) as caught:
            await anyio.to_thread.run_sync(source_for, path, abandon_on_cancel=True)  # no hang
        assert says in str(caught.value) and "\n" not in str(caught.value), (path, caught.value)
        assert "Errno" not in str(caught.value)


@pytest.mark.parametrize("follow", [False, True])
async def test_a_broken_line_stops_the_view_after_what_came_before_it(
    tmp_path: Path, follow: bool
) -> None:
    """The events before it are shown; the line's error is too, and kept for the command
    to end with (one line, exit status 2) once the view has closed."""
    events = synthetic_run(3, 2)
    lines = [e.json_line() for e in events]
    folder = run_folder(tmp_path, [])
    trace = folder / "trace.jsonl"
    trace.write_bytes(b"".join([*lines[:9], b'{"type": "node-finished", "at": "x"}\n', *lines[9:]]))
    source = FollowSource(trace, poll_s=0.02) if follow else ReplaySource(trace)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        with anyio.fail_after(5):
            await settle(app, pilot)
        assert app.view.events == 9
        said = f"{trace}:10: bad node-finished event: at is text, not a number"
        assert app.source_error == said
        assert said[:40] in app.header.plain
        # nothing more will come: what was open is shown stopped, not running
        assert app.view.outcomes[Outcome.RUNNING] == 0 and "running" not in app.header.plain
        assert not [
            node
            for problem in app.view.tree.problems.values()
            for node in problem.nodes.values()
            if node.status is NodeStatus.RUNNING
        ]
    if follow:
        assert isinstance(source, FollowSource)
        assert source.status == "stopped reading" and not source.interrupted


async def test_watching_a_run_that_failed_says_how_to_resume_it(tmp_path: Path) -> None:
    """A run that stopped failed (its files could not be written: exit status 74, or its
    endpoint went away) is resumed as an interrupted one is: the view said neither."""
    events = synthetic_run(3, 2, running=1)
    why = "endpoint 'e' (http://127.0.0.1:9/v1) stopped answering and did not come back"
    events.append(RunFinished(at=events[-1].at + 1, run_id="r1", status="failed", error=why))
    folder = run_folder(tmp_path, events)
    source = source_for(folder)
    app = ThinktreeApp(source, refresh_hz=0.001)
    async with app.run_test(size=SIZE) as pilot:
        with anyio.fail_after(5):
            await settle(app, pilot)
        app.refresh_view()
        assert "run failed" in app.header.plain
        assert f"resume with: thinktree run --resume {folder}" in app.header.plain
        # the header may have no room for the reason and the command: a notice says both
        notices = [(n.title, n.message) for n in app._notifications]
        assert (
            "the run failed",
            f"{why}; resume with: thinktree run --resume {folder}",
        ) in notices, notices


async def test_an_interrupted_runs_hint_names_the_config_it_was_started_with(
    tmp_path: Path,
) -> None:
    folder = run_folder(tmp_path, synthetic_run(2, 1, running=1))
    config = tmp_path / "lab servers.toml"
    config.write_text("")
    for manifest, shown in [
        (
            json.dumps({"run_id": "r1", "config_file": str(config)}),
            f"resume with: thinktree run --resume {folder} --config '{config}'",
        ),
        # a manifest that cannot be read: no hint to a resume that would be refused
        ("{not json", f"it cannot be resumed: {folder / 'run.json'} cannot be read"),
    ]:
        (folder / "run.json").write_text(manifest)
        source = FollowSource(folder / "trace.jsonl", poll_s=0.02)
        app = ThinktreeApp(source, refresh_hz=0.001)
        async with app.run_test(size=SIZE) as pilot:
            with anyio.fail_after(5):
                await settle(app, pilot)
            assert source.interrupted
            app.refresh_view()
            assert shown in app.header.plain


async def test_notices_show_a_folders_control_characters_inert(tmp_path: Path) -> None:
    """A run folder's name goes into the notices (the broken line's place, the resume
    hint): an escape sequence in it must not retitle the terminal or clear its screen."""
    hostile = tmp_path / "r\x1b]0;pwned\x07\x1b[2J\u202ex"
    hostile.mkdir()
    folder = run_folder(hostile, synthetic_run(2, 1, running=1))
    trace = folder / "trace.jsonl"
    for broken in (True, False):
        lines = [e.json_line() for e in synthetic_run(2, 1, running=1)]
        trace.write_bytes(b"".join([*lines[:5], b"garbage\n" if broken else b"", *lines[5:]]))
        source = FollowSource(trace, poll_s=0.02)
        app = ThinktreeApp(source, refresh_hz=0.001)
        async with app.run_test(size=SIZE) as pilot:
            with anyio.fail_after(5):
                await settle(app, pilot)
            notices = [(n.title, n.message) for n in app._notifications]
            assert notices, "nothing was said"
            for title, message in notices:
                shown = "r␛]0;pwned␇␛[2J" if broken else "r\\x1b]0;pwned\\x07\\x1b[2J"
                assert shown in message, message
                assert not re.search("[\x00-\x1f\x7f\u202a-\u202e]", title + message), message


async def test_a_line_that_never_ends_is_not_held_without_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trace's last line is held until its newline comes: one past the limit (a file
    that only starts as a trace, say) stops the view in one line instead of filling the
    memory."""
    from thinktree.orchestrator import trace as trace_module

    monkeypatch.setattr(trace_module, "MAX_LINE", 1 << 20, raising=False)
    events = synthetic_run(2, 1, running=1)
    folder = run_folder(tmp_path, events)
    trace = folder / "trace.jsonl"
    with trace.open("ab") as file:
        file.write(b'{"type": "node-delta", "text": "' + b"x" * (3 << 20))
    for source in (FollowSource(trace, poll_s=0.02), ReplaySource(trace)):
        app = ThinktreeApp(source, refresh_hz=0.001)
        async with app.run_test(size=SIZE) as pilot:
            with anyio.fail_after(5):
                await settle(app, pilot)
            assert app.view.started is not None  # what came before it is shown
            assert app.source_error is not None, source
            said = app.source_error
            last = len(events) + 1  # the line after the events
            assert said.endswith(f":{last}: a line over 1 MiB long, not an event"), said
