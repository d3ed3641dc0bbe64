"""The four scaling modes by name, built from the run's settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass

from thinktree._numbers import LARGEST_SETTING
from thinktree.agents.auto import Auto
from thinktree.agents.strategies import BudgetForcing, Parallel, Sequential, Strategy, hybrid
from thinktree.errors import ConfigError

MODES = ("budget", "sequential", "parallel", "hybrid", "adaptive", "auto")
DEFAULT_AGGREGATE = {
    "budget": "majority",
    "sequential": "majority",
    "parallel": "shortest-majority",
    "hybrid": "shortest-majority",
    "adaptive": "majority",  # the vote its stopping rule decides
    "auto": "shortest-majority",
}

#: The built-in modes that read each mode option (CLI spelling); every one of them reads
#: ``--budget`` and ``--answer-tokens``. A plugin's mode gets all of them.
USED_BY: dict[str, tuple[str, ...]] = {
    "n": ("parallel", "hybrid", "adaptive", "auto"),
    "steps": ("sequential", "hybrid", "auto"),
    "wave": ("adaptive",),
    "stop-confidence": ("adaptive",),
    "total-budget": ("hybrid",),
    "min-thinking": ("budget", "parallel", "adaptive"),
    # budget and sequential end with one candidate a problem: every vote elects it
    "aggregate": ("parallel", "hybrid", "adaptive", "auto"),
}

#: ``--budget`` where none is given: thinking tokens (budget, parallel, adaptive), tokens
#: per step (sequential, hybrid), or what auto's pilot and the mode it picks start from.
DEFAULT_BUDGET = {
    "budget": 1024,
    "sequential": 512,
    "parallel": 1024,
    "hybrid": 512,
    "adaptive": 1024,
    "auto": 512,
}


@dataclass(frozen=True, slots=True)
class ModeSettings:
    """The knobs of every mode; each mode reads the ones it needs."""

    mode: str = "budget"
    budget: int | None = None  # thinking tokens (budget, parallel) or tokens per step
    min_thinking: int = 0
    answer_tokens: int = 64
    n: int = 4
    steps: int = 2
    total_budget: int | None = None
    wave: int = 4  # adaptive: samples per wave
    confidence: float = 0.95  # adaptive: stop once P(the full vote elects the leader) reaches it


def with_default_budget(s: ModeSettings) -> ModeSettings:
    """``s`` with the budget its mode takes where none is given (:data:`DEFAULT_BUDGET`):
    what a run records is what it ran under. A plugin's mode, and hybrid under a
    ``--total-budget`` (which alone sets its budget), keep none."""
    if s.budget is not None or s.mode not in DEFAULT_BUDGET:
        return s
    if s.mode == "hybrid" and s.total_budget is not None:
        return s
    return dataclasses.replace(s, budget=DEFAULT_BUDGET[s.mode])


def check_given(s: ModeSettings, given: Collection[str]) -> None:
    """A one-line ConfigError for an option given explicitly (``given``, CLI spelling) that
    ``s.mode`` would ignore, or that breaks a rule only an explicit value can break.

    Defaults are never refused (an adaptive run's default ``--wave`` shrinks to a smaller
    ``--n``); a bench's ``[run]`` table, which sets options for several modes at once, does
    not come here (a bench checks only :func:`check_wave`, and runs the cells of a grid that
    differ only in what their mode does not read, :func:`unread`, once).
    """
    for option in unread(s.mode, given):
        if option in USED_BY:
            raise ConfigError(
                f"--{option} is not used in mode '{s.mode}'; leave it out (the modes that "
                f"use it: {', '.join(USED_BY[option])})"
            )
        raise ConfigError(
            "--budget is not used in mode 'hybrid' when --total-budget is given (it only "
            "sets the total, as --budget × --n × --steps); give one of them"
        )
    if "wave" in given:
        check_wave(s)


def unread(mode: str, given: Collection[str]) -> list[str]:
    """The options of ``given`` (CLI spelling, without ``--``) that ``mode`` does not read:
    those its :data:`USED_BY` entry leaves it out of, and ``budget`` in mode ``hybrid``
    when ``total-budget`` is given too (it only sets the total). A plugin's mode may read
    any of them: none is unread there."""
    if mode not in MODES:
        return []
    found = [o for o in given if o in USED_BY and mode not in USED_BY[o]]
    if mode == "hybrid" and "budget" in given and "total-budget" in given:
        found.append("budget")
    return found


def check_wave(s: ModeSettings, flag: str = "--") -> None:
    """A one-line ConfigError for an adaptive run's wave outside 1 to its n, for a wave
    given explicitly (a default one shrinks to a smaller n); ``flag`` prefixes the names."""
    if s.mode == "adaptive" and not 0 < s.wave <= s.n:
        raise ConfigError(f"{flag}wave must be between 1 and {flag}n ({s.n}), not {s.wave}")


MOST_SAMPLES = 10_000
"""The most samples a problem may ask for: every branch is set up before the first call,
so a slip of the keyboard (``--n 100000000``) would fill the machine's memory."""


def build_strategy(s: ModeSettings, aggregate: str | None = None) -> Strategy:
    """The strategy for ``s.mode``; a one-line ConfigError for any bad knob. ``aggregate``:
    the run's voting rule (default: the mode's), which ``adaptive``'s stop rules decide."""
    if s.n > MOST_SAMPLES:
        raise ConfigError(f"--n must be at most {MOST_SAMPLES:,} samples per problem, not {s.n}")
    for name, value in (
        ("n", s.n),
        ("steps", s.steps),
        ("wave", s.wave),
        ("budget", s.budget),
        ("total-budget", s.total_budget),
        ("min-thinking", s.min_thinking),
        ("answer-tokens", s.answer_tokens),
    ):
        if value is not None and abs(value) > LARGEST_SETTING:
            bound = f"at most {LARGEST_SETTING}" if value > 0 else "a positive number"
            raise ConfigError(f"--{name} must be {bound}, not {value}")
    strategy = _strategy(s, aggregate or DEFAULT_AGGREGATE.get(s.mode, "majority"))
    allowed = strategy.allowed_tokens()
    if allowed > LARGEST_SETTING:
        raise ConfigError(
            f"mode '{s.mode}' may spend {allowed} tokens on one problem with these settings, "
            f"more than the {LARGEST_SETTING} a run can hold; lower --budget, --n or --steps"
        )
    return strategy


def _strategy(s: ModeSettings, aggregate: str) -> Strategy:
    if s.mode not in MODES:
        from thinktree.verifiers.registry import plugin_strategy, strategy_names

        plugin = plugin_strategy(s.mode)
        if plugin is None:
            choices = ", ".join([*MODES, *strategy_names()])
            raise ConfigError(f"unknown mode '{s.mode}'; choose one of: {choices}")
        built: Strategy = plugin(s)
        return built
    for name, value in (("n", s.n), ("steps", s.steps), ("answer-tokens", s.answer_tokens)):
        if value <= 0:
            raise ConfigError(f"--{name} must be a positive number, not {value}")
    if s.budget is not None and s.budget <= 0:
        raise ConfigError(f"--budget must be a positive number of tokens, not {s.budget}")
    if s.total_budget is not None and s.total_budget <= 0:
        raise ConfigError(
            f"--total-budget must be a positive number of tokens, not {s.total_budget}"
        )
    if s.min_thinking < 0:
        raise ConfigError(f"--min-thinking must be zero or more, not {s.min_thinking}")
    budget = s.budget or DEFAULT_BUDGET.get(s.mode, DEFAULT_BUDGET["hybrid"])
    if s.mode == "budget":
        return BudgetForcing(
            budget=budget, min_thinking=s.min_thinking, answer_tokens=s.answer_tokens
        )
    if s.mode == "sequential":
        return Sequential(steps=s.steps, step_tokens=budget, answer_tokens=s.answer_tokens)
    if s.mode == "parallel":
        inner = BudgetForcing(
            budget=budget, min_thinking=s.min_thinking, answer_tokens=s.answer_tokens
        )
        return Parallel(n=s.n, inner=inner)
    if s.mode == "adaptive":
        from thinktree.agents.adaptive import COUNTED_RULES, Adaptive

        if aggregate not in COUNTED_RULES:
            rules = ", ".join(COUNTED_RULES)
            raise ConfigError(
                f"--aggregate {aggregate} is not a count of votes, which is what adaptive "
                f"stops on (samples it never draws could change a {aggregate} vote); use "
                f"{rules}, or --mode parallel"
            )
        inner = BudgetForcing(
            budget=budget, min_thinking=s.min_thinking, answer_tokens=s.answer_tokens
        )
        return Adaptive(
            n=s.n,
            wave=min(s.wave, s.n),
            confidence=s.confidence,
            inner=inner,
            ties_to_first=COUNTED_RULES[aggregate],
        )
    if s.mode == "auto":
        return Auto(budget=budget, n=s.n, steps=s.steps, answer_tokens=s.answer_tokens)
    total = s.total_budget or budget * s.n * s.steps
    return hybrid(s.n, s.steps, total, answer_tokens=s.answer_tokens)
