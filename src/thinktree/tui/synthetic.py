"""A made-up but well-formed run, as events: for tests, demos and load checks of the view.

Deterministic for a given seed, including the event times, so screenshots are stable.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from thinktree.orchestrator.events import (
    CallRetried,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
    ProblemFinished,
    ProblemStarted,
    RunFinished,
    RunStarted,
    VoteCast,
)

BUDGET = 256
ANSWER_TOKENS = 32


class _Clock:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.now = 0.0

    def tick(self) -> float:
        self.now = round(self.now + 0.05 + self._rng.random() / 10, 4)
        return self.now


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _chunks(text: str, parts: int = 4) -> list[str]:
    size = max(len(text) // parts, 1)
    return [text[i : i + size] for i in range(0, len(text), size)]


def synthetic_run(
    problems: int = 4,
    branches: int = 3,
    *,
    seed: int = 0,
    running: int = 0,
    deltas: bool = True,
    texts: Mapping[str, str] | None = None,
    run_id: str = "20250101-000000-synth",
) -> list[Event]:
    """Events of a parallel run of ``problems`` sums × ``branches`` samples.

    As in ``parallel``, a branch's node is its first call's (``p1/b2``), and what the
    branch adds later hangs under it (``p1/b2/wait1``, ``p1/b2/answer``).
    Some branches get a "wait" extension or a forced answer; every fifth problem has no
    gold; every seventh (from the fourth) loses its last branch to a failed call; every
    fourth (from the third) is answered wrong. The last ``running`` problems are left
    mid-way (and the run unfinished). ``texts`` replaces the text of the given node ids.
    """
    rng = random.Random(seed)
    clock = _Clock(random.Random(seed + 1))
    texts = texts or {}
    width = len(str(problems))
    out: list[Event] = [
        RunStarted(
            at=0.0,
            run_id=run_id,
            mode="parallel",
            endpoint="synthetic",
            model="toy-model-1",
            problems=problems,
            settings={
                "mode": "parallel",
                "n": branches,
                "budget": BUDGET,
                "answer_tokens": ANSWER_TOKENS,
            },
        )
    ]

    def node(pid: str, nid: str, parent: str, kind: NodeKind, label: str, cap: int) -> None:
        out.append(
            NodeStarted(
                at=clock.tick(),
                node_id=nid,
                problem_id=pid,
                parent_id=parent,
                kind=kind,
                label=label,
                max_tokens=cap,
                continuation="chat",
            )
        )

    def stream(nid: str, text: str, *, finish: bool, answer: str | None = None) -> None:
        text = texts.get(nid, text)
        parts = _chunks(text)
        if deltas:
            for part in parts if finish else parts[:2]:
                out.append(NodeDelta(at=clock.tick(), node_id=nid, text=part))
        if finish:
            out.append(
                NodeFinished(
                    at=clock.tick(),
                    node_id=nid,
                    text=text,
                    finish_reason="stop",
                    prompt_tokens=40,
                    completion_tokens=_tokens(text),
                    answer=answer,
                    extraction="answer-line" if answer is not None else None,
                    latency_s=round(0.2 + rng.random(), 3),
                    call_id=f"call-{nid}",
                )
            )

    for i in range(problems):
        pid = f"p{i + 1:0{width}d}"
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        gold = None if i % 5 == 4 else str(a + b)
        out.append(
            ProblemStarted(
                at=clock.tick(),
                problem_id=pid,
                node_id=pid,
                question=f"What is {a} + {b}?",
                gold=gold,
            )
        )
        if i == 1:
            out.append(
                CallRetried(
                    at=clock.tick(),
                    endpoint="synthetic",
                    attempt=1,
                    wait_s=12,
                    reason="rate limited",
                )
            )
        finish = i < problems - running
        candidates: list[tuple[str, str]] = []
        for j in range(1, branches + 1):  # the branches' first calls go out together
            node(pid, f"{pid}/b{j}", pid, NodeKind.GENERATION, f"branch {j}", BUDGET)
        for j in range(1, branches + 1):
            bid = f"{pid}/b{j}"  # the branch's node is its first call's
            right = rng.random() < (0.0 if i % 4 == 2 else 0.7)
            answer = str(a + b) if right else str(a + b + rng.choice((-10, 1, 10)))
            forced = j % 4 == 2
            wait = j % 3 == 1
            think = (
                f"We need {a} + {b}.\nTens: {a // 10 * 10} + {b // 10 * 10} = "
                f"{(a // 10 + b // 10) * 10}. Units: {a % 10} + {b % 10} = {a % 10 + b % 10}."
            )
            if not forced and not wait:
                think += f"\nAnswer: {answer}"
            if finish and i % 7 == 3 and j == branches > 1:
                stream(bid, think, finish=False)
                out.append(NodeFailed(at=clock.tick(), node_id=bid, error="HTTP 500: upstream"))
                continue
            stream(bid, think, finish=finish, answer=None if forced or wait else answer)
            if not finish:
                continue
            last = bid
            if wait:
                last = f"{bid}/wait1"
                node(pid, last, bid, NodeKind.EXTENSION, "wait 1", BUDGET // 2)
                stream(
                    last,
                    f"Let me check again: the sum is {answer}.\nAnswer: {answer}",
                    finish=True,
                    answer=answer,
                )
            if forced:
                last = f"{bid}/answer"
                node(pid, last, bid, NodeKind.FORCED_ANSWER, "forced answer", ANSWER_TOKENS)
                stream(last, f" {answer}", finish=True, answer=answer)
            candidates.append((last, answer))
        if not finish:
            continue
        counts = Counter(answer for _, answer in candidates)
        best = counts.most_common(1)[0][0]
        winner = next(nid for nid, answer in candidates if answer == best)
        out.append(
            VoteCast(
                at=clock.tick(),
                problem_id=pid,
                node_id=pid,
                rule="majority",
                answer=best,
                winner_node=winner,
                counts=dict(counts),
                ballots=[{"node": nid, "answer": answer} for nid, answer in candidates],
            )
        )
        out.append(
            ProblemFinished(
                at=clock.tick(),
                problem_id=pid,
                answer=best,
                correct=None if gold is None else best == gold,
                covered=None if gold is None else gold in counts,
            )
        )
    if not running:
        out.append(RunFinished(at=clock.tick(), run_id=run_id, status="completed"))
    return out


def write_trace(events: list[Event], path: Path) -> Path:
    """Write ``events`` as ``trace.jsonl`` lines, as the run's TraceWriter does."""
    with path.open("w", encoding="utf-8") as file:
        for event in events:
            file.write(json.dumps(event.to_dict(), ensure_ascii=False, default=str) + "\n")
    return path
