"""Every benchmark script runs to the end at tiny sizes and prints its figure lines.

Nothing here asserts a timing (CI machines are too noisy for that): only that each
script completes and prints the lines that carry its figures, so the scripts cannot rot.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _started(
    script: str, *args: str, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def _run(script: str, *args: str, timeout: float = 600) -> str:
    proc = _started(script, *args, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_script_is_covered_here() -> None:
    covered = {
        "overhead.py",
        "tui_replay.py",
        "adaptive_voting.py",
        "adaptive_floor.py",
        "adaptive_decide.py",
        "embedded_throughput.py",
        "answer_formats.py",
        "engines.py",
        "rate_limit.py",
        "run_memory.py",
    }
    assert {p.name for p in BENCH.glob("*.py")} <= covered


def test_overhead_prints_every_case_and_ratio() -> None:
    out = _run("overhead.py", "--problems", "2", "--rounds", "1", "--bus-events", "3000")
    for line in (
        "bare aiohttp (limit)",
        "bare lean HTTP/1.1 (thinktree's)",
        "thinktree 1/call, aiohttp client",
        "openai SDK, aiohttp",
        "thinktree parallel@16, 1/call",
        "thinktree parallel@16, n=16",
        "bare lean HTTP/1.1, n=16",
        "thinktree n=16 vs bare lean n=16, samples/s (",
        "thinktree n=16 CPU per sample beyond its HTTP client and a regex: ",
        "thinktree n=16, once per run: ",
        "event bus: tree + store ",
        "thinktree 1/call vs bare aiohttp, calls/s (",
        "thinktree 1/call vs bare aiohttp, both on asyncio",
        "thinktree 1/call, its lean HTTP/1.1 client vs aiohttp",
        "thinktree machinery CPU/call = ",
        "event bus with the store:",
        "1,000 calls allowed in flight:",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    # its-hub is a benchmark-only extra: measured when installed, else said so
    assert "its-hub self-consistency" in out or "its-hub: not measured" in out
    if "its-hub self-consistency" in out:
        assert "between its first and last events: " in out
    once = re.search(r"once per run: (\d+) ms before .* and (\d+) ms after .*, of (\d+) ms", out)
    assert once is not None and int(once[1]) + int(once[2]) <= int(once[3]), out


def test_tui_replay_prints_its_latencies() -> None:
    out = _run("tui_replay.py", "--problems", "6", "--branches", "2", "--keys", "3")
    assert "update batch (apply)" in out and "redraw" in out


@pytest.mark.slow
def test_adaptive_voting_prints_agreement_and_tokens(embedded_url: str) -> None:
    out = _run(
        "adaptive_voting.py",
        *("--base-url", embedded_url, "--limit", "2", "--n", "4", "--wave", "2"),
        *("--budget", "8", "--answer-tokens", "8", "--levels", "0.6,0.99"),
    )
    assert "agreement with majority@4:" in out
    levels = re.findall(
        r"^ +waves of 2 +(0\.\d+) +\d/2 = .*, tokens .*%, samples drawn", out, re.MULTILINE
    )
    assert levels == ["0.6", "0.95", "0.99"]  # the extra levels and --confidence's, in order
    assert "tokens spent vs majority@4:" in out
    assert re.search(r"replayed on majority@4's own samples .* (\d+) of \1\)", out)
    assert re.search(r"clairvoyant rule .* would spend \d+\.\d% of its tokens", out)


def test_adaptive_voting_on_a_simulated_model_that_is_always_right(tmp_path: Path) -> None:
    """A model whose every answer is the same: adaptive stops after its first wave, agrees
    on every problem and spends a wave's share of the tokens (4 of 16 samples)."""
    data = _choice_set(tmp_path / "choice.jsonl", 3)
    out = _run("adaptive_voting.py", "--data", str(data), "--simulate", "1")
    assert "a simulated model, right on 100% of its answers" in out
    assert "replayed: agreement with majority@16: 3/3 = 100.0%; target >= 98%: MET" in out
    assert "replayed: tokens spent vs majority@16: 25.0%; target <= 50%: MET" in out
    assert "samples drawn per problem: mean 4.0 of 16" in out
    # a rule that knows the full vote stops at the first wave too: each sample's tokens
    # are its branch's (its call's node and what hangs under it)
    assert "a clairvoyant rule that stops at the first sample from the first wave on " in out
    assert "majority@16's answer would spend 25.0% of its tokens" in out


def test_adaptive_voting_replays_other_wave_sizes_on_the_same_samples(tmp_path: Path) -> None:
    """--waves replays the rule at more wave sizes without new calls: on a model whose
    every answer is the same, a clairvoyant rule stops after one sample in waves of 1."""
    data = tmp_path / "choice.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "q1",
                "question": "Question?",
                "options": {"A": "one", "B": "two"},
                "answer": "B",
                "answer_type": "choice",
            }
        )
        + "\n"
    )
    out = _run("adaptive_voting.py", "--data", str(data), "--simulate", "1", "--waves", "1,2")
    rows = re.findall(r"^ +waves of (\d+) +0\.95 +1/1 = 100\.0%, tokens", out, re.MULTILINE)
    assert rows == ["1", "2", "4"]  # --wave's own among them, in order
    # four votes of four decide it at 0.95: one round of 4, two of 2, four of 1
    fixed = re.findall(
        r"^ +fixed waves of (\d+) +0\.95 +1/1 = 100\.0%, tokens +25\.0%, rounds (\S+)$",
        out,
        re.MULTILINE,
    )
    assert fixed == [("1", "4.0"), ("2", "2.0"), ("4", "1.0")]
    assert "the floor for this model, waves of 1: a clairvoyant rule" in out
    assert re.search(r"waves of 1: .* would spend 6\.2% of its tokens", out)  # 1 of 16
    assert re.search(r"waves of 4: .* would spend 25\.0% of its tokens", out)
    proc = _started("adaptive_voting.py", "--simulate", "1", "--waves", "32", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--wave and --waves must be between 1 and --n (16)")
    )


def test_adaptive_voting_simulates_choice_problems_only() -> None:
    proc = _started("adaptive_voting.py", "--simulate", "0.5", timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--simulate needs choice problems with options and gold (e.g. medmcqa)")
    )


def test_adaptive_voting_reads_a_sample_set_by_its_file_name() -> None:
    """The README's command names a sample set by its file name alone, from the repository
    root; the script finds it among the sample sets beside the repository."""
    name = "medmcqa.sample.jsonl"
    assert (DATA / name).is_file() and not (BENCH.parent / name).exists()
    args = ("--data", name, "--limit", "3", "--simulate", "1")
    proc = _started("adaptive_voting.py", *args, timeout=120, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agreement with majority@16: 3/3 = 100.0%" in proc.stdout


def test_adaptive_voting_names_a_missing_dataset_in_one_line() -> None:
    proc = _started("adaptive_voting.py", "--data", "no-such-set.jsonl", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("dataset not found: no-such-set.jsonl")


def _choice_set(path: Path, count: int) -> Path:
    """``count`` four-option choice problems, each with its gold answer."""
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "question": f"Question {i}?",
                    "options": {"A": "one", "B": "two", "C": "three", "D": "four"},
                    "answer": "ABCD"[i % 4],
                    "answer_type": "choice",
                }
            )
            + "\n"
            for i in range(count)
        )
    )
    return path


@pytest.fixture(scope="module")
def adaptive_floor() -> ModuleType:
    """benchmarks/adaptive_floor.py as a module (it imports adaptive_voting beside it)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("adaptive_floor")
    finally:
        sys.path.remove(str(BENCH))


KEYS = ["A", "B", "C", None]


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.lists(st.sampled_from(KEYS), min_size=1, max_size=6).filter(
        lambda votes: any(v is not None for v in votes)
    ),
    remaining=st.integers(0, 5),
    weights=st.lists(st.floats(0.01, 1.0), min_size=5, max_size=5),
)
def test_the_informed_rule_is_exact(
    adaptive_floor: ModuleType, prefix: list[str | None], remaining: int, weights: list[float]
) -> None:
    """informed_holds equals the chance, summed over every sequence of the samples left,
    that the vote (ties to the answer seen first) elects today's leader; the answer none
    of the samples says is one more rival, not seen yet."""
    keys = [*KEYS, adaptive_floor.UNSEEN]
    shares = {key: w / sum(weights) for key, w in zip(keys, weights, strict=True)}
    leader = adaptive_floor._leader(prefix)
    brute = sum(
        math.prod(shares[k] for k in rest)
        for rest in itertools.product(keys, repeat=remaining)
        if adaptive_floor._leader([*prefix, *rest]) == leader
    )
    assert adaptive_floor.informed_holds(prefix, remaining, shares) == pytest.approx(brute)


def _pooled_exactly(
    floor: ModuleType, prefix: list[str | None], remaining: int, prior: np.ndarray
) -> float:
    """What pooled_holds estimates, summed exactly: over every profile and every order of
    its ranks given to the answers seen (weighted by how likely each makes ``prefix``),
    and every sequence of the samples left, where each rank no answer seen holds is an
    answer of its own, seen after the leader."""
    labels = list(dict.fromkeys(a for a in prefix if a is not None))
    leader = floor._leader(prefix)
    weighted, total = 0.0, 0.0
    for shares in prior:
        for order in itertools.permutations(range(floor.RANKS), len(labels)):
            share = {None: shares[0]} | {
                label: shares[1 + rank] for label, rank in zip(labels, order, strict=True)
            }
            share |= {f"new{r}": shares[1 + r] for r in range(floor.RANKS) if r not in order}
            fits = math.prod(share[a] for a in prefix)
            keys = list(share)
            holds = sum(
                math.prod(share[k] for k in rest)
                for rest in itertools.product(keys, repeat=remaining)
                if floor._leader([*prefix, *rest]) == leader
            )
            weighted += fits * holds
            total += fits
    return weighted / total


@pytest.mark.parametrize(
    ("prefix", "remaining"),
    [(["A", "A", "B"], 3), (["B", None, "A", "A"], 2), (["A", "B"], 3), (["C"], 2)],
)
def test_the_pooled_prior_rule_estimates_its_posterior_chance(
    adaptive_floor: ModuleType, prefix: list[str | None], remaining: int
) -> None:
    """Within Monte Carlo error (4,000 paths: a standard error under 0.008) of the exact
    sum, on a prior of two unlike profiles, one decided and one scattered."""
    prior = np.array(
        [
            adaptive_floor.profile(["A"] * 40 + ["B"] * 4 + [None] * 4),
            adaptive_floor.profile(["A"] * 14 + ["B"] * 12 + ["C"] * 12 + ["D"] * 10),
        ]
    )
    exact = _pooled_exactly(adaptive_floor, prefix, remaining, prior)
    found = adaptive_floor.pooled_holds(prefix, remaining, prior, seed=0)
    assert found == pytest.approx(exact, abs=0.03)


def test_a_prior_of_decided_problems_trusts_a_unanimous_first_wave(
    adaptive_floor: ModuleType,
) -> None:
    """Where every other problem was unanimous, four votes alike settle a vote of 16; the
    Dirichlet process alone is less sure, and a prior of evenly scattered problems less
    sure still (the next 12 could gather on one other answer)."""
    decided = np.array([adaptive_floor.profile(["A"] * 48)] * 3)
    scattered = np.array([adaptive_floor.profile(list("ABCD") * 12)] * 3)
    votes = ["B"] * 4
    sure = adaptive_floor.pooled_holds(votes, 12, decided, seed=0)
    urn = adaptive_floor.adaptive_holds(votes, 12)
    assert sure > 0.999 > urn > adaptive_floor.pooled_holds(votes, 12, scattered, seed=0)


def test_adaptive_floor_on_a_simulated_model_that_is_always_right(tmp_path: Path) -> None:
    """Every vote unanimous: every rule, the clairvoyant one too, stops after the first wave
    (4 of 16 samples), agrees on every block, and the target is within reach."""
    data = _choice_set(tmp_path / "choice.jsonl", 3)
    out = _run("adaptive_floor.py", "--data", str(data), "--simulate", "1")
    assert "3 problems, parallel@48" in out
    assert "the leader holds 16.0 of 16 on average and more than half on 100% of blocks" in out
    assert re.search(
        r"^  0\.9 +9/9 = 100\.0%, tokens +25\.0% +9/9 = 100\.0%, tokens +25\.0%", out, re.M
    )
    assert out.count("clairvoyant: 9/9") == 2
    assert "informed rule: fewest tokens at >= 98% agreement: 25.0% (at 0.9)" in out
    assert "informed rule: fewest samples at >= 98% agreement: 25.0% (at 0.9)" in out
    assert "within reach on this model (the informed rule: 25.0%)" in out
    assert (
        "adaptive's rule on the model's own samples: 25.0% of the tokens at >= 98% "
        "agreement, the target met" in out
    )


def test_adaptive_floor_needs_two_blocks(tmp_path: Path) -> None:
    data = _choice_set(tmp_path / "choice.jsonl", 1)
    proc = _started("adaptive_floor.py", "--data", str(data), "--simulate", "1", "--blocks", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--blocks must be at least 2: the others estimate each block's distribution")
    )


def _after_workload(out: str) -> str:
    """A report from the line after its workload line on (how the samples were had)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("workload: "))
    return "\n".join(lines[start + 1 :])


def test_adaptive_floor_reads_back_the_samples_it_saved(tmp_path: Path) -> None:
    """Samples saved from a run give the same report when read back, without a model."""
    data = _choice_set(tmp_path / "choice.jsonl", 3)
    saved = tmp_path / "samples.jsonl"
    drawn = _run(
        "adaptive_floor.py", "--data", str(data), "--simulate", "0.6", "--save-samples", str(saved)
    )
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["q0", "q1", "q2"]
    assert all(len(row["answers"]) == len(row["tokens"]) == 48 for row in rows)
    assert len({a for row in rows for a in row["answers"]}) > 1  # a varied model: a real check
    read = _run("adaptive_floor.py", "--load-samples", str(saved))
    assert f"workload: 3 problems' samples read from {saved}" in read
    assert _after_workload(read) == _after_workload(drawn)
    assert "on the model's own samples (9 blocks)" in read


def test_adaptive_floor_says_when_adaptive_misses_the_target(tmp_path: Path) -> None:
    """Votes split evenly four ways: the rule draws all 16 samples before it may
    stop, and the verdict says that the target is not met."""
    saved = tmp_path / "samples.jsonl"
    row = {"answers": list("ABCD") * 12, "tokens": [10] * 48}
    saved.write_text("".join(json.dumps({**row, "id": f"q{i}"}) + "\n" for i in range(3)))
    out = _run("adaptive_floor.py", "--load-samples", str(saved))
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("adaptive's rule on the model's own samples: ")
    share = float(verdict.split(": ")[1].split("%")[0])
    assert share > 50 and verdict.endswith("the target not met")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"answers": ["A"]}', "not a line --save-samples writes (answers, tokens)"),
        ("not json", "not a line --save-samples writes (answers, tokens)"),
        (
            '{"answers": ["A", "B"], "tokens": [3, 4]}',
            "2 answers and 2 tokens, but --n x --blocks asks for 48 samples a problem",
        ),
    ],
)
def test_adaptive_floor_refuses_a_samples_file_it_did_not_write(
    tmp_path: Path, line: str, says: str
) -> None:
    saved = tmp_path / "samples.jsonl"
    saved.write_text(line + "\n")
    proc = _started("adaptive_floor.py", "--load-samples", str(saved))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(f"{saved}:1: {says}")


def test_adaptive_floor_needs_problems_or_saved_samples(tmp_path: Path) -> None:
    proc = _started("adaptive_floor.py")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith("name the problems with --data (or saved samples with --load-samples)")
    missing = _started("adaptive_floor.py", "--load-samples", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cannot read --load-samples" in missing.stderr.strip().splitlines()[-1]
    both = _started("adaptive_floor.py", "--load-samples", "x.jsonl", "--data", "y.jsonl")
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert "--load-samples draws no samples: drop --data" in both.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_adaptive_floor_prints_each_rule_on_the_embedded_model(embedded_url: str) -> None:
    out = _run(
        "adaptive_floor.py",
        *("--base-url", embedded_url, "--data", str(DATA / "medmcqa.sample.jsonl")),
        *("--limit", "2", "--n", "4", "--blocks", "2", "--wave", "2"),
        *("--budget", "8", "--answer-tokens", "8", "--levels", "0.9,0.99"),
    )
    assert "on the model's own samples (4 blocks)" in out
    assert re.search(r"^  0\.99 +\d/4 = .*, tokens .*%", out, re.M)
    assert "adaptive's rule: fewest tokens at >= 98% agreement:" in out
    assert re.search(r"^tokens <= 50 % of majority@4's at >= 98% agreement: ", out, re.M)
    assert re.search(r"^adaptive's rule on the model's own samples: (never|\d)", out, re.M)


@pytest.mark.slow
def test_embedded_throughput_prints_its_four_measurements(embedded_url: str) -> None:
    out = _run(
        "embedded_throughput.py",
        *("--base-url", embedded_url, "--tokens", "4", "--requests", "2"),
        *("--in-flight", "1,2", "--problems", "1", "--rounds", "1"),
    )
    assert "thinktree vs raw:" in out
    assert "thinktree,  2 in flight:" in out
    assert "n=8 vs 8 requests:" in out and "prefill saving" in out
    assert "token ids vs logprobs:" in out and "one reply" in out


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="the shared sample sets are not beside the repo")
def test_answer_formats_prints_its_parse_rates(embedded_url: str) -> None:
    out = _run("answer_formats.py", "--base-url", embedded_url, "--per-set", "1", "--budget", "8")
    assert "% parsed" in out


@pytest.mark.slow
def test_engines_prints_both_engines(embedded_url: str, llamacpp_url: str) -> None:
    out = _run("engines.py", "--tokens", "4", "--rounds", "1")
    assert "vllm      reused at" in out and "llamacpp  reused at" in out
    assert "1 in flight: vLLM" in out and "4 in flight: vLLM" in out


def test_adaptive_decide_prints_both_sums_per_size() -> None:
    out = _run("adaptive_decide.py", "--n", "16,64", "--problems", "2", "--rounds", "1")
    rows = [line for line in out.splitlines() if line.startswith("--n ")]
    assert [row.split(":")[0].split()[-1] for row in rows] == ["16", "64"]
    for row in rows:
        found = re.search(
            r"direct sum +[\d.]+ ms, +[\d.]+x\); largest difference in chance (\S+)", row
        )
        assert found is not None, row
        assert float(found.group(1)) < 1e-9  # the two sums agree
    bad = _started("adaptive_decide.py", "--n", "16,x")
    assert bad.returncode == 2 and "--n takes numbers" in bad.stderr


def test_rate_limit_prints_both_runs() -> None:
    out = _run("rate_limit.py", "--problems", "24", "--in-flight", "8", "--limit", "2")
    lines = {line.split(" failed")[0].strip(): line for line in out.splitlines()}
    assert re.search(r"failed calls +0 of 24", lines["backing off (thinktree)"])
    assert "retrying only" in lines


def test_run_memory_prints_a_figure_per_reply_length() -> None:
    out = _run("run_memory.py", "--problems", "2,6", "--reply-chars", "0,200")
    lines = [line for line in out.splitlines() if "KiB per sample" in line]
    assert [line.split(" chars")[0] for line in lines] == ["replies of 0", "replies of 200"]
