"""The verifiers of a run, scoring each problem's candidates as nodes and events.

For each verifier and each candidate that answers, a verdict node (kind ``verdict``) is
started under the candidate before the verifier runs and finished (or failed, with the
reason) after; a :class:`CandidateScored` event carries the score. A verifier that
raises, or returns what is not a verdict (a score that is not a finite number, a token
count that is not a count, …), fails its verdicts with a one-line reason; the run goes on.
A verdict that carries an error has failed, whatever score it also carries. A ``verify``
written as a plain ``def`` (a model's forward pass, say) runs in a thread of its own, one
call at a time for each verifier, so it may block without holding up the run.
A candidate's combined score is the mean of its verifiers' valid scores; one whose every
verdict failed has none (None) and ranks below every scored candidate. Where the run's
limits cut or refused a verifier's call (see :class:`~thinktree.verifiers.base.Spending`),
the problem's pool says so: the problem was stopped by the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import math
import numbers
import statistics
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import anyio
import structlog

from thinktree.agents.solver import Candidate, Solver
from thinktree.errors import ConfigError, RunStopping, ThinktreeError
from thinktree.grading import grade
from thinktree.orchestrator.events import (
    CandidateScored,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
)
from thinktree.orchestrator.ledger import Budget
from thinktree.pricing import Price
from thinktree.problems import Problem
from thinktree.verifiers.base import CandidateView, Spending, Verdict
from thinktree.verifiers.registry import NamedVerifier

log = structlog.get_logger(__name__)

VERIFY_TIMEOUT_S = 600.0
"""How long one ``verify`` call of a verifier that sets no ``timeout_s`` may take."""
LARGEST = 1e300
"""The largest score or cost a verdict may give: the sums of a run's stay finite."""
MOST_TOKENS = 10**12
"""The most tokens a verdict may say it spent: the sums of a run's fit its store."""


class VerifierPanel:
    """Runs every verifier of a run on one problem's candidates at a time."""

    def __init__(
        self,
        verifiers: Sequence[NamedVerifier],
        spending: Spending | None = None,
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self.verifiers = list(verifiers)
        self.spending = spending
        self.prices = dict(prices or {})
        """The run's prices, which price a verdict's tokens where it gave no cost."""
        self._models: dict[str, list[str]] | None = None  # each verifier's, once prepared
        self._seen: set[str] = set()  # the models verdicts named
        self._turns: dict[str, anyio.Lock] = {}  # a plain verify's: one call at a time
        self._ended: dict[str, anyio.Event] = {}  # set once its last call's thread ended

    async def prepare(self) -> None:
        """Run every verifier's ``prepare`` (async or not) where it has one, before the run
        starts: a judge probes its own endpoint there, as the run probes its own, so the
        probe comes before the run's limits and a failing one stops the run before its
        folder exists. An error there is a one-line :class:`ConfigError`."""
        for named in self.verifiers:
            _check_timeout(named)
            prepare = getattr(named.verifier, "prepare", None)
            if prepare is None:
                continue
            try:
                preparing = prepare()
                if inspect.isawaitable(preparing):
                    await preparing
            except ThinktreeError:
                raise
            except Exception as exc:  # a plugin's bug is the user's to fix, in one line
                detail = " ".join(str(exc).split()) or type(exc).__name__
                reason = f"verifier {named.name} could not be prepared: {detail}"
                raise ConfigError(reason) from None
        self._models = {named.name: _models(named) for named in self.verifiers}

    def models(self) -> set[str]:
        """The models the verifiers' calls are priced by, where a prepared verifier names
        them (its ``models()``, as the built-in judges and scorers have), and those its
        verdicts named so far."""
        declared = {model for named in self.verifiers for model in self._declared(named)}
        return declared | self._seen

    async def aclose(self) -> None:
        """Close every verifier that has ``aclose`` (async or not); a failure is logged.

        The run's calls are done by then: a verifier that cannot close must not take
        the finished run with it.
        """
        for named in self.verifiers:
            close = getattr(named.verifier, "aclose", None)
            if close is None:
                continue
            try:
                closing = close()
                if inspect.isawaitable(closing):
                    await closing
            except Exception as exc:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                log.warning("verifier failed to close", verifier=named.name, error=detail)

    async def score(
        self, solver: Solver, candidates: Sequence[Candidate], pool: Budget | None = None
    ) -> list[float | None]:
        """Each candidate's combined score (None for candidates that abstain); ``pool``, the
        problem's, says so where a run limit cut or refused a verifier's call."""
        try:
            return await self._score(solver, candidates)
        finally:
            stopped = None
            if self.spending is not None:
                stopped = self.spending.stopped.pop(solver.problem.id, None)
            if stopped is not None and pool is not None:
                pool.note_run_cut(stopped)

    async def _score(self, solver: Solver, candidates: Sequence[Candidate]) -> list[float | None]:
        answering = [i for i, c in enumerate(candidates) if c.answer is not None]
        views = [_view(candidates[i]) for i in answering]
        per_candidate: dict[int, list[float]] = {i: [] for i in answering}
        if views:
            for named in self.verifiers:
                verdicts = await self._run(solver, named, views)
                for i, verdict in zip(answering, verdicts, strict=True):
                    if verdict.score is not None:
                        per_candidate[i].append(verdict.score)
        out: list[float | None] = [None] * len(candidates)
        for i, scores in per_candidate.items():
            out[i] = statistics.fmean(scores) if scores else None  # every verdict failed
        return out

    async def _run(
        self, solver: Solver, named: NamedVerifier, views: list[CandidateView]
    ) -> list[Verdict]:
        """Run one verifier; its verdicts, each valid or failed with the reason."""
        bus, problem = solver.bus, solver.problem
        ids = [f"{v.node_id}/verdict:{named.name}" for v in views]
        for view, node_id in zip(views, ids, strict=True):
            await bus.emit(
                NodeStarted(
                    node_id=node_id,
                    problem_id=problem.id,
                    parent_id=view.node_id,
                    kind=NodeKind.VERDICT,
                    label=named.name,
                )
            )
        try:
            found = await self._verify(named, problem, views)
            if len(found) != len(views):
                raise ValueError(f"returned {len(found)} verdicts for {len(views)} candidates")
        except (anyio.get_cancelled_exc_class(), RunStopping):  # the run stops: so does this
            with anyio.CancelScope(shield=True):
                for node_id in ids:
                    await bus.emit(NodeFailed(node_id=node_id, error="cancelled: the run stopped"))
            raise
        except _TimedOut as late:
            reason = (
                f"verifier {named.name} took longer than {late.timeout:g} s on "
                f"{len(views)} candidates; give it a longer timeout_s (None: no limit)"
            )
            log.warning("verifier failed", verifier=named.name, problem=problem.id, error=reason)
            found = [Verdict.failed(reason) for _ in views]
        except BaseException as exc:  # a verifier's failure fails its verdicts, not the run:
            # a sys.exit() or an exception of its own outside Exception in a plugin's code too
            if _stops_the_run(exc):
                raise
            detail = (
                f"it called sys.exit({exc.code!r})"
                if isinstance(exc, SystemExit)
                else " ".join(str(exc).split()) or type(exc).__name__
            )
            reason = (
                detail
                if isinstance(exc, _NotVerdicts | _StillRunning)
                else f"verifier {named.name} failed: {detail}"
            )
            log.warning("verifier failed", verifier=named.name, problem=problem.id, error=reason)
            found = [Verdict.failed(reason) for _ in views]
        checked = [_checked(named.name, verdict) for verdict in found]
        broke = [  # what it returned broke the protocol (not a verdict it failed itself)
            after.error
            for before, after in zip(found, checked, strict=True)
            if after.error is not None and not (isinstance(before, Verdict) and before.error)
        ]
        if broke:  # said once for the call, as a verifier that raises is
            log.warning("verifier failed", verifier=named.name, problem=problem.id, error=broke[0])
        verdicts = [self._priced(named, verdict) for verdict in checked]
        for view, node_id, verdict in zip(views, ids, verdicts, strict=True):
            score = verdict.score
            error = verdict.error
            if score is None:
                await bus.emit(NodeFailed(node_id=node_id, error=error or "no score"))
            else:
                await bus.emit(
                    NodeFinished(
                        node_id=node_id,
                        text=verdict.rationale,
                        finish_reason=None,
                        prompt_tokens=verdict.prompt_tokens,
                        completion_tokens=verdict.completion_tokens,
                    )
                )
            await bus.emit(
                CandidateScored(
                    problem_id=problem.id,
                    node_id=node_id,
                    candidate_node=view.node_id,
                    verifier=named.name,
                    score=score,
                    answer=view.answer,
                    correct=grade(view.answer, problem),
                    rationale=verdict.rationale,
                    error=None if score is not None else (error or "no score"),
                    prompt_tokens=verdict.prompt_tokens,
                    completion_tokens=verdict.completion_tokens,
                    cost_usd=verdict.cost_usd,
                    model=verdict.model,
                )
            )
        return verdicts

    def _priced(self, named: NamedVerifier, verdict: Verdict) -> Verdict:
        """``verdict`` with its model (the verifier's one model where it names none) and,
        where it spent tokens at no cost it gave, their cost at that model's price."""
        model = verdict.model
        if model is None:
            models = self._declared(named)
            model = models[0] if len(models) == 1 else None
        cost = verdict.cost_usd
        price = self.prices.get(model) if model is not None else None
        if (
            cost is None
            and price is not None
            and (verdict.prompt_tokens or verdict.completion_tokens)
        ):
            cost = price.cost(verdict.prompt_tokens, verdict.completion_tokens)
        if model is not None:
            self._seen.add(model)
        return dataclasses.replace(verdict, model=model, cost_usd=cost)

    def _declared(self, named: NamedVerifier) -> list[str]:
        if self._models is None:
            self._models = {n.name: _models(n) for n in self.verifiers}
        return self._models[named.name]

    async def _verify(
        self, named: NamedVerifier, problem: Problem, views: list[CandidateView]
    ) -> list[object]:
        """What ``verify`` returned within its timeout, as a list (a ValueError says how
        it is not one).

        A plain ``def verify`` runs in a thread of its own, once the verifier's call before
        it has ended, even one that timed out and was left running: never two at once. It
        waits for that one at most its timeout, and its own timeout counts from its start.
        """
        verify = named.verifier.verify
        call = functools.partial(verify, problem, list(views))  # its own: it may reorder it
        timeout = _timeout(named)
        if inspect.iscoroutinefunction(verify):
            with _within(timeout):
                return _as_list(named, await cast("Awaitable[object]", call()))
        async with self._turns.setdefault(named.name, anyio.Lock()):
            before = self._ended.get(named.name)
            if before is not None and not before.is_set():  # one that timed out still runs
                with anyio.move_on_after(timeout):
                    await before.wait()
                if not before.is_set():
                    raise _StillRunning(
                        f"a call of verifier {named.name} that timed out was still running "
                        f"{timeout:g} s later, so this one could not start; give it a longer "
                        "timeout_s (None: no limit)"
                    )
            ended = self._ended[named.name] = anyio.Event()
            with _within(timeout):
                found = await _in_own_thread(call, ended.set)
                if inspect.isawaitable(found):  # an async verify that does not look like one
                    found = await found
        return _as_list(named, found)


async def _in_own_thread(call: Callable[[], Any], ended: Callable[[], object]) -> Any:
    """What ``call()`` returns (or raises), run in a daemon thread of its own; ``ended()``
    is called on the loop once the thread is done, whether anyone still waits or not.

    Cancelled, or timed out, the call is left to finish in the background and what it
    returns is dropped: a plugin's blocking code cannot be interrupted, and a daemon
    thread does not keep the process from exiting after the run."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()  # its log lines carry the run's bound fields

    def settle(value: Any, error: BaseException | None) -> None:
        ended()
        if done.done():  # cancelled: nobody waits for it
            return
        if error is None:
            done.set_result(value)
        else:
            done.set_exception(error)

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(call)
        except BaseException as exc:  # handed over to the loop, as it is
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: the run ended without it
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name="thinktree verifier", daemon=True).start()
    return await done


def _as_list(named: NamedVerifier, found: object) -> list[object]:
    """What ``verify`` returned, as a list; a ValueError says how it is not one."""
    if found is None or isinstance(found, str | bytes) or not isinstance(found, Iterable):
        kind = "None" if found is None else f"a {type(found).__name__}"
        raise _NotVerdicts(f"verifier {named.name} returned {kind}, not a list of verdicts")
    return list(found)


def _models(named: NamedVerifier) -> list[str]:
    """The models ``named`` says its calls are priced by (none without ``models()``); a
    one-line ConfigError where ``models()`` raises or gives what is not a list of names."""
    models = getattr(named.verifier, "models", None)
    if not callable(models):
        return []
    try:
        found = models()
    except ThinktreeError:
        raise
    except Exception as exc:  # a plugin's bug is the user's to fix, in one line
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"verifier {named.name} could not name its models: {detail}") from None
    if isinstance(found, Iterable) and not isinstance(found, str | bytes):
        found = list(found)
        if all(isinstance(model, str) for model in found):
            return found
    raise ConfigError(
        f"verifier {named.name} gave models() {found!r} ({type(found).__name__}); "
        "return a list of model names"
    )


def _check_timeout(named: NamedVerifier) -> None:
    """A one-line ConfigError where the verifier's ``timeout_s`` is not None or seconds."""
    timeout = _timeout(named)
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ConfigError(
            f"verifier {named.name} has timeout_s {timeout!r}; give seconds above 0, "
            "or None for no limit"
        )


def _timeout(named: NamedVerifier) -> float | None:
    """How long one ``verify`` may take: the verifier's ``timeout_s`` where it has one
    (None: no limit, as for the built-ins, whose model calls have their own), else
    :data:`VERIFY_TIMEOUT_S`."""
    found: float | None = getattr(named.verifier, "timeout_s", VERIFY_TIMEOUT_S)
    return found


class _TimedOut(Exception):
    """A verifier's call ran past its ``timeout_s`` (not a TimeoutError of its own)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout


@contextlib.contextmanager
def _within(timeout: float | None) -> Iterator[None]:
    """``anyio.fail_after(timeout)``, whose own timeout raises :class:`_TimedOut`: a
    TimeoutError the verifier raised itself (its own call to a server timing out) is a
    failure of its own, not one of taking too long."""
    try:
        with anyio.fail_after(timeout) as scope:
            yield
    except TimeoutError:
        if timeout is None or not scope.cancel_called:
            raise
        raise _TimedOut(timeout) from None


class _NotVerdicts(ValueError):
    """A verifier's ``verify`` broke the protocol: the message says how, whole."""


class _StillRunning(RuntimeError):
    """A plain ``verify``'s call that timed out kept the next from starting: the message
    says so, whole."""


def _view(c: Candidate) -> CandidateView:
    return CandidateView(
        node_id=c.node_id,
        answer=c.answer,
        text=c.text,
        reasoning_tokens=c.reasoning_tokens,
        revisions=c.revisions,
        forced=c.forced,
    )


def _stops_the_run(exc: BaseException) -> bool:
    """Whether ``exc`` (or one in its group) is the run stopping, not the verifier failing:
    a cancellation, Ctrl-C, a limit that stops the run, or a generator closed."""
    stops = (anyio.get_cancelled_exc_class(), KeyboardInterrupt, GeneratorExit, RunStopping)
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, stops)) is not None
    return isinstance(exc, stops)


def _checked(name: str, verdict: object) -> Verdict:
    """``verdict`` with its fields as the protocol says, or a failed one saying what is wrong.

    Anything else would crash the vote, the metrics or the run store far from its cause.
    """
    if not isinstance(verdict, Verdict):
        return Verdict.failed(f"verifier {name} returned a {type(verdict).__name__}, not a Verdict")

    def bad(what: str, value: object) -> Verdict:
        return Verdict.failed(f"verifier {name} gave {what} {value!r} ({type(value).__name__})")

    score, cost = verdict.score, verdict.cost_usd
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            return bad("a score that is not a number:", score)
        score = float(score)
        if not math.isfinite(score):
            return Verdict.failed(f"verifier {name} gave a non-finite score ({score})")
        if not 0.0 <= score <= 1.0:  # votes add scores up: a negative one would count against
            return Verdict.failed(
                f"verifier {name} gave score {score:g}, outside [0, 1]; scale its scores into "
                "[0, 1] (a raw reward through a sigmoid, say)"
            )
    counts = (verdict.prompt_tokens, verdict.completion_tokens)
    for field, count in zip(("prompt_tokens", "completion_tokens"), counts, strict=True):
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            return bad(f"{field} that is not a count:", count)
        if count > MOST_TOKENS:
            return Verdict.failed(
                f"verifier {name} gave {field} {count}, more than any call spends"
            )
    tokens = (int(counts[0]), int(counts[1]))  # a numpy integer is a count too
    if cost is not None:
        if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
            return bad("cost_usd that is not a number:", cost)
        cost = float(cost)
        if not math.isfinite(cost) or not 0 <= cost <= LARGEST:
            return bad("cost_usd that is not a finite amount:", cost)

    def failed(reason: str, model: str | None = None) -> Verdict:  # what was spent counts
        return Verdict.failed(
            reason, prompt_tokens=tokens[0], completion_tokens=tokens[1], cost_usd=cost, model=model
        )

    model = verdict.model
    if model is not None and (not isinstance(model, str) or not model.strip()):
        return failed(
            f"verifier {name} gave a model that is not a name: {model!r} ({type(model).__name__})"
        )
    if not isinstance(verdict.rationale, str):
        return failed(f"verifier {name} gave a rationale that is not text")
    if verdict.error is not None and not isinstance(verdict.error, str):
        return failed(f"verifier {name} gave an error that is not text")
    error = " ".join((verdict.error or "").split())  # one line, as every error
    if score is None or error:  # failed by the verifier itself, whatever it scored
        return failed(error or "no score", model)
    return Verdict(
        score=score,
        rationale=verdict.rationale,
        error=None,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        cost_usd=cost,
        model=model,
    )
