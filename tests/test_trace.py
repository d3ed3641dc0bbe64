"""Reading traces back: events round-trip, a live trace's half-written line is tolerated."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from thinktree.orchestrator.events import (
    NodeDelta,
    NodeFinished,
    NodeKind,
    NodeStarted,
    RunFinished,
)
from thinktree.orchestrator.trace import (
    EVENT_TYPES,
    TraceDecoder,
    TraceError,
    UnknownEventType,
    event_from_dict,
    is_trace,
    read_trace,
    resolve_trace,
    trace_finished,
)
from thinktree.sanitize import clean, literal, one_line
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
    events = synthetic_run(2, 2, texts={"p1/b1": "Schätzung: ½ · 猫 — Answer: 1"})
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


def test_one_line_of_a_megabyte_text_reads_only_what_it_shows() -> None:
    """Tree rows cut an answer or an error to a few dozen characters, each time a row is
    drawn: cleaning the whole text first took a tenth of a second a row per megabyte."""
    huge = "word\r\n  " * 1_000_000
    started = time.perf_counter()
    for _ in range(20):
        shown = one_line(huge, 60)
    assert time.perf_counter() - started < 0.5
    assert shown == one_line(huge[:1000], 60) == ("word " * 12)[:59] + "…"
    # text that folds to little stays whole: a cut prefix cannot tell what follows it
    spaced = "a" + " " * 100_000 + "b" + " \n" * 100_000
    assert one_line(spaced, 60) == "a b"
    assert one_line("x" * 59 + "\r" + "\n" * 9 + " y", 60) == "x" * 59 + "…"
    for cut in range(50, 80):
        text = "ab\r\n" * 40
        assert one_line(text, cut) == _slow_one_line(text, cut), cut


def _slow_one_line(text: str, limit: int) -> str:
    flat = re.sub(r"\s+", " ", clean(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"at": "soon"}, "at is text, not a number"),
        ({"prompt_tokens": None}, "prompt_tokens is null, not a number"),
        ({"text": ["a"]}, "text is a list, not text"),
        ({"answer": {"x": 1}}, "answer is an object, not text or null"),
        ({"node_id": 7}, "node_id is a number, not text"),
    ],
)
def test_an_event_whose_fields_have_the_wrong_type_is_a_broken_line(
    change: dict[str, object], says: str
) -> None:
    """Read as it was, it would break whatever shows it later (sums, formats, lookups)."""
    finished = {
        "type": "node-finished",
        "at": 1.0,
        "node_id": "p/think",
        "text": "t",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }
    read = event_from_dict({**finished, "prompt_tokens": 3.0})
    assert isinstance(read, NodeFinished) and read.prompt_tokens == 3  # a number
    with pytest.raises(ValueError, match=re.escape(says)):
        event_from_dict({**finished, **change})
    decoder = TraceDecoder("t.jsonl")
    with pytest.raises(TraceError, match=re.escape(f"t.jsonl:2: bad node-finished event: {says}")):
        decoder.feed(
            json.dumps(finished).encode()
            + b"\n"
            + json.dumps({**finished, **change}).encode()
            + b"\n"
        )


def test_what_a_field_holds_is_checked_too() -> None:
    vote = {
        "type": "vote-cast",
        "problem_id": "p",
        "node_id": "p/vote",
        "rule": "majority",
        "answer": "A",
        "winner_node": None,
        "counts": {"A": 2},
    }
    assert event_from_dict(vote).counts == {"A": 2}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="counts holds text, not a number"):
        event_from_dict({**vote, "counts": {"A": "two"}})
    with pytest.raises(ValueError, match="counts is text, not an object"):
        event_from_dict({**vote, "counts": "A"})
    with pytest.raises(ValueError, match="ballots holds a number, not an object"):
        event_from_dict({**vote, "ballots": [1]})
    started = {"type": "problem-started", "problem_id": "p", "node_id": "p", "question": "q"}
    with pytest.raises(ValueError, match="bad problem-started event: no gold"):
        event_from_dict(started)
    with pytest.raises(ValueError, match="options holds true or false, not text"):
        event_from_dict({**started, "gold": None, "options": {"A": True}})
    with pytest.raises(ValueError, match=r"bad node-started event: .*NodeKind"):
        event_from_dict(
            {"type": "node-started", "node_id": "p/b", "problem_id": "p", "parent_id": "p"}
            | {"kind": ["branch"], "label": "b"}
        )


def test_the_events_before_a_broken_line_are_read_before_it_is_reported(tmp_path: Path) -> None:
    events = synthetic_run(2, 2)
    lines = [e.json_line() for e in events]
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b"".join([*lines[:5], b'{"type": "node-delta", "at": null}\n', *lines[5:]]))
    read: list[object] = []
    with pytest.raises(TraceError, match=r"trace.jsonl:6: bad node-delta event: at is null"):
        read.extend(read_trace(path))
    assert read == events[:5]


@pytest.mark.parametrize("depth", [100, 30_000, 200_000])
def test_a_line_nested_too_deep_is_a_broken_line_not_a_crash(tmp_path: Path, depth: int) -> None:
    """json recurses into nested lists: deep enough, that is a RecursionError."""
    nested = b"[" * depth + b"]" * depth
    decoder = TraceDecoder("t.jsonl")
    with pytest.raises(TraceError, match=r"t\.jsonl:1: not a"):
        decoder.feed(nested + b"\n")
    path = tmp_path / "trace.jsonl"
    path.write_bytes(nested + b"\n")
    assert not is_trace(path)
    path.write_bytes(synthetic_run(1, 1)[0].json_line() + nested + b"\n")
    assert not trace_finished(path)
    assert TraceDecoder().finish() == []


def test_a_long_line_coming_in_many_chunks_is_one_event() -> None:
    text = "x" * (3 << 20)
    line = NodeDelta(at=1.0, node_id="p/think", text=text).json_line()
    decoder = TraceDecoder()
    got = []
    for start in range(0, len(line), 4096):
        got += decoder.feed(line[start : start + 4096])
    assert got == [NodeDelta(at=1.0, node_id="p/think", text=text)]
    assert decoder.line == 1


@pytest.mark.parametrize("at", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_time_that_is_no_number_is_a_broken_line(at: bytes) -> None:
    """Python's json reads NaN and Infinity (JSON has neither), and 1e999 as infinity: a
    view would stop at such a time (its clock cannot show it)."""
    line = b'{"type": "node-delta", "at": ' + at + b', "node_id": "p/think", "text": "x"}\n'
    with pytest.raises(TraceError, match=r"t\.jsonl:1: bad node-delta event: at is .*, not a time"):
        TraceDecoder("t.jsonl").feed(line)


def test_a_whole_line_past_the_limit_is_a_broken_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from thinktree.orchestrator import trace as trace_module

    monkeypatch.setattr(trace_module, "MAX_LINE", 1 << 20)
    first = synthetic_run(1, 1)[0]
    decoder = TraceDecoder("t.jsonl")
    with pytest.raises(TraceError, match=r"t\.jsonl:2: a line over 1 MiB long") as caught:
        decoder.feed(first.json_line() + b'{"x": "' + b"y" * (2 << 20) + b'"}\n')
    assert caught.value.events == [first]
