"""The verifier protocol: given a problem and its candidates, a verdict per candidate.

A verifier is any object with ``verify(problem, candidates) -> list[Verdict]``, async or
a plain ``def`` (run in a thread of its own, so it may block), and optionally
``aclose()``, ``models()`` (the models its calls are priced by, whose prices its run
records) and ``timeout_s`` (how long one ``verify`` may take, None for no limit). Scores
are floats in [0, 1] where higher means more likely right (votes add them up); a verdict that
could not be reached has ``score=None`` and says why in ``error``: the run goes on
without it. A verdict with an error has failed, whatever its score. Verifiers never see
the gold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import structlog

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import Completion, EndpointClient, EndpointConfig
from thinktree.errors import ConfigError, RunLimitReached
from thinktree.orchestrator.call_cache import NotRecorded, only_recorded
from thinktree.orchestrator.ledger import Budget, LimitHeld, RecordedCalls, token_cut
from thinktree.pricing import Bill, MoneyLimit, Price, prompt_bound
from thinktree.problems import Problem

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CandidateView:
    """What a verifier sees of one candidate."""

    node_id: str
    answer: str | None
    text: str
    reasoning_tokens: int
    revisions: int = 0
    forced: bool = False


@dataclass(slots=True)
class Verdict:
    """One candidate's score, rationale and cost; failed (not scored) where ``score`` is
    None or ``error`` gives a reason. ``model``: the model its tokens were spent on, which
    prices them (None: the one its verifier's ``models()`` names, where it names one)."""

    score: float | None
    rationale: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    model: str | None = None

    @classmethod
    def failed(
        cls,
        reason: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float | None = None,
        model: str | None = None,
    ) -> Verdict:
        """No score, with the reason; what reaching it spent still counts."""
        return cls(
            score=None,
            error=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            model=model,
        )


@runtime_checkable
class Verifier(Protocol):
    """Scores candidates; returns one verdict per candidate, in order."""

    def verify(
        self, problem: Problem, candidates: Sequence[CandidateView]
    ) -> list[Verdict] | Awaitable[list[Verdict]]: ...


@dataclass(slots=True)
class Metered:
    """One verifier call under the run's limits: send it with ``max_tokens`` (its grant,
    perhaps less than asked) and :meth:`settle` it with its usage once it came back.
    ``cut``: the marks the limits that cut it made, ``("run-cut", reason)``, kept with
    the call (see :class:`~thinktree.orchestrator.call_cache.verifier_call`)."""

    max_tokens: int
    tokens: Budget
    bill: Bill | None
    settled: bool = False
    cut: tuple[tuple[str, str], ...] = ()

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        if not self.settled:
            self.settled = True
            if self.max_tokens:
                self.tokens.commit(self.max_tokens, completion_tokens)
            if self.bill is not None:
                self.bill.settle(prompt_tokens, completion_tokens)

    def release(self) -> None:
        """The call failed or was never sent: it counts at nothing."""
        if not self.settled:
            self.settled = True
            if self.max_tokens:
                self.tokens.commit(self.max_tokens, 0)
            if self.bill is not None:
                self.bill.release()


@dataclass(slots=True)
class Spending:
    """The run's token and money limits, which verifiers' model calls count under too.

    A call (:meth:`call`) reserves its ``max_tokens`` from the run's tokens and holds its
    worst-case cost (at its model's price) as the solver's calls do, waiting while calls
    under way hold what it needs. Where a limit cuts it or refuses it, the problem it was
    made for says so (:attr:`stopped`, read by the panel): the run reads 'stopped', and a
    resume under a higher limit asks it again. A resumed run reads a call it recorded
    back first (:meth:`read_back`), at its recorded grant, whatever the limits have left.
    """

    tokens: Budget
    money: MoneyLimit | None = None
    stopped: dict[str, str] = field(default_factory=dict)  # problem id → the limit's reason
    _unpriced: set[str] = field(default_factory=set)
    _refused: set[str] = field(default_factory=set)  # problems whose reason is a refusal
    recorded: RecordedCalls | None = None
    """A resumed run's recorded calls, held under its limits until they are read back."""

    async def read_back(
        self,
        problem_id: str,
        key: str,
        max_tokens: int,
        send: Callable[[int], Awaitable[Completion]],
    ) -> Completion | None:
        """The call of ``key`` asking for ``max_tokens``, as this run recorded it before (a
        resumed run), read back as the solver's are: its tokens and cost were held for it
        (:class:`~thinktree.orchestrator.ledger.RecordedCalls`), so it is never cut or
        refused now. ``send(grant)`` makes the call with that ``max_tokens``; here it only
        looks it up: at the whole ask, and under the limits it was made under, at the
        grant one of them cut it to (the problem then says that limit stopped it again).
        None when none is found: the hold goes, and the call asks as a new one does.
        """
        recorded = self.recorded
        if not recorded:
            return None
        for grant in recorded.grants(key, max_tokens):
            try:
                with only_recorded():
                    found = await send(grant)
            except NotRecorded:
                continue
            marks = recorded.release(key)  # its hold becomes what it spent, at once
            self.tokens.reserve_recorded(grant)
            self.tokens.commit(grant, found.completion_tokens)
            if self.money is not None:
                self.money.read_back(found.prompt_tokens, found.completion_tokens)
            if grant < max_tokens:
                for kind, reason in marks:
                    if kind == "run-cut":
                        self._stop(problem_id, reason)
            return found
        recorded.release(key)
        return None

    @asynccontextmanager
    async def call(
        self,
        problem_id: str,
        model: str,
        price: Price | None,
        texts: Sequence[str],
        max_tokens: int,
    ) -> AsyncIterator[Metered]:
        """A call of ``model`` on a prompt of ``texts`` (its messages) asking for
        ``max_tokens`` completion tokens (0: a scorer's, prompt only), made for the
        problem ``problem_id``; settled at nothing unless :meth:`Metered.settle` says."""
        grant = 0
        if max_tokens > 0:
            while True:
                try:
                    grant = self.tokens.reserve(max_tokens)
                    break
                except LimitHeld as held:
                    await held.wait()
                except RunLimitReached as exc:
                    self._stop(problem_id, str(exc), refused=True)
                    raise
        metered = Metered(grant, self.tokens, None)
        if grant < max_tokens:
            metered.cut = (("run-cut", token_cut(self.tokens.limit)),)
            self._stop(problem_id, token_cut(self.tokens.limit))
        try:
            if self.money is not None and price is None and model not in self._unpriced:
                self._unpriced.add(model)
                log.warning(
                    "no price for a verifier's model: --max-cost counts its calls at nothing",
                    model=model,
                )
            if self.money is not None and price is not None:
                bound = prompt_bound(texts, len(texts))
                try:
                    bill = await self.money.hold(bound, grant, price=price, least=min(grant, 1))
                except RunLimitReached as exc:
                    self._stop(problem_id, str(exc), refused=True)
                    raise
                metered.bill = bill
                if bill.max_tokens < grant:
                    self.tokens.commit(grant - bill.max_tokens, 0)  # gives the rest back
                    metered.max_tokens = bill.max_tokens
                    metered.cut += (("run-cut", self.money.cut_reason),)
                    self._stop(problem_id, self.money.cut_reason)
            yield metered
        finally:
            metered.release()

    def _stop(self, problem_id: str, reason: str, *, refused: bool = False) -> None:
        """Say a limit (``reason``) cut or refused a call for the problem: the first that
        cut one says so, else the first that refused one. A limit cuts calls while it has
        some left and refuses them once it has none, so a run meets the cuts first; a
        resumed run reads a cut call back (:meth:`read_back`) only once it has looked it
        up, after calls refused meanwhile, and still says what the first run said."""
        if problem_id not in self.stopped:
            self.stopped[problem_id] = reason
            if refused:
                self._refused.add(problem_id)
            else:
                self._refused.discard(problem_id)
        elif not refused and problem_id in self._refused:
            self.stopped[problem_id] = reason
            self._refused.discard(problem_id)


class CheckedOnce:
    """What verifiers' checks before a run found (a judge's endpoint probed, a scorer
    tried), for every run that shares this: a bench's cells in one process, each with its
    own verifiers, check an endpoint once, not once per cell. A run of its own has its own.

    What a check returns is shared by those runs: plain values (a model name, what an
    endpoint can do), never a connection, which belongs to one run's event loop.
    """

    def __init__(self) -> None:
        self._found: dict[Hashable, Any] = {}

    async def get(self, key: Hashable, check: Callable[[], Awaitable[T]]) -> T:
        """What ``check()`` found, called only when no run here found it under ``key`` (a
        check that raises is made again by the next run that asks)."""
        if key not in self._found:
            self._found[key] = await check()
        found: T = self._found[key]
        return found


@dataclass(slots=True)
class VerifierSetup:
    """What a verifier factory may use: the run's endpoint and the user's configuration."""

    client: EndpointClient
    """The run's endpoint (the default judge); shared, never closed by a verifier."""
    caps: Capabilities
    """What the run's endpoint was found to do."""
    endpoint_for: Callable[[str], EndpointConfig] = field(
        default=lambda name: EndpointConfig(name=name, base_url=name)
    )
    """A name from thinktree.toml, or a URL, as an endpoint config."""
    prices: dict[str, Price] = field(default_factory=dict)
    spending: Spending | None = None
    """The run's limits, for a verifier's model calls to count under (:meth:`Spending.call`)."""
    checked: CheckedOnce = field(default_factory=CheckedOnce)
    """Checks made before the run, kept for the other runs of a bench (:class:`CheckedOnce`)."""


VerifierFactory = Callable[[str | None, VerifierSetup], Verifier]
"""Builds a verifier from the argument after ``NAME:`` on the command line (or None)."""


def options(arg: str | None) -> dict[str, str]:
    """``key=value,key=value`` as a dict; a bare first item is returned under ``""``."""
    found: dict[str, str] = {}
    for i, item in enumerate(x for x in (arg or "").split(",") if x):
        key, eq, value = item.partition("=")
        if eq:
            found[key.strip()] = value.strip()
        elif i == 0:
            found[""] = item.strip()
        else:
            found[item.strip()] = ""
    return found


def known_options(verifier: str, arg: str | None, known: Collection[str]) -> dict[str, str]:
    """``options(arg)``, refused in one line where it holds an option ``verifier`` does not
    take (``judge,scroe=rating`` was taken as ``judge``, its default score without a word);
    ``""`` in ``known`` takes a bare first item."""
    found = options(arg)
    for key in found:
        if key not in known:
            names = ", ".join(k for k in known if k)
            what = f"option '{key}'" if key else f"bare argument '{found[key]}'"
            raise ConfigError(f"--verifier {verifier} takes no {what}; its options: {names}")
    return found


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_server(url: str) -> str:
    """``url`` as two verifiers' identities compare it: the scheme and host in lower case,
    a loopback host (``localhost``, ``127.0.0.1``, ``[::1]``) as one, the scheme's default
    port left out and no trailing slash. Anything but an http(s) URL (a pool's name) is
    kept as it is."""
    try:
        parts = urlsplit(url.rstrip("/"))
        port = parts.port
    except ValueError:
        return url.rstrip("/")
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return url.rstrip("/")
    host = "127.0.0.1" if host in _LOOPBACK else host
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    return None if price is None else price.cost(prompt_tokens, completion_tokens)
