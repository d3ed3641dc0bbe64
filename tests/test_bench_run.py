"""`thinktree bench` on a real local HTTP server: the grid runs, resumes after SIGKILL
without paying twice for a finished call, and shares calls between cells."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench_data import write_choice_problems
from choice_set import beta_problems
from request_keys import SEEN, reply, request_key
from thinktree.bench.cluster import InProcessShards, ShardRunner
from thinktree.bench.grid import DatasetSpec, load_bench_config
from thinktree.bench.runner import load_cell_problems, run_bench
from thinktree.bench.sharding import SHARDS, ShardReport, ShardSpec
from thinktree.datasets import DatasetError
from thinktree.errors import ConfigError
from thinktree.orchestrator.run import run_outcome
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault, fake_server_in_thread


def write_config(folder: Path, url: str, grid: str) -> Path:
    write_choice_problems(folder / "one.jsonl", "p")
    write_choice_problems(folder / "two.jsonl", "q")
    config = folder / "bench.toml"
    config.write_text(
        f"""
[[datasets]]
path = "one.jsonl"

[[datasets]]
path = "two.jsonl"
limit = 2

[grid]
{grid}

[run]
endpoint = "{url}"
seed = 2
n = 2
concurrency = 1
"""
    )
    return config


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


def bench_parallel(folder: Path, grid: str) -> None:
    """Run a parallel-mode bench over ``grid`` into ``folder/out`` against a fresh fake
    server, with ``SEEN`` holding the requests it made."""
    SEEN.clear()
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(folder, server.base_url, grid)
        text = config.read_text().replace("[run]\n", '[run]\nmode = "parallel"\n')
        config.write_text(text)
        proc = cli("bench", str(config), "--out", "out", cwd=folder)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err


def committed(bench: Path) -> set[str]:
    keys: set[str] = set()
    for path in bench.glob("*/calls.sqlite"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT request FROM responses").fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            conn.close()
        keys |= {request_key(json.loads(r[0])) for r in rows}
    return keys


def test_bench_resumes_after_a_kill_without_paying_twice(tmp_path: Path) -> None:
    SEEN.clear()
    behaviour = FakeBehaviour(reply=reply, delay_s=0.08)
    with fake_server_in_thread(behaviour) as server:
        config = write_config(
            tmp_path, server.base_url, 'mode = ["budget", "parallel"]\nbudget = [16, 32]'
        )
        bench = tmp_path / "out"
        proc = cli("bench", str(config), "--out", str(bench), cwd=tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list(bench.glob("*/results.json"))
            started = list(bench.glob("*/run.json"))
            if len(done) >= 2 and len(started) > len(done):  # killed inside a cell
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        finished_before = {p.parent.name for p in bench.glob("*/results.json")}
        assert 2 <= len(finished_before) < 8
        # the cell cut off (it can finish between the look and the kill on a busy machine)
        cut = {p.parent.name for p in bench.glob("*/run.json")} - finished_before
        paid = committed(bench)
        seen_before = len(SEEN)

        resumed = cli("bench", str(config), "--out", str(bench), cwd=tmp_path)
        out, err = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, out + err
        assert "resuming" in err and "8 of 8 cells done" in out
        assert ("(resumed)" in err) == bool(cut)

    names = sorted(p.name for p in bench.iterdir() if p.is_dir())
    assert len(names) == 8 and all((bench / n / "results.json").is_file() for n in names)
    # finished cells were kept as they were; no committed call was requested again
    again = SEEN[seen_before:]
    assert not paid & set(again), "a call paid for before the kill was made again"
    manifest = json.loads((bench / "bench.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == names
    cell = json.loads((bench / names[-1] / "results.json").read_text())
    assert cell["settings"]["mode"] == "parallel" and cell["settings"]["budget"] == 32
    assert cell["settings"]["n"] == 2 and cell["settings"]["seed"] == 2


def test_cells_that_make_the_same_calls_share_them(tmp_path: Path) -> None:
    SEEN.clear()
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]',
        )
        proc = cli("bench", str(config), "--out", "out", cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    # two datasets × two problems, one n=2 request each: the second aggregate pays nothing
    # (capability probes aside)
    assert len([key for key in SEEN if "Which one" in key]) == 4
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*/results.json"))]
    assert [r["settings"]["aggregate"] for r in results] == [
        "majority",
        "length-weighted",
        "majority",
        "length-weighted",
    ]
    assert results[0]["metrics"]["completion_tokens"] == results[1]["metrics"]["completion_tokens"]
    assert err.count(", 2 calls from the cache") == 2  # each length-weighted cell: 2 problems


def test_a_cell_that_reads_back_one_call_says_one_call(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        grid = 'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]'
        config = write_config(tmp_path, server.base_url, grid)
        text = config.read_text().replace('path = "one.jsonl"\n', 'path = "one.jsonl"\nlimit = 1\n')
        config.write_text(text.replace("limit = 2", "limit = 1"))  # one problem each
        proc = cli("bench", str(config), "--out", "out", cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    assert err.count(", 1 call from the cache") == 2 and "1 calls" not in err


def _priced_aggregates(folder: Path, url: str, more: str = "") -> Path:
    """Bench a priced grid over two aggregates (the second cell reads every call back from
    the first's) on one dataset into ``out``; its config."""
    grid = 'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]\n' + more
    config = write_config(folder, url, grid)
    text = config.read_text().replace('[[datasets]]\npath = "two.jsonl"\nlimit = 2\n', "")
    config.write_text(text + '[prices]\n"fake-model" = { prompt = 1.0, completion = 2.0 }\n')
    proc = cli("bench", str(config), "--out", "out", cwd=folder)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    return config


def test_a_cell_that_reads_back_another_cells_calls_did_not_spend_them(tmp_path: Path) -> None:
    """The second aggregate reads every call back from the first cell's: its cost, latency
    and retries are not its own (the first cell's call took a retry), they are read back;
    its tokens are still those its answers took. A resume of it says the same."""
    SEEN.clear()

    def faults(request: int) -> Fault | None:  # the probes' seven requests come first
        return Fault.SERVER_ERROR if request == 7 else None

    with fake_server_in_thread(FakeBehaviour(reply=reply, delay_s=0.02), faults=faults) as server:
        config = _priced_aggregates(tmp_path, server.base_url)
        made, reused = sorted((tmp_path / "out").glob("*/results.json"))
        (tmp_path / "out" / reused.parent.name / "results.json").unlink()  # resumed: read back
        proc = cli("bench", str(config), "--out", "out", cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    spent = json.loads(made.read_text())["metrics"]
    read = json.loads(reused.read_text())["metrics"]
    assert spent["retries"] == 1 and spent["cost_usd"] > 0 and spent["latency_p50_s"] > 0
    assert read["completion_tokens"] == spent["completion_tokens"] and read["calls"] == 2
    assert read["cost_usd"] == 0 and read["retries"] == 0
    assert read["latency_p50_s"] is None and read["latency_p95_s"] is None
    assert spent["read_back"] is None
    assert read["read_back"] == {
        "calls": 2,
        "prompt_tokens": spent["prompt_tokens"],
        "completion_tokens": spent["completion_tokens"],
        "cost_usd": spent["cost_usd"],
    }
    proc = cli("report", "out", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    report = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in report.splitlines() if "length-weighted" in line)
    assert f"2 calls, ${spent['cost_usd']:.4f}" in row and "$0.0000" in row, row
    out, err = cli("runs", "out", cwd=tmp_path).communicate(timeout=120)
    row = next(line for line in out.splitlines() if "length-weighted" in line)
    assert "$0.0000" in row and "2 calls read back from another run's" in row, out + err


def test_a_cell_that_reads_back_another_cells_judge_calls_did_not_pay_for_them(
    tmp_path: Path,
) -> None:
    """A judge on the run's endpoint reads its calls back from the bench's store as the
    solver does: the second cell's verdicts take their tokens, not their cost, and
    `runs` and the report say what was read back (it was counted as paid twice)."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        _priced_aggregates(tmp_path, server.base_url, 'verifier = ["judge"]')
    made, reused = (
        json.loads(path.read_text())["metrics"]
        for path in sorted((tmp_path / "out").glob("*/results.json"))
    )
    paid, judged = made["verifier"], reused["verifier"]
    assert paid["cost_usd"] > 0 and paid["read_back"] is None
    assert judged["verdicts"] == paid["verdicts"] == 4
    assert judged["prompt_tokens"] == paid["prompt_tokens"] > 0  # the answers took them
    assert judged["cost_usd"] == 0
    assert judged["read_back"] == {
        "calls": 4,
        "prompt_tokens": paid["prompt_tokens"],
        "completion_tokens": paid["completion_tokens"],
        "cost_usd": paid["cost_usd"],
    }
    out, err = cli("runs", "out", cwd=tmp_path).communicate(timeout=120)
    row = next(line for line in out.splitlines() if "length-weighted" in line)
    assert "$0.0000" in row and "6 calls read back from another run's" in row, out + err
    proc = cli("report", "out", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    report = (tmp_path / "out" / "report.md").read_text()
    verifiers = report[report.index("Verifiers") :]
    row = next(line for line in verifiers.splitlines() if "length-weighted" in line)
    assert f"4 calls, ${paid['cost_usd']:.4f}" in row and "$0.0000" in row, row


def test_a_sharded_cell_keeps_the_calls_it_read_back_apart(tmp_path: Path) -> None:
    """Each shard of the second aggregate reads its calls back from the first cell's: the
    merged cell says so, as an unsharded one does."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]',
        )
        config.write_text(
            config.read_text() + '[prices]\n"fake-model" = { prompt = 1.0, completion = 2.0 }\n'
        )
        _bench_in_shards(config, "nowhere")
    cells = sorted((tmp_path / "out").glob("*/results.json"))
    made, reused = (json.loads(path.read_text())["metrics"] for path in cells[:2])
    assert made["cost_usd"] > 0
    assert reused["cost_usd"] == 0 and reused["latency_p50_s"] is None
    assert made["read_back"] is None
    assert reused["read_back"]["calls"] == 2 and reused["read_back"]["cost_usd"] == made["cost_usd"]
    shared = sqlite3.connect(tmp_path / "out" / "calls.sqlite")
    try:  # the bench's own store keeps no call as read back
        assert shared.execute("SELECT count(*) FROM read_back").fetchone() == (0,)
    finally:
        shared.close()


def test_a_bench_with_no_finished_cell_is_told_to_go_on_with_its_config(tmp_path: Path) -> None:
    """The report of a bench whose cells have not finished names the config the bench was
    last run with (it said CONFIG), and a config renamed since is the one it names."""
    from thinktree.bench.runner import prepare

    config = write_config(tmp_path, "http://127.0.0.1:9/v1", 'mode = ["budget"]')
    prepare(load_bench_config(config), tmp_path / "out")
    renamed = config.rename(tmp_path / "renamed.toml")
    prepare(load_bench_config(renamed), tmp_path / "out")
    proc = cli("report", "out", cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "has no finished cell yet" in err, err
    assert f"thinktree bench {renamed} --out out" in err, err
    manifest = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert manifest["config_file"] == str(renamed)


def test_bad_bench_configs_fail_in_one_line_before_anything_runs(tmp_path: Path) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    cases = {
        'verifierx = ["a"]': "unknown key 'verifierx'; valid keys: ",
        'budget = ["lots"]': "budget: expected a whole number",
        'mode = ["budget", "psychic"]': "unknown mode 'psychic'",
        'perturbation = ["gaslight"]': "unknown perturbation 'gaslight'",
        "mode = []": "must be a non-empty list",
    }
    for grid, message in cases.items():
        config = tmp_path / "c.toml"
        config.write_text(f'[[datasets]]\npath = "one.jsonl"\n[grid]\n{grid}\n')
        proc = cli("bench", str(config), "--out", "never", cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (grid, out, err)
        assert message in err, (grid, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "never").exists()
    (tmp_path / "c.toml").write_text('[grid]\nmode = ["budget"]\n')
    proc = cli("bench", str(tmp_path / "c.toml"), "--out", "never", cwd=tmp_path)
    assert "add at least one [[datasets]]" in proc.communicate(timeout=60)[1]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("[grid]\nbudget = [100000000000000000000]", "budget must be at most 1000000000000"),
        ('[grid]\nmode = ["budget"]\n[run]\nseed = -99999999999999999999', "seed must be between"),
        ('[grid]\nmode = ["parallel"]\n[run]\nn = 10000000000000', "n must be at most"),
        ('[grid]\nmode = ["budget"]\n[run]\nconcurrency = 10000000000000', "concurrency"),
    ],
)
def test_a_bench_config_checks_the_range_of_its_settings(
    tmp_path: Path, tables: str, message: str
) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n{tables}\n')
    with pytest.raises(ConfigError, match=message):
        load_bench_config(config)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ('mode = ["budget"]\nn = [4]', "[grid] n is not used in mode budget; leave it out"),
        ("n = [4]", "[grid] n is not used in mode budget"),  # budget: the default mode
        ('mode = ["parallel"]\nwave = [2]', "[grid] wave is not used in mode parallel"),
    ],
)
def test_a_grid_value_no_cell_reads_is_refused_as_run_refuses_it(
    tmp_path: Path, grid: str, message: str
) -> None:
    """It ran, named the cells after it (001_one_mode-budget_n-4) and changed nothing."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n[grid]\n{grid}\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_bench_config(config)
    # one mode of the grid reads it: the cells it runs in use it
    key = grid.split("\n")[-1]
    config.write_text(
        f'[[datasets]]\npath = "one.jsonl"\n[grid]\nmode = ["budget", "adaptive"]\n{key}\n'
    )
    assert len(load_bench_config(config).cells()) == 2


def test_a_grid_cell_that_cannot_run_is_named_a_shared_setting_is_not(tmp_path: Path) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    grid = '[grid]\nmode = ["parallel", "adaptive"]\naggregate = ["majority", "length-weighted"]'
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n{grid}\n')
    with pytest.raises(ConfigError) as refused:
        load_bench_config(config)
    assert str(refused.value).startswith(
        f"{config}: cell 004_one_mode-adaptive_aggregate-length-weighted: --aggregate "
        "length-weighted is not a count of votes"
    )
    shared_seed = '[grid]\nmode = ["parallel", "adaptive"]\n[run]\nseed = -99999999999999999999'
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n{shared_seed}\n')
    with pytest.raises(ConfigError, match="seed must be between") as shared:
        load_bench_config(config)
    assert str(shared.value).startswith(f"{config}: --seed must be between")


@pytest.mark.parametrize(
    ("tables", "cell", "where"),
    [
        (
            '[grid]\nmode = ["budget", "adaptive"]\nwave = [2, 8]\n[run]\nn = 4',
            "003_one_mode-adaptive_wave-8",  # budget reads no wave: one cell
            "[grid]",
        ),
        (
            '[grid]\nmode = ["parallel", "adaptive"]\n[run]\nn = 4\nwave = 8',
            "002_one_mode-adaptive",
            "[run]",
        ),
    ],
)
def test_a_bench_refuses_a_wave_above_its_n(
    tmp_path: Path, tables: str, cell: str, where: str
) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    nowhere = 'endpoint = "http://127.0.0.1:9/v1"'  # never reached: refused before
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n{tables}\n{nowhere}\n')
    proc = cli("bench", str(config), "--out", "never", cwd=tmp_path)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cell {cell}: wave must be between 1 and n (4), not 8" in err, err
    assert f"lower wave in {where} or raise n" in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("tables", "says"),
    [
        ('[grid]\nmodel = ["gpt-x", "llama-y"]', "model 'gpt-x': the embedded endpoint serves"),
        ('[grid]\nendpoint = ["embedded", "nope"]', "unknown endpoint 'nope'"),
        ('[grid]\nmode = ["budget", "parallel"]\n[run]\nmodel = "gpt-x"', "model 'gpt-x': the"),
    ],
)
def test_a_bench_whose_endpoint_or_model_cannot_be_had_is_refused_in_one_line(
    tmp_path: Path, tables: str, says: str
) -> None:
    """A model the embedded endpoint does not serve would run the embedded model under its
    name (model = ["gpt-x", "llama-y"] compared it with itself): refused before anything
    runs, in one line naming the config and the model (not the cell, whose name could hold
    a URL's password)."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text(f'[[datasets]]\npath = "one.jsonl"\n{tables}\n')
    proc = cli("bench", str(config), "--out", "never", cwd=tmp_path)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {config}: {says}"), err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("key", ["limit", "offset"])
def test_a_bench_dataset_checks_the_range_of_its_limit_and_offset(tmp_path: Path, key: str) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[datasets]]\npath = "one.jsonl"\n{key} = 100000000000000000000\n'
        '[grid]\nmode = ["budget"]\n'
    )
    with pytest.raises(ConfigError, match=f"{key} must be a whole number from"):
        load_bench_config(config)


@pytest.mark.parametrize(
    ("offset", "limit", "why"),
    [
        (2, None, "dataset 'one' holds 2 problems: offset 2 leaves none; give an offset below 2"),
        (0, 0, "dataset 'one' has no problems after offset/limit"),
    ],
)
def test_a_bench_dataset_sliced_to_nothing_says_why(
    tmp_path: Path, offset: int, limit: int | None, why: str
) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    spec = DatasetSpec(name="one", path=tmp_path / "one.jsonl", offset=offset, limit=limit)
    with pytest.raises(DatasetError) as caught:
        load_cell_problems(spec, "none")
    assert str(caught.value) == why


def test_a_verifier_grid_shares_the_samples_it_judges(tmp_path: Path) -> None:
    bench_parallel(tmp_path, 'verifier = [[], ["judge"]]')
    results = {
        p.parent.name: json.loads(p.read_text())
        for p in sorted((tmp_path / "out").glob("*/results.json"))
    }
    assert sorted(results) == [
        "001_one_verifier-none",
        "002_one_verifier-judge",
        "003_two_verifier-none",
        "004_two_verifier-judge",
    ]
    judged = results["002_one_verifier-judge"]["settings"]
    assert judged["verifiers"] == ["judge"] and judged["aggregate"] == "verifier-weighted"
    assert results["001_one_verifier-none"]["settings"]["verifiers"] == []
    # the samples were drawn once per problem; the judge's own calls come on top
    sampled = [json.loads(k) for k in SEEN if "Which one" in k]
    assert sum(1 for request in sampled if request[4] == 2) == 4  # one n=2 request a problem
    md = _report_md(tmp_path)
    verifier = results["002_one_verifier-judge"]["metrics"]["verifier"]
    pick = verifier["pick_accuracy"]
    shown = "n/a" if pick is None else f"{100 * pick:.1f} %"
    assert f"| one · verifier=judge | {verifier['problems']} | {shown} |" in md
    assert "| one · verifier=none |" not in md.split("### Verifiers")[1]


def test_two_endpoints_side_by_side_with_prices_from_the_bench_config(tmp_path: Path) -> None:
    open_model = FakeBehaviour(reply=reply, model="open-7b")
    paid_model = FakeBehaviour(reply="Weighing it up. Answer: A", model="paid-large")
    with fake_server_in_thread(open_model) as one, fake_server_in_thread(paid_model) as two:
        config = write_config(tmp_path, one.base_url, 'endpoint = ["open", "paid"]')
        text = config.read_text().replace(f'endpoint = "{one.base_url}"\n', "")
        config.write_text(
            text
            + f"""
[endpoints.open]
base_url = "{one.base_url}"

[endpoints.paid]
base_url = "{two.base_url}"

[prices]
"open-7b" = {{ prompt = 0.1, completion = 0.2 }}
"paid-large" = {{ prompt = 3.0, completion = 15.0 }}
"""
        )
        proc = cli("bench", str(config), "--out", "out", cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    for path in (tmp_path / "out").glob("*/results.json"):
        results = json.loads(path.read_text())
        m = results["metrics"]
        price = {"open-7b": (0.1, 0.2), "paid-large": (3.0, 15.0)}[results["model"]]
        expected = (m["prompt_tokens"] * price[0] + m["completion_tokens"] * price[1]) / 1e6
        assert m["cost_usd"] == pytest.approx(expected, abs=1e-6)
        assert results["endpoint"]["name"] in path.parent.name
    md = _report_md(tmp_path)
    assert "| one · endpoint=open | 2 |" in md and "| two · endpoint=paid | 2 |" in md
    # [run]'s n = 2 is read by no cell (each is in budget mode): not said to be shared
    assert "Shared options: concurrency=1, seed=2\n" in md
    assert "| one | endpoint | open | paid | 2 |" in md


def test_a_bench_probes_its_endpoint_once_for_every_cell(tmp_path: Path) -> None:
    bench_parallel(tmp_path, "budget = [16, 32]")
    assert len(list((tmp_path / "out").glob("*/results.json"))) == 4
    # the probe's prompts (thinktree.agents.capabilities): chat, and /v1/completions
    probes = ("Count from one to ten", "The capital of France is")
    probing = [any(p in key for p in probes) for key in SEEN]
    first_solving = probing.index(False)
    assert first_solving > 0  # the first cell probed before it solved anything
    assert sum(probing) == first_solving  # and no cell after it probed again
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/run.json")]
    assert len({json.dumps(m["capabilities"], sort_keys=True) for m in manifests}) == 1


def test_running_a_bench_again_sends_only_the_calls_that_failed(tmp_path: Path) -> None:
    down = {"on": True}

    def outage(body: dict[str, object]) -> str | None:
        asks = json.dumps(body.get("messages"))
        return "the model is being reloaded" if down["on"] and "p case 1" in asks else None

    def bench(status: int = 0) -> str:
        proc = cli("bench", str(config), "--out", "out", cwd=tmp_path)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == status, out + err
        return out + err

    SEEN.clear()
    with fake_server_in_thread(FakeBehaviour(reply=reply, reject=outage)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        first = bench(4)  # as a run whose calls failed: its results are incomplete
        down["on"] = False
        SEEN.clear()
        second = bench()
        again = [key for key in SEEN if "Which one" in key]
        third = bench()
    assert "1 cell(s) finished with 1 failed model call(s) (the first with: " in first
    assert "the model is being reloaded" in first  # why, which no table shows
    assert "resuming out: 1/2 cells already done" in second
    assert len(again) == 1 and "p case 1" in again[0]  # only the call that failed
    assert "failed model call" not in second
    assert "2 of 2 cells done (0 run now)" in third
    for path in (tmp_path / "out").glob("*/results.json"):
        saved = json.loads(path.read_text())
        assert saved["metrics"]["failed"] == 0
        assert saved["metrics"]["answered"] == saved["metrics"]["problems"]


def test_a_bench_says_which_calls_passed_the_context_and_never_sends_them_again(
    tmp_path: Path,
) -> None:
    def too_long(body: dict[str, object]) -> str | None:
        if "p case 1" in json.dumps(body.get("messages")):
            return "This model's maximum context length is 2048 tokens. However, you requested 3000"
        return None

    with fake_server_in_thread(FakeBehaviour(reply=reply, reject=too_long)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        code, out, err = _bench(config, tmp_path)
        SEEN.clear()
        again = _bench(config, tmp_path)
    assert code == 0, out + err  # complete: nothing a resume could mend
    assert "; 1 model call(s) past the model's context" in err
    assert "1 cell(s) had 1 model call(s) refused as longer than the model's context" in err
    assert "maximum context length is 2048 tokens" in err
    assert "failed model call" not in out + err
    assert again[0] == 0 and "2 of 2 cells done (0 run now)" in again[1]
    assert not [key for key in SEEN if "Which one" in key]  # not sent again
    md = _report_md(tmp_path)
    assert "With model calls refused as longer than the model's context" in md
    assert "failed model calls" not in md


def _report_md(cwd: Path) -> str:
    """``thinktree report out --no-plots`` in ``cwd``: the report.md it wrote."""
    report = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "report", "out", "--no-plots"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    return (cwd / "out" / "report.md").read_text()


def _bench(config: Path, cwd: Path, out: str = "out") -> tuple[int, str, str]:
    proc = cli("bench", str(config), "--out", out, cwd=cwd)
    stdout, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    return proc.returncode, stdout, stderr


def test_a_bench_run_again_with_other_run_settings_is_refused(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        assert _bench(config, tmp_path)[0] == 0
        before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
        config.write_text(config.read_text().replace("seed = 2\nn = 2", "seed = 7\nn = 4"))
        code, _, err = _bench(config, tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "other [run] settings (n, seed)" in err
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before
        # a new concurrency changes no answer: that one is taken
        config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 3"))
        config.write_text(config.read_text().replace("seed = 7\nn = 4", "seed = 2\nn = 2"))
        code, _out, err = _bench(config, tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["run"]["concurrency"] == 3


def test_a_bench_whose_endpoint_now_serves_another_model_is_refused(tmp_path: Path) -> None:
    """A cell cut off mid-run, or one not started, would run on the model the endpoint
    serves now: the report would pair two models as one endpoint."""
    first = FakeBehaviour(reply=reply, model="open-7b")
    other = FakeBehaviour(reply=reply, model="paid-large")
    with fake_server_in_thread(first) as one, fake_server_in_thread(other) as two:
        config = write_config(tmp_path, one.base_url, 'mode = ["budget"]')
        named = config.read_text().replace(f'endpoint = "{one.base_url}"', 'endpoint = "api"')
        config.write_text(named + f'[endpoints.api]\nbase_url = "{one.base_url}"\n')
        assert _bench(config, tmp_path)[0] == 0
        cut, done = sorted(p.parent for p in (tmp_path / "out").glob("*/run.json"))
        (cut / "results.json").unlink()  # the bench was cut off in its first cell
        config.write_text(config.read_text().replace(one.base_url, two.base_url))

        def refused(*needles: str) -> None:
            code, _, err = _bench(config, tmp_path)
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert code == 2 and len(errors) == 1, err
            assert all(needle in errors[0] for needle in needles), err
            assert not (cut / "results.json").exists()

        # the cut-off cell finds the model its endpoint serves now
        refused(f"was made on model 'open-7b', and endpoint 'api' ({two.base_url}) serves")
        shutil.rmtree(done)  # not started: refused before anything runs
        refused(f"cell {done.name} would run on model 'paid-large' of endpoint 'api', where cell")
        config.write_text(config.read_text() + 'model = "paid-large"\n')
        refused(f"cell {cut.name} was started on model 'open-7b'; endpoint 'api' now names")
        shutil.rmtree(cut)  # no cell left on the old model: the bench starts anew
        assert _bench(config, tmp_path)[0] == 0
    ran = {json.loads(p.read_text())["model"] for p in (tmp_path / "out").glob("*/results.json")}
    assert ran == {"paid-large"}


def test_a_cell_its_limit_stopped_goes_on_when_the_bench_raises_it(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        text = config.read_text()
        config.write_text(text.replace("[run]\n", "[run]\nmax-tokens = 5\n"))
        code, out, err = _bench(config, tmp_path)
        assert code == 0, err
        assert "0 of 2 cells done" in out
        assert "2 cell(s) stopped by their limit" in err and "[run]" in err
        report = cli("report", "out", cwd=tmp_path).communicate(timeout=120)[0]
        assert "Stopped by their limit" in report and "(stopped)" in report
        again = _bench(config, tmp_path)  # the same limits: nothing to go on with
        assert "resuming out: 2/2 cells already done" in again[2], again
        config.write_text(text.replace("[run]\n", "[run]\nmax-tokens = 5000\n"))
        code, out, err = _bench(config, tmp_path)
    assert code == 0, err
    assert "2 of 2 cells done (2 run now)" in out and "stopped" not in err
    for path in (tmp_path / "out").glob("*/results.json"):
        saved = json.loads(path.read_text())
        assert saved["status"] == "completed"
        assert saved["metrics"]["answered"] == saved["metrics"]["problems"]
        assert (
            json.loads((path.parent / "run.json").read_text())["settings"]["max_run_tokens"] == 5000
        )


def test_a_bench_refuses_the_same_judge_twice_before_it_makes_its_folder(
    tmp_path: Path,
) -> None:
    """Its check before the folder saw the run's own endpoint before the run had looked
    up its model, so the judge on it and the same judge named by its URL differed: the
    first cell ran (and was paid for), then the second was refused, its folder left."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        url = server.base_url
        config = tmp_path / "c.toml"
        config.write_text(
            '[[datasets]]\npath = "one.jsonl"\n[grid]\n'
            f'verifier = [["judge"], ["judge", "judge:{url}"]]\n'
            f'[run]\nendpoint = "{url}"\nmode = "parallel"\nn = 2\n'
        )
        SEEN.clear()
        code, _out, err = _bench(config, tmp_path, out="never")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--verifier judge:{url} is the same verifier as --verifier judge" in err
    assert not (tmp_path / "never").exists()
    assert not [key for key in SEEN if "Which one" in key]  # no cell ran


def test_a_report_says_the_limits_each_cell_ran_under(tmp_path: Path) -> None:
    """bench.json keeps the limits last given, also when no cell ran under them: the
    report said a bench run again with a new limit, and nothing left to do, ran under it."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        text = config.read_text()
        config.write_text(text.replace("[run]\n", "[run]\nmax-tokens = 5000\n"))
        assert _bench(config, tmp_path)[0] == 0
        config.write_text(text.replace("[run]\n", "[run]\nmax-tokens = 6000\n"))
        code, _, err = _bench(config, tmp_path)
        assert code == 0 and "2/2 cells already done" in err, err
        shared = _report_md(tmp_path).split("Shared options: ")[1].split("\n")[0]
        assert "max-tokens=5000" in shared and "6000" not in shared
        assert "mode=budget" in shared  # the grid's key of one value: every cell's
        _, cut = sorted(p.parent for p in (tmp_path / "out").glob("*/results.json"))
        (cut / "results.json").unlink()  # cut off: it goes on under the new limit
        assert _bench(config, tmp_path)[0] == 0
    md = _report_md(tmp_path)
    assert "max-tokens" not in md.split("Shared options: ")[1].split("\n")[0]
    assert (
        "Not every cell ran under the same max-tokens (the bench ran again with another): "
        "5000 for one; 6000 for two.\n" in md
    ), md


def test_a_bench_checks_every_cell_before_it_makes_its_folder(tmp_path: Path) -> None:
    write_choice_problems(tmp_path / "one.jsonl", "p")
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "question": "?"\n')
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        up = server.base_url
        cases = {
            "unreachable": (f'endpoint = ["{up}", "http://127.0.0.1:9/v1"]', "one.jsonl"),
            "unknown model": (f'endpoint = ["{up}"]\nmodel = ["no-such-model"]', "one.jsonl"),
            "malformed dataset": (f'endpoint = ["{up}"]', "bad.jsonl"),
        }
        for name, (grid, dataset) in cases.items():
            config = tmp_path / "c.toml"
            config.write_text(
                f'[[datasets]]\npath = "one.jsonl"\n[[datasets]]\npath = "{dataset}"\n'
                f"[grid]\n{grid}\n[run]\nconcurrency = 1\n"
            )
            SEEN.clear()
            code, _out, err = _bench(config, tmp_path, out="never")
            assert code != 0 and len(err.strip().splitlines()) == 1, (name, err)
            assert not (tmp_path / "never").exists(), name
            assert not [key for key in SEEN if "Which one" in key], name  # no cell ran


@pytest.mark.parametrize("mode", ["budget", "auto"])
def test_a_cell_past_the_models_context_is_refused_before_the_folder(
    tmp_path: Path, mode: str
) -> None:
    """The run refused it, but only once the bench had made its folder, which then held
    the bench's grid and refused the fixed config as another bench. auto's pilot fits: the
    mode it picks, at twice the budget, would not."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    behaviour = FakeBehaviour(reply=reply, max_model_len=4096)
    with fake_server_in_thread(behaviour) as server:
        config = tmp_path / "c.toml"
        for budget in (2100 if mode == "auto" else 100_000, 32):
            config.write_text(
                f'[[datasets]]\npath = "one.jsonl"\n[grid]\nmode = ["{mode}"]\n'
                f'budget = [{budget}]\n[run]\nendpoint = "{server.base_url}"\nconcurrency = 1\n'
            )
            code, _out, err = _bench(config, tmp_path, out="b")
            if budget != 32:
                assert code == 2 and len(err.strip().splitlines()) == 1, err
                assert "holds 4096 in all, its prompt included: give a smaller --budget" in err
                assert not (tmp_path / "b").exists()
    assert code == 0, err  # the fixed config runs in the same folder


def test_a_bench_folder_is_written_by_one_bench_at_a_time(tmp_path: Path) -> None:
    from thinktree._files import folder_lock

    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        assert _bench(config, tmp_path)[0] == 0
        (tmp_path / "out" / "001_one_mode-budget" / "results.json").unlink()
        with folder_lock(tmp_path / "out", "bench"):  # as a bench still going holds it
            code, _out, err = _bench(config, tmp_path)
        assert code == 2 and "is being written by another thinktree process" in err, err
        assert len(err.splitlines()) == 1, err  # no blank line from a progress view before it
        assert _bench(config, tmp_path)[0] == 0


_rmtree = shutil.rmtree


class _CutOff(Exception):
    """The bench stopped here, as a Ctrl-C or a lost Ray node stops it."""


class _ShardsThenCutOff:
    """Runs a cell's shards in this process, then cuts the bench off before their merge."""

    cpus = 2

    async def run(
        self, specs: Sequence[ShardSpec], on_poll: Callable[[], None] | None = None
    ) -> list[ShardReport]:
        await InProcessShards().run(specs, on_poll)
        raise _CutOff


def _rmtree_but_shards(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
    """``shutil.rmtree`` that cuts the bench off before a merged cell's shards are removed."""
    if Path(path).name == SHARDS:
        raise _CutOff
    _rmtree(path, *args, **kwargs)


CUTS = ["before the merge", "after the merge", "nowhere"]


def _bench_in_shards(config: Path, cut: str) -> None:
    """Run ``config``'s bench into ``out`` beside it, every cell in two shards in this
    process, cut off where ``cut`` (one of ``CUTS``) says."""
    runner: ShardRunner = _ShardsThenCutOff() if cut == "before the merge" else InProcessShards()
    with pytest.MonkeyPatch.context() as patch:
        if cut == "after the merge":
            patch.setattr(shutil, "rmtree", _rmtree_but_shards)
        with pytest.raises(_CutOff) if cut != "nowhere" else contextlib.nullcontext():
            bench = partial(run_bench, shards=runner, shard_count=2)
            anyio.run(bench, load_bench_config(config), config.parent / "out")


@pytest.mark.parametrize("cut", CUTS)
def test_a_sharded_cell_with_failed_calls_sends_them_again_on_the_next_bench(
    tmp_path: Path, cut: str
) -> None:
    down = {"on": True}

    def outage(body: dict[str, object]) -> str | None:
        asks = json.dumps(body.get("messages"))
        return "the model is being reloaded" if down["on"] and "p case 1" in asks else None

    cell = tmp_path / "out" / "001_one_mode-budget"
    with fake_server_in_thread(FakeBehaviour(reply=reply, reject=outage)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        _bench_in_shards(config, cut)  # the first cell's one problem a shard
        if cut == "nowhere":  # merged: the cell's own results hold the failed call
            assert run_outcome(cell / "results.json") == (None, 1)
        else:
            shards = [cell / SHARDS / f"00{i}" / "results.json" for i in (0, 1)]
            assert [run_outcome(path) for path in shards] == [(None, 0), (None, 1)]
        down["on"] = False
        SEEN.clear()
        code, out, err = _bench(config, tmp_path)  # without Ray: its shards in this process
        again = [key for key in SEEN if "Which one" in key]
    assert code == 0, err
    # the failed call is sent again (and the calls of a cell not run yet), nothing else
    assert [key for key in again if "p case" in key]
    assert not [key for key in again if "p case" in key and "p case 1" not in key]
    assert "001_one_mode-budget (resumed)" in err
    assert ("2 shards on 1 host" in err) == (cut != "nowhere")  # a merged cell is one run
    assert "failed" not in err and "2 of 2 cells done" in out
    saved = json.loads((cell / "results.json").read_text())
    assert saved["metrics"]["failed"] == 0
    assert saved["metrics"]["answered"] == saved["metrics"]["problems"] == 2
    assert not (cell / SHARDS).exists()


def test_a_cell_left_in_shards_whose_dataset_changed_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    """Its shards hold the problems they started with: resuming them on an edited dataset
    would leave the merge without the cell's problems."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        _bench_in_shards(config, "before the merge")
        write_choice_problems(tmp_path / "one.jsonl", "z")  # edited meanwhile
        before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
        code, _out, err = _bench(config, tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cell 001_one_mode-budget was left in shards on other problems" in err, err
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def _limited(config: Path, text: str, limit: int) -> None:
    """Write ``text`` (a config from ``write_config``) with budget 16 and a problem limit."""
    config.write_text(
        text.replace("[run]\n", f"[run]\nbudget = 16\nmax-problem-tokens = {limit}\n")
    )


@pytest.mark.parametrize("cut", CUTS)
def test_a_sharded_cell_its_limit_stopped_goes_on_when_the_bench_raises_it(
    tmp_path: Path, cut: str
) -> None:
    cell = tmp_path / "out" / "001_one_mode-budget"
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        text = config.read_text()
        _limited(config, text, 3)
        SEEN.clear()
        _bench_in_shards(config, cut)  # the first cell's one problem a shard
        paid = {key for key in SEEN if "p case" in key}
        if cut != "nowhere":  # each shard stopped by the limit, none with a failed call
            outcomes = [run_outcome(cell / SHARDS / f"00{i}" / "results.json") for i in (0, 1)]
            assert all(stopped and not failed for stopped, failed in outcomes), outcomes
        _limited(config, text, 500)
        SEEN.clear()
        code, out, err = _bench(config, tmp_path)  # without Ray: its shards in this process
        again = [key for key in SEEN if "p case" in key]
        report = cli("report", "out", cwd=tmp_path).communicate(timeout=120)[0]
        same = _bench(config, tmp_path)
    assert code == 0, err
    # the stopped problems go on: each makes the calls the raised limit lets it, once
    assert len(again) == len(set(again)) == 4 and not paid & set(again), again
    assert "001_one_mode-budget (resumed)" in err and "stopped" not in err
    assert ("2 shards on 1 host" in err) == (cut != "nowhere")  # a merged cell is one run
    assert "2 of 2 cells done" in out
    assert "(stopped)" not in report and "Stopped by their limit" not in report
    saved = json.loads((cell / "results.json").read_text())
    assert saved["status"] == "completed" and saved["stopped_by"] is None
    assert saved["metrics"]["answered"] == saved["metrics"]["problems"] == 2
    assert saved["settings"]["max_problem_tokens"] == 500
    assert json.loads((cell / "run.json").read_text())["settings"]["max_problem_tokens"] == 500
    assert not (cell / SHARDS).exists()
    assert "2 of 2 cells done (0 run now)" in same[1], same  # the same limit: nothing to do


def test_a_resumed_shard_goes_on_under_the_bench_s_new_limits_and_concurrency(
    tmp_path: Path,
) -> None:
    cell = tmp_path / "out" / "001_one_mode-budget"
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        text = config.read_text()
        _bench_in_shards(config, "before the merge")
        (cell / SHARDS / "001" / "results.json").unlink()  # cut off before its results
        raised = text.replace("concurrency = 1", "concurrency = 3\nmax-problem-tokens = 5000")
        config.write_text(raised + "max-tokens = 100000\n")  # shards cannot share one total
        code, _out, err = _bench(config, tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "left in shards, which cannot split a run-wide limit" in err
        config.write_text(raised)
        _bench_in_shards(config, "before the merge")
        kept, resumed = (
            json.loads((cell / SHARDS / f"00{i}" / "results.json").read_text())["settings"]
            for i in (0, 1)
        )
        shard_manifest = json.loads((cell / SHARDS / "001" / "run.json").read_text())
        code, _out, err = _bench(config, tmp_path)
    # a shard done before is kept as it ran; the one resumed takes the bench's [run] now
    assert (kept["concurrency"], kept["max_problem_tokens"]) == (1, None)
    assert (resumed["concurrency"], resumed["max_problem_tokens"]) == (3, 5000)
    assert shard_manifest["settings"]["max_problem_tokens"] == 5000  # kept from now on
    assert code == 0, err
    merged = json.loads((cell / "run.json").read_text())["settings"]  # the cell's limits
    assert merged["max_problem_tokens"] == 5000 and merged["max_cost"] is None


def test_a_sharded_cell_a_raised_limit_stops_again_is_done_under_it(tmp_path: Path) -> None:
    """A shard done before keeps the limits it ran under; the merged cell says the bench's."""

    def long_for_p1(body: dict[str, Any], index: int) -> str:
        long = "p case 1" in json.dumps(body.get("messages"))
        return "word " * 200 + "Answer: B" if long else "Answer: A"

    cell = tmp_path / "out" / "001_one_mode-budget"
    with fake_server_in_thread(FakeBehaviour(reply=long_for_p1)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        text = config.read_text()
        _limited(config, text, 40)
        _bench_in_shards(config, "before the merge")
        outcomes = [run_outcome(cell / SHARDS / f"00{i}" / "results.json") for i in (0, 1)]
        _limited(config, text, 60)
        raised = _bench(config, tmp_path)
        again = _bench(config, tmp_path)
    assert outcomes[0] == (None, 0) and outcomes[1][0], outcomes  # p1 alone stopped
    assert raised[0] == 0 and "001_one_mode-budget (resumed)" in raised[2], raised
    assert "token limit of 60" in raised[2]  # stopped again, under the raised limit
    assert "resuming out: 2/2 cells already done" in again[2], again
    assert "(0 run now)" in again[1] and "1 cell(s) stopped by their limit" in again[2]


def test_every_run_flag_spelling_a_grid_takes(tmp_path: Path) -> None:
    """The `run` flags whose settings have other names are bench keys by their flag names."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text(
        '[[datasets]]\npath = "one.jsonl"\n[grid]\nmode = ["adaptive"]\n'
        "stop-confidence = [0.9, 0.99]\n[run]\nmax-tokens = 5000\n"
    )
    bench = load_bench_config(config)
    settings = [bench.settings_for(cell) for cell in bench.cells()]
    assert [s.modes.confidence for s in settings] == [0.9, 0.99]
    assert {s.max_run_tokens for s in settings} == {5000}


@pytest.mark.anyio
async def test_a_merged_cell_counts_the_retries_behind_its_shards_read_back_calls(
    tmp_path: Path,
) -> None:
    """A resumed shard reads back a call that took a retry in its first session: its
    results count that retry, and so does the merge of the cell (results and run store)."""
    from thinktree.agents.capabilities import Capabilities
    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.agents.modes import ModeSettings
    from thinktree.bench.merge import merge_shards
    from thinktree.orchestrator.run import RunSettings, execute, load_resume
    from thinktree.orchestrator.store import StoreReader
    from thinktree.testing.fake_server import FakeServer, Fault

    problems = beta_problems(2)
    caps = Capabilities(continuation="chat")  # no probe: a shard's first call gets the 500
    shards = [tmp_path / "cell" / SHARDS / f"00{i}" for i in (0, 1)]
    async with FakeServer(FakeBehaviour(reply="Answer: B"), faults=[Fault.SERVER_ERROR]) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_backoff_s=0.01
        )
        modes = ModeSettings(mode="budget", budget=16)
        for shard, problem in zip(shards, problems, strict=True):
            settings = RunSettings(modes=modes, out=shard)
            await execute([problem], endpoint, settings, capabilities=caps)
        (shards[0] / "results.json").unlink()  # as if cut off before its end: resumed
        state = load_resume(shards[0])
        resumed = await execute(state.problems, endpoint, state.settings, resume=state)
        assert resumed.cached_calls == 1 and resumed.metrics.retries == 1
        merged = await merge_shards(
            tmp_path / "cell", shards, problems, endpoint, RunSettings(modes=modes)
        )
    assert merged.metrics.retries == 1
    saved = json.loads((tmp_path / "cell" / "results.json").read_text())
    assert saved["metrics"]["retries"] == 1
    with StoreReader.open(tmp_path / "cell" / "run.sqlite") as store:
        assert store.run_info()["retries"] == 1


@pytest.mark.anyio
async def test_merged_shards_allow_the_tokens_one_run_allows(tmp_path: Path) -> None:
    """Under --max-problem-tokens a merged cell allows what one run of it allows (it took
    the mode's allowance alone: 1,536 tokens for 160, and a tenth of the utilisation)."""
    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.agents.modes import ModeSettings
    from thinktree.bench.merge import merge_shards
    from thinktree.orchestrator.run import RunSettings, execute
    from thinktree.testing.fake_server import FakeServer

    problems = beta_problems(4)
    shards = [tmp_path / "cell" / SHARDS / f"00{i}" for i in (0, 1)]
    settings = RunSettings(
        modes=ModeSettings(mode="parallel", n=4, budget=96), max_problem_tokens=40
    )
    async with FakeServer(FakeBehaviour(native_n=True)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, native_n="yes")
        one = await execute(problems, endpoint, dataclasses.replace(settings, out=tmp_path / "one"))
        for shard, part in zip(shards, (problems[:2], problems[2:]), strict=True):
            await execute(part, endpoint, dataclasses.replace(settings, out=shard))
        merged = await merge_shards(tmp_path / "cell", shards, problems, endpoint, settings)
    assert one.metrics.tokens_allowed == 4 * 40
    assert merged.metrics.tokens_allowed == one.metrics.tokens_allowed
    assert merged.metrics.utilisation == one.metrics.utilisation


@pytest.mark.parametrize(
    ("top", "tables", "message"),
    [
        ('run = "x"', "", "[run] must be a table of run options, not"),
        ("endpoints = 3", "", "endpoints must be a table of named endpoints"),
        ("endpoints = { e = 3 }", "", "endpoint 'e' must be a table"),
        ("prices = 3", "", "[prices] must be a table"),
        ("", "[grid]\nperturbation = [[1]]", "perturbation: expected a string, not [1]"),
        ("", "[run]\nperturbation = [1]", "perturbation: expected a string, not [1]"),
        ("", "[grid]\nendpoint = [3]", "endpoint: expected a string, not 3"),
        ("", '[run]\nendpoint = ["a"]', "endpoint: expected a string, not ['a']"),
        ("", "[run]\nmodel = true", "model: expected a string, not True"),
        ("", "[[datasets]]\npath = 3", "dataset 2: path must be a string, not 3"),
        ("", "[[datasets]]\nhub = 3", "dataset 2: hub must be a string, not 3"),
        ("", '[[datasets]]\npath = "one.jsonl"\nname = ["a"]', "dataset 2: name must be a"),
        ("", "[grid]\ntemperature = [1, 1.0]", "temperature lists the same value twice (1 and"),
        ("", '[grid]\nverifier = ["judge", ["judge"]]', "verifier lists the same value twice"),
        ("", '[grid]\nmode = ["budget", "budget"]', "mode lists the same value twice ('budget')"),
        (
            "",
            "[grid]\nmin_thinking = [16]\nmin-thinking = [32]",
            "[grid] gives min-thinking twice (min_thinking and min-thinking)",
        ),
        (
            "",
            "[run]\ntotal_budget = 100\ntotal-budget = 200",
            "[run] gives total-budget twice (total_budget and total-budget)",
        ),
        ("", "[run]\nbugdet = 3", "[run] unknown key 'bugdet'; valid keys: "),
        ("", "[grid]\nbugdet = [3]", "[grid] unknown key 'bugdet'; valid keys: "),
        # a setting a bench decides itself: a cell named for a file it never read
        ("", '[grid]\nconfig-file = ["x.toml"]', "[grid] unknown key 'config-file'"),
        # the keys listed are run's options, each once (no settings' names beside them)
        ("", "[run]\nbugdet = 3", "max-problem-tokens, max-tokens, min-thinking, mode, model"),
        (
            "",
            '[prices]\n"m" = { prompt = nan, completion = 1 }',
            'price of "m": prompt must be a number of USD per million tokens',
        ),
    ],
)
def test_each_key_of_a_bench_config_is_checked_for_its_type(
    tmp_path: Path, top: str, tables: str, message: str
) -> None:
    """Each in one line naming the key and what it takes: never a traceback, and never a
    value taken for what it is not (a grid of two identical cells compared in the report)."""
    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    grid = "" if "[grid]" in tables else '[grid]\nmode = ["budget"]\n'
    config.write_text(f'{top}\n[[datasets]]\npath = "one.jsonl"\nname = "first"\n{grid}{tables}\n')
    with pytest.raises(ConfigError) as refused:
        load_bench_config(config)
    assert str(refused.value).startswith(f"{config}: "), refused.value
    assert message in str(refused.value) and "\n" not in str(refused.value), refused.value


def test_progress_off_a_terminal_prints_no_empty_line(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        code, _out, err = _bench(config, tmp_path)
        assert code == 0, err
        assert "" not in err.splitlines(), err
        proc = cli("run", "one.jsonl", "--endpoint", server.base_url, "--out", "run", cwd=tmp_path)
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == "", err


def test_a_damaged_shared_call_store_says_so_and_what_moving_it_loses(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]')
        assert _bench(config, tmp_path)[0] == 0
        bench = tmp_path / "out"
        (bench / "001_one_mode-budget" / "results.json").unlink()  # a cell left to run
        for leftover in bench.glob("calls.sqlite*"):
            leftover.unlink()
        (bench / "calls.sqlite").write_bytes(b"not a database at all, just text" * 200)
        before = {p: p.read_bytes() for p in bench.rglob("*") if p.is_file()}
        code, _out, err = _bench(config, tmp_path)
    assert code == 2 and err.count("\n") == 1, err
    assert "the call store out/calls.sqlite is damaged or no database" in err, err
    assert "move it aside" in err and "only reading back the calls it holds is lost" in err
    assert {p: p.read_bytes() for p in bench.rglob("*") if p.is_file()} == before


def _damage_replies(stores: list[Path], damage: str) -> None:
    """Every recorded reply in ``stores`` overwritten with ``damage``."""
    for store in stores:
        conn = sqlite3.connect(store)
        try:
            conn.execute("UPDATE responses SET response = ?", (damage,))
            conn.commit()
        finally:
            conn.close()


@pytest.mark.parametrize("damage", ["not json", '{"choices": [], "bogus": 1}', "[1, 2]"])
def test_a_call_that_cannot_be_read_back_is_made_again(tmp_path: Path, damage: str) -> None:
    """A shared store's row (or a cell's own) whose reply is unreadable (damaged, or
    written by another version) is taken as never recorded: the call is made again."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]',
        )
        assert _bench(config, tmp_path)[0] == 0
        bench = tmp_path / "out"
        shutil.rmtree(bench / "002_one_mode-parallel_aggregate-length-weighted")
        (bench / "001_one_mode-parallel_aggregate-majority" / "results.json").unlink()
        _damage_replies([bench / "calls.sqlite", *bench.glob("001_*/calls.sqlite")], damage)
        SEEN.clear()
        code, out, err = _bench(config, tmp_path)
        again = [key for key in SEEN if "Which one" in key]
    assert code == 0 and "Traceback" not in err, out + err
    assert len(again) == 2, again  # the first dataset's two problems, once for both cells
    for cell in bench.glob("00[12]_*/results.json"):
        saved = json.loads(cell.read_text())
        assert saved["metrics"]["answered"] == 2 and saved["metrics"]["failed"] == 0


def test_a_call_read_back_once_and_made_again_is_the_cell_s_own(tmp_path: Path) -> None:
    """A cell that read its calls back, then found them unreadable on a resume, made them
    itself: they are no longer reported as read back."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(
            tmp_path,
            server.base_url,
            'mode = ["parallel"]\naggregate = ["majority", "length-weighted"]',
        )
        assert _bench(config, tmp_path)[0] == 0
        cell = tmp_path / "out" / "002_one_mode-parallel_aggregate-length-weighted"
        assert json.loads((cell / "results.json").read_text())["metrics"]["read_back"]
        (cell / "results.json").unlink()
        _damage_replies([tmp_path / "out" / "calls.sqlite", cell / "calls.sqlite"], "damaged")
        assert _bench(config, tmp_path)[0] == 0
    metrics = json.loads((cell / "results.json").read_text())["metrics"]
    assert metrics["read_back"] is None and metrics["latency_p50_s"] is not None


def test_a_bench_checks_its_verifiers_and_prices_before_it_makes_its_folder(
    tmp_path: Path,
) -> None:
    """A verifier that cannot be built or reached, or a money limit on a model with no
    price, fails in one line with no folder left: the fixed config then runs in it."""
    nowhere = f"http://127.0.0.1:{_free_port()}/v1"
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'verifier = [["judge:nowhere"]]')
        text = config.read_text().replace("[run]\n", '[run]\nmode = "parallel"\n')
        cases = {
            'verifier = [["judge:nowhere"]]': ["unknown endpoint 'nowhere'"],
            f'verifier = [["judge:{nowhere}"]]': ["judge endpoint: cannot connect", nowhere],
            'verifier = [["judge"]]\nmax-cost = [1.0]': ["--max-cost needs a price for model"],
        }
        for grid, needles in cases.items():
            config.write_text(text.replace('verifier = [["judge:nowhere"]]', grid))
            SEEN.clear()
            code, _out, err = _bench(config, tmp_path)
            assert code == 2 and err.count("\n") == 1, (grid, err)  # one line, none blank
            assert err.startswith("error: "), (grid, err)
            assert all(needle in err for needle in needles), (grid, err)
            assert not (tmp_path / "out").exists(), grid
            assert not [key for key in SEEN if "Which one" in key], grid  # no cell ran
        config.write_text(text.replace('verifier = [["judge:nowhere"]]', 'verifier = [["judge"]]'))
        code, out, err = _bench(config, tmp_path)
    assert code == 0, err
    assert "2 of 2 cells done (2 run now)" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_a_bench_on_the_embedded_model_checks_its_verifiers_before_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells on the embedded model are checked once it is up, still before the folder."""
    from types import SimpleNamespace

    from thinktree.testing.fake_server import FakeServer

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    write_choice_problems(tmp_path / "one.jsonl", "p")
    nowhere = f"http://127.0.0.1:{_free_port()}/v1"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[[datasets]]\npath = "one.jsonl"\n[grid]\nverifier = [["judge:{nowhere}"]]\n'
        '[run]\nendpoint = "embedded"\nmode = "parallel"\nn = 2\n'
    )
    started: list[str] = []
    async with FakeServer(FakeBehaviour(reply=reply)) as server:

        @contextlib.asynccontextmanager
        async def embedded() -> Any:  # the embedded model's server, as the fake one
            started.append(server.base_url)
            yield SimpleNamespace(engine="vllm", base_url=server.base_url, model="fake-model")

        with pytest.raises(ConfigError, match="judge endpoint: cannot connect"):
            await run_bench(load_bench_config(config), tmp_path / "out", embedded=embedded)
    assert started and not (tmp_path / "out").exists()


def test_a_bench_folder_of_another_version_says_so(tmp_path: Path) -> None:
    from thinktree.bench.runner import prepare

    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    config.write_text('[[datasets]]\npath = "one.jsonl"\n[grid]\nmode = ["budget"]\n')
    bench = load_bench_config(config)
    prepare(bench, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "bench.json").read_text())
    (tmp_path / "out" / "bench.json").write_text(
        json.dumps({**manifest, "bench_version": 99, "thinktree": "9.0"})
    )
    with pytest.raises(ConfigError, match=r"written by thinktree 9\.0 \(bench format 99\)"):
        prepare(bench, tmp_path / "out")
    (tmp_path / "out" / "bench.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"bench\.json is damaged"):
        prepare(bench, tmp_path / "out")


def _unread_grid(folder: Path, url: str, grid: str, run: str = "") -> Path:
    write_choice_problems(folder / "one.jsonl", "p")
    config = folder / "bench.toml"
    config.write_text(
        f'[[datasets]]\npath = "one.jsonl"\n[grid]\n{grid}\n'
        f'[run]\nendpoint = "{url}"\nseed = 2\nconcurrency = 1\n{run}'
    )
    return config


def test_grid_values_a_mode_does_not_read_make_one_cell(tmp_path: Path) -> None:
    """budget does not read n: `mode = ["budget", "parallel"]` with `n = [2, 3]` runs budget
    once, in a cell named without n, says so, and the report compares that one cell with
    parallel at each n (both would have been budget run twice, compared with itself)."""
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = _unread_grid(
            tmp_path, server.base_url, 'mode = ["budget", "parallel"]\nn = [2, 3]'
        )
        code, out, err = _bench(config, tmp_path)
        assert code == 0, err
        assert "3 of 3 cells done (3 run now)" in out
        assert "4 grid combinations make 3 cells: mode budget does not read n" in err
        assert _bench(config, tmp_path)[0] == 0  # run again: resumes, all done
    bench = tmp_path / "out"
    names = ["001_one_mode-budget", "002_one_mode-parallel_n-2", "003_one_mode-parallel_n-3"]
    assert sorted(p.name for p in bench.iterdir() if p.is_dir()) == names
    manifest = json.loads((bench / "bench.json").read_text())
    assert manifest["bench_version"] == 2
    assert [c["options"] for c in manifest["cells"]][:2] == [
        {"mode": "budget"},
        {"mode": "parallel", "n": 2},
    ]
    report = cli("report", "out", "--no-plots", cwd=tmp_path)
    assert report.communicate(timeout=120)[0] and report.returncode == 0
    md = (bench / "report.md").read_text()
    assert "| mode=budget | 2 |" in md and "| mode=parallel · n=2 | 2 |" in md
    assert "| n=2 | mode | budget | parallel | 2 |" in md
    assert "| n=3 | mode | budget | parallel | 2 |" in md
    assert "| mode=budget | n |" not in md  # no cell compared with itself


@pytest.mark.parametrize(
    ("grid", "run", "cells"),
    [
        # hybrid reads no budget when total-budget is given, in [run] or [grid]
        (
            'mode = ["budget", "hybrid"]\nbudget = [8, 16]',
            "total-budget = 64\n",
            ["mode-budget_budget-8", "mode-budget_budget-16", "mode-hybrid"],
        ),
        # a key by its settings name as by its flag name; only adaptive reads it
        (
            'mode = ["parallel", "adaptive"]\nconfidence = [0.9, 0.99]',
            "",
            ["mode-parallel", "mode-adaptive_confidence-0.9", "mode-adaptive_confidence-0.99"],
        ),
        # one value: no two cells to make one, so the name keeps it (as before)
        ('mode = ["budget", "parallel"]\nn = [2]', "", ["mode-budget_n-2", "mode-parallel_n-2"]),
        # a plugin's mode may read any option: nothing is left out
        (
            'mode = ["a-plugin-mode"]\nn = [2, 3]',
            "",
            ["mode-a-plugin-mode_n-2", "mode-a-plugin-mode_n-3"],
        ),
    ],
)
def test_which_grid_values_make_one_cell(
    tmp_path: Path, grid: str, run: str, cells: list[str]
) -> None:
    from thinktree.bench.grid import BenchConfig, DatasetSpec

    config = BenchConfig(
        path=tmp_path / "c.toml",
        datasets=[DatasetSpec(name="one")],
        grid=tomllib.loads(grid),
        fixed=tomllib.loads(run),
    )
    assert [c.name for c in config.cells()] == [f"{i:03d}_one_{c}" for i, c in enumerate(cells, 1)]


def test_a_bench_folder_of_format_1_resumes_unless_its_cells_are_now_one(tmp_path: Path) -> None:
    """A folder an earlier thinktree wrote (format 1) resumes where its grid has no value a
    mode does not read (its cells are the same); where it has, it is refused in one line
    (its cells would now be one), before anything is written."""
    from thinktree.bench.runner import prepare

    write_choice_problems(tmp_path / "one.jsonl", "p")
    config = tmp_path / "c.toml"
    for grid, resumes in (('mode = ["budget", "parallel"]', True), ("n = [2, 3]", False)):
        config.write_text(f'[[datasets]]\npath = "one.jsonl"\n[grid]\n{grid}\n')
        bench = load_bench_config(config)
        out = tmp_path / f"out-{resumes}"
        out.mkdir()
        old: dict[str, Any] = {
            "bench_version": 1,
            "thinktree": "0.0.9",
            "grid": bench.grid,
            "run": bench.fixed,
            "datasets": [d.to_dict() for d in bench.datasets],
            "prices": {},
            "cells": [c.to_dict() for c in bench.cells(collapse=False)],
        }
        (out / "bench.json").write_text(json.dumps(old))
        if resumes:
            assert [c.name for c in prepare(bench, out)] == [c["name"] for c in old["cells"]]
            continue
        before = (out / "bench.json").read_bytes()
        with pytest.raises(ConfigError) as caught:
            prepare(bench, out)
        assert str(caught.value) == (
            f"cannot resume {out}: thinktree 0.0.9 started it with a cell for each grid value "
            "a mode does not read, which this thinktree runs once (bench format 1); finish it "
            "with that version, or give another --out"
        )
        assert (out / "bench.json").read_bytes() == before


def _judge_server_log(log: list[str]) -> Callable[[dict[str, Any], int], str]:
    """A judge's server: rates every candidate 7, and logs "judged" for each judging call
    and "probed" for each probe of it (the probe's first request, its plain chat check)."""
    from thinktree.agents.capabilities import _PROBE_USER
    from thinktree.verifiers.judge import JUDGE_SYSTEM

    def judge(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if index == 0 and messages and messages[0].get("content") == JUDGE_SYSTEM:
            log.append("judged")
        elif index == 0 and messages == [{"role": "user", "content": _PROBE_USER}]:
            plain = not body.get("n") and not body.get("logprobs")
            log.append("probed" if plain and body.get("max_tokens") == 4 else "probe step")
        return "7"

    return judge


def test_a_bench_probes_a_judge_s_own_endpoint_once(tmp_path: Path) -> None:
    """Its preflight probes it; no cell probes it again (each cell's judge takes what the
    probe found), and a cell left in shards that resumes in this process does not either.
    Shards a shard runner runs (Ray's workers, here one in this process) each probe it for
    themselves, from where they run."""
    log: list[str] = []
    down = {"on": True}

    def outage(body: dict[str, object]) -> str | None:
        asks = json.dumps(body.get("messages"))
        return "the model is being reloaded" if down["on"] and "p case 1" in asks else None

    with (
        fake_server_in_thread(FakeBehaviour(reply=reply, reject=outage)) as server,
        fake_server_in_thread(FakeBehaviour(reply=_judge_server_log(log), model="j")) as judge,
    ):
        config = write_config(tmp_path, server.base_url, "budget = [16, 32]")
        text = config.read_text().replace("[run]\n", '[run]\nmode = "parallel"\n')
        config.write_text(f'{text}verifier = ["judge:{judge.base_url},score=rating"]\n')
        _bench_in_shards(config, "before the merge")  # p case 1 failed: its shard resumes
        assert log.count("probed") == 3 and "judged" in log  # the preflight's, each shard's
        log.clear()
        down["on"] = False
        code, out, err = _bench(config, tmp_path)  # the first cell's shards in this process
    assert code == 0 and "4 of 4 cells done" in out, err
    assert "001_one_budget-16 (resumed)" in err and "2 shards on 1 host" in err
    assert log.count("probed") == 1 and log.index("probed") == 0, log
    assert log.count("judged") > 1


def test_a_yes_prob_judge_on_an_endpoint_without_logprobs_fails_a_bench_before_its_folder(
    tmp_path: Path,
) -> None:
    from test_verifiers import refuse_logprobs

    with fake_server_in_thread(FakeBehaviour(reply=reply, reject=refuse_logprobs)) as server:
        url = server.base_url
        config = write_config(tmp_path, url, 'verifier = [["judge,score=yes-prob"]]')
        config.write_text(config.read_text().replace("[run]\n", '[run]\nmode = "parallel"\n'))
        SEEN.clear()
        code, _out, err = _bench(config, tmp_path)
    assert code == 2 and err.count("\n") == 1, err
    assert f"judge score=yes-prob reads token logprobs, which the judge's endpoint '{url}'" in err
    assert not (tmp_path / "out").exists()
    assert not [key for key in SEEN if "Which one" in key]  # no cell ran


@pytest.mark.anyio
async def test_a_plugin_verifier_is_prepared_per_cell_and_checks_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cell builds its own verifiers, and prepare() runs on each (and once before the
    bench starts, to fail before its folder); a check made through ``setup.checked`` is
    made once for the whole bench."""
    import misbehaving

    misbehaving.register(monkeypatch)
    misbehaving.PREPARED.clear()
    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, "budget = [16, 32]")
        text = config.read_text().replace("[run]\n", '[run]\nmode = "parallel"\n')
        config.write_text(f'{text}verifier = ["brittle:checking"]\n')
        outcomes = await run_bench(load_bench_config(config), tmp_path / "out")
    assert [o.status for o in outcomes] == ["ran"] * 4
    assert ["prepared", "checked", *["prepared"] * 4] == misbehaving.PREPARED


def test_progress_lines_off_a_terminal_are_one_line_each_whatever_the_width(
    tmp_path: Path,
) -> None:
    """Piped into a log at a narrow width, a cell's line and the closing command stay whole."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "60"
    out_dir = "benches/a-bench-folder-whose-name-is-long"
    with fake_server_in_thread(FakeBehaviour(reply=reply)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget", "parallel"]')
        proc = subprocess.run(
            [sys.executable, "-m", "thinktree.cli", "bench", str(config), "--out", out_dir],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = [line for line in proc.stderr.splitlines() if line.startswith("✓ ")]
    assert len(cells) == 4, proc.stderr
    for line in cells:
        assert re.fullmatch(r"✓ \S+ \(ran\): accuracy .* completion tokens, [\d.]+ s", line), line
    assert f"report with: thinktree report {out_dir}\n" in proc.stdout
