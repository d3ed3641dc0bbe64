"""The verifier protocol: given a problem and its candidates, a verdict per candidate.

A verifier is any object with ``async verify(problem, candidates) -> list[Verdict]``
(and optionally ``async aclose()``). Scores are floats where higher means more likely
right, by convention in [0, 1]; a verdict that could not be reached has ``score=None``
and says why in ``error``: the run goes on without it. A verdict with an error has
failed, whatever its score. Verifiers never see the gold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.pricing import Price
from thinktree.problems import Problem


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
    None or ``error`` gives a reason."""

    score: float | None
    rationale: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    @classmethod
    def failed(
        cls,
        reason: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> Verdict:
        """No score, with the reason; what reaching it spent still counts."""
        return cls(
            score=None,
            error=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
        )


@runtime_checkable
class Verifier(Protocol):
    """Scores candidates; returns one verdict per candidate, in order."""

    async def verify(
        self, problem: Problem, candidates: Sequence[CandidateView]
    ) -> list[Verdict]: ...


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


def cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    return None if price is None else price.cost(prompt_tokens, completion_tokens)
