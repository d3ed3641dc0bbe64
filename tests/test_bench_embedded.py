"""A tiny bench on the embedded model: 2 modes × 2 budgets × 2 data sets, killed and resumed,
then reported with its plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "250"
    return subprocess.Popen(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bench_on_the_embedded_model_resumes_and_reports(embedded_url: str, tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(
        f"""
[[datasets]]
path = "{SHARED_DATA / "medqa.sample.jsonl"}"
limit = 2

[[datasets]]
path = "{SHARED_DATA / "pubmedqa.sample.jsonl"}"
limit = 2

[grid]
mode = ["budget", "parallel"]
budget = [16, 32]

[run]
endpoint = "{embedded_url}"
n = 2
answer_tokens = 16
seed = 0
"""
    )
    bench = tmp_path / "b"
    proc = cli("bench", str(config), "--out", str(bench), cwd=tmp_path)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if list(bench.glob("*/results.json")) and len(list(bench.glob("*/run.json"))) > len(
            list(bench.glob("*/results.json"))
        ):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    before = {p.parent.name: p.read_bytes() for p in bench.glob("*/results.json")}
    assert 1 <= len(before) < 8

    resumed = cli("bench", str(config), "--out", str(bench), cwd=tmp_path)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out + err
    cells = sorted(bench.glob("*/results.json"))
    assert len(cells) == 8
    for path in cells:  # finished cells were left alone
        if path.parent.name in before:
            assert path.read_bytes() == before[path.parent.name]
    modes = {json.loads(p.read_text())["settings"]["mode"] for p in cells}
    assert modes == {"budget", "parallel"}

    shown = cli("report", str(bench), cwd=tmp_path)
    out, err = shown.communicate(timeout=300)
    assert shown.returncode == 0, out + err
    md = (bench / "report.md").read_text()
    assert "## Cells" in md and "## Comparisons" in md and "smollm2" in md
    for name in ("scaling", "budget", "coverage", "cost"):
        assert (bench / "plots" / f"{name}.png").stat().st_size > 10_000
    assert (bench / "report.html").read_text().count("data:image/png;base64,") == 4


def test_a_bench_on_the_embedded_default_says_it_uses_the_served_model(
    embedded_url: str, tmp_path: Path
) -> None:
    """With no endpoint, the bench's cells run on the embedded model: the server that
    `thinktree serve` runs (the session's), which it names, instead of starting one."""
    config = tmp_path / "bench.toml"
    config.write_text(
        f"""
[[datasets]]
path = "{SHARED_DATA / "medqa.sample.jsonl"}"
limit = 1

[grid]
budget = [8]

[run]
answer_tokens = 8
"""
    )
    proc = cli("bench", str(config), "--out", str(tmp_path / "b"), cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    said = f"using the embedded model server (vLLM) that `thinktree serve` runs at {embedded_url}"
    assert said in err.splitlines() and "starting the embedded model server" not in err
    (cell,) = (tmp_path / "b").glob("*/results.json")
    assert json.loads(cell.read_text())["endpoint"]["base_url"] == embedded_url
