"""Verifiers and strategies by name: the built-ins plus plugins from entry points.

A plugin package registers a verifier factory under the entry-point group
``thinktree.verifiers`` (a strategy factory under ``thinktree.strategies``); its name is
then usable as ``--verifier NAME[:ARG]`` (``--mode NAME``). A factory may carry a
``check(arg)`` attribute that validates the argument before a run starts.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import structlog

from thinktree.errors import ConfigError, ThinktreeError
from thinktree.verifiers.base import Verifier, VerifierFactory, VerifierSetup

log = structlog.get_logger(__name__)

VERIFIER_GROUP = "thinktree.verifiers"
STRATEGY_GROUP = "thinktree.strategies"

BUILTIN_VERIFIERS: dict[str, str] = {
    "judge": "thinktree.verifiers.judge:pointwise",
    "pairwise": "thinktree.verifiers.pairwise:pairwise",
    "reward": "thinktree.verifiers.reward:reward",
    "prm": "thinktree.verifiers.reward:process_reward",
    "trained": "thinktree.verifiers.trained:trained",
}


@dataclass(frozen=True, slots=True)
class NamedVerifier:
    """A verifier built from a ``NAME[:ARG]`` spec; ``name`` labels its verdicts."""

    name: str
    verifier: Verifier


def split_spec(spec: str) -> tuple[str, str | None]:
    """``NAME[:ARG]`` → (NAME, ARG or None); ``NAME,OPTIONS`` is ``NAME:OPTIONS``.

    So ``judge,score=rating`` (no endpoint, then options) is ``judge:score=rating``.
    """
    spec = spec.strip()
    colon, comma = spec.find(":"), spec.find(",")
    cut = comma if comma >= 0 and (colon < 0 or comma < colon) else colon
    if cut < 0:
        return spec, None
    return spec[:cut].strip(), spec[cut + 1 :]


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _plugins(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def _plugin(group: str, name: str) -> Any:
    """The entry point registered as ``name`` (None if none); a one-line ConfigError where
    plugins register it at different targets, one of which would win unsaid."""
    targets = {ep.value: ep for ep in entry_points(group=group) if ep.name == name}
    if len(targets) > 1:
        kind = "verifier" if group == VERIFIER_GROUP else "strategy"
        raise ConfigError(
            f"{kind} '{name}' is registered by {len(targets)} plugins "
            f"({', '.join(targets)}); uninstall one or rename its entry point"
        )
    return next(iter(targets.values()), None)


def verifier_names() -> list[str]:
    """Every verifier name this installation knows: built-ins, then plugins."""
    return [*BUILTIN_VERIFIERS, *sorted(set(_plugins(VERIFIER_GROUP)) - set(BUILTIN_VERIFIERS))]


def clashing_plugins() -> dict[str, list[str]]:
    """The verifier names plugins register at more than one target (``--verifier`` refuses
    them, see :func:`_plugin`), with their targets."""
    targets: dict[str, set[str]] = {}
    for ep in entry_points(group=VERIFIER_GROUP):
        targets.setdefault(ep.name, set()).add(ep.value)
    return {name: sorted(found) for name, found in targets.items() if len(found) > 1}


def hidden_plugins() -> dict[str, str]:
    """The verifier plugins registered under a built-in's name (never used), by name."""
    return {
        name: ep.value for name, ep in _plugins(VERIFIER_GROUP).items() if name in BUILTIN_VERIFIERS
    }


@functools.cache  # once a process: a run checks its verifiers, then builds them
def _say_hidden(name: str, plugin: str) -> None:
    log.warning(
        "a plugin's verifier is hidden by the built-in of its name; rename its entry point",
        verifier=name,
        plugin=plugin,
    )


def _factory(name: str) -> VerifierFactory:
    if name in BUILTIN_VERIFIERS:
        hidden = _plugins(VERIFIER_GROUP).get(name)
        if hidden is not None:
            _say_hidden(name, hidden.value)
        found: VerifierFactory = _load(BUILTIN_VERIFIERS[name])
        return found
    plugin = _plugin(VERIFIER_GROUP, name)
    if plugin is None:
        raise ConfigError(
            f"unknown verifier '{name}'; available: {', '.join(verifier_names())} "
            f"(plugins register under the entry-point group '{VERIFIER_GROUP}')"
        )
    try:
        loaded: VerifierFactory = plugin.load()
    except Exception as exc:  # a broken plugin is the user's to fix, in one line
        raise ConfigError(
            f"verifier plugin '{name}' ({plugin.value}) fails to load: {exc}"
        ) from None
    if not callable(loaded):
        raise ConfigError(f"verifier plugin '{name}' ({plugin.value}) is not a factory")
    return loaded


def check_verifiers(specs: tuple[str, ...] | list[str]) -> None:
    """Check every spec names a known verifier with a valid argument (one-line errors)."""
    for spec in specs:
        name, arg = split_spec(spec)
        if not name:
            raise ConfigError(f"--verifier '{spec}' names no verifier; give NAME or NAME:ARG")
    labels(specs)
    for spec in specs:
        name, arg = split_spec(spec)
        check: Callable[[str | None], None] | None = getattr(_factory(name), "check", None)
        if check is None:
            continue
        try:
            check(arg)
        except ThinktreeError:
            raise
        except Exception as exc:  # a plugin's check that raises is the user's to fix
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"verifier '{spec}' refused its argument: {detail}") from None


def build_verifiers(
    specs: tuple[str, ...] | list[str], setup: VerifierSetup
) -> list[NamedVerifier]:
    """Build every verifier named in ``specs``; its name labels its verdicts."""
    built: list[NamedVerifier] = []
    for spec, label in zip(specs, labels(specs), strict=True):
        name, arg = split_spec(spec)
        factory = _factory(name)
        try:
            verifier = factory(arg, setup)
        except ThinktreeError:
            raise
        except Exception as exc:  # a plugin's bug is the user's to fix, in one line
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"verifier '{spec}' could not be built: {detail}") from None
        if not isinstance(verifier, Verifier):
            raise ConfigError(f"verifier '{name}' has no verify(problem, candidates) method")
        built.append(NamedVerifier(name=label, verifier=verifier))
    return built


def recorded_specs(specs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``specs`` as a new run records them: a built-in's argument as its ``recorded`` says
    (``trained:FILE``'s file made absolute, so that ``run --resume`` from another folder
    finds it; its label stays the file's name)."""
    out = []
    for spec in specs:
        name, arg = split_spec(spec)
        recorded = (
            getattr(_load(BUILTIN_VERIFIERS[name]), "recorded", None)
            if name in BUILTIN_VERIFIERS and arg
            else None
        )
        out.append(spec if recorded is None else f"{name}:{recorded(arg)}")
    return tuple(out)


def labels(specs: tuple[str, ...] | list[str]) -> list[str]:
    """Each spec's label, distinct: a path argument by its file name unless two share it.

    Raises a one-line ConfigError when two specs name the same verifier.
    """
    split = [split_spec(spec) for spec in specs]
    short = [_label(name, arg) for name, arg in split]
    full = [name if arg is None else f"{name}:{arg}" for name, arg in split]
    found = [s if short.count(s) == 1 else f for s, f in zip(short, full, strict=True)]
    for i, label in enumerate(found):
        if label in found[:i]:
            first = specs[found.index(label)]
            same = "is given twice" if first == specs[i] else f"names the same as {first}"
            raise ConfigError(f"--verifier {specs[i]} {same}")
    return found


def _label(name: str, arg: str | None) -> str:
    """A short, stable label: ``NAME`` or ``NAME:ARG`` (a path argument by its file name)."""
    if arg is None:
        return name
    if "://" in arg or "/" not in arg:
        return f"{name}:{arg}"
    return f"{name}:{arg.rstrip('/').rsplit('/', 1)[-1]}"


def strategy_names() -> list[str]:
    return sorted(_plugins(STRATEGY_GROUP))


def plugin_strategy(name: str) -> Callable[[Any], Any] | None:
    """The factory a plugin registered for mode ``name`` (called with the ModeSettings)."""
    plugin = _plugin(STRATEGY_GROUP, name)
    if plugin is None:
        return None
    try:
        loaded: Callable[[Any], Any] = plugin.load()
    except Exception as exc:
        raise ConfigError(
            f"strategy plugin '{name}' ({plugin.value}) fails to load: {exc}"
        ) from None
    return loaded
