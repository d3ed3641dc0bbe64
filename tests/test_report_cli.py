"""`thinktree report` on a bench folder written by hand: the tables' numbers are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choice_set import case_problems, write_dataset
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import WAIT_CUE
from thinktree.bench.results import load
from thinktree.bench.stats import bootstrap_ci
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.pricing import Price
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

PROBLEMS = [f"q{i}" for i in range(10)]


def cell_results(
    mode: str,
    budget: int,
    right: set[int],
    tokens: int,
    *,
    decisions: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A results.json as a run writes it: ``tokens`` completion tokens on every problem."""
    problems = []
    for i, pid in enumerate(PROBLEMS):
        problems.append(
            {
                "id": pid,
                "question": f"question {i}",
                "gold": "A",
                "answer": "A" if i in right else "B",
                "correct": i in right,
                "covered": i in right or i == 9,
                "error": None,
                "vote": None,
                "decision": (decisions or {}).get(i),
                "nodes": [
                    {"id": pid, "kind": "problem", "prompt_tokens": 0, "completion_tokens": 0},
                    {
                        "id": f"{pid}/think",
                        "kind": "generation",
                        "prompt_tokens": 100,
                        "completion_tokens": tokens,
                    },
                ],
            }
        )
    n = len(PROBLEMS)
    return {
        "run_id": f"{mode}-{budget}",
        "status": "completed",
        "endpoint": {"name": "embedded", "base_url": "http://127.0.0.1:1/v1"},
        "model": "smollm2",
        "settings": {"mode": mode, "budget": budget, "n": 4, "steps": 2, "aggregate": "majority"},
        "metrics": {
            "problems": n,
            "answered": n,
            "graded": n,
            "correct": len(right),
            "accuracy": len(right) / n,
            "coverage": len(right | {9}) / n,
            "failed": 0,
            "prompt_tokens": 100 * n,
            "completion_tokens": tokens * n,
            "thinking_tokens": tokens * n,
            "tokens_allowed": 2 * budget * n,
            "utilisation": tokens / (2 * budget),
            "calls": n,
            "retries": 0,
            "latency_p50_s": 0.5,
            "latency_p95_s": 0.9,
            "cost_usd": round((100 * n * 1.0 + tokens * n * 2.0) / 1e6, 6),
        },
        "problems": problems,
    }


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    reason = "the pilot's two samples disagree: hard"
    # name -> (options, the problems right, tokens, decisions)
    cells: dict[str, tuple[dict[str, Any], set[int], int, Any]] = {
        "001_a": ({"mode": "budget", "budget": 64, "perturbation": "none"}, {0, 1}, 30, None),
        "002_b": (
            {"mode": "budget", "budget": 128, "perturbation": "none"},
            {0, 2, 3, 4, 5, 6, 7, 8},
            90,
            None,
        ),
        "003_auto": (
            {"mode": "auto", "budget": 64, "perturbation": "none"},
            {0, 1, 2, 3, 4},
            60,
            {i: {"mode": "sequential", "budget": 128, "reason": reason} for i in range(10)},
        ),
        "004_d": ({"mode": "budget", "budget": 64, "perturbation": "misleading"}, {0}, 30, None),
        "006_e": (
            {"mode": "budget", "budget": 128, "perturbation": "misleading"},
            {0, 2, 3, 4, 5, 6, 7, 8},
            90,
            None,
        ),
        "005_unfinished": (
            {"mode": "budget", "budget": 256, "perturbation": "none"},
            set(),
            0,
            None,
        ),
    }
    manifest = {
        "bench_version": 1,
        "grid": {
            "mode": ["budget", "auto"],
            "budget": [64, 128, 256],
            "perturbation": ["none", "misleading"],
        },
        "run": {"seed": 0},
        "cells": [
            {"name": name, "dataset": "set", "options": options}
            for name, (options, *_rest) in cells.items()
        ],
    }
    (folder / "bench.json").write_text(json.dumps(manifest))
    for name, (options, right, tokens, decisions) in cells.items():
        (folder / name).mkdir()
        if name == "005_unfinished":
            (folder / name / "run.json").write_text("{}")
            continue
        results = cell_results(
            options["mode"], options["budget"], right, tokens, decisions=decisions
        )
        (folder / name / "results.json").write_text(json.dumps(results))
    return folder


def report(*args: str, cwd: Path, columns: int = 250) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "report", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def md_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``### title``."""
    lines = text.split(f"### {title}\n", 1)[1].splitlines()[1:]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_report_tables_hold_the_right_numbers(bench: Path) -> None:
    proc = report(str(bench), "--plot-terminal", cwd=bench.parent)
    assert proc.returncode == 0, proc.stderr
    md = (bench / "report.md").read_text()

    cells = {row[0]: row for row in md_rows(md, "Cells")}
    assert set(cells) == {
        "mode=budget · budget=64 · perturbation=none",
        "mode=budget · budget=128 · perturbation=none",
        "mode=auto · budget=64 · perturbation=none",
        "mode=budget · budget=64 · perturbation=misleading",
        "mode=budget · budget=128 · perturbation=misleading",
    }
    b = cells["mode=budget · budget=128 · perturbation=none"]
    ci = bootstrap_ci([i in {0, 2, 3, 4, 5, 6, 7, 8} for i in range(10)])
    assert b[2] == f"80.0 % [{100 * ci.low:.0f}–{100 * ci.high:.0f}]"
    assert b[3] == "90.0 %"  # coverage: right, or q9
    assert b[4:9] == ["10/10", "1,000", "900", "900", "90.0"]
    assert b[9] == f"{100 * 90 / 256:.1f} %"
    assert b[13] == f"${(1000 * 1.0 + 900 * 2.0) / 1e6:.4f}"
    assert "Not finished, left out: 005_unfinished" in md

    pairs = {(row[0], row[1], row[2], row[3]): row for row in md_rows(md, "Paired comparisons")}
    budget = pairs[("mode=budget · perturbation=none", "budget", "128", "64")]
    # B right and A wrong on q2..q8 (7), A right and B wrong on q1 (1): exact p = 2·9/256
    assert budget[4:7] == ["10", "80.0 %", "20.0 %"]
    assert budget[7].startswith("+60.0 [")
    assert budget[8] == f"{2 * 9 / 256:.3f} (exact)"
    assert ("mode=budget · budget=64", "perturbation", "none", "misleading") in pairs

    equal = md_rows(md, "auto against the fixed modes at equal tokens")
    assert len(equal) == 1
    # auto spends 60 tokens a problem; budget mode: 20 % at 30, 80 % at 90 → 50 % at 60
    assert equal[0][1:5] == ["60", "50.0 %", "budget", "50.0 %"]
    decisions = md_rows(md, "Decisions · mode=auto · budget=64 · perturbation=none")
    assert decisions[0] == [
        "q0",
        "sequential",
        "128",
        "✓",
        "60",
        "the pilot's two samples disagree: hard",
    ]

    robust = md_rows(md, "Per cell")
    assert [row[:4] for row in robust] == [
        ["mode=budget · budget=64", "misleading", "20.0 %", "10.0 %"],
        ["mode=budget · budget=128", "misleading", "80.0 %", "80.0 %"],
    ]
    assert robust[0][4].startswith("-10.0 [")
    # alike on all ten problems: ± the exact bound on the share that could differ (not [0, 0])
    bound = 100 * (1 - 0.025 ** (1 / 10))
    assert robust[1][4] == f"+0.0 [{-bound:+.0f}, {bound:+.0f}]" == "+0.0 [-31, +31]"
    # Δ is -10 at budget 64 and 0 at budget 128: more compute won back 10 points
    assert md_rows(md, "Per mode") == [["budget", "misleading", "2", "-5.0", "+10.0"]]

    for name in ("scaling", "budget", "coverage", "cost", "robustness"):
        png = bench / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"](plots/{name}.png)" in md
    html = (bench / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 5
    assert "80.0 % [" in html and "&lt;" not in html.split("<body>")[0]
    # the terminal shows the same tables, and the scaling curve in characters
    assert "80.0 % [" in proc.stdout and "tokens" in proc.stdout and "┤" in proc.stdout


def test_an_80_column_terminal_gets_every_table_in_parts_with_its_figures_whole(
    bench: Path,
) -> None:
    proc = report(str(bench), cwd=bench.parent, columns=80)
    assert proc.returncode == 0, proc.stderr
    *lines, wrote = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    # the closing line names the files whole, to copy, however long their paths
    assert wrote == f"wrote {bench / 'report.md'} and {bench / 'report.html'}"
    md = (bench / "report.md").read_text()
    cells = md_rows(md, "Cells")
    # the accuracy with its interval, the tokens and the cost of every cell, each on one line
    for row in cells:
        for figure in (row[2], row[5], row[13]):
            assert any(figure in line for line in lines), figure
    assert "Cells (1/" in proc.stdout  # 15 columns do not fit in 80
    # prose breaks between words only
    decisions = md_rows(md, "Decisions · mode=auto · budget=64 · perturbation=none")
    reasons = {row[5] for row in decisions}
    words = {word for line in lines for word in line.replace("│", " ").split()}
    assert reasons and all(set(reason.split()) <= words for reason in reasons)


def test_report_of_a_single_run_and_of_nothing(bench: Path, tmp_path: Path) -> None:
    run = bench / "002_b"
    proc = report(str(run), "--no-plots", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    rows = md_rows(md, "Cells")
    assert len(rows) == 1 and rows[0][2].startswith("80.0 % [") and "png" not in md

    unfinished = report(str(bench / "005_unfinished"), cwd=tmp_path)
    assert unfinished.returncode == 2
    assert "has not finished" in unfinished.stderr and "--resume" in unfinished.stderr
    nothing = report(str(tmp_path / "nope"), cwd=tmp_path)
    assert nothing.returncode == 2 and "no folder at" in nothing.stderr
    assert "Traceback" not in unfinished.stderr + nothing.stderr


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("afile", "--out afile is a file; give a folder"),
        ("afile/r", "--out afile/r is in afile, a file; give a folder"),
    ],
)
def test_report_out_that_is_a_file_is_refused_before_anything_is_written(
    bench: Path, tmp_path: Path, out: str, message: str
) -> None:
    (tmp_path / "afile").write_text("keep me")
    before = sorted(bench.rglob("*"))
    proc = report(str(bench / "002_b"), "--out", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: {message}", proc.stderr
    assert proc.stdout == ""  # not even the tables: nothing was done
    assert (tmp_path / "afile").read_text() == "keep me"
    assert sorted(bench.rglob("*")) == before


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            lambda r: r["metrics"].update(accuracy="high"),
            "metrics.accuracy is 'high', not a number",
        ),
        (lambda r: r["metrics"].update(accuracy=-1), "metrics.accuracy is -1, not a share from 0"),
        (lambda r: r["metrics"].pop("calls"), "no metrics.calls"),
        (lambda r: r["metrics"].update(verifier="x"), "metrics.verifier is 'x', not an object"),
        (
            lambda r: r["metrics"].update(accuracy_by_step=[0.5, 2]),
            "metrics.accuracy_by_step holds 2, not a share from 0 to 1",
        ),
        (
            lambda r: r["metrics"].update(accuracy_by_step=0.5),
            "metrics.accuracy_by_step is 0.5, not a list",
        ),
        (lambda r: r.update(problems=5), "problems is 5, not a list"),
        (lambda r: r["problems"].append("q10"), "a problem is 'q10', not an object"),
        (lambda r: r["problems"][0].update(nodes="x"), "a problem's nodes is 'x', not a list"),
        (lambda r: r["problems"][0].update(decision=[]), "a problem's decision is [], not an"),
        (lambda r: r.clear(), "no 'settings'"),
    ],
)
def test_a_damaged_results_file_is_one_line_not_a_traceback(
    bench: Path, damage: Any, says: str
) -> None:
    path = bench / "001_a" / "results.json"
    results = json.loads(path.read_text())
    damage(results)
    path.write_text(json.dumps(results))
    for folder in ("bench", "bench/001_a"):  # in a bench, and as a run of its own
        proc = report(folder, "--plot-terminal", cwd=bench.parent)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: bench/001_a/results.json is damaged ("), line
        assert says in line


@pytest.mark.parametrize(
    ("cells", "says"),
    [
        (["001_a"], "a cell is '001_a', not an object"),
        ([{"name": "001_a"}], "cell 001_a's dataset is None, not a name"),
        ([{"name": "../x", "dataset": "d", "options": {}}], "a cell's name is '../x'"),
        ([{"name": "001_a", "dataset": "d", "options": 3}], "cell 001_a's options is 3"),
        ("001_a", "cells is '001_a', not a list"),
        (None, "cells is None, not a list"),
    ],
)
def test_a_damaged_bench_manifest_is_one_line(bench: Path, cells: Any, says: str) -> None:
    manifest = json.loads((bench / "bench.json").read_text())
    (bench / "bench.json").write_text(json.dumps({**manifest, "cells": cells}))
    proc = report("bench", cwd=bench.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: bench/bench.json is damaged ({says}"), line


def test_an_unfinished_run_is_told_to_resume_with_the_config_it_was_started_with(
    tmp_path: Path,
) -> None:
    config = tmp_path / "servers.toml"
    config.write_text("")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps({"config_file": str(config)}))
    proc = report("r", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"resume it with `thinktree run --resume r --config {config}`" in proc.stderr
    config.unlink()  # gone since: a hint that names it would fail
    proc = report("r", cwd=tmp_path)
    assert "resume it with `thinktree run --resume r`" in proc.stderr


@pytest.mark.anyio
async def test_a_cell_its_limit_stopped_counts_per_problem_over_the_problems_that_ran(
    tmp_path: Path,
) -> None:
    """A stopped run's unrun problems are in its results (with no call): its tokens and
    cost per problem are over those that ran, as a whole run's are over all of them."""
    price = Price(prompt_per_m=1.0, completion_per_m=2.0)
    folders: dict[str, Path] = {}
    async with FakeServer(FakeBehaviour(native_n=False)) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", native_n="no"
        )
        for name, limit in (("whole", None), ("stopped", 60)):
            settings = RunSettings(
                modes=ModeSettings(mode="budget", budget=16),
                concurrency=1,
                out=tmp_path / name,
                max_run_tokens=limit,
                prices={"fake-model": price},
            )
            folders[name] = (await execute(case_problems(10), endpoint, settings)).folder
    whole, stopped = (load(folders[name]).cells[0] for name in ("whole", "stopped"))
    assert whole.stopped_by is None and stopped.stopped_by is not None
    ran = [p for p in stopped.problems if p.completion_tokens]
    assert 0 < len(ran) < len(stopped.problems) == len(whole.problems)
    assert stopped.tokens_per_problem == whole.tokens_per_problem
    assert stopped.cost_per_problem == pytest.approx(whole.cost_per_problem)
    assert stopped.problems_run == len(ran) and whole.problems_run == len(whole.problems)

    md: dict[str, str] = {}
    for name, folder in folders.items():
        out = tmp_path / f"report-{name}"
        proc = report(str(folder), "--no-plots", "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        md[name] = (out / "report.md").read_text()
    (stopped_row,), (whole_row,) = md_rows(md["stopped"], "Cells"), md_rows(md["whole"], "Cells")
    # still flagged as stopped, its tok/problem the whole run's
    assert stopped_row[0].endswith("(stopped)") and "Stopped by their limit" in md["stopped"]
    assert stopped_row[8] == whole_row[8] == f"{whole.tokens_per_problem:,.1f}"
    # how many of its problems ran, beside how many it has (a whole run's: all of them)
    assert stopped_row[1] == f"{len(ran)} of {len(stopped.problems)} ran"
    assert whole_row[1] == str(len(whole.problems))


@pytest.mark.parametrize(
    "mode",
    [
        ["--mode", "sequential", "--steps", "2", "--budget", "16"],
        ["--mode", "hybrid", "--n", "2", "--steps", "2", "--total-budget", "64"],
    ],
    ids=["sequential", "hybrid"],
)
def test_a_run_of_revisions_shows_its_accuracy_after_each_step(
    tmp_path: Path, mode: list[str]
) -> None:
    """q1 revises A into the right B at step 2 (in each branch), q0 keeps A: 0 % after
    step 1, 50 % after step 2 (the run's accuracy), in the run's summary, its results and
    its report."""
    from thinktree.testing.fake_server import fake_server_in_thread

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        revising = bool(messages) and str(messages[-1].get("content", "")).endswith(WAIT_CUE)
        if not revising:
            return "Answer: A"
        return " Answer: B" if "Case 1?" in json.dumps(messages) else ""

    data = tmp_path / "data.jsonl"
    write_dataset(data, case_problems(2))
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        cli = [sys.executable, "-m", "thinktree.cli", "run", str(data), "--endpoint"]
        run = subprocess.run(
            [*cli, server.base_url, *mode, "--out", "seq"],
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "100"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    assert "after each step   1: 0.0 % · 2: 50.0 %" in run.stdout, run.stdout
    results = json.loads((tmp_path / "seq" / "results.json").read_text())
    assert results["metrics"]["accuracy_by_step"] == [0.0, results["metrics"]["accuracy"]]
    assert results["metrics"]["accuracy"] == 0.5
    proc = report("seq", "--no-plots", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = md_rows((tmp_path / "r" / "report.md").read_text(), "Accuracy after each step")
    assert rows == [["seq", "0.0 %", "50.0 %", "50.0 %"]]


def test_the_terminal_curve_shows_a_dataset_names_control_characters(bench: Path) -> None:
    """report --plot-terminal printed them raw, as the terminal's own escapes, while its
    tables showed them as stand-ins."""
    manifest = json.loads((bench / "bench.json").read_text())
    for cell in manifest["cells"]:
        cell["dataset"] = "x \x1b[31m"
    (bench / "bench.json").write_text(json.dumps(manifest))
    proc = report(str(bench), "--no-plots", "--plot-terminal", cwd=bench.parent)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout
    assert "x ␛[31m: accuracy (%) vs completion tokens per problem" in proc.stdout
