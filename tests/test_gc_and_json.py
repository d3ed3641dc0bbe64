"""The run's garbage-collection settings are restored, and hot-path JSON matches json's."""

from __future__ import annotations

import dataclasses
import enum
import gc
import json
import weakref
from pathlib import Path

from thinktree._json import dump_bytes, dump_bytes_via, dumps, dumps_sorted, loads
from thinktree.orchestrator.gc_tuning import YOUNG_THRESHOLD, run_gc


def test_run_gc_collects_less_and_restores_settings_when_the_outermost_run_ends() -> None:
    before = gc.get_threshold()
    with run_gc():
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
        with run_gc():  # a run inside a run (a bench's cells) keeps the outer settings
            assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
        assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


def test_what_a_run_still_holds_joins_the_oldest_generation_as_it_ends() -> None:
    # a young collection at the run's end would walk all of it only to find it alive
    with run_gc():
        held = [[i] for i in range(1000)]
        left = weakref.ref(_Cyclic())  # garbage in a cycle, as a run may leave
    young = gc.get_objects(generation=0) + gc.get_objects(generation=1)
    assert not any(obj is held for obj in young)
    assert any(obj is held for obj in gc.get_objects(generation=2))
    assert left() is not None
    gc.collect()  # the next full collection finds the cycle
    assert left() is None


def test_run_gc_restores_settings_when_the_run_fails() -> None:
    before = gc.get_threshold()
    try:
        with run_gc():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


class Colour(enum.StrEnum):
    RED = "red"


def test_hot_path_json_writes_what_the_standard_library_writes() -> None:
    value = {"b": [1, 2.5, None, True], "a": 'é ✓ "q" \n', "c": {"z": 1, "y": Colour.RED}}
    assert dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert dumps_sorted(value) == json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    assert dump_bytes(value) == dumps(value).encode()
    assert loads(dumps(value)) == json.loads(json.dumps(value))


def test_hot_path_json_writes_odd_values_instead_of_failing() -> None:
    assert loads(dumps({1: Path("x/y")})) == {"1": "x/y"}


def test_an_events_json_line_holds_what_to_dict_holds() -> None:
    from thinktree.orchestrator.events import (
        NodeFinished,
        NodeKind,
        NodeStarted,
        RunStarted,
        VoteCast,
    )

    events = [
        NodeStarted(
            node_id="p/b1/think",
            problem_id="p",
            parent_id="p/b1",
            kind=NodeKind.GENERATION,
            label="thinking",
            max_tokens=16,
            continuation="chat",
        ),
        NodeFinished(
            node_id="p/b1/think",
            text='é — \u2028 "quoted"\nAnswer: B',
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=5,
            answer="B",
            extraction="answer-label",
            latency_s=0.25,
        ),
        RunStarted(
            run_id="r",
            mode="parallel",
            endpoint="e",
            model="m",
            problems=1,
            # an int key and a Path, on purpose: what JSON has no type for
            settings={"n": 4, 7: [1, {"path": Path("/x")}], "none": None},  # type: ignore[dict-item]
        ),
        VoteCast(
            problem_id="p",
            node_id="p",
            rule="majority",
            answer="B",
            winner_node="p/b1/think",
            counts={"B": 1},
            ballots=[{"node": "p/b1/think", "answer": "B", "score": None}],
        ),
    ]
    for event in events:
        line = event.json_line()
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert loads(line) == json.loads(json.dumps(event.to_dict(), default=str))
        assert loads(line)["type"] == event.type


def test_dump_bytes_via_writes_each_dataclass_as_convert_says() -> None:
    @dataclasses.dataclass(slots=True)
    class Point:
        x: int
        y: int

    def convert(value: object) -> object:
        if isinstance(value, Point):
            return {"at": [value.x, value.y]}
        return f"<{type(value).__name__}>"

    data: dict[str, object] = {"points": [Point(1, 2), Point(3, 4)], "odd": {1, 2}, "n": 5}
    assert loads(dump_bytes_via(data, convert)) == {
        "points": [{"at": [1, 2]}, {"at": [3, 4]}],
        "odd": "<set>",
        "n": 5,
    }


def test_every_event_class_writes_type_then_its_fields_in_order() -> None:
    from thinktree.orchestrator import events as ev

    samples: list[ev.Event] = [
        ev.RunStarted(
            run_id="r",
            mode="m",
            endpoint="e",
            model="x",
            problems=1,
            settings={1: 2},  # type: ignore[dict-item]
        ),
        ev.ProblemStarted(problem_id="p", node_id="p", question="q é", gold=None, options={}),
        ev.NodeStarted(
            node_id="p/b", problem_id="p", parent_id="p", kind=ev.NodeKind.BRANCH, label="b"
        ),
        ev.NodeDelta(node_id="p/b", text="t", restart=True),
        ev.NodeFinished(
            node_id="p/b", text="\u2028", finish_reason=None, prompt_tokens=1, completion_tokens=2
        ),
        ev.NodeFailed(node_id="p/b", error="boom", call_id="c"),
        ev.CallRetried(endpoint="e", attempt=1, wait_s=float("inf"), reason="r"),
        ev.VoteCast(
            problem_id="p", node_id="p", rule="r", answer=None, winner_node=None, counts={}
        ),
        ev.CandidateScored(
            problem_id="p", node_id="v", candidate_node="p/b", verifier="v", score=0.5
        ),
        ev.StrategyChosen(problem_id="p", node_id="p", mode="m", budget=1, reason="r"),
        ev.ProblemFinished(problem_id="p", answer="B", correct=True, covered=None),
        ev.RunFinished(run_id="r", status="completed", read_back_retries=1),
    ]
    # (by name: a slotted dataclass replaces the class it was declared as)
    assert {type(e).__name__ for e in samples} == {c.__name__ for c in ev.Event.__subclasses__()}
    for event in samples:
        names = [f.name for f in dataclasses.fields(event)]
        # what orjson writes for the dataclass itself, with the type spliced in first
        expected = b'{"type":' + dump_bytes(event.type) + b"," + dump_bytes(event)[1:] + b"\n"
        assert event.json_line() == expected
        assert list(loads(event.json_line())) == ["type", *names]
