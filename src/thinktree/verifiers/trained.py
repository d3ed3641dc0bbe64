"""Trained verifiers: a small classifier fitted on finished runs with gold answers.

``thinktree verifier train RUN_DIR… --out FILE`` reads every candidate the runs voted on
(``results.json``: each problem's ballots) with the problems' gold answers (``run.json``),
computes the features below, and fits a logistic regression (scikit-learn). The file is
JSON, versioned, and holds everything needed to score (the scaling and the weights), so
``--verifier trained:FILE`` needs no scikit-learn and runs no code from the file.

Features of a candidate, all things a run already records:
``vote_share`` (share of the answering candidates with its answer), ``agreement`` (share
of the *other* answering candidates that agree), ``log_reasoning_tokens``, ``revisions``
("Wait" extensions or revision steps) and ``forced`` (the answer came from a forced or
constrained answer node).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinktree import __version__
from thinktree._files import atomic_write
from thinktree.errors import ConfigError
from thinktree.grading import grade
from thinktree.problems import Problem
from thinktree.verifiers.base import CandidateView, Verdict, VerifierSetup

FORMAT = "thinktree-verifier"
FORMAT_VERSION = 1
FEATURES = ("vote_share", "agreement", "log_reasoning_tokens", "revisions", "forced")


def features(candidates: Sequence[CandidateView]) -> list[list[float]]:
    """The feature rows of one problem's candidates (abstaining ones count for nobody)."""
    votes = Counter(c.answer for c in candidates if c.answer is not None)
    answering = sum(votes.values())
    rows = []
    for c in candidates:
        same = votes[c.answer] if c.answer is not None else 0
        rows.append(
            [
                same / answering if answering else 0.0,
                (same - 1) / (answering - 1) if answering > 1 and same else 0.0,
                math.log1p(max(c.reasoning_tokens, 0)),
                float(c.revisions),
                1.0 if c.forced else 0.0,
            ]
        )
    return rows


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """A fitted logistic regression on standardised features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    meta: dict[str, Any]

    def score(self, row: Sequence[float]) -> float:
        z = sum(
            w * (x - m) / s
            for w, x, m, s in zip(self.coef, row, self.mean, self.scale, strict=True)
        )
        z += self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "thinktree": __version__,
                "model": "logistic-regression",
                "features": list(self.features),
                "mean": list(self.mean),
                "scale": list(self.scale),
                "coef": list(self.coef),
                "intercept": self.intercept,
                "meta": self.meta,
            },
            indent=1,
        )


def load_model(path: Path) -> TrainedModel:
    """Read a verifier file; a one-line ConfigError when it is missing, corrupt or too new."""
    if not path.exists():
        raise ConfigError(f"trained verifier file {path} does not exist")
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder, not a verifier file; give the file "
            "`thinktree verifier train --out` wrote"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise ConfigError(f"{path} is not a thinktree verifier file ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a thinktree verifier file (no '{FORMAT}' header)")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"{path} is a damaged verifier file (its version is {version!r})")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{path} was written by thinktree {data.get('thinktree', '?')} in verifier format "
            f"{version}; this thinktree reads format {FORMAT_VERSION}: retrain it with "
            "`thinktree verifier train`"
        )
    try:
        names = tuple(str(f) for f in data["features"])
        mean, scale, coef = (tuple(float(x) for x in data[k]) for k in ("mean", "scale", "coef"))
        intercept = float(data["intercept"])
        meta = dict(data.get("meta") or {})
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # an integer past a float
        raise ConfigError(
            f"{path} is a damaged verifier file ({type(exc).__name__}: {exc})"
        ) from None
    if names != FEATURES:
        raise ConfigError(
            f"{path} uses features {list(names)}; this thinktree computes {list(FEATURES)}: "
            "retrain it"
        )
    if not len(mean) == len(scale) == len(coef) == len(names) or any(s <= 0 for s in scale):
        raise ConfigError(f"{path} is a damaged verifier file (weights do not fit its features)")
    values = [*mean, *scale, *coef, intercept]
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{path} is a damaged verifier file (a weight is not a finite number)")
    ratios = [(c / s, m / s) for c, m, s in zip(coef, mean, scale, strict=True)]
    if not all(math.isfinite(a) and math.isfinite(b) for a, b in ratios):
        raise ConfigError(
            f"{path} is a damaged verifier file (its scaling and weights overflow: no finite score)"
        )
    return TrainedModel(names, mean, scale, coef, intercept, meta)


# --- training data from run folders -------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} has no {path.name}: {what}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__})") from None


def examples(run: Path) -> tuple[list[list[float]], list[bool], int]:
    """Feature rows and labels (candidate right?) of every graded candidate in ``run``."""
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{run} is a file, not a run folder; give the folders of finished runs")
    if not run.is_dir():
        raise ConfigError(f"no run folder at {run}")
    manifest = _read_json(run / "run.json", "not a run folder")
    results = _read_json(run / "results.json", "the run did not complete")
    try:
        problems = {p["id"]: Problem.model_validate(p) for p in manifest["problems"]}
        entries = results["problems"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{run} holds a damaged run ({type(exc).__name__})") from None
    try:
        rows, labels, graded, recorded = _examples(problems, entries)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{run} holds a damaged run ({type(exc).__name__}: {detail})") from None
    if not recorded:
        raise ConfigError(f"{run} records no candidates (written by an older thinktree?); rerun it")
    return rows, labels, graded


def _examples(
    problems: dict[str, Problem], entries: Any
) -> tuple[list[list[float]], list[bool], int, bool]:
    rows: list[list[float]] = []
    labels: list[bool] = []
    graded = 0
    recorded = False
    for entry in entries:
        problem = problems.get(entry.get("id"))
        ballots = (entry.get("vote") or {}).get("ballots")
        recorded = recorded or bool(ballots)
        if problem is None or problem.answer is None or not ballots:
            continue
        views = [
            CandidateView(
                node_id=str(b["node"]),
                answer=None if b["answer"] is None else str(b["answer"]),
                text="",
                reasoning_tokens=int(b["reasoning_tokens"]),
                revisions=int(b.get("revisions", 0)),
                forced=bool(b.get("forced", False)),
            )
            for b in ballots
        ]
        graded += 1
        for view, row in zip(views, features(views), strict=True):
            if view.answer is None:
                continue  # abstentions never win, so there is nothing to rank
            rows.append(row)
            labels.append(bool(grade(view.answer, problem)))
    return rows, labels, graded, recorded


def _nothing_graded(problems: int, doing: str) -> ConfigError:
    """Why runs gave no candidate to learn from (``doing``) or to score."""
    if problems:
        return ConfigError(
            f"no candidate of the runs' {problems} problems with gold answers stated an "
            f"answer: nothing to {doing}"
        )
    return ConfigError(
        f"the runs hold no graded candidates (problems need gold answers): nothing to {doing}"
    )


def _distinct(runs: Sequence[Path]) -> None:
    seen: dict[Path, Path] = {}
    for run in runs:
        key = Path(run).resolve()
        if key in seen:
            again = "twice" if str(seen[key]) == str(run) else f"twice (also as {seen[key]})"
            raise ConfigError(f"run {run} is given {again}: its candidates would count twice")
        seen[key] = run


def train(runs: Sequence[Path]) -> TrainedModel:
    """Fit a verifier on ``runs``; one-line ConfigErrors for anything that cannot work."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigError(
            "training a verifier needs scikit-learn: pip install 'thinktree[verifiers]'"
        ) from None
    from thinktree.metrics import auroc

    _distinct(runs)
    rows: list[list[float]] = []
    labels: list[bool] = []
    problems = 0
    for run in runs:
        r, y, n = examples(run)
        rows += r
        labels += y
        problems += n
    if not rows:
        raise _nothing_graded(problems, "learn from")
    if all(labels) or not any(labels):
        kind = "right" if all(labels) else "wrong"
        raise ConfigError(
            f"all {len(labels)} candidates in these runs are {kind}: nothing to learn from"
        )
    if all(row == rows[0] for row in rows):
        raise ConfigError(
            f"all {len(rows)} candidates in these runs have the same features (vote share, "
            "agreement, reasoning length, revisions, forced): nothing to learn from"
        )
    scaler = StandardScaler().fit(rows)
    scale = [float(s) if s > 0 else 1.0 for s in scaler.scale_]
    fitted = LogisticRegression(class_weight="balanced", max_iter=1000).fit(
        scaler.transform(rows), labels
    )
    model = TrainedModel(
        features=FEATURES,
        mean=tuple(float(m) for m in scaler.mean_),
        scale=tuple(scale),
        coef=tuple(float(c) for c in fitted.coef_[0]),
        intercept=float(fitted.intercept_[0]),
        meta={},
    )
    train_auroc = auroc([model.score(r) for r in rows], labels)
    meta = {
        "runs": [Path(r).name for r in runs],
        "problems": problems,
        "candidates": len(labels),
        "right": sum(labels),
        "train_auroc": train_auroc,
    }
    return TrainedModel(model.features, model.mean, model.scale, model.coef, model.intercept, meta)


def train_file(runs: Sequence[Path], out: Path) -> str:
    """Fit on ``runs``, write ``out`` atomically; returns a one-line summary."""
    model = train(runs)
    try:
        atomic_write(out, model.to_json())
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}") from None
    m = model.meta
    return (
        f"wrote {out}: {m['candidates']} candidates ({m['right']} right) from "
        f"{m['problems']} problems in {len(runs)} run(s); training AUROC "
        f"{m['train_auroc']:.3f}"
    )


def evaluate(path: Path, runs: Sequence[Path]) -> tuple[float | None, int]:
    """The AUROC of a verifier file's scores on the candidates of ``runs``, and their number."""
    from thinktree.metrics import auroc

    model = load_model(path)
    _distinct(runs)
    scores: list[float] = []
    labels: list[bool] = []
    problems = 0
    for run in runs:
        rows, y, n = examples(run)
        scores += [model.score(r) for r in rows]
        labels += y
        problems += n
    if not labels:
        raise _nothing_graded(problems, "evaluate")
    if any(math.isnan(s) for s in scores):
        raise ConfigError(f"{path} is a damaged verifier file (it gives candidates no score)")
    return auroc(scores, labels), len(labels)


# --- the verifier -------------------------------------------------------------------------


class TrainedVerifier:
    """Scores candidates with a fitted model from a verifier file."""

    def __init__(self, model: TrainedModel) -> None:
        self.model = model

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        out = []
        for row in features(candidates):
            score = self.model.score(row)
            shown = ", ".join(f"{n} {v:.2f}" for n, v in zip(FEATURES, row, strict=True))
            out.append(Verdict(score=score, rationale=f"p(right) {score:.3f} from {shown}"))
        return out


def _path(arg: str | None) -> Path:
    if not arg:
        raise ConfigError("--verifier trained needs its file: trained:FILE")
    return Path(arg).expanduser()


def trained(arg: str | None, setup: VerifierSetup) -> TrainedVerifier:
    """``--verifier trained:FILE``."""
    return TrainedVerifier(load_model(_path(arg)))


def _check(arg: str | None) -> None:
    load_model(_path(arg))


trained.check = _check  # type: ignore[attr-defined]
trained.recorded = lambda arg: str(_path(arg).absolute())  # type: ignore[attr-defined]
