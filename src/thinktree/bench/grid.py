"""A bench's config: datasets × a grid of ``run`` options, expanded into cells.

```toml
[[datasets]]
path = "data/medqa.jsonl"   # relative to this file; or hub = "medqa" (needs the hub extra)
limit = 20

[grid]                      # every key is a `run` option, each with a list of values
mode = ["budget", "parallel"]
budget = [256, 1024]
endpoint = ["embedded"]     # a URL, 'embedded', or a name under [endpoints] here
perturbation = ["none", "misleading"]   # robustness (see thinktree.bench.perturb)

[run]                       # options every cell shares
seed = 0
concurrency = 8

[prices]                    # USD per million tokens, as in thinktree.toml
"gpt-4o-mini" = { prompt = 0.15, completion = 0.60 }
```

Grid and run keys map onto the fields of :class:`RunSettings` and :class:`ModeSettings`
by name, so a new ``run`` option is a valid key as soon as it exists there. Values a
cell's mode does not read make no cells of their own (:meth:`BenchConfig.cells`): above,
``mode = ["budget", "parallel"]`` with ``n = [4, 16]`` would run budget once.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktree._numbers import LARGEST_SETTING as LARGEST
from thinktree.agents.modes import ModeSettings, check_wave, unread
from thinktree.bench.perturb import NONE, PERTURBATIONS
from thinktree.config import endpoint_tables
from thinktree.errors import ConfigError
from thinktree.orchestrator.run import RunSettings, validate
from thinktree.pricing import prices_from_config

#: Keys the bench itself handles (not fields of the run's settings).
BENCH_KEYS = ("endpoint", "model", "perturbation")
#: CLI spellings whose settings field has another name.
ALIASES = {
    "max_tokens": "max_run_tokens",
    "verifier": "verifiers",
    "stop_confidence": "confidence",
}
#: Settings that a bench decides itself, never a grid.
_NOT_OPTIONS = {"modes", "out", "prices", "trace_deltas", "config", "config_file"}
_DATASET_KEYS = {"path", "hub", "split", "name", "limit", "offset"}


def _mode_fields() -> dict[str, Any]:
    return typing.get_type_hints(ModeSettings)


def _run_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(RunSettings)
    return {k: v for k, v in hints.items() if k not in _NOT_OPTIONS}


def valid_keys() -> list[str]:
    """Every key a grid or ``[run]`` table may hold, as ``thinktree run`` spells its
    option (its settings' own names for them are taken too, but not listed)."""
    spelt = {field: option for option, field in ALIASES.items()}
    names = [*BENCH_KEYS, *_mode_fields(), *_run_fields()]
    return sorted({spelt.get(n, n).replace("_", "-") for n in names})


def field_name(key: str) -> str:
    name = key.replace("-", "_")
    return ALIASES.get(name, name)


def flag_name(key: str) -> str:
    """``key`` (CLI or field spelling) as ``run``'s flag, without ``--``: ``stop-confidence``
    for ``confidence`` (the names :func:`~thinktree.agents.modes.unread` takes)."""
    name = field_name(key)
    return next((cli for cli, f in ALIASES.items() if f == name), name).replace("_", "-")


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field's type, or a one-line error saying what was expected."""
    if typing.get_origin(hint) is tuple:  # a repeatable flag: one value or a list of them
        items = value if isinstance(value, list) else [value]
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
        if not all(isinstance(v, inner) for v in items):
            raise ConfigError(
                f"{key}: expected {_describe((inner,))} or a list of them, not {value!r}"
            )
        return tuple(items)
    allowed = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, type(int | None))
        else (hint,)
    )
    if value is None and type(None) in allowed:
        return None
    if bool not in allowed and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {_describe(allowed)}, not {value!r}")
    for kind in allowed:
        if kind is float and isinstance(value, int | float):
            return float(value)
        if kind is Path and isinstance(value, str):
            return Path(value)
        if isinstance(kind, type) and isinstance(value, kind):
            return value
    if all(isinstance(k, type) and k in (int, float, str, bool, type(None), Path) for k in allowed):
        raise ConfigError(f"{key}: expected {_describe(allowed)}, not {value!r}")
    return value  # a type this module does not know: the run's own validation decides


def _describe(kinds: tuple[Any, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(
        names.get(k, getattr(k, "__name__", str(k))) for k in kinds if k is not type(None)
    )


def show(value: Any) -> str:
    """A grid value as a cell's name and a report show it (a list: joined, or none)."""
    if isinstance(value, list | tuple):
        return "+".join(map(str, value)) or "none"
    return str(value)


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """One dataset of a bench: a JSONL file or a public benchmark by name."""

    name: str
    path: Path | None = None
    hub: str | None = None
    split: str | None = None
    limit: int | None = None
    offset: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "hub": self.hub,
            "split": self.split,
            "limit": self.limit,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of the bench: a dataset under one combination of grid values."""

    index: int
    dataset: DatasetSpec
    options: dict[str, Any]  # grid values of this cell, in the grid's key order

    @property
    def name(self) -> str:
        parts = [self.dataset.name, *(f"{k}-{show(v)}" for k, v in self.options.items())]
        slug = "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", str(p)).strip("-") for p in parts)
        return f"{self.index:03d}_{slug}"[:120]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset.name, "options": self.options}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """A parsed bench config; ``raw`` is the TOML as read (it carries no secrets)."""

    path: Path
    datasets: list[DatasetSpec]
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    def cells(self, *, collapse: bool = True) -> list[Cell]:
        """Every dataset under every combination of grid values, numbered in that order.

        A grid key with several values that a cell's mode does not read (``n`` in mode
        ``budget``: see :func:`~thinktree.agents.modes.unread`) is left out of that cell,
        so the combinations that differ only in it are one cell, run once and named
        without it. ``collapse=False``: every combination, as benches of format 1 made them.
        """
        keys = list(self.grid)
        combos = list(itertools.product(*(self.grid[k] for k in keys)))
        out: list[Cell] = []
        seen: set[tuple[str, str]] = set()
        for dataset in self.datasets:
            for combo in combos:
                options = dict(zip(keys, combo, strict=True))
                if collapse:
                    for key in self.unread(options):
                        del options[key]
                    same = (dataset.name, repr(options))
                    if same in seen:
                        continue
                    seen.add(same)
                out.append(Cell(len(out) + 1, dataset, options))
        return out

    def unread(self, options: Mapping[str, Any]) -> list[str]:
        """The keys of a combination of grid values (``options``) with more than one value
        in the grid that its mode does not read, with the ``[run]`` table's keys in view
        (``total-budget`` there leaves ``budget`` unread in mode ``hybrid``)."""
        skipped = self.skipped(options)
        return [k for k in options if len(self.grid[k]) > 1 and flag_name(k) in skipped]

    def skipped(self, options: Mapping[str, Any]) -> set[str]:
        """The flags of the options (the ``[run]`` table's and ``options``) that the mode
        of the combination ``options`` does not read."""
        both = {**self.fixed, **options}
        return set(unread(self._mode(options), [flag_name(k) for k in both]))

    def unread_note(self) -> str | None:
        """One line on the grid combinations run once as one cell (None: there are none)."""
        by_mode: dict[str, list[str]] = {}
        for combo in itertools.product(*self.grid.values()):
            options = dict(zip(self.grid, combo, strict=True))
            for key in self.unread(options):
                keys = by_mode.setdefault(self._mode(options), [])
                if key not in keys:
                    keys.append(key)
        if not by_mode:
            return None
        made, every = len(self.cells()), len(self.cells(collapse=False))
        unused = "; ".join(f"mode {m} does not read {', '.join(k)}" for m, k in by_mode.items())
        cells = f"{made} cell" + ("s" if made > 1 else "")
        return f"{every} grid combinations make {cells}: {unused} (each such cell runs once)"

    def _mode(self, options: Mapping[str, Any]) -> str:
        return str({**self.fixed, **options}.get("mode", ModeSettings().mode))

    def settings_for(self, cell: Cell) -> RunSettings:
        """The run settings of ``cell``: the ``[run]`` table, then the cell's grid values."""
        return apply_options(RunSettings(), {**self.fixed, **cell.options})


def apply_options(base: RunSettings, options: Mapping[str, Any]) -> RunSettings:
    """``base`` with ``options`` (keys in CLI or field spelling) set; bench keys are skipped."""
    modes = _mode_fields()
    runs = _run_fields()
    mode_changes: dict[str, Any] = {}
    run_changes: dict[str, Any] = {}
    for key, value in options.items():
        name = field_name(key)
        if name in BENCH_KEYS:
            continue
        if name in modes:
            mode_changes[name] = _check_type(key, value, modes[name])
        elif name in runs:
            run_changes[name] = _check_type(key, value, runs[name])
        else:
            raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(valid_keys())}")
    return dataclasses.replace(
        base, modes=dataclasses.replace(base.modes, **mode_changes), **run_changes
    )


def load_bench_config(path: Path) -> BenchConfig:
    """Read and check a bench config (one-line ConfigError naming what to fix)."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a bench config; give a TOML file")
    if not path.is_file():
        raise ConfigError(f"bench config not found: {path}")
    try:  # utf-8-sig: an editor may have saved it with a byte order mark (Windows Notepad)
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValueError:  # an integer of 4,300 digits or more, which Python will not read
        raise ConfigError(
            f"{path}: holds a number too long to read (4300 digits or more)"
        ) from None
    unknown = set(raw) - {"datasets", "grid", "run", "prices", "endpoints"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; "
            "a bench config has [[datasets]], [grid], [run], [prices] and [endpoints]"
        )
    try:
        endpoint_tables(raw)
        prices_from_config(raw)  # a bad price fails here, not once the cells run
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    datasets = _datasets(path, raw.get("datasets"))
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict) or not grid_raw:
        raise ConfigError(f"{path}: [grid] needs at least one key with a list of values")
    grid: dict[str, list[Any]] = {}
    names = _canonical_keys(path, "[grid]", grid_raw)
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: [grid] {key} must be a non-empty list of values")
        name = names[key]
        for value in values:
            _check_bench_key(path, name, value)
        _refuse_twice(path, name, values)
        grid[name] = values
    run_raw = raw.get("run") or {}
    if not isinstance(run_raw, dict):
        raise ConfigError(f"{path}: [run] must be a table of run options, not {run_raw!r}")
    names = _canonical_keys(path, "[run]", run_raw)
    fixed = {names[k]: v for k, v in run_raw.items()}
    for key, value in fixed.items():
        _check_bench_key(path, key, value)
    both = set(grid) & set(fixed)
    if both:
        raise ConfigError(f"{path}: {', '.join(sorted(both))} is in both [grid] and [run]")
    for name in [*grid.get("perturbation", []), fixed.get("perturbation", NONE)]:
        if name not in PERTURBATIONS:
            raise ConfigError(
                f"{path}: unknown perturbation '{name}'; choose from: {', '.join(PERTURBATIONS)}"
            )
    config = BenchConfig(path=path, datasets=datasets, grid=grid, fixed=fixed, raw=raw)
    _refuse_never_read(config)
    cells = config.cells()
    for cell in cells:
        try:
            validate(config.settings_for(cell))
        except ConfigError as exc:
            # a combination of grid values that cannot run (adaptive under a weighted vote)
            # is named; a setting every cell shares is not pinned on the first
            where = f"cell {cell.name}: " if any(_valid(config, c) for c in cells) else ""
            raise ConfigError(f"{path}: {where}{exc}") from None
    for cell in cells:
        _check_wave(config, cell)
    return config


def _refuse_never_read(config: BenchConfig) -> None:
    """One-line ConfigError for a grid key of one value that no cell's mode reads (``n``
    where every mode is ``budget``), as ``run`` refuses an option its mode does not use:
    the bench ran it, named its cells after it, and it changed nothing. (Several values
    no mode reads make one cell, run once: :meth:`BenchConfig.unread_note` says so.)"""
    combos = [
        dict(zip(config.grid, combo, strict=True))
        for combo in itertools.product(*config.grid.values())
    ]
    for key in [k for k, values in config.grid.items() if len(values) == 1]:
        modes: list[str] = []
        for options in combos:
            if flag_name(key) not in config.skipped(options):
                break  # a cell reads it
            if (mode := config._mode(options)) not in modes:
                modes.append(mode)
        else:
            raise ConfigError(
                f"{config.path}: [grid] {key} is not used in mode {', '.join(modes)}; "
                "leave it out, or add a mode that uses it"
            )


def _valid(config: BenchConfig, cell: Cell) -> bool:
    try:
        validate(config.settings_for(cell))
    except ConfigError:
        return False
    return True


def _check_wave(config: BenchConfig, cell: Cell) -> None:
    """A wave the bench gives must fit in the cell's n, as ``run --wave`` must."""
    if "wave" not in cell.options and "wave" not in config.fixed:
        return  # the default wave shrinks to a smaller n
    try:
        check_wave(config.settings_for(cell).modes, flag="")
    except ConfigError as exc:
        table = "[grid]" if "wave" in cell.options else "[run]"
        raise ConfigError(
            f"{config.path}: cell {cell.name}: {exc}; lower wave in {table} or raise n"
        ) from None


def _check_bench_key(path: Path, key: str, value: Any) -> None:
    """The keys the bench handles itself (endpoint, model, perturbation) each take text."""
    if field_name(key) in BENCH_KEYS and not isinstance(value, str):
        raise ConfigError(f"{path}: {key}: expected a string, not {value!r}")


def _refuse_twice(path: Path, key: str, values: list[Any]) -> None:
    """One-line ConfigError when a grid axis gives one value twice, as written or once
    converted (1 and 1.0 for a temperature, "judge" and ["judge"] for a verifier): the two
    cells would be the same run, and the report would compare it with itself."""
    hints = {**_mode_fields(), **_run_fields()}
    name = field_name(key)
    try:
        seen = [_check_type(key, v, hints[name]) if name in hints else v for v in values]
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for i, value in enumerate(seen):
        for j in range(i):
            if seen[j] == value:
                first, again = values[j], values[i]
                shown = repr(first) if repr(first) == repr(again) else f"{first!r} and {again!r}"
                raise ConfigError(
                    f"{path}: [grid] {key} lists the same value twice ({shown}); "
                    "the two cells would be one run"
                )


def _canonical_keys(path: Path, table: str, keys: dict[str, Any]) -> dict[str, str]:
    """Each key of ``table`` by its canonical name; a one-line ConfigError naming the file
    and table for an unknown key, or one option given twice (``min_thinking`` beside
    ``min-thinking``: one of them would be dropped unsaid)."""
    names: dict[str, str] = {}
    for key in keys:
        try:
            name = _canonical(key)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {table} {exc}") from None
        same = [k for k, n in names.items() if n == name]
        if same:
            raise ConfigError(
                f"{path}: {table} gives {name} twice ({same[0]} and {key}); keep one of them"
            )
        names[key] = name
    return names


def _canonical(key: str) -> str:
    name = field_name(key)
    if name not in BENCH_KEYS and name not in _mode_fields() and name not in _run_fields():
        raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(valid_keys())}")
    return key.replace("_", "-")


def _datasets(path: Path, tables: Any) -> list[DatasetSpec]:
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: add at least one [[datasets]] table with a path")
    out: list[DatasetSpec] = []
    for i, table in enumerate(tables, start=1):
        where = f"{path}: dataset {i}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(table) - _DATASET_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_DATASET_KEYS))}"
            )
        for key in ("path", "hub", "split", "name"):
            if key in table and not isinstance(table[key], str):
                raise ConfigError(f"{where}: {key} must be a string, not {table[key]!r}")
        if ("path" in table) == ("hub" in table):
            raise ConfigError(f"{where}: give either path (a JSONL file) or hub (a benchmark name)")
        limit, offset = table.get("limit"), table.get("offset", 0)
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= LARGEST
        ):
            raise ConfigError(
                f"{where}: limit must be a whole number from 1 to {LARGEST}, not {limit!r}"
            )
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= LARGEST:
            raise ConfigError(
                f"{where}: offset must be a whole number from 0 to {LARGEST}, not {offset!r}"
            )
        file = None
        if "path" in table:
            file = Path(str(table["path"]))
            if not file.is_absolute():
                file = path.parent / file
            default_name = file.name.removesuffix(".jsonl").removesuffix(".sample")
        else:
            default_name = str(table["hub"])
        name = str(table.get("name", default_name))
        if any(d.name == name for d in out):
            raise ConfigError(f"{where}: another dataset is named '{name}'; give it a name")
        out.append(
            DatasetSpec(
                name=name,
                path=file,
                hub=table.get("hub"),
                split=table.get("split"),
                limit=limit,
                offset=offset,
            )
        )
    return out
