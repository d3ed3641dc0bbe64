"""Bad input at the command line: one line that says what to fix, non-zero exit, no folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from choice_set import beta_problems, write_dataset
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread
from thinktree.tui.synthetic import synthetic_run, write_trace


def thinktree(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``thinktree ARGS`` in ``cwd``, with no OPENAI_ variable but those in ``env``."""
    given = env
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "200"
    env.update(given or {})
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_nothing_written(folder: Path) -> None:
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    """A fake endpoint that answers every question "B": where a check is missing, the run
    goes ahead on it (and the test fails) instead of starting the embedded model."""
    with fake_server_in_thread(FakeBehaviour(reply="It is beta. Answer: B")) as server:
        yield server.base_url


HUGE = "100000000000000000000"  # past the 64-bit integers a run's records hold


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--budget", HUGE], ["--budget must be at most 1000000000000", HUGE]),
        (
            ["--seed", "99999999999999999999999"],
            ["--seed must be between", "99999999999999999999999"],
        ),
        (["--seed", "-" + HUGE], ["--seed must be between"]),
        (["--mode", "parallel", "--n", HUGE], ["--n must be at most"]),
        (["--mode", "sequential", "--steps", HUGE], ["--steps must be at most"]),
        (["--mode", "hybrid", "--total-budget", HUGE], ["--total-budget must be at most"]),
        (["--answer-tokens", HUGE], ["--answer-tokens must be at most"]),
        (["--min-thinking", HUGE], ["--min-thinking must be at most"]),
        (["--mode", "adaptive", "--wave", HUGE], ["--wave"]),
        (["--concurrency", HUGE], ["--concurrency must be at most"]),
        (["--max-tokens", HUGE], ["--max-tokens must be at most"]),
        (["--max-problem-tokens", HUGE], ["--max-problem-tokens must be at most"]),
        (["--limit", HUGE], ["limit must be at most"]),
        (["--offset", HUGE], ["offset must be at most"]),
        (["--offset", "2"], ["data.jsonl holds 2 problems: --offset 2 leaves none", "below 2"]),
        # each setting in range, their product not
        (
            ["--mode", "parallel", "--n", "10000", "--budget", "1000000000"],
            ["tokens on one problem", "--n"],
        ),
        (["--max-cost", "nan"], ["--max-cost must be a positive amount"]),
    ],
)
def test_settings_out_of_range_fail_before_the_run_folder_exists(
    work: Path, tmp_path: Path, fake_url: str, args: list[str], needles: list[str]
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(2))
    proc = thinktree(
        "run", str(data), "--endpoint", fake_url, *args, "--out", str(work / "run"), cwd=work
    )
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--offset", "-3"], ["offset must be 0 or more, not -3"]),
        (["--limit", "-1"], ["--limit must be positive"]),
        (["--offset", HUGE], ["offset must be at most"]),
        (
            ["--offset", "20"],
            ["the demo set holds 20 problems: --offset 20 leaves none; give an offset below 20"],
        ),
    ],
)
def test_the_demo_set_checks_offset_and_limit_as_a_dataset_does(
    work: Path, fake_url: str, args: list[str], needles: list[str]
) -> None:
    proc = thinktree("run", "--endpoint", fake_url, *args, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--mode", "adaptive", "--n", "4", "--wave", "8"],
            ["--wave must be between 1 and --n (4)"],
        ),
        (["--mode", "adaptive", "--wave", "5"], ["--wave must be between 1 and --n (4), not 5"]),
        (
            ["--mode", "budget", "--n", "8", "--steps", "5", "--wave", "3"],
            ["--n is not used in mode 'budget'", "parallel, hybrid, adaptive, auto"],
        ),
        (["--mode", "budget", "--total-budget", "100"], ["--total-budget", "mode 'budget'"]),
        (["--steps", "3"], ["--steps is not used in mode 'budget'"]),  # budget is the default
        (["--mode", "parallel", "--steps", "3"], ["--steps is not used in mode 'parallel'"]),
        (["--mode", "sequential", "--n", "3"], ["--n is not used in mode 'sequential'"]),
        (["--mode", "sequential", "--min-thinking", "5"], ["--min-thinking", "'sequential'"]),
        (["--mode", "hybrid", "--wave", "2"], ["--wave is not used in mode 'hybrid'", "adaptive"]),
        (["--mode", "auto", "--stop-confidence", "0.9"], ["--stop-confidence", "'auto'"]),
        (["--mode", "parallel", "--total-budget", "512"], ["--total-budget", "'parallel'"]),
        (
            ["--mode", "hybrid", "--budget", "64", "--total-budget", "512"],
            ["--budget is not used in mode 'hybrid' when --total-budget is given"],
        ),
        # the embedded model's engine, with another endpoint named
        (["--engine", "llamacpp"], ["--engine picks the embedded model's engine"]),
    ],
)
def test_an_option_the_mode_does_not_use_is_refused(
    work: Path, tmp_path: Path, fake_url: str, args: list[str], needles: list[str]
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(2))
    proc = thinktree(
        "run", str(data), "--endpoint", fake_url, *args, "--out", str(work / "run"), cwd=work
    )
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--model", "gpt-x"],
        ["run", "--endpoint", "embedded", "--model", "gpt-x"],
        ["probe", "--model", "gpt-x"],
    ],
)
def test_a_model_the_embedded_endpoint_does_not_serve_is_refused(
    work: Path, args: list[str]
) -> None:
    """Run on the embedded model, its answers would be recorded as gpt-x's."""
    out = ["--out", str(work / "run")] if args[0] == "run" else []
    proc = thinktree(*args, *out, cwd=work, timeout=60)
    assert_one_line_error(proc, "model 'gpt-x': the embedded endpoint serves smollm2 only")
    assert_nothing_written(work)


def test_defaults_a_mode_does_not_use_are_not_refused(
    work: Path, tmp_path: Path, fake_url: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    # --wave's default (4) shrinks to a smaller --n; --n, --steps and the rest are unused
    # by budget mode but not given, so they are no reason to refuse a run
    for args in (["--mode", "adaptive", "--n", "2"], ["--mode", "budget", "--budget", "16"]):
        out = work / args[1]
        proc = thinktree(
            "run", str(data), "--endpoint", fake_url, *args, "--out", str(out), cwd=work
        )
        assert proc.returncode == 0, proc.stderr
        assert (out / "results.json").is_file()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--mode", "tree-search"], ["unknown mode 'tree-search'", "budget, sequential"]),
        (["--budget", "-5"], ["--budget", "-5"]),
        (["--budget", "0"], ["--budget", "positive"]),
        (["--mode", "parallel", "--n", "0"], ["--n", "positive"]),
        # every branch is set up before the first call: a slip would fill the memory
        (["--mode", "parallel", "--n", "100000000"], ["--n must be at most 10,000 samples"]),
        (["--mode", "sequential", "--steps", "-1"], ["--steps", "positive"]),
        (["--mode", "adaptive", "--stop-confidence", "1.5"], ["--stop-confidence", "below 1"]),
        (["--mode", "hybrid", "--total-budget", "0"], ["--total-budget"]),
        (["--mode", "hybrid", "--n", "8", "--steps", "8", "--total-budget", "10"], ["too small"]),
        # 1 token a step: no step could state an answer, and the model would be blamed
        (["--mode", "hybrid", "--total-budget", "10"], ["too small", "would get 1 token(s)"]),
        (["--mode", "parallel", "--aggregate", "loudest"], ["unknown aggregator 'loudest'"]),
        # one candidate a problem: every vote elects it
        (["--aggregate", "length-weighted"], ["--aggregate is not used in mode 'budget'"]),
        (["--mode", "sequential", "--aggregate", "majority"], ["not used in mode 'sequential'"]),
        # adaptive stops on a count of votes: a weighted vote could turn on samples not drawn
        (
            ["--mode", "adaptive", "--aggregate", "length-weighted"],
            ["--aggregate length-weighted is not a count of votes", "--mode parallel"],
        ),
        (["--min-thinking", "5000", "--budget", "100"], ["--min-thinking"]),
        (["--limit", "0"], ["--limit"]),
        (["--endpoint", "nowhere"], ["unknown endpoint 'nowhere'"]),
    ],
)
def test_bad_options(work: Path, args: list[str], needles: list[str]) -> None:
    proc = thinktree("run", *args, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


def test_missing_dataset(work: Path) -> None:
    proc = thinktree("run", str(work / "nope.jsonl"), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "dataset not found", "nope.jsonl")
    assert_nothing_written(work)


def test_malformed_jsonl_line_names_file_and_line(work: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"id": "a", "question": "Q?", "answer_type": "yesno", "answer": "yes"}\n'
        '{"id": "b", "question": "Q?", "answer_type": "yesno", \n'
    )
    proc = thinktree("run", str(data), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "bad.jsonl:2")
    assert_nothing_written(work)


def test_a_misspelt_key_in_a_dataset_line_is_one_line(work: Path, tmp_path: Path) -> None:
    data = tmp_path / "typo.jsonl"
    data.write_text(
        '{"id": "a", "question": "Q?", "answer_type": "yesno", "answer": "yes"}\n'
        '{"id": "b", "question": "Q?", "answer_type": "yesno", "anwser": "no"}\n'
    )
    proc = thinktree("run", str(data), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "typo.jsonl:2: unknown key 'anwser' — did you mean 'answer'?")
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("line", "fix"),
    [
        ('"options": {"A": "a", "B": "b"}, "answer": "B"', '"answer_type": "choice"'),
        ('"answer": "Maybe"', '"answer_type": "yesno"'),
    ],
    ids=["options", "yesno-gold"],
)
def test_a_line_that_needs_an_answer_type_is_one_line_and_starts_no_run(
    work: Path, tmp_path: Path, line: str, fix: str
) -> None:
    """Without its answer type the line would be graded as free text: wrong numbers. The
    dataset is refused before the endpoint is tried (nothing listens there)."""
    data = tmp_path / "untyped.jsonl"
    data.write_text(
        '{"id": "a", "question": "Q?", "answer_type": "yesno", "answer": "yes"}\n'
        f'{{"id": "b", "question": "Q?", {line}}}\n'
    )
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = thinktree("run", str(data), "--endpoint", url, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "untyped.jsonl:2: ", "no 'answer_type'", f"add {fix}")
    assert_nothing_written(work)


def test_invalid_problem_line_names_the_field(work: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a", "question": "Q?", "answer_type": "choice", "answer": "A"}\n')
    proc = thinktree("run", str(data), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "bad.jsonl:1", "options")
    assert_nothing_written(work)


def test_endpoint_that_refuses_connections(work: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = thinktree("run", "--endpoint", url, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "cannot connect", url)
    assert_nothing_written(work)


@pytest.mark.parametrize("model", [[], ["--model", "fake-model"]])
def test_a_url_without_its_v1_says_to_try_it(work: Path, fake_url: str, model: list[str]) -> None:
    """A server's root, not its API's: /models (or, with --model, the chat) is a 404."""
    root = fake_url.removesuffix("/v1")
    proc = thinktree("run", "--endpoint", root, *model, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "404", f"usually ends in /v1 (is it {root}/v1?)")
    assert_nothing_written(work)


def test_existing_run_folder_is_not_overwritten(work: Path) -> None:
    (work / "run").mkdir()
    (work / "run" / "results.json").write_text("{}")
    proc = thinktree("run", "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "already exists")
    assert (work / "run" / "results.json").read_text() == "{}"


def test_serve_on_a_port_in_use(work: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = thinktree("serve", "--port", str(port), cwd=work)
    assert_one_line_error(proc, f"port {port}", "in use")


def test_unknown_config_file(work: Path) -> None:
    proc = thinktree("run", "--config", str(work / "none.toml"), cwd=work)
    assert_one_line_error(proc, "config file not found")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # (the command path is the program's name: here "python -m thinktree.cli")
        (["run", "--budget", "abc"], ["Invalid value for '--budget'", " run --help)"]),
        (["run", "--bugdet", "5"], ["No such option: --bugdet", " run --help)"]),
        (["rnu"], ["No such command 'rnu'", "cli --help)"]),
        (["report"], ["Missing argument", " report --help)"]),
    ],
)
def test_a_flag_or_command_the_cli_does_not_know_is_one_line(
    work: Path, args: list[str], needles: list[str]
) -> None:
    """They used to be a box of five lines with a usage line above it."""
    proc = thinktree(*args, cwd=work)
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


@pytest.mark.parametrize("content", ["hello\n", '{"question": "1+1?", "answer": "2"}\n', ""])
def test_watch_refuses_a_file_that_is_not_a_trace(work: Path, content: str) -> None:
    (work / "afile").write_text(content)
    proc = thinktree("watch", "afile", cwd=work, timeout=30)
    assert_one_line_error(proc, "afile is not a run folder or a trace")
    assert proc.returncode == 2 and proc.stdout == ""


@pytest.mark.parametrize(
    ("make", "says"),
    [
        ("folder", ("no trace.jsonl in r1 nor", "no trace.jsonl in r1/trace.jsonl")),
        ("fifo", ("no trace.jsonl in r1 nor", "r1/trace.jsonl is not a run folder or a trace")),
        ("latin1", ("r1/trace.jsonl is not a",) * 2),
        ("nested", ("r1/trace.jsonl is not a",) * 2),
    ],
)
def test_watch_says_in_one_line_that_it_cannot_read_a_trace(
    work: Path, make: str, says: tuple[str, str]
) -> None:
    """Said before it asks for a terminal: no traceback, whatever is where the trace is."""
    folder = work / "r1"
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    trace = folder / "trace.jsonl"
    if make == "folder":
        trace.mkdir()
    elif make == "fifo":
        os.mkfifo(trace)
    elif make == "latin1":
        trace.write_bytes(b'{"type": "run-started", "run_id": "caf\xe9"}\n')
    else:
        trace.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    for path, said in zip(("r1", "r1/trace.jsonl"), says, strict=True):
        proc = thinktree("watch", path, cwd=work, timeout=30)
        assert_one_line_error(proc, said)
        assert proc.returncode == 2 and "terminal" not in proc.stderr


def test_watch_and_runs_say_so_of_a_path_too_long_to_open(work: Path) -> None:
    for command in ("watch", "runs", "report"):
        proc = thinktree(command, "x" * 300, cwd=work, timeout=30)
        assert_one_line_error(proc, "name too long")
        assert "Errno" not in proc.stderr


def test_watch_refuses_to_start_without_a_terminal(work: Path) -> None:
    """Its output sent to a file and nothing to read keys from: it says so and ends, rather
    than fill the file with escape codes and wait for a key that never comes."""
    (work / "r1").mkdir()
    (work / "r1" / "run.json").write_text("{}")
    write_trace(synthetic_run(2, 2), work / "r1" / "trace.jsonl")
    proc = thinktree("watch", "r1", cwd=work, timeout=30)
    assert_one_line_error(proc, "watch needs a terminal")
    assert proc.returncode == 2 and proc.stdout == ""


@pytest.mark.parametrize("redirected", ["stdin", "stdout", "stderr"])
def test_the_view_needs_a_terminal_on_every_stream(
    monkeypatch: pytest.MonkeyPatch, redirected: str
) -> None:
    """Keys come from stdin and the view is drawn on stderr; results go to stdout."""
    from thinktree import cli

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for name in ("stdin", "stdout", "stderr"):
        monkeypatch.setattr(sys, name, Stream(True))
    assert cli._terminal()
    monkeypatch.setattr(sys, redirected, Stream(False))
    assert not cli._terminal()


BAD_URLS = [
    ("http://127.0.0.1:99999/v1", "the port must be a number from 1 to 65535, not '99999'"),
    ("http://127.0.0.1:8000a/v1", "not '8000a'"),
    ("http://127.0.0.1:-1/v1", "not '-1'"),
    ("http://127.0.0.1:0/v1", "not '0'"),
    ("http://[bad/v1", "is not a URL"),
    ("http://:8000/v1", "names no host"),
    ("https://127.0.0.1:99999/v1", "not '99999'"),
    ("http://127.0.0.1:8000/v1?x=1", "has a query ('?x=1')"),
    ("http://127.0.0.1:8000/v1#frag", "has a fragment ('#frag')"),
    ("http://жж..local:8000/v1", "'жж..local' is not a host name (Empty Label)"),
]


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
def test_a_malformed_endpoint_url_fails_in_one_line(
    work: Path, tmp_path: Path, url: str, says: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    run = thinktree(
        "run", str(data), "--endpoint", url, "--model", "fake-model", "--out", "r", cwd=work
    )
    assert run.returncode == 2
    assert_one_line_error(run, f"endpoint URL '{url}'", says)
    probe = thinktree("probe", url, "--model", "fake-model", cwd=work)
    assert probe.returncode == 2
    assert_one_line_error(probe, f"endpoint URL '{url}'", says)
    assert_nothing_written(work)


def test_a_malformed_url_in_the_config_or_a_bench_fails_in_one_line(
    work: Path, tmp_path: Path
) -> None:
    bad = "http://127.0.0.1:99999/v1"
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(f'[endpoints.gpu]\nbase_url = "{bad}"\n')
    run = thinktree(
        "run", str(data), "--endpoint", "gpu", "--config", str(config), "--out", "r", cwd=work
    )
    assert run.returncode == 2
    assert_one_line_error(run, f"endpoint 'gpu': base_url '{bad}': the port must be")
    config.write_text('[endpoints.gpu]\nmembers = ["http://127.0.0.1:8000/v1", "http://h:1x/v1"]\n')
    pool = thinktree(
        "run", str(data), "--endpoint", "gpu", "--config", str(config), "--out", "r", cwd=work
    )
    assert_one_line_error(pool, "endpoint 'gpu': member 'http://h:1x/v1': the port must be")
    bench = tmp_path / "bench.toml"
    bench.write_text(
        f'[[datasets]]\npath = "{data}"\n\n[grid]\nmode = ["budget"]\nendpoint = ["{bad}"]\n\n'
        '[run]\nmodel = "fake-model"\n'
    )
    grid = thinktree("bench", str(bench), "--out", str(work / "bench"), cwd=work)
    assert grid.returncode == 2
    assert_one_line_error(grid, f"endpoint URL '{bad}': the port must be")
    assert_nothing_written(work)


def test_a_url_with_a_password_fails_in_one_line_that_does_not_repeat_it(
    work: Path, tmp_path: Path, fake_url: str
) -> None:
    url = fake_url.replace("http://", "http://user:s3cret@")
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    bench = tmp_path / "bench.toml"
    bench.write_text(
        f'[[datasets]]\npath = "{data}"\n\n[grid]\nmode = ["budget"]\nendpoint = ["{url}"]\n\n'
        '[run]\nmodel = "fake-model"\n'
    )
    shown = fake_url.replace("http://", "http://***@")
    for args in (
        ["run", str(data), "--endpoint", url, "--model", "fake-model", "--out", "r"],
        ["probe", url, "--model", "fake-model"],
        ["bench", str(bench), "--out", str(work / "bench")],
    ):
        proc = thinktree(*args, cwd=work)
        assert proc.returncode == 2
        assert_one_line_error(proc, f"endpoint URL '{shown}' holds a user name or password")
        assert "s3cret" not in proc.stdout + proc.stderr
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("http://127.0.0.1:99999/v1", "endpoint URL 'http://127.0.0.1:99999/v1': the port must be"),
        # it would go on with the embedded model, under the run's model's name
        ("embedded", "model 'fake-model': the embedded endpoint serves smollm2 only"),
    ],
    ids=["malformed-url", "embedded-of-another-model"],
)
def test_resuming_on_an_endpoint_it_cannot_go_on_with_fails_in_one_line(
    work: Path, tmp_path: Path, fake_url: str, endpoint: str, says: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    folder = tmp_path / "run"
    done = thinktree("run", str(data), "--endpoint", fake_url, "--out", str(folder), cwd=work)
    assert done.returncode == 0, done.stderr
    (folder / "results.json").unlink()  # as a killed run leaves it
    before = sorted(p.name for p in folder.iterdir())
    proc = thinktree("run", "--resume", str(folder), "--endpoint", endpoint, cwd=work)
    assert proc.returncode == 2
    assert_one_line_error(proc, says)
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (
            "temperature = nan",
            "temperature must be a number from 0 to 2 (the one this model takes), not nan",
        ),
        ("timeout_s = nan", "timeout_s must be a number of seconds above 0, at most 86400"),
        (
            "timeout_s = inf",
            "timeout_s must be a number of seconds above 0, at most 86400 (a day), not inf",
        ),
        ('continuation = "completions"', 'continuation = "completions" renders prompts'),
        ('chat_template = "{{ bad"', "chat_template does not parse: unexpected end of template"),
        (
            "max_connections = 1000000",
            "max_connections must be a whole number of calls from 1 to 10000, not 1000000: ",
        ),
        (
            "max_attempts = 100000",
            "max_attempts must be a whole number of attempts from 1 to 100, not 100000: ",
        ),
        (
            "timeout_s = 600000",
            "timeout_s must be a number of seconds above 0, at most 86400 (a day), not 600000",
        ),
        (
            'continuation = "completions"\n'
            'chat_template = \'{% if messages[0].role == "system" %}'
            '{{ raise_exception("System role not supported") }}{% endif %}'
            "{% for m in messages %}{{ m.content }}{% endfor %}'",
            "chat_template fails on a conversation like a run's (system, user, the assistant's "
            "text to continue): the template raised 'System role not supported' (line 1)",
        ),
    ],
)
def test_a_bad_endpoint_setting_in_the_config_fails_in_one_line(
    work: Path, tmp_path: Path, fake_url: str, table: str, says: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    (work / "thinktree.toml").write_text(f'[endpoints.gpu]\nbase_url = "{fake_url}"\n{table}\n')
    proc = thinktree("run", str(data), "--endpoint", "gpu", "--out", "r", cwd=work)
    assert proc.returncode == 2
    assert_one_line_error(proc, f"endpoint 'gpu': {says}")
    assert sorted(p.name for p in work.iterdir()) == ["thinktree.toml"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[endpoints]\ngpu = "{url}"\n', "endpoint 'gpu' must be a table of its settings"),
        ('endpoints = "{url}"\n', "endpoints must be a table of named endpoints"),
    ],
)
def test_endpoints_of_the_wrong_shape_fail_in_one_line(
    work: Path, tmp_path: Path, fake_url: str, text: str, says: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(text.format(url=fake_url))
    run = thinktree(
        "run", str(data), "--endpoint", "gpu", "--config", str(config), "--out", "r", cwd=work
    )
    assert run.returncode == 2
    assert_one_line_error(run, says)
    bench = tmp_path / "bench.toml"
    bench.write_text(
        text.format(url=fake_url)
        + f'\n[[datasets]]\npath = "{data}"\n\n[grid]\nendpoint = ["gpu"]\n'
    )
    grid = thinktree("bench", str(bench), "--out", str(work / "bench"), cwd=work)
    assert grid.returncode == 2
    assert_one_line_error(grid, says)
    assert_nothing_written(work)


def test_an_endpoint_that_never_answers_fails_in_one_line_within_its_check_time(
    work: Path, tmp_path: Path, silent_url: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(f'[endpoints.mute]\nbase_url = "{silent_url}"\ncheck_timeout_s = 1\n')
    for args in (["run", str(data), "--endpoint", "mute", "--out", "r"], ["probe", "mute"]):
        proc = thinktree(*args, "--config", str(config), cwd=work, timeout=30)
        assert proc.returncode == 2
        assert_one_line_error(
            proc,
            "endpoint 'mute'",
            "accepted the connection but sent no answer to /models within 1 s",
        )
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("price", "needle"),
    [
        ("{ prompt = nan, completion = nan }", "prompt must be a number of USD per million"),
        ('{ prompt = "nan", completion = 1 }', "not 'nan'"),
        ("{ prompt = 1, completion = inf }", "completion must be a number"),
        ("{ prompt = 1e308, completion = 1 }", "from 0 to 1000000, not 1e+308"),
        ("{ prompt = -1, completion = 1 }", "not -1"),
        ("{ prompt = true, completion = 1 }", "not True"),
        ("{ prompt = 1 }", "needs both numbers"),
        ("{ prompt = 1, completion = 2, cached = 1 }", "unknown key(s) cached"),
    ],
)
@pytest.mark.parametrize("limit", [[], ["--max-cost", "1"]])
def test_a_price_that_is_no_amount_is_refused_before_anything_starts(
    work: Path, tmp_path: Path, fake_url: str, price: str, needle: str, limit: list[str]
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "prices.toml"
    config.write_text(f'[prices]\n"fake-model" = {price}\n')
    proc = thinktree(
        "run",
        str(data),
        "--endpoint",
        fake_url,
        "--model",
        "fake-model",
        "--config",
        str(config),
        *limit,
        "--out",
        str(work / "run"),
        cwd=work,
    )
    assert_one_line_error(proc, 'price of "fake-model"', needle)
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("endpoints = 3\n", "endpoints must be a table of named endpoints, each"),
        ("[endpoints]\ngpu = 3\n", "endpoint 'gpu' must be a table of its settings"),
    ],
)
def test_an_endpoints_table_of_the_wrong_shape_is_one_line(
    work: Path, tmp_path: Path, config: str, needle: str
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(config)
    proc = thinktree(
        "run", "--endpoint", "gpu", "--config", str(path), "--out", str(work / "run"), cwd=work
    )
    assert_one_line_error(proc, f"{path}: {needle}")
    assert_nothing_written(work)


SECRET = "Zq81VvT0pS3cr3t"  # the key's body: it must never show


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (f"sk-{SECRET}…", f"holds '…' (U+2026) at position {len(SECRET) + 4}"),
        (f"sk-{SECRET}\x01x", f"holds '\\x01' (U+0001) at position {len(SECRET) + 4}"),
        (f"sk-{SECRET}\r\nx", f"holds '\\r' (U+000D) at position {len(SECRET) + 4}"),
        (f"  sk-{SECRET} x", f"holds ' ' (U+0020) at position {len(SECRET) + 6}"),
        (f"sk-{SECRET}é", f"holds 'é' (U+00E9) at position {len(SECRET) + 4}"),
    ],
)
def test_an_api_key_no_request_can_carry_fails_in_one_line_without_the_key(
    work: Path, tmp_path: Path, fake_url: str, key: str, says: str
) -> None:
    """A key past printable ASCII would end the run in a traceback (no request head holds
    "…"), or break each request so that the server's message repeats the key: it is
    refused before anything starts, in one line that names the variable, never the key."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(f'[endpoints.gpu]\nbase_url = "{fake_url}"\napi_key_env = "GPU_KEY"\n')
    for args, env, where in (
        (["--endpoint", fake_url], {"OPENAI_API_KEY": key}, "OPENAI_API_KEY"),
        (
            ["--endpoint", fake_url, "--model", "fake-model"],
            {"OPENAI_API_KEY": key},
            "OPENAI_API_KEY",
        ),
        (
            ["--endpoint", "gpu", "--config", str(config)],
            {"GPU_KEY": key},
            "endpoint 'gpu': the API key in GPU_KEY",
        ),
    ):
        proc = thinktree("run", str(data), *args, "--out", "r", cwd=work, env=env)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc, where, says)
        assert SECRET not in proc.stdout + proc.stderr
    assert_nothing_written(work)


@pytest.mark.parametrize("end", ["\r", "\r\n", "\n", " "])
def test_an_api_key_read_with_its_line_end_is_sent_without_it(
    work: Path, tmp_path: Path, fake_url: str, end: str
) -> None:
    """A key read from a (CRLF) file keeps its line end: sent as it is, it broke every
    request, and the server's 400 message showed the key."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    env = {"OPENAI_API_KEY": f"sk-{SECRET}{end}"}
    for args in (["--model", "fake-model"], []):  # without one, the models are listed
        out = work / f"r{len(args)}"
        proc = thinktree(
            "run", str(data), "--endpoint", fake_url, *args, "--out", str(out), cwd=work, env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert (out / "results.json").is_file()
        assert SECRET not in proc.stdout + proc.stderr


def test_a_host_in_another_script_is_reached_idna_encoded(
    work: Path, tmp_path: Path, fake_url: str
) -> None:
    """A host name past ASCII goes into each request's head IDNA-encoded, as a browser
    sends it, on the lean client and on aiohttp: full-width "ｌｏｃａｌｈｏｓｔ" is "localhost"."""
    wide = fake_url.replace("127.0.0.1", "ｌｏｃａｌｈｏｓｔ")
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(f'[endpoints.gpu]\nbase_url = "{wide}"\nhttp_client = "aiohttp"\n')
    for args in (["--endpoint", wide], ["--endpoint", "gpu", "--config", str(config)]):
        out = work / f"r{len(args)}"
        proc = thinktree("run", str(data), *args, "--out", str(out), cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert (out / "results.json").is_file()


def test_a_config_saved_with_a_byte_order_mark_is_read(
    work: Path, tmp_path: Path, fake_url: str
) -> None:
    """Windows Notepad saves UTF-8 with a byte order mark, which TOML does not allow."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    endpoint = f'[endpoints.fake]\nbase_url = "{fake_url}"\n'
    config = tmp_path / "thinktree.toml"
    config.write_text("\ufeff" + endpoint, encoding="utf-8")
    run = thinktree(
        "run", str(data), "--config", str(config), "--endpoint", "fake", "--out", "run", cwd=work
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((work / "run" / "results.json").read_text())["metrics"]["answered"] == 1
    bench = tmp_path / "bench.toml"
    grid = f'\n[[datasets]]\npath = "{data}"\n\n[grid]\nendpoint = ["fake"]\n'
    bench.write_text("\ufeff" + endpoint + grid, encoding="utf-8")
    cells = thinktree("bench", str(bench), "--out", "bench", cwd=work)
    assert cells.returncode == 0, cells.stderr
    assert len(list((work / "bench").glob("*/results.json"))) == 1


def test_a_bad_openai_base_url_is_named_as_the_environments(work: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    proc = thinktree(
        "run", str(data), "--out", "run", cwd=work, env={"OPENAI_BASE_URL": "localhost:8000"}
    )
    assert proc.returncode == 2
    assert_one_line_error(proc, "OPENAI_BASE_URL 'localhost:8000'", "http://host:port/v1")
    assert "--endpoint" not in proc.stderr and "unknown endpoint" not in proc.stderr
    assert_nothing_written(work)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "DATA", "--config", "ADIR"], "ADIR is a directory, not a config file"),
        (["bench", "ADIR", "--out", "bench"], "ADIR is a directory, not a bench config"),
        (["run", "--resume", "AFILE"], "cannot resume AFILE: it is a file, not a run folder"),
        (["runs", "AFILE"], "AFILE is a file, not a folder"),
        (["report", "AFILE"], "AFILE is a file, not a folder"),
        (["run", "DATA", "--out", "AFILE"], "--out AFILE is a file, not a run folder"),
    ],
)
def test_a_path_of_the_wrong_kind_is_said_to_be_one(
    work: Path, tmp_path: Path, fake_url: str, args: list[str], says: str
) -> None:
    """A directory given for a file, or a file for a folder: the message says which it is,
    not that nothing is there."""
    paths = {
        "DATA": str(write_dataset(tmp_path / "data.jsonl", beta_problems(1))),
        "ADIR": str(tmp_path / "adir"),
        "AFILE": str(tmp_path / "afile"),
    }
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("notes\n")
    given = [paths.get(arg, arg) for arg in args]
    if given[0] == "run" and "--resume" not in given:
        given += ["--endpoint", fake_url]
    proc = thinktree(*given, cwd=work)
    assert proc.returncode == 2
    for name, path in paths.items():
        says = says.replace(name, path)
    assert_one_line_error(proc, says)
    assert_nothing_written(work)
    assert (tmp_path / "afile").read_text() == "notes\n"


@pytest.mark.parametrize(
    ("table", "misspelt"),
    [
        ('[endpoint.fake]\nbase_url = "{url}"\n', "endpoint"),
        ('[endpoints.fake]\nbase_url = "{url}"\n\n[price]\nfake = {{ prompt = 1 }}\n', "price"),
    ],
)
def test_a_misspelt_table_of_a_config_is_refused(
    work: Path, tmp_path: Path, fake_url: str, table: str, misspelt: str
) -> None:
    """Left unread, its endpoints or prices would be missed with no word of why."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(1))
    config = tmp_path / "thinktree.toml"
    config.write_text(table.format(url=fake_url))
    run = thinktree(
        "run", str(data), "--config", str(config), "--endpoint", "fake", "--out", "run", cwd=work
    )
    assert run.returncode == 2
    assert_one_line_error(
        run, f"{config}: unknown table(s) {misspelt}; a config has [endpoints] and [prices]"
    )
    assert_nothing_written(work)


@pytest.mark.parametrize("command", ["run", "runs"])
def test_output_to_a_reader_that_went_away_ends_quietly(
    work: Path, fake_url: str, command: str
) -> None:
    """``thinktree run … | head -1``: the table's print found the pipe closed, and an
    exception group's traceback of some 90 lines followed. It ends quietly, status 1, and
    the run's results are written all the same."""
    data = write_dataset(work / "data.jsonl", beta_problems(2))
    made = thinktree("run", str(data), "--endpoint", fake_url, "--out", "r1", cwd=work)
    assert made.returncode == 0, made.stderr
    args = [str(data), "--endpoint", fake_url, "--out", "r2"] if command == "run" else ["."]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "thinktree.cli", command, *args],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    if command == "run":
        assert (work / "r2" / "results.json").is_file()
