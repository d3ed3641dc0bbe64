"""The verifier block of a run's summary, as rows of text."""

from __future__ import annotations

from thinktree.metrics import VerifierMetrics


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def verifier_rows(m: VerifierMetrics) -> list[tuple[str, str]]:
    """(name, value) rows: the best-scored pick vs the plain majority vs the oracle, AUROC,
    what the verifiers spent."""
    auroc = "n/a" if m.auroc is None else f"{m.auroc:.3f}"
    spent = f"prompt {m.prompt_tokens:,} · completion {m.completion_tokens:,}"
    if m.cost_usd is not None:
        spent += f" · ${m.cost_usd:.4f}"
    if m.read_back is not None:  # another run paid for them: in the tokens, not the cost
        calls = m.read_back.calls
        spent += f" · {calls} call{'s' if calls != 1 else ''} read back from another run's"
    return [
        (
            "best-scored pick",  # the verifiers alone (best-of-n), whatever the vote's rule
            f"{_pct(m.pick_accuracy)}  (plain majority {_pct(m.vote_accuracy)} · oracle "
            f"{_pct(m.oracle)} · {m.problems} problems)",
        ),
        ("verifier AUROC", auroc),
        ("verdicts", f"{m.verdicts} ({m.failed_verdicts} failed)"),
        ("verifier tokens", spent),
    ]
