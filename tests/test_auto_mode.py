"""The auto mode: the pilot's decision rule, and a real run whose decisions reach the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from thinktree.agents.auto import Auto
from thinktree.agents.modes import ModeSettings, build_strategy
from thinktree.agents.solver import Candidate
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread


def test_the_pilot_decides_mode_and_budget() -> None:
    auto = Auto(budget=100, n=4, steps=3, answer_tokens=10)
    assert auto.pilot_budget == 25
    easy = [Candidate("a", "B", 20), Candidate("b", "B", 20)]  # agree, 80 % used
    mode, budget, reason, agree, used = auto.decide(easy)
    assert (mode, budget, agree, used) == ("parallel", 200, True, 0.8)
    assert "agree (B): easy" in reason and "2× budget" in reason
    hard = [Candidate("a", "B", 2), Candidate("b", None, 3)]  # disagree, 10 % used
    mode, budget, reason, agree, used = auto.decide(hard)
    assert (mode, budget, agree) == ("sequential", 100, False)
    assert "disagree (B, none): hard" in reason and "would go unused" in reason
    # it may spend the pilot plus the dearer choice at the larger budget
    pilot = 2 * (25 + 10)
    assert auto.allowed_tokens() == pilot + max(4 * (200 + 10), 3 * 200 + 10)
    built = build_strategy(ModeSettings(mode="auto", budget=100, n=4, steps=3, answer_tokens=10))
    assert built == auto


def reply(body: dict[str, Any], index: int) -> str:
    prompt = json.dumps(body.get("messages"))
    if "easy" in prompt:  # both pilot samples agree, at length
        return "Thinking about it carefully step by step now. " * 4 + "Answer: A"
    return f"Answer: {'ABC'[index % 3]}"  # samples disagree, and say little


def test_auto_runs_records_its_decisions_and_the_report_shows_them(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    with data.open("w") as f:
        for pid in ("easy", "hard"):
            problem = {
                "id": pid,
                "question": f"An {pid} one?",
                "answer_type": "choice",
                "options": {"A": "x", "B": "y", "C": "z"},
                "answer": "A",
            }
            f.write(json.dumps(problem) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "250"
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        args = ["--endpoint", server.base_url, "--mode", "auto", "--budget", "64", "--n", "3"]
        run = subprocess.run(
            [sys.executable, "-m", "thinktree.cli", "run", str(data), *args, "--out", "r"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    decisions = {p["id"]: p["decision"] for p in results["problems"]}
    assert decisions["easy"]["mode"] == "parallel" and decisions["easy"]["budget"] == 128
    assert decisions["easy"]["agreement"] is True
    assert decisions["hard"]["mode"] == "sequential" and decisions["hard"]["budget"] == 64
    nodes = {p["id"]: {n["id"] for n in p["nodes"]} for p in results["problems"]}
    assert {"easy/pilot", "easy/pilot/b1", "easy/pilot/b2", "easy/b3"} <= nodes["easy"]
    assert {"hard/pilot", "hard/step1", "hard/step2"} <= nodes["hard"]
    assert not any(n.startswith("hard/b") for n in nodes["hard"])
    trace = [json.loads(line) for line in (tmp_path / "r" / "trace.jsonl").read_text().splitlines()]
    chosen = [e for e in trace if e["type"] == "strategy-chosen"]
    assert {e["problem_id"]: e["mode"] for e in chosen} == {
        "easy": "parallel",
        "hard": "sequential",
    }

    shown = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "report", "r", "--no-plots"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| easy | parallel | 128 | ✓ |" in md
    assert "the pilot's samples disagree (A, B): hard" in md
