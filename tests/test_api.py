"""thinktree from Python: ``thinktree.run`` / ``arun`` make the run ``thinktree run`` makes.

The endpoints are real: an HTTP server on 127.0.0.1 answering as an OpenAI-compatible one,
and the embedded model's vLLM server (marked slow).
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from pathlib import Path
from typing import Any

import pytest

import thinktree
from choice_set import beta_problems, write_dataset
from thinktree.agents.endpoint import EndpointConfig
from thinktree.datasets import DatasetError
from thinktree.errors import ConfigError
from thinktree.orchestrator.run import execute, load_resume
from thinktree.problems import Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread

REPLY = "It is beta. Answer: B"


class Seen:
    """A subscriber of the caller's own: the types of the events it was handed."""

    wants_deltas = False

    def __init__(self) -> None:
        self.types: list[str] = []
        self.closed = False

    def handle(self, event: Any) -> None:
        self.types.append(event.type)

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_arun_makes_the_run_the_command_makes(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    seen = Seen()
    async with FakeServer(FakeBehaviour(reply=REPLY), record_bodies=True) as server:
        result = await thinktree.arun(
            beta_problems(3),
            endpoint=server.base_url,
            mode="parallel",
            n=2,
            budget=32,
            seed=5,
            out=folder,
            subscribers=[seen],
        )
        asked = [b for b in server.bodies if "Question" in json.dumps(b.get("messages"))]
    assert isinstance(result, thinktree.RunResult)
    assert result.folder == folder and (folder / "results.json").is_file()
    assert (result.metrics.problems, result.metrics.correct) == (3, 3)
    assert result.failed_requests() == 0 and result.stopped_by is None
    assert {b.get("max_completion_tokens", b.get("max_tokens")) for b in asked} == {32}
    assert {b["n"] for b in asked} == {2}
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["settings"]["mode"] == "parallel"
    assert manifest["settings"]["n"] == 2 and manifest["settings"]["seed"] == 5
    with pytest.raises(ConfigError, match="already completed"):
        load_resume(folder)  # a run folder like any other
    assert seen.types[0] == "run-started" and seen.types[-1] == "run-finished"
    assert seen.types.count("problem-finished") == 3 and seen.closed


def test_run_takes_a_file_or_mappings_and_an_endpoint_config(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(4))
    rows: list[dict[str, Any]] = [
        {"id": "m1", "question": "Is it?", "answer_type": "yesno", "answer": "yes"},
        {
            "id": "m2",
            "question": "Which?",
            "answer_type": "choice",
            "options": {"A": "x", "B": "y"},
            "answer": "B",
        },
    ]
    with fake_server_in_thread(FakeBehaviour(reply=REPLY)) as server:
        from_file = thinktree.run(
            data, endpoint=server.base_url, limit=2, offset=1, out=tmp_path / "a"
        )
        config = EndpointConfig(name="mine", base_url=server.base_url, continuation="chat")
        from_rows = thinktree.run(rows, endpoint=config, out=tmp_path / "b")
    assert [t.problem_id for t in from_file.trees] == ["q1", "q2"]
    assert [t.problem_id for t in from_rows.trees] == ["m1", "m2"]
    assert [t.answer for t in from_rows.trees] == [None, "B"]  # "beta" says no yes or no
    assert json.loads((tmp_path / "b" / "run.json").read_text())["endpoint"]["name"] == "mine"


@pytest.mark.parametrize(
    ("problems", "options", "error", "message"),
    [
        (
            [{"id": "a", "question": "Q?", "answer": "B"}, {"id": "a", "question": "R?"}],
            {},
            DatasetError,
            "problems:2: duplicate id 'a' (first on line 1)",
        ),
        ([{"id": "a", "question": "Q?", "answr": "B"}], {}, DatasetError, "did you mean 'answer'"),
        ([], {}, DatasetError, "no problems given"),
        (None, {"offset": 99}, DatasetError, "offset 99 leaves none"),
        # options are named as the arguments they are here, not as the command's
        (None, {"mode": "parallel", "steps": 3}, ConfigError, "error: steps is not used in mode"),
        (
            None,
            {"mode": "parallel", "aggregate": "verifier-weighted"},
            ConfigError,
            "a verifier (verifiers=[NAME])",
        ),
        (None, {"aggregate": "majority"}, ConfigError, "aggregate is not used in mode 'budget'"),
        # each argument of the wrong type, where it would fail mid-run or on resume
        (None, {"mode": "sequential", "steps": 2.0}, ConfigError, "steps must be a whole number"),
        (None, {"budget": 1.5}, ConfigError, "budget must be a whole number or None, not 1.5"),
        (None, {"max_tokens": True}, ConfigError, "max_tokens must be a whole number"),
        (None, {"temperature": "hot"}, ConfigError, "temperature must be a number or None"),
        (None, {"limit": 1.5}, ConfigError, "limit must be a whole number or None, not 1.5"),
        (
            None,
            {"verifiers": "judge"},
            ConfigError,
            "verifiers must be a list of names, not 'judge'",
        ),
        (None, {"subscribers": Seen()}, ConfigError, "subscribers must be a list of subscribers"),
        (None, {"subscribers": [object()]}, ConfigError, "subscribers[0] must be a subscriber"),
        ({"id": "a", "question": "Q?"}, {}, DatasetError, "problems must be a dataset file's path"),
        # a Problem made without an answer_type is checked as a line without one is
        (
            [Problem(id="a", question="2 + 10?", answer="12")],
            {},
            DatasetError,
            "problems:1: the answer '12' is a number but the line has no 'answer_type'",
        ),
        (None, {"mode": "paralel"}, ConfigError, "paralel"),
        (None, {"budget": -5}, ConfigError, "budget"),
        (None, {"engine": "tgi"}, ConfigError, "unknown engine 'tgi'"),
        (None, {"engine": "llamacpp"}, ConfigError, "changes nothing for endpoint"),
    ],
)
def test_bad_input_is_refused_in_one_line_before_anything_is_written(
    tmp_path: Path,
    problems: Any,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    folder = tmp_path / "run"
    with fake_server_in_thread(FakeBehaviour(reply=REPLY)) as server:
        with pytest.raises(error) as caught:
            thinktree.run(problems, endpoint=server.base_url, out=folder, **options)
        asked = server.requests
    said = f"error: {caught.value}"
    assert message in said and "\n" not in said
    assert not folder.exists() and asked == 0
    # raised as itself, not while handling the check for a running event loop
    assert "no running event loop" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"max_attempts": 0},
            "endpoint 'mine': max_attempts must be a whole number of attempts from 1 to 100, not 0",
        ),
        ({"timeout_s": -1.0}, "endpoint 'mine': timeout_s must be a number of seconds above 0"),
        ({"max_connections": 2.5}, "max_connections must be a whole number of calls"),
        ({"continuation": "chatt"}, "endpoint 'mine': continuation must be one of 'auto'"),
        ({"model": 3}, "endpoint 'mine': model must be text, not 3"),
        ({"base_url": "ftp://127.0.0.1/v1"}, "endpoint 'mine': base_url 'ftp://127.0.0.1/v1'"),
        ({"continuation": "completions"}, "give it as chat_template"),
    ],
)
def test_an_endpoint_config_is_checked_as_its_config_table_would_be(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """An EndpointConfig made in Python was taken as it was: max_attempts=0 made no call
    at all, and each problem failed; now it is refused in one line before anything runs."""
    folder = tmp_path / "run"
    with fake_server_in_thread(FakeBehaviour(reply=REPLY)) as server:
        config = EndpointConfig(name="mine", base_url=server.base_url)
        with pytest.raises(ConfigError) as caught:
            thinktree.run(None, endpoint=dataclasses.replace(config, **change), out=folder)
        asked = server.requests
    said = f"error: {caught.value}"
    assert message in said and "\n" not in said
    assert not folder.exists() and asked == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": 4096}, "budget: a call of this run asks for up to 4096 tokens, and model "),
        ({"answer_tokens": 5000}, "answer_tokens: a call of this run asks for up to 5000"),
        (
            {"mode": "hybrid", "n": 2, "steps": 2, "total_budget": 20000},
            "total_budget: a call of this run asks for up to 5000 tokens (total_budget 20000",
        ),
        # the pilot's calls fit; the mode it picks, at twice the budget, would not
        (
            {"mode": "auto", "budget": 2100},
            "budget: a call of this run asks for up to 4200 tokens (auto gives the mode it "
            "picks 2× budget), and model ",
        ),
    ],
)
def test_a_call_past_the_models_context_is_refused_before_anything_runs(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """The server refuses every request whose max_tokens passes the model's context (vLLM
    lists it as max_model_len): the run was made, failed every call, and no resume could
    change its budget. Within the context, it runs."""
    behaviour = FakeBehaviour(reply=REPLY, max_model_len=4096)
    with fake_server_in_thread(behaviour) as server:
        with pytest.raises(ConfigError) as caught:
            thinktree.run(None, endpoint=server.base_url, out=tmp_path / "past", **options)
        asked = server.requests
        fits = thinktree.run(None, endpoint=server.base_url, out=tmp_path / "fits", budget=4000)
    said = str(caught.value)
    assert message in said and "holds 4096 in all, its prompt included" in said
    assert not (tmp_path / "past").exists() and asked == 0
    assert fits.metrics.calls > 0


class Breaking(Seen):
    def handle(self, event: Any) -> None:
        if event.type == "problem-finished":
            raise ValueError("my subscriber broke")


def test_an_error_that_stops_a_run_is_raised_as_itself(tmp_path: Path) -> None:
    """Not inside the exception groups of the run's task groups: ``except ValueError``
    catches a subscriber's."""
    with (
        fake_server_in_thread(FakeBehaviour(reply=REPLY)) as server,
        pytest.raises(ValueError, match="my subscriber broke"),
    ):
        thinktree.run(
            beta_problems(2),
            endpoint=server.base_url,
            out=tmp_path / "run",
            subscribers=[Breaking()],
        )
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.anyio
async def test_run_inside_a_running_event_loop_says_to_await_arun() -> None:
    with pytest.raises(ConfigError, match=r"use `await thinktree.arun\(...\)` instead"):
        thinktree.run(None, limit=1)


@pytest.mark.slow
def test_run_on_the_embedded_model(embedded_url: str, tmp_path: Path) -> None:
    """No endpoint: the embedded model (the server `thinktree serve` runs here)."""
    result = thinktree.run(limit=2, mode="budget", budget=32, out=tmp_path / "run")
    assert result.model == "smollm2"
    assert result.metrics.problems == 2 and result.metrics.calls >= 2
    assert result.failed_requests() == 0
    assert all(t.root.status == "done" for t in result.trees)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["endpoint"]["base_url"] == embedded_url


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "budget"),
    [
        ({"mode": "budget"}, 1024),
        ({"mode": "sequential", "steps": 2}, 512),
        ({"mode": "hybrid", "n": 2, "steps": 2}, 512),
        ({"mode": "hybrid", "n": 2, "steps": 2, "total_budget": 96}, None),  # the total says
    ],
)
async def test_a_run_records_the_budget_its_mode_took_and_resumes_under_it(
    tmp_path: Path, options: dict[str, Any], budget: int | None
) -> None:
    """Without --budget a run recorded its budget as null: its run.json and results.json
    did not say what it ran under. A resume runs under the recorded one, asking the very
    same calls (all read back)."""
    folder = tmp_path / "run"
    async with FakeServer(FakeBehaviour(reply=REPLY)) as server:
        first = await thinktree.arun(
            beta_problems(2), endpoint=server.base_url, seed=5, out=folder, **options
        )
        for name in ("run.json", "results.json"):
            assert json.loads((folder / name).read_text())["settings"]["budget"] == budget
        (folder / "results.json").unlink()  # cut off before its end
        state = load_resume(folder)
        assert state.settings.modes.budget == budget
        sent = server.requests
        cfg = EndpointConfig(name="fake", base_url=server.base_url)
        again = await execute(state.problems, cfg, state.settings, resume=state)
        assert server.requests == sent
    assert [t.answer for t in again.trees] == [t.answer for t in first.trees]
