"""thinktree from Python: a run of ``thinktree run``, its options as keyword arguments.

    import thinktree

    result = thinktree.run("data.jsonl", mode="parallel", n=8)  # the embedded model
    print(result.metrics.accuracy, result.folder)

A run made here is the command's: the same checks before anything is written (a
:class:`~thinktree.errors.ThinktreeError` or :class:`~thinktree.datasets.DatasetError`
whose one-line message says what to fix), the same run folder (``thinktree watch``,
``runs``, ``report`` and ``run --resume`` take it), and the same
:class:`~thinktree.orchestrator.run.RunResult` the command prints its table from.
Nothing here configures logging: that is the calling program's to do (structlog's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import os
import re
import types
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog

from thinktree import event_loop
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings, check_given
from thinktree.config import check_endpoint, endpoint_from, load_config
from thinktree.datasets import (
    DatasetError,
    load_demo,
    load_problems,
    none_left,
    parse_problems,
    select,
)
from thinktree.errors import ConfigError, ThinktreeError
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.run import RunResult, RunSettings, execute, validate
from thinktree.pricing import prices_from_config
from thinktree.problems import Problem
from thinktree.verifiers.registry import recorded_specs

__all__ = ["MODE_OPTIONS", "Problems", "arun", "run", "run_settings"]

log = structlog.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

Problems = str | os.PathLike[str] | Iterable[Problem | Mapping[str, Any]] | None
"""A JSONL file's path, problems (or mappings in the dataset schema), or None: the demo set."""

MODE_OPTIONS = ("n", "wave", "stop_confidence", "steps", "budget", "total_budget", "min_thinking")
"""The mode options of a run (``thinktree run``'s, underscored): only those given are
checked against the mode, which refuses one it would ignore."""
_SETTING = {"stop_confidence": "confidence"}  # ModeSettings' name, where it has another


def _checked(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` with its arguments checked against its type hints first (a one-line error
    naming the argument), its errors spelling options as its arguments are spelt, and an
    error that stopped the run raised as itself, not inside the task groups' groups."""

    @functools.wraps(fn)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> T:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        hints = typing.get_type_hints(fn)
        for name, value in bound.arguments.items():
            _check_argument(name, value, hints[name])
        try:
            return await fn(*args, **kwargs)
        except (ThinktreeError, DatasetError) as exc:
            _spell_as_arguments(exc, bound.arguments)
            raise
        except ExceptionGroup as group:
            leaves = _leaves(group)
            if len(leaves) != 1:
                raise
            raise leaves[0] from None

    return checked


@_checked
async def arun(
    problems: Problems = None,
    *,
    mode: str = "budget",
    n: int | None = None,
    wave: int | None = None,
    stop_confidence: float | None = None,
    steps: int | None = None,
    budget: int | None = None,
    total_budget: int | None = None,
    min_thinking: int | None = None,
    answer_tokens: int = 64,
    aggregate: str | None = None,
    temperature: float | None = None,
    endpoint: str | EndpointConfig | None = None,
    model: str | None = None,
    engine: str = "vllm",
    config: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    seed: int = 0,
    concurrency: int = 8,
    out: str | os.PathLike[str] | None = None,
    max_tokens: int | None = None,
    max_problem_tokens: int | None = None,
    max_cost: float | None = None,
    answer_format: str = "free",
    verifiers: Sequence[str] = (),
    trace_deltas: bool = False,
    subscribers: Sequence[Subscriber] = (),
) -> RunResult:
    """Run ``problems`` as ``thinktree run`` would, and return its result.

    The options are the command's, spelt with underscores (``stop_confidence``,
    ``max_tokens``; ``verifiers`` is the repeated ``--verifier``). ``endpoint`` is a URL,
    a name from the config (``config``, else ``thinktree.toml`` in the working folder),
    ``"openai"``, an :class:`EndpointConfig`, or None: as for the command, the endpoint
    ``OPENAI_BASE_URL`` names where the environment sets it, else the embedded model (whose
    server is started for the run unless ``thinktree serve`` runs one).
    Each argument is checked against its type first (``n=2.0`` is refused, in one line),
    and an error names the arguments as they are spelt here.
    ``subscribers`` receive the run's events as the terminal view does
    (:class:`~thinktree.orchestrator.bus.Subscriber`).

    The result says how the run went: ``failed_requests()`` counts the model calls that
    failed (``thinktree run --resume FOLDER`` sends only those again) and ``stopped_by``
    names the limit that stopped it.
    """
    loaded = _problems(problems, limit=limit, offset=offset)
    config_file = None if config is None else Path(config)
    cfg = load_config(config_file)
    modes = {
        "n": n,
        "wave": wave,
        "stop_confidence": stop_confidence,
        "steps": steps,
        "budget": budget,
        "total_budget": total_budget,
        "min_thinking": min_thinking,
    }
    settings = run_settings(
        {k: v for k, v in modes.items() if v is not None},
        mode=mode,
        answer_tokens=answer_tokens,
        config=cfg,
        config_file=config_file,
        aggregate=aggregate,
        temperature=temperature,
        seed=seed,
        concurrency=concurrency,
        out=None if out is None else Path(out),
        max_run_tokens=max_tokens,
        max_problem_tokens=max_problem_tokens,
        max_cost=max_cost,
        trace_deltas=trace_deltas,
        answer_format=answer_format,
        verifiers=tuple(verifiers),
    )
    if engine not in ("vllm", "llamacpp"):
        raise ConfigError(f"unknown engine '{engine}'; choose vllm or llamacpp")
    target: EndpointConfig | None
    if isinstance(endpoint, EndpointConfig):
        target = check_endpoint(endpoint)
        if model is not None:
            target = dataclasses.replace(target, model=model)
    else:
        target = endpoint_from(endpoint, model=model, config=cfg)
    if target is not None:
        if engine != "vllm":  # as the command refuses --engine with an endpoint
            raise ConfigError(
                f"engine picks the embedded model's engine; it changes nothing for endpoint "
                f"'{target.name}': leave it out"
            )
        return await execute(loaded, target, settings, subscribers=subscribers)
    from thinktree.embedded import announced_server, endpoint_for

    async with announced_server(engine, say=lambda line: log.info(line)) as server:
        return await execute(loaded, endpoint_for(server), settings, subscribers=subscribers)


def run_settings(
    modes: Mapping[str, Any],
    *,
    mode: str,
    answer_tokens: int,
    config: dict[str, Any],
    config_file: Path | None,
    **fields: Any,
) -> RunSettings:
    """A new run's checked settings: ``modes`` holds the mode options given (of
    :data:`MODE_OPTIONS`; the others keep their defaults), ``fields`` the other
    :class:`RunSettings` fields; the config's ``[prices]`` are taken, and every value is
    checked as a run checks it (a one-line :class:`ConfigError`)."""
    if "verifiers" in fields:  # a file a verifier reads, by its absolute path
        fields["verifiers"] = recorded_specs(fields["verifiers"])
    settings = RunSettings(
        modes=ModeSettings(
            mode=mode,
            answer_tokens=answer_tokens,
            **{_SETTING.get(k, k): v for k, v in modes.items()},
        ),
        prices=prices_from_config(config),
        config=config,
        config_file=config_file,
        **fields,
    )
    given = [k.replace("_", "-") for k in modes]
    if fields.get("aggregate") is not None:
        given.append("aggregate")
    check_given(settings.modes, given)
    validate(settings)
    return settings


def _problems(given: Problems, *, limit: int | None, offset: int) -> list[Problem]:
    """The problems to run: a file's, those given (each checked as a dataset's line is),
    or the demo set's; sliced by ``offset`` and ``limit`` (a positive one)."""
    if limit is not None and limit <= 0:
        raise DatasetError(f"limit must be positive, not {limit}")
    if given is None:
        every, source = load_demo(), "the demo set"
    elif isinstance(given, (str, os.PathLike)):
        every, source = load_problems(given), os.fspath(given)
    else:
        every, source = _given_problems(given), "the problems given"
    chosen = select(every, limit=limit, offset=offset)
    if not chosen:
        raise DatasetError(none_left(source, len(every), offset, option="offset"))
    return chosen


def _given_problems(given: Iterable[Problem | Mapping[str, Any]]) -> list[Problem]:
    """Problems given in Python, each checked as a dataset's line is (ids unique too);
    an error names the problem by its place, counted from 1."""
    lines: list[str] = []
    for number, problem in enumerate(given, start=1):
        # a Problem's line holds what was given to it: one made without an answer_type
        # is refused where its answer or options say it is no free-text problem
        record = (
            problem.model_dump(mode="json", exclude_unset=True)
            if isinstance(problem, Problem)
            else problem
        )
        try:
            lines.append(json.dumps(dict(record), allow_nan=False))
        except (TypeError, ValueError) as exc:  # a value JSON has no form for
            raise DatasetError(f"problems:{number}: no JSON holds it ({exc})") from None
    if not lines:
        raise DatasetError("no problems given: give at least one (or None for the demo set)")
    return parse_problems("\n".join(lines).encode(), source="problems")


_WORDS: dict[Any, str] = {
    int: "a whole number",
    float: "a number",
    str: "text",
    bool: "True or False",
    type(None): "None",
    os.PathLike: "a path",
    Iterable: "a list of problems",
    EndpointConfig: "an EndpointConfig",
}


_PROBLEMS = "a dataset file's path, a list of problems (or of mappings) or None (the demo set)"


def _check_argument(name: str, value: Any, hint: Any) -> None:
    """A one-line error (DatasetError for ``problems``, else ConfigError) where ``value``
    is not of type ``hint``: ``n=2.0`` or ``verifiers="judge"`` would be taken apart or
    sent as they are, and fail mid-run or on resume."""
    error = DatasetError if name == "problems" else ConfigError
    if not _accepts(value, hint):
        kind = _PROBLEMS if name == "problems" else _words(hint)
        raise error(f"{name} must be {kind}, not {_shown(value)}")
    if typing.get_origin(hint) is not Sequence:
        return
    (item,) = typing.get_args(hint)
    for index, each in enumerate(value):
        if not _accepts(each, item):
            raise error(f"{name}[{index}] must be {_words(item)}, not {_shown(each)}")


def _accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (one of :func:`arun`'s; a Sequence's items are
    checked apart). A bool is no number, and a float no whole number."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, each) for each in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if hint is Subscriber:  # a protocol that isinstance cannot check
        return all(hasattr(value, part) for part in ("wants_deltas", "handle", "aclose"))
    if origin is Sequence:
        return isinstance(value, (list, tuple))
    if origin is Iterable:  # one problem, or one mapping, is not a list of them
        return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping, Problem))
    return isinstance(value, origin or hint)


def _words(hint: Any) -> str:
    """``hint`` in words: "a whole number or None"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_words(each) for each in typing.get_args(hint)]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if hint is Subscriber:
        return "a subscriber (with wants_deltas, handle and aclose)"
    origin = typing.get_origin(hint) or hint
    if origin is Sequence:
        (item,) = typing.get_args(hint)
        return "a list of subscribers" if item is Subscriber else "a list of names"
    return _WORDS.get(origin) or f"a {getattr(origin, '__name__', origin)}"


def _shown(value: Any) -> str:
    """``value`` as an error shows it: its repr if short and plain, else its type."""
    if isinstance(value, (str, bytes, int, float)):
        return f"{value!r:.60}"
    return type(value).__name__


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions inside ``group`` and inside the groups within it."""
    return [
        leaf
        for inner in group.exceptions
        for leaf in (_leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    ]


# a command's option, the word that asks for it and the placeholder of its value
_OPTION = re.compile(r"(\b(?:pass|with|another|give|use) )?--([a-z][a-z-]*)( [A-Z][A-Z_]*\b)?")


def _spell_as_arguments(exc: BaseException, arguments: Mapping[str, Any]) -> None:
    """``exc``'s message with the command's options spelt as the arguments they are here
    (``--stop-confidence`` as ``stop_confidence``, ``pass --model`` as ``pass model=``);
    a message that says which command to run (``thinktree run --resume …``) is kept."""
    if len(exc.args) != 1 or not isinstance(exc.args[0], str) or "thinktree " in exc.args[0]:
        return

    def spelt(option: re.Match[str]) -> str:
        asking, name, value = option[1] or "", option[2].replace("-", "_"), option[3]
        name = "verifiers" if name == "verifier" else name
        if name not in arguments:
            return option[0]
        if value:
            value = value.strip()
            return asking + (f"verifiers=[{value}]" if name == "verifiers" else f"{name}={value}")
        return f"{asking}{name}=" if asking else name

    exc.args = (_OPTION.sub(spelt, exc.args[0]),)


def _on_a_loop_of_its_own(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``fn`` run to its end on an event loop of its own (:func:`event_loop.run`)."""

    @functools.wraps(fn)
    def sync(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # none runs here: the run gets its own (outside this block,
            pass  # or every error of the run would print as raised while handling this one)
        else:
            raise ConfigError(
                "thinktree.run starts an event loop, and one runs here already (a "
                "notebook's, say): use `await thinktree.arun(...)` instead, with the same "
                "arguments"
            )
        return event_loop.run(lambda: fn(*args, **kwargs))

    sync.__name__ = sync.__qualname__ = "run"
    sync.__doc__ = (
        "Run ``problems`` and return the result, as :func:`arun` does, on an event loop of "
        "its own (inside one that runs already, ``await arun(...)``)."
    )
    return sync


run = _on_a_loop_of_its_own(arun)
