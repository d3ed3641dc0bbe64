"""Reading traces back: events round-trip, a live trace's half-written line is tolerated."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from thinktree.orchestrator.events import NodeKind, NodeStarted, RunFinished
from thinktree.orchestrator.trace import (
    EVENT_TYPES,
    TraceDecoder,
    TraceError,
    UnknownEventType,
    event_from_dict,
    read_trace,
    resolve_trace,
    trace_finished,
)
from thinktree.tui.sanitize import clean, literal, one_line
from thinktree.tui.synthetic import synthetic_run, write_trace


def test_every_event_type_round_trips_with_enums_restored() -> None:
    events = synthetic_run(5, 4, running=1) + synthetic_run(2, 2)
    assert {e.type for e in events} == {
        "run-started",
        "problem-started",
        "node-started",
        "node-delta",
        "node-finished",
        "node-failed",
        "call-retried",
        "vote-cast",
        "problem-finished",
        "run-finished",
    }
    assert {e.type for e in events} <= set(EVENT_TYPES)
    for event in events:
        back = event_from_dict(json.loads(json.dumps(event.to_dict())))
        assert back == event
        assert type(back) is type(event)
    started = next(e for e in events if isinstance(e, NodeStarted))
    back = event_from_dict(json.loads(json.dumps(started.to_dict())))
    assert isinstance(back, NodeStarted) and back.kind is started.kind
    assert isinstance(back.kind, NodeKind)


def test_event_from_dict_rejects_unknown_and_incomplete_events() -> None:
    with pytest.raises(UnknownEventType):
        event_from_dict({"type": "from-the-future", "at": 1.0})
    with pytest.raises(ValueError, match="run-finished"):
        event_from_dict({"type": "run-finished", "at": 1.0})
    with pytest.raises(ValueError):
        event_from_dict(
            {
                "type": "node-started",
                "node_id": "a",
                "problem_id": "p",
                "parent_id": "p",
                "kind": "no-such-kind",
                "label": "x",
            }
        )
    extra = {"type": "run-finished", "run_id": "r", "status": "completed", "new_key": 1}
    assert event_from_dict(extra) == RunFinished(run_id="r", status="completed")


def test_read_trace_tolerates_a_half_written_last_line(tmp_path: Path) -> None:
    events = synthetic_run(2, 2)
    path = write_trace(events, tmp_path / "trace.jsonl")
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"type": "node-delta", "node_id": "p1/b')
    assert list(read_trace(path)) == events
    # The last line complete but without its newline yet: it counts.
    path.write_bytes(whole.rstrip(b"\n"))
    assert list(read_trace(path)) == events


def test_read_trace_skips_unknown_types_and_reports_broken_lines(tmp_path: Path) -> None:
    events = synthetic_run(1, 1)
    lines = [json.dumps(e.to_dict()) for e in events]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join([lines[0], '{"type": "later", "at": 0}', *lines[1:]]) + "\n")
    assert list(read_trace(path)) == events
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(TraceError, match=r"trace.jsonl:2"):
        list(read_trace(path))


def test_decoder_handles_any_chunking_even_inside_a_utf8_character(tmp_path: Path) -> None:
    events = synthetic_run(2, 2, texts={"p1/b1/think": "Schätzung: ½ · 猫 — Answer: 1"})
    data = write_trace(events, tmp_path / "trace.jsonl").read_bytes()
    for size in (1, 3, 7, 1000):
        decoder = TraceDecoder()
        got = []
        for i in range(0, len(data), size):
            got += decoder.feed(data[i : i + size])
        got += decoder.finish()
        assert got == events


def test_resolve_trace_finds_runs_finished_or_still_going(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = runs / "20250101-000000-aaaaaa"
    done.mkdir(parents=True)
    write_trace(synthetic_run(1, 1), done / "trace.jsonl")
    assert resolve_trace(done) == done / "trace.jsonl"
    assert resolve_trace(done / "trace.jsonl") == done / "trace.jsonl"
    assert trace_finished(done / "trace.jsonl")
    live = runs / ".mine.x1y2.partial"
    live.mkdir()
    write_trace(synthetic_run(2, 1, running=1), live / "trace.jsonl")
    later = time.time() + 5
    os.utime(live / "trace.jsonl", (later, later))
    assert resolve_trace(runs / "mine") == live / "trace.jsonl"  # the run's final name
    assert resolve_trace(runs) == live / "trace.jsonl"  # the newest run in the folder
    assert not trace_finished(live / "trace.jsonl")
    with pytest.raises(FileNotFoundError):
        resolve_trace(tmp_path / "nothing")


def test_clean_makes_controls_visible_and_leaves_text_alone() -> None:
    assert clean("a\x1b[2Jb") == "a␛[2Jb"
    assert clean("x\r\ny\rz\x00\x07\x7f\x9b") == "x\ny␍z␀␇␡\ufffd"
    assert clean("tab\tand\nnewline [bold]kept[/]") == "tab\tand\nnewline [bold]kept[/]"
    assert clean("abc\u202edef") == "abc\ufffddef"
    assert one_line("  two\nlines  ", 6) == "two l…"
    assert one_line("a\n\nb") == "a b"
    assert one_line("abcdef", 4) == "abc…"
    text = literal("[bold red]x[/] \x1b]0;title\x07")
    assert text.plain == "[bold red]x[/] ␛]0;title␇"
    assert not text.spans


def test_the_trace_holds_each_batch_once_it_is_handed_over(tmp_path: Path) -> None:
    """A run still going is followed from its trace: nothing waits in a buffer."""
    from thinktree.orchestrator.subscribers import TraceWriter

    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    started = NodeStarted(
        node_id="p/b0", problem_id="p", parent_id="p", kind=NodeKind.BRANCH, label="branch 0"
    )
    writer.handle_batch([started])
    assert list(read_trace(path)) == [started]
    writer.handle(RunFinished(run_id="r", status="completed"))
    assert list(read_trace(path)) == [started, RunFinished(run_id="r", status="completed")]


def test_a_restarted_delta_round_trips_and_older_deltas_still_read() -> None:
    from thinktree.orchestrator.events import NodeDelta

    plain = NodeDelta(at=1.5, node_id="p1/b1/think", text="tok")
    assert b"restart" not in plain.json_line()  # no room spent on the usual case
    assert json.loads(plain.json_line()) == {
        k: v for k, v in plain.to_dict().items() if k != "restart"
    }
    again = NodeDelta(at=2.0, node_id="p1/b1/think", text="fresh", restart=True)
    for event in (plain, again):
        back = event_from_dict(json.loads(event.json_line()))
        assert back == event
    old = {"type": "node-delta", "at": 1.0, "node_id": "p1/b1/think", "text": "x"}  # a 0.x trace
    back = event_from_dict(old)
    assert isinstance(back, NodeDelta) and back.restart is False
