"""Verifiers that misbehave on purpose, registered by name for one test at a time.

``register(monkeypatch)`` makes ``--verifier misbehave:KIND`` (and ``brittle:HOW`` for
factories and closes that fail) usable in-process, as a plugin's entry point would be.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import pytest

from thinktree.problems import Problem
from thinktree.verifiers.base import CandidateView, Verdict, VerifierSetup
from thinktree.verifiers.registry import BUILTIN_VERIFIERS


class OwnBaseException(BaseException):
    """A plugin's own exception outside Exception (as some libraries' are)."""


def _verdicts(kind: str, n: int) -> Any:
    if kind == "raise":
        raise RuntimeError("boom from a verifier")
    if kind == "base-exception":
        raise OwnBaseException("the scorer broke")
    if kind == "exit":
        raise SystemExit(3)
    bad: dict[str, Any] = {
        "nan": Verdict(score=float("nan")),
        "inf": Verdict(score=float("-inf")),
        "str": Verdict(score="0.9"),  # type: ignore[arg-type]
        "bool": Verdict(score=True),
        "float": 0.5,
        "dict": {"score": 0.5},
        "tokens": Verdict(score=0.5, prompt_tokens="ten"),  # type: ignore[arg-type]
        "rationale": Verdict(score=0.5, rationale=None),  # type: ignore[arg-type]
        "cost": Verdict(score=0.5, cost_usd=float("nan")),
        "huge-score": Verdict(score=1e308),  # finite, but sums of such overflow
        "negative-score": Verdict(score=-0.3),  # votes add scores up: it would count against
        "above-one": Verdict(score=1.5),
        "huge-cost": Verdict(score=0.5, cost_usd=1e308),
        "huge-tokens": Verdict(score=0.5, prompt_tokens=10**20),  # no store holds it
        "failed": Verdict.failed("cannot tell"),
        "scored-error": Verdict(score=0.9, error="judge timed out; score is a guess"),
        "multiline-error": Verdict.failed("judge said:\n  no answer\n\tin time"),
    }
    if kind in bad:
        return [bad[kind] for _ in range(n)]
    if kind == "none":  # verify returned nothing at all
        return None
    if kind == "numpy":  # numpy numbers, as a model's outputs are: valid
        import numpy as np

        return [
            Verdict(
                score=np.float32(i / 4),  # type: ignore[arg-type]  # numpy's, on purpose
                prompt_tokens=np.int64(3),  # type: ignore[arg-type]
                completion_tokens=np.int32(0),  # type: ignore[arg-type]
            )
            for i in range(n)
        ]
    if kind == "spends":  # tokens on a model it names, at no cost it knows
        return [
            Verdict(score=i / 4, prompt_tokens=100, completion_tokens=10, model="judge-x")
            for i in range(n)
        ]
    if kind == "spends-unnamed":  # tokens, but no model named: its models() says
        return [Verdict(score=i / 4, prompt_tokens=100, completion_tokens=10) for i in range(n)]
    if kind == "model-int":
        return [Verdict(score=0.5, model=7) for _ in range(n)]  # type: ignore[arg-type]
    if kind == "lowest":  # the first candidate fails, the others score the lowest score, 0
        return [Verdict.failed("cannot tell") if i == 0 else Verdict(score=0.0) for i in range(n)]
    if kind == "lowest-scored-error":  # as "lowest", the failure carrying a top score
        first = Verdict(score=1.0, error="cannot tell")
        return [first if i == 0 else Verdict(score=0.0) for i in range(n)]
    return [Verdict(score=0.5) for _ in range(n)]


class Misbehaving:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        found: list[Verdict] = _verdicts(self.kind, len(candidates))
        return found


class Plain:
    """A verify written without ``async``, which blocks as a model's forward pass would:
    ``plain`` for a while, then scores 0.5; ``plain-raise`` raises; ``plain-hang`` until
    :data:`RELEASE` is set (its timeout_s is 0.2); ``plain-slow-once`` blocks 0.7 s in its
    first call (its timeout_s is 0.5). Notes where and how many at once ran."""

    threads: ClassVar[list[int]] = []  # the threads its calls ran in
    most_at_once = 0
    _now = 0
    _lock = threading.Condition()

    @classmethod
    def reset(cls) -> None:
        """Forget earlier tests' calls, once those still running in their threads (a hang
        :data:`RELEASE` ended, one that timed out) have ended: they would count as at once."""
        with cls._lock:
            if not cls._lock.wait_for(lambda: cls._now == 0, timeout=10):
                raise AssertionError(f"{cls._now} plain verify calls still running")
            cls.most_at_once = 0
            cls.threads.clear()

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls = 0
        if kind == "plain-hang":
            self.timeout_s = 0.2
        if kind == "plain-slow-once":
            self.timeout_s = 0.5

    def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        with Plain._lock:
            Plain._now += 1
            Plain.most_at_once = max(Plain.most_at_once, Plain._now)
            Plain.threads.append(threading.get_ident())
            self.calls += 1
        try:
            if self.kind == "plain-slow-once" and self.calls == 1:
                time.sleep(0.7)
            if self.kind == "plain-raise":
                raise RuntimeError("boom from a verifier")
            if self.kind == "plain-exit":
                sys.exit("the scorer gave up")
            if self.kind == "plain-base-exception":
                raise OwnBaseException("the scorer broke")
            if self.kind == "plain-hang":
                RELEASE.wait(60)
            time.sleep(0.02)  # long enough for the other problems' calls to overlap it
            return [Verdict(score=0.5) for _ in candidates]
        finally:
            with Plain._lock:
                Plain._now -= 1
                Plain._lock.notify_all()


RELEASE = threading.Event()
"""Ends every ``plain-hang`` verify still blocking."""


class _Models(Misbehaving):
    """A verifier whose ``models()`` is ``kind``: "raise", or what it returns."""

    def models(self) -> Any:
        if self.kind == "raise":
            raise RuntimeError("no model\n  configured")
        return {
            "str": "judge-model",
            "none": None,
            "ints": [1, 2],
            "one": ["judge-y"],
            "two": ["judge-y", "judge-z"],
        }[self.kind]

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        found: list[Verdict] = _verdicts("spends-unnamed", len(candidates))
        return found


class _Hanging(Misbehaving):
    """Never answers: ``hang`` within its own timeout_s, ``hang-default`` within the
    panel's; ``timeout-KIND`` has the bad timeout_s KIND."""

    @property
    def timeout_s(self) -> Any:
        if self.kind == "hang-default":
            raise AttributeError("timeout_s")  # as a verifier that sets none
        return {"hang": 0.2, "timeout-negative": -1.0, "timeout-str": "10"}[self.kind]

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        await anyio.sleep(3600)
        return []


class _OwnTimeout(Misbehaving):
    """Raises a TimeoutError of its own (its call to a scorer timed out) within moments:
    ``own-timeout`` with no timeout_s of the panel's (None), ``own-timeout-default``
    under the panel's."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        if kind == "own-timeout":
            self.timeout_s = None

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        with anyio.fail_after(0.01):
            await anyio.sleep(5)
        return []


class _Reversing(Misbehaving):
    """Reverses the candidates it is given in place (to read them last first)."""

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        assert isinstance(candidates, list)
        candidates.reverse()
        return [Verdict(score=0.5) for _ in candidates]


class _PrefersA(Misbehaving):
    """Scores the candidates that answer A 1, the others 0."""

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        return [Verdict(score=1.0 if c.answer == "A" else 0.0) for c in candidates]


class _Pick(Misbehaving):
    """Scores the candidate at place ``kind`` 1, the others 0."""

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        return [Verdict(score=float(i == int(self.kind))) for i in range(len(candidates))]


def misbehave(arg: str | None, setup: VerifierSetup) -> Any:
    if arg and arg.startswith("pick-"):
        return _Pick(arg.removeprefix("pick-"))
    if arg == "reverses":
        return _Reversing("ok")
    if arg == "prefers-a":
        return _PrefersA("ok")
    if arg and arg.startswith("plain"):
        return Plain(arg)
    if arg and arg.startswith("own-timeout"):
        return _OwnTimeout(arg)
    if arg and arg.startswith(("hang", "timeout-")):
        return _Hanging(arg)
    if arg and arg.startswith("models-"):
        return _Models(arg.removeprefix("models-"))
    return Misbehaving(arg or "ok")


def _check_arg(arg: str | None) -> None:
    if arg == "check-raises":
        raise ValueError("the check\n  exploded")


misbehave.check = _check_arg  # type: ignore[attr-defined]


class _RaisingClose(Misbehaving):
    async def aclose(self) -> None:
        raise RuntimeError("close went wrong")


class PlainClose(Misbehaving):
    closed = False

    def aclose(self) -> None:  # not async: still called
        PlainClose.closed = True


class _RaisingPrepare(PlainClose):
    """Cannot get ready before the run (say its endpoint is down); closed all the same."""

    def prepare(self) -> None:  # not async: still called
        raise RuntimeError("the scorer is\n  not up")


#: What ``brittle:checking`` verifiers did, in order: "prepared" for each prepare(),
#: "checked" for each check made through ``setup.checked``.
PREPARED: list[str] = []


class _Checking(Misbehaving):
    """Prepares as a plugin that checks a server would: the check once for every run that
    shares ``setup.checked`` (a bench's cells), whatever else it prepares per run."""

    def __init__(self, setup: VerifierSetup) -> None:
        super().__init__("ok")
        self.setup = setup

    async def prepare(self) -> None:
        PREPARED.append("prepared")

        async def check() -> str:
            PREPARED.append("checked")
            return "the server answers"

        await self.setup.checked.get("brittle:checking", check)


def brittle(arg: str | None, setup: VerifierSetup) -> Misbehaving:
    if arg == "prepare":
        return _RaisingPrepare("ok")
    if arg == "checking":
        return _Checking(setup)
    if arg == "factory":
        raise ValueError("the factory exploded")
    if arg == "close":
        return _RaisingClose("ok")
    if arg == "plain-close":
        return PlainClose("ok")
    return Misbehaving("ok")


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``misbehave:KIND`` and ``brittle:HOW`` known verifier names for this test."""
    monkeypatch.setitem(BUILTIN_VERIFIERS, "misbehave", f"{__name__}:misbehave")
    monkeypatch.setitem(BUILTIN_VERIFIERS, "brittle", f"{__name__}:brittle")
