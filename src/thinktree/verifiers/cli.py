"""``thinktree verifier …``: list the verifiers, train one from finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from thinktree.sanitize import clean, printable

verifier_app = typer.Typer(
    help="Verifiers: list the available ones, train one from runs with gold answers.",
    short_help="List the verifiers; train or evaluate one from finished runs.",
    no_args_is_help=True,
)
out = Console(emoji=False)  # ":cat:" in a path is text (see thinktree.cli)
err = Console(stderr=True, emoji=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(
        f"[bold red]error:[/] {printable(message)}", highlight=False, markup=True, soft_wrap=True
    )
    return typer.Exit(code)


@verifier_app.command(
    "list", short_help="The verifier names --verifier accepts: built-ins and plugins."
)
def list_verifiers() -> None:
    """The verifier names --verifier accepts: the built-ins and installed plugins."""
    from thinktree.errors import ThinktreeError
    from thinktree.verifiers.registry import (
        BUILTIN_VERIFIERS,
        clashing_plugins,
        hidden_plugins,
        strategy_names,
        verifier_names,
    )

    try:
        names = verifier_names()
        strategies = strategy_names()
        hidden = hidden_plugins()
        clashing = clashing_plugins()
    except ThinktreeError as exc:
        raise _fail(str(exc)) from None
    for name in names:
        kind = "built-in" if name in BUILTIN_VERIFIERS else "plugin"
        if name in clashing and name not in BUILTIN_VERIFIERS:  # --verifier refuses it
            kind += (
                f" registered by {len(clashing[name])} plugins ({', '.join(clashing[name])}): "
                "uninstall one or rename its entry point"
            )
        typer.echo(clean(f"{name:16} {kind}"))
    for name, target in hidden.items():
        typer.echo(
            clean(f"{name:16} plugin {target}, hidden by the built-in: rename its entry point")
        )
    for name in strategies:
        typer.echo(clean(f"{name:16} strategy plugin (--mode {name})"))


@verifier_app.command(
    "train", short_help="Fit a verifier on finished runs (--verifier trained:FILE)."
)
def train(
    runs: Annotated[
        list[Path], typer.Argument(help="run folders whose problems have gold answers")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="where to write the verifier file")],
    force: Annotated[bool, typer.Option(help="overwrite --out if it exists")] = False,
) -> None:
    """Fit a verifier on finished runs; use it with --verifier trained:FILE."""
    from thinktree.errors import ThinktreeError
    from thinktree.verifiers.trained import train_file

    if out_file.exists() and not force:
        raise _fail(f"{out_file} already exists; choose another --out or pass --force")
    try:
        summary = train_file(runs, out_file)
    except ThinktreeError as exc:
        raise _fail(str(exc)) from None
    out.print(clean(summary), markup=False, soft_wrap=True)  # it names the runs and the file


@verifier_app.command(
    "eval", short_help="AUROC of a trained verifier on finished runs' candidates."
)
def evaluate(
    verifier_file: Annotated[Path, typer.Argument(help="a file from `thinktree verifier train`")],
    runs: Annotated[list[Path], typer.Argument(help="finished run folders to score")],
) -> None:
    """AUROC of a trained verifier on the candidates of finished runs (no model calls)."""
    from thinktree.errors import ThinktreeError
    from thinktree.verifiers.trained import evaluate as run_eval

    try:
        found, candidates = run_eval(verifier_file, runs)
    except ThinktreeError as exc:
        raise _fail(str(exc)) from None
    shown = (
        "n/a (the runs hold only right or only wrong candidates)"
        if found is None
        else (f"{found:.3f}")
    )
    out.print(
        f"AUROC {shown} over {candidates} candidates in {len(runs)} run(s)",
        markup=False,
        soft_wrap=True,
    )
