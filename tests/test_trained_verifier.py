"""Trained verifiers: fitted on finished runs, saved in a versioned file, used by name.

The runs are real runs against a scripted HTTP server on 127.0.0.1 whose candidates
agree more often when they are right, so vote share separates right from wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError
from thinktree.metrics import auroc
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread
from thinktree.verifiers.base import CandidateView
from thinktree.verifiers.trained import FEATURES, evaluate, features, load_model, train_file

PROBLEMS = [
    Problem(
        id=f"q{i}",
        question=f"Question {i}?",
        answer_type=AnswerType.CHOICE,
        options={"A": "a", "B": "b", "C": "c"},
        answer="B",
    )
    for i in range(4)
]


def _reply(body: dict[str, Any], index: int) -> str:
    return ["So B. Answer: B", "Answer: B", "Maybe A. Answer: A", "Hmm, C. Answer: C"][index % 4]


async def _make_run(folder: Path, verifiers: tuple[str, ...] = ()) -> Any:
    async with FakeServer(FakeBehaviour(reply=_reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=32), verifiers=verifiers, out=folder
        )
        return await execute(PROBLEMS, endpoint, settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")

    async def make() -> None:
        for name in ("train1", "train2", "heldout"):
            await _make_run(root / name)

    anyio.run(make, backend="asyncio")
    return [root / "train1", root / "train2", root / "heldout"]


def test_features_of_one_problem() -> None:
    views = [
        CandidateView("a", "B", "", 10),
        CandidateView("b", "B", "", 0, revisions=2, forced=True),
        CandidateView("c", "A", "", 5),
        CandidateView("d", None, "", 5),
    ]
    rows = features(views)
    assert len(rows[0]) == len(FEATURES)
    assert rows[0][:2] == [2 / 3, 1 / 2]  # vote share, agreement of the others
    assert rows[1][3:] == [2.0, 1.0]
    assert rows[2][:2] == [1 / 3, 0.0]
    assert rows[3][:2] == [0.0, 0.0]


def test_train_save_load_and_evaluate_on_a_held_out_run(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "verifier.json"
    summary = train_file(runs[:2], out)
    assert "32 candidates (16 right) from 8 problems in 2 run(s)" in summary
    data = json.loads(out.read_text())
    assert data["format"] == "thinktree-verifier" and data["version"] == 1
    assert data["features"] == list(FEATURES)
    model = load_model(out)
    right = features([CandidateView("x", "B", "", 5), CandidateView("y", "B", "", 5)])[0]
    wrong = features([CandidateView("x", "A", "", 5), CandidateView("y", "B", "", 5)])[0]
    assert model.score(right) > 0.5 > model.score(wrong)
    found, candidates = evaluate(out, [runs[2]])
    assert (found, candidates) == (1.0, 16)


@pytest.mark.anyio
async def test_a_trained_verifier_scores_candidates_in_a_run(
    runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "v.json"
    train_file(runs[:2], out)
    result = await _make_run(tmp_path / "scored", verifiers=(f"trained:{out}",))
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert len(verdicts) == 4 and all(v.status is NodeStatus.DONE for v in verdicts)
    assert verdicts[0].label == "trained:v.json"
    assert verdicts[0].text.startswith("p(right)")
    assert tree.answer == "B"
    m = result.metrics.verifier
    assert m is not None and m.auroc == 1.0 and m.prompt_tokens == 0


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_bad_verifier_files_are_one_line(runs: list[Path], tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    train_file(runs[:1], good)
    data = json.loads(good.read_text())
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "none.json")
    with pytest.raises(ConfigError, match=r"is not a thinktree verifier file \(not JSON\)"):
        load_model(_write(tmp_path / "junk.json", "\x00\x01 not json"))
    with pytest.raises(ConfigError, match="no 'thinktree-verifier' header"):
        load_model(_write(tmp_path / "other.json", {"weights": [1, 2]}))
    with pytest.raises(ConfigError, match="verifier format 99; this thinktree reads format 1"):
        load_model(_write(tmp_path / "new.json", {**data, "version": 99}))
    with pytest.raises(ConfigError, match="damaged verifier file"):
        load_model(_write(tmp_path / "cut.json", {**data, "coef": data["coef"][:2]}))
    with pytest.raises(ConfigError, match="damaged verifier file"):
        load_model(_write(tmp_path / "nan.json", {**data, "intercept": "nan"}))
    with pytest.raises(ConfigError, match="retrain it"):
        load_model(_write(tmp_path / "feat.json", {**data, "features": ["x"] * len(FEATURES)}))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], proc.stderr


def test_cli_train_eval_and_its_errors(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli\x1b[2J.json"  # a name that would clear the screen, shown inert
    proc = cli("verifier", "train", str(runs[0]), str(runs[1]), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "training AUROC 1.000" in proc.stdout
    assert "cli␛[2J.json" in proc.stdout and "\x1b" not in proc.stdout, proc.stdout
    proc = cli("verifier", "eval", str(out), str(runs[2]), cwd=tmp_path)
    assert proc.returncode == 0 and "AUROC 1.000 over 16 candidates" in proc.stdout
    _one_line_error(
        cli("verifier", "train", str(runs[0]), "--out", str(out), cwd=tmp_path), "already exists"
    )
    _one_line_error(
        cli("verifier", "train", "nowhere", "--out", "x.json", cwd=tmp_path), "no run folder"
    )
    half = tmp_path / "half"
    half.mkdir()
    (half / "run.json").write_text((runs[0] / "run.json").read_text())
    _one_line_error(
        cli("verifier", "train", str(half), "--out", "x.json", cwd=tmp_path),
        "has no results.json: the run did not complete",
    )
    assert not (tmp_path / "x.json").exists()
    _one_line_error(
        cli("run", "--verifier", "trained:missing.json", "--out", "r", cwd=tmp_path),
        f"trained verifier file {tmp_path / 'missing.json'} does not exist",
    )
    assert not (tmp_path / "r").exists()


def test_a_run_records_its_verifier_file_by_its_absolute_path(
    runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So `run --resume` finds it from another folder; its verdicts keep the file's name."""
    import thinktree

    train_file(runs[:2], tmp_path / "v.json")
    monkeypatch.chdir(tmp_path)
    with fake_server_in_thread(FakeBehaviour(reply=_reply)) as server:
        result = thinktree.run(
            PROBLEMS,
            endpoint=server.base_url,
            mode="parallel",
            n=4,
            budget=32,
            verifiers=["trained:v.json"],
            out="scored",
        )
    saved = json.loads((tmp_path / "scored" / "run.json").read_text())["settings"]
    assert saved["verifiers"] == [f"trained:{tmp_path / 'v.json'}"]
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert {v.label for v in verdicts} == {"trained:v.json"}


def _weights(mean: list[float], scale: list[float], coef: list[float]) -> dict[str, Any]:
    return {
        "format": "thinktree-verifier",
        "version": 1,
        "model": "logistic-regression",
        "features": list(FEATURES),
        "mean": mean,
        "scale": scale,
        "coef": coef,
        "intercept": 0.0,
    }


def test_auroc_leaves_nan_scores_out() -> None:
    nan = float("nan")
    assert auroc([nan, 0.9, nan, 0.1], [True, True, False, False]) == 1.0
    assert auroc([nan, nan], [True, False]) is None


def test_weights_that_overflow_are_a_damaged_file(tmp_path: Path) -> None:
    tiny = _weights([0.0] * 5, [1e-300, 1e-300, 1, 1, 1], [1e10, -1e10, 0, 0, 0])
    with pytest.raises(ConfigError, match=r"damaged verifier file .*overflow"):
        load_model(_write(tmp_path / "tiny.json", tiny))
    # an integer no float holds: it crashed with a traceback
    huge = {**_weights([0.0] * 5, [1.0] * 5, [1.0] * 5), "intercept": int("9" * 400)}
    with pytest.raises(ConfigError, match=r"damaged verifier file \(OverflowError: int too large"):
        load_model(_write(tmp_path / "huge.json", huge))


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_a_version_that_is_no_whole_number_is_a_damaged_file(
    tmp_path: Path, version: object
) -> None:
    # it said the file was "written by thinktree ? in verifier format 1" and to retrain it
    data = {**_weights([0.0] * 5, [1.0] * 5, [1.0] * 5), "version": version}
    with pytest.raises(ConfigError, match=r"damaged verifier file \(its version is "):
        load_model(_write(tmp_path / "v.json", data))


# finite and loadable, yet every candidate's score is inf - inf: NaN
NAN_SCORES = _weights([-1e308, 0, -1e308, 0, 0], [1.0] * 5, [-1e308, 0, 1e308, 0, 0])


def test_eval_of_a_file_that_scores_nan_is_one_line(runs: list[Path], tmp_path: Path) -> None:
    path = _write(tmp_path / "nan.json", NAN_SCORES)
    with pytest.raises(ConfigError, match=r"damaged verifier file .*no score"):
        evaluate(path, [runs[2]])
    _one_line_error(
        cli("verifier", "eval", str(path), str(runs[2]), cwd=tmp_path), "damaged verifier file"
    )


@pytest.mark.anyio
async def test_a_trained_verifier_scoring_nan_fails_its_verdicts_not_the_run(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "nan.json", NAN_SCORES)
    result = await _make_run(tmp_path / "scored", verifiers=(f"trained:{path}",))
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert all("non-finite score (nan)" in (v.error or "") for v in verdicts)
    assert tree.answer == "B" and tree.vote is not None and tree.vote.rule == "majority"
    assert (result.folder / "results.json").exists()


@pytest.mark.anyio
async def test_two_files_of_the_same_name_both_score(runs: list[Path], tmp_path: Path) -> None:
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        train_file(runs[:1], tmp_path / folder / "my.json")
    specs = (f"trained:{tmp_path / 'd1/my.json'}", f"trained:{tmp_path / 'd2/my.json'}")
    result = await _make_run(tmp_path / "scored", verifiers=specs)
    tree = result.trees[0]
    assert len(tree.of_kind(NodeKind.VERDICT)) == 8  # 4 candidates, 2 verifiers
    assert sorted(tree.nodes["q0/b1"].scores) == sorted(specs)


def _edited(run: Path, to: Path, edit: Any, name: str = "results.json") -> Path:
    """A copy of ``run`` whose ``name`` (results.json or run.json) ``edit`` changed."""
    to.mkdir()
    for file in ("run.json", "results.json"):
        data = json.loads((run / file).read_text())
        if file == name:
            edit(data)  # in place
        (to / file).write_text(json.dumps(data))
    return to


def _ballots(data: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [b for p in data["problems"] for b in p["vote"]["ballots"]]
    return found


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (lambda d: [b.pop("reasoning_tokens") for b in _ballots(d)], "KeyError"),
        (lambda d: [b.update(reasoning_tokens=None) for b in _ballots(d)], "TypeError"),
        (lambda d: d["problems"].__setitem__(0, "q0"), "AttributeError"),
    ],
    ids=["no-reasoning-tokens", "null-reasoning-tokens", "entry-is-text"],
)
def test_a_damaged_run_is_one_line(
    runs: list[Path], tmp_path: Path, damage: Any, detail: str
) -> None:
    damaged = _edited(runs[0], tmp_path / "damaged", damage)
    with pytest.raises(ConfigError, match=f"holds a damaged run \\({detail}"):
        train_file([damaged], tmp_path / "v.json")
    _one_line_error(
        cli("verifier", "train", str(damaged), "--out", "v.json", cwd=tmp_path),
        "holds a damaged run",
    )
    assert not (tmp_path / "v.json").exists()


def test_runs_with_nothing_to_learn_are_refused(runs: list[Path], tmp_path: Path) -> None:
    def alike(data: dict[str, Any]) -> None:  # one answer per problem, all as long
        for i, problem in enumerate(data["problems"]):
            for ballot in problem["vote"]["ballots"]:
                ballot.update(answer="B" if i < 2 else "A", reasoning_tokens=10)

    same = _edited(runs[0], tmp_path / "same", alike)
    with pytest.raises(ConfigError, match=r"have the same features.*nothing to learn from"):
        train_file([same], tmp_path / "v.json")
    with pytest.raises(ConfigError, match="is given twice: its candidates would count twice"):
        train_file([runs[0], runs[0]], tmp_path / "v.json")
    with pytest.raises(ConfigError, match="given twice"):
        train_file([runs[0], runs[0].parent / "." / runs[0].name], tmp_path / "v.json")
    assert not (tmp_path / "v.json").exists()


def test_runs_without_answers_or_gold_say_so(runs: list[Path], tmp_path: Path) -> None:
    model = tmp_path / "v.json"
    train_file(runs[:1], model)
    silent = _edited(
        runs[0], tmp_path / "silent", lambda d: [b.update(answer=None) for b in _ballots(d)]
    )
    with pytest.raises(ConfigError, match="no candidate of the runs' 4 problems with gold"):
        train_file([silent], tmp_path / "x.json")

    def no_gold(data: dict[str, Any]) -> None:
        for problem in data["problems"]:
            problem["answer"] = None

    nogold = _edited(runs[0], tmp_path / "nogold", no_gold, name="run.json")
    with pytest.raises(ConfigError, match="problems need gold answers"):
        evaluate(model, [nogold])
    _one_line_error(
        cli("verifier", "eval", str(model), str(nogold), cwd=tmp_path),
        "no graded candidates (problems need gold answers): nothing to evaluate",
    )


def test_a_path_of_the_wrong_kind_says_what_it_is(runs: list[Path], tmp_path: Path) -> None:
    # a verifier file given where a run folder goes, and a run folder where the file goes
    model = tmp_path / "v.json"
    train_file(runs[:1], model)
    why = f"{model} is a file, not a run folder; give the folders of finished runs"
    with pytest.raises(ConfigError) as caught:
        train_file([model], tmp_path / "again.json")
    assert str(caught.value) == why
    with pytest.raises(ConfigError) as caught:
        evaluate(model, [model])
    assert str(caught.value) == why
    with pytest.raises(ConfigError) as caught:
        load_model(runs[0])
    assert str(caught.value) == (
        f"{runs[0]} is a folder, not a verifier file; give the file "
        "`thinktree verifier train --out` wrote"
    )
    assert not (tmp_path / "again.json").exists()
