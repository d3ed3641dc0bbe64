"""`thinktree runs` lists run folders, and a planted API key appears nowhere a run writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

KEY = "sk-planted-4f9b2c7e1d"


def cli(*args: str, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "COLUMNS": str(columns)}
    env.pop("OPENAI_BASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runs_lists_completed_and_unreadable_runs_without_secrets(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"id": f"q{i}", "question": f"q{i} Q?", "answer_type": "yesno", "answer": "yes"}
            )
            + "\n"
            for i in range(3)
        )
    )

    def refuse_q1(body: dict[str, object]) -> str | None:
        return "refused" if "q1 " in json.dumps(body) else None

    with (
        fake_server_in_thread(FakeBehaviour(reply="Yes, it does.\nAnswer: yes")) as server,
        fake_server_in_thread(FakeBehaviour(reply="Answer: yes", reject=refuse_q1)) as refusing,
    ):
        first = cli(
            "run",
            str(data),
            "--endpoint",
            server.base_url,
            "--out",
            "runs/a",
            "--verbose",
            cwd=tmp_path,
        )
        second = cli(
            "run",
            str(data),
            "--endpoint",
            server.base_url,
            "--mode",
            "parallel",
            "--n",
            "3",
            "--out",
            "runs/b",
            cwd=tmp_path,
        )
        # one problem's calls are refused: the run completes with failed calls
        third = cli(
            "run", str(data), "--endpoint", refusing.base_url, "--out", "runs/c", cwd=tmp_path
        )
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert third.returncode == 4, third.stderr  # incomplete: calls failed
    (tmp_path / "thinktree.toml").write_text(
        '[prices]\n"fake-model" = { prompt = 1.0, completion = 2.0 }\n'
    )
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "run.sqlite").write_text("not sqlite")

    listed = cli("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {
        line.split("│")[1].strip(): line
        for line in listed.stdout.splitlines()
        if line.startswith("│")
    }
    assert "completed" in rows["a"] and "budget" in rows["a"] and "3/3" in rows["a"]
    assert "completed" in rows["b"] and "parallel" in rows["b"]
    assert "unreadable" in rows["broken"] and "not a SQLite database" in rows["broken"]
    assert "completed" in rows["c"] and "1 problem(s) failed, 1 model call(s) failed" in rows["c"]
    assert "failed" not in rows["a"]
    results = json.loads((tmp_path / "runs" / "a" / "results.json").read_text())
    m = results["metrics"]
    expected = (m["prompt_tokens"] * 1.0 + m["completion_tokens"] * 2.0) / 1e6
    assert f"${expected:.4f}" in rows["a"]

    # the key was in the environment of every command: it must not be in anything written
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for proc in (first, second, listed):
        assert KEY not in proc.stdout + proc.stderr


def test_runs_says_which_run_folders_are_damaged_and_never_calls_them_completed(
    tmp_path: Path,
) -> None:
    import shutil

    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"id": "q0", "question": "q0 Q?", "answer_type": "yesno", "answer": "yes"})
        + "\n"
    )
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        made = cli("run", str(data), "--endpoint", server.base_url, "--out", "runs/a", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    runs = tmp_path / "runs"

    def variant(name: str, *, drop: tuple[str, ...] = (), **files: bytes) -> None:
        shutil.copytree(runs / "a", runs / name)
        for gone in drop:
            (runs / name / gone).unlink()
        for file, content in files.items():
            (runs / name / file.replace("_", ".")).write_bytes(content)

    whole = (runs / "a" / "results.json").read_bytes()
    variant("empty-results", results_json=b"")
    variant("cut-results", results_json=whole[: len(whole) // 2])
    variant("list-results", results_json=b"[]")
    variant("no-results", drop=("results.json",))
    variant("garbage-manifest", run_json=b"\x00\x00 not json")
    variant("no-manifest", drop=("run.json",))
    variant("no-store", drop=("run.sqlite",))
    variant("manifest-only", drop=("run.sqlite", "results.json", "trace.jsonl", "calls.sqlite"))
    (runs / "store-a-folder").mkdir()
    (runs / "store-a-folder" / "run.sqlite").mkdir()
    (runs / "not-a-run").mkdir()  # no run.sqlite, no run.json: not listed

    listed = cli("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stdout + listed.stderr
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in listed.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["a"][0] == "completed" and rows["a"][-1] == ""
    expected = {
        "empty-results": ("damaged", "results.json is empty"),
        "cut-results": ("damaged", "results.json is cut off or damaged"),
        "list-results": ("damaged", "results.json is cut off or damaged"),
        "no-results": ("interrupted", "results.json is missing: a resume writes it"),
        "garbage-manifest": ("damaged", "run.json is cut off or damaged"),
        "no-manifest": ("damaged", "run.json is missing: it cannot be resumed"),
        "no-store": ("damaged", "no run.sqlite"),
        "manifest-only": ("interrupted", "no run.sqlite yet: a resume makes it"),
        "store-a-folder": ("unreadable", "is not a file, so not a run store"),
    }
    for name, (status, note) in expected.items():
        assert rows[name][0] == status, (name, rows[name])
        assert note in rows[name][-1], (name, rows[name])
    assert set(rows) == {"a", *expected}
    # what the manifest says of a run without a store
    assert rows["manifest-only"][1:4] == rows["a"][1:4]  # mode, endpoint, model


def test_runs_prices_a_judge_s_tokens_at_the_judge_model_s_price(tmp_path: Path) -> None:
    """A judge on another model: the list's cost is what the run reported, the solver's
    tokens at its price and the judge's at the judge model's, not all at the solver's;
    where the judge's model had no price, it gives no cost, and says why."""
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "question": f"q{i} Q?",
                    "answer_type": "choice",
                    "options": {"A": "a", "B": "b"},
                    "answer": "B",
                }
            )
            + "\n"
            for i in range(2)
        )
    )
    solver_price = '"fake-model" = { prompt = 1.0, completion = 2.0 }\n'
    judge_price = '"judge-model" = { prompt = 100.0, completion = 200.0 }\n'
    with (
        fake_server_in_thread(FakeBehaviour(reply="Let me think.\nAnswer: B")) as server,
        fake_server_in_thread(FakeBehaviour(reply="9", model="judge-model")) as judge,
    ):
        grader = f'[endpoints.grader]\nbase_url = "{judge.base_url}"\n\n[prices]\n'
        made = {}
        for name, prices in (("priced", solver_price + judge_price), ("unpriced", solver_price)):
            (tmp_path / "thinktree.toml").write_text(grader + prices)
            made[name] = cli(
                "run",
                str(data),
                "--endpoint",
                server.base_url,
                "--mode",
                "parallel",
                "--n",
                "3",
                "--verifier",
                "judge:grader,score=rating",
                "--out",
                f"runs/{name}",
                cwd=tmp_path,
            )
            assert made[name].returncode == 0, made[name].stderr
    rows = _listed(tmp_path)
    m = json.loads((tmp_path / "runs" / "priced" / "results.json").read_text())["metrics"]
    judged = m["verifier"]
    assert judged["cost_usd"] and judged["prompt_tokens"]  # the judge spent, at its price
    reported = m["cost_usd"] + judged["cost_usd"]
    said = made["priced"].stdout  # the run's own summary: its cost, then its verifiers'
    assert re.search(rf"^cost +\${m['cost_usd']:.4f}", said, re.MULTILINE), said
    assert re.search(rf"^verifier tokens .* \${judged['cost_usd']:.4f}", said, re.MULTILINE)
    assert rows["priced"]["cost"] == f"${reported:.4f}"
    spent = sum(m[k] + judged[k] for k in ("prompt_tokens", "completion_tokens"))
    assert rows["priced"]["tokens"] == f"{spent:,}"
    assert rows["priced"]["note"] == ""
    # the run gave no cost for its judge: neither does the list, and it says why
    assert rows["unpriced"]["cost"] == "—"
    assert rows["unpriced"]["note"] == "no price for a verifier's model: judge-model"
    # each run is priced as it was made (its run.json keeps its prices), not at today's
    (tmp_path / "thinktree.toml").write_text(
        '[prices]\n"fake-model" = { prompt = 50.0, completion = 50.0 }\n'
    )
    assert _listed(tmp_path)["priced"]["cost"] == f"${reported:.4f}"
    # a price given since for the judge's model prices the run made without one: its
    # verdicts record their model (its solver's price is still the one it recorded)
    (tmp_path / "thinktree.toml").write_text(
        '[prices]\n"fake-model" = { prompt = 50.0, completion = 50.0 }\n' + judge_price
    )
    m = json.loads((tmp_path / "runs" / "unpriced" / "results.json").read_text())["metrics"]
    judged = m["verifier"]
    assert judged["cost_usd"] is None and judged["prompt_tokens"]
    judge_cost = (judged["prompt_tokens"] * 100.0 + judged["completion_tokens"] * 200.0) / 1e6
    rows = _listed(tmp_path)
    assert rows["unpriced"]["cost"] == f"${m['cost_usd'] + judge_cost:.4f}"
    assert rows["unpriced"]["note"] == ""


def _listed(cwd: Path) -> dict[str, dict[str, str]]:
    """``thinktree runs`` in ``cwd``: each run's row by its folder's name."""
    listed = cli("runs", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    header, *lines = [line for line in listed.stdout.splitlines() if line[:1] in "┃│"]
    columns = [cell.strip() for cell in header.split("┃")[1:-1]]
    return {
        cells[0]: dict(zip(columns, cells, strict=True))
        for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in lines)
    }


def test_runs_in_an_80_column_terminal_shows_each_word_whole(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    problem = {"id": "q", "question": "Q?", "answer_type": "yesno", "answer": "yes"}
    data.write_text(json.dumps(problem) + "\n")
    folder = "runs/001_pubmedqa_mode-parallel_budget-1024"  # whole: under half the width
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", folder, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    listed = cli("runs", cwd=tmp_path, columns=80)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = {word for line in lines for word in line.replace("│", " ").split()}
    assert {"completed", "budget", "fake-model", "1/1"} <= words  # never "complet" over "ed"
    assert "runs in runs (1/" in listed.stdout  # in parts, each with the run's name
    name = folder.removeprefix("runs/")
    assert sum(line.count(name) for line in lines) == listed.stdout.count("runs in runs (")


def test_token_counts_are_grouped_by_thousands_as_in_the_terminal_view(tmp_path: Path) -> None:
    """The run's summary and ``runs`` print 1,234 as the terminal view and report do."""
    data = tmp_path / "d.jsonl"
    question = " ".join(["word"] * 1500) + "?"  # the fake server counts a token a word
    problem = {"id": "q", "question": question, "answer_type": "yesno", "answer": "yes"}
    data.write_text(json.dumps(problem) + "\n")
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "runs/r", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    m = json.loads((tmp_path / "runs" / "r" / "results.json").read_text())["metrics"]
    assert m["prompt_tokens"] >= 1000
    summary = re.search(r"^tokens +prompt (\S+) ", ran.stdout, re.MULTILINE)
    assert summary is not None, ran.stdout
    assert summary[1] == f"{m['prompt_tokens']:,}"
    spent = m["prompt_tokens"] + m["completion_tokens"]
    assert _listed(tmp_path)["r"]["tokens"] == f"{spent:,}"
