"""A verifier that misbehaves fails its verdicts with a one-line reason; the run goes on.

The verifiers are registered by name for one test (tests/misbehaving.py), as a plugin's
entry point would register them; the solver is a scripted HTTP server on 127.0.0.1 whose
candidates answer A, B, B, B (the gold is B).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from misbehaving import RELEASE, Plain, PlainClose, register
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.orchestrator.store import StoreReader
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

PROBLEM = Problem(
    id="q1",
    question="Which one?",
    answer_type=AnswerType.CHOICE,
    options={"A": "alpha", "B": "beta"},
    answer="B",
)


def _reply(body: dict[str, Any], index: int) -> str:
    return ["Surely A. Answer: A", "Answer: B", "It is B. Answer: B", "B. Answer: B"][index % 4]


async def _run(
    tmp_path: Path,
    verifiers: tuple[str, ...],
    aggregate: str | None = None,
    prices: dict[str, Price] | None = None,
    problems: int = 1,
) -> RunResult:
    many = [PROBLEM.model_copy(update={"id": f"q{i + 1}"}) for i in range(problems)]
    async with FakeServer(FakeBehaviour(reply=_reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=32),
            verifiers=verifiers,
            aggregate=aggregate,
            out=tmp_path / "run",
            prices=prices or {},
        )
        return await execute(many, endpoint, settings)


def _results(result: RunResult) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((result.folder / "results.json").read_text())
    return found


@pytest.fixture(autouse=True)
def _misbehaving(monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)


BAD_VERDICTS = {
    "nan": "gave a non-finite score (nan)",
    "inf": "gave a non-finite score (-inf)",
    "str": "gave a score that is not a number: '0.9' (str)",
    "bool": "gave a score that is not a number: True (bool)",
    "float": "returned a float, not a Verdict",
    "dict": "returned a dict, not a Verdict",
    "tokens": "gave prompt_tokens that is not a count: 'ten' (str)",
    "rationale": "gave a rationale that is not text",
    "cost": "gave cost_usd that is not a finite amount: nan (float)",
    "huge-score": "gave score 1e+308, outside [0, 1]; scale its scores into [0, 1]",
    "negative-score": "gave score -0.3, outside [0, 1]; scale its scores into [0, 1]",
    "above-one": "gave score 1.5, outside [0, 1]; scale its scores into [0, 1]",
    "huge-cost": "gave cost_usd that is not a finite amount: 1e+308 (float)",
    "huge-tokens": "gave prompt_tokens 100000000000000000000, more than any call spends",
    "raise": "failed: boom from a verifier",
    "failed": "cannot tell",
    "scored-error": "judge timed out; score is a guess",  # an error fails it, score or not
    "multiline-error": "judge said: no answer in time",  # one line, as every error
    "none": "verifier misbehave:none returned None, not a list of verdicts",
    "model-int": "gave a model that is not a name: 7 (int)",
    "plain-raise": "failed: boom from a verifier",  # a plain def verify's, from its thread
    "exit": "verifier misbehave:exit failed: it called sys.exit(3)",  # not the run's end
    "plain-exit": "failed: it called sys.exit('the scorer gave up')",
    # outside Exception, and not the run stopping: the run crashed with a traceback
    "base-exception": "verifier misbehave:base-exception failed: the scorer broke",
    "plain-base-exception": "failed: the scorer broke",
    # a TimeoutError of its own is its failure, not the panel's timeout (with none, the
    # run crashed formatting it)
    "own-timeout": "verifier misbehave:own-timeout failed: TimeoutError",
    "own-timeout-default": "verifier misbehave:own-timeout-default failed: TimeoutError",
}


FAILED_ITSELF = {"failed", "scored-error", "multiline-error"}  # Verdicts with an error


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(BAD_VERDICTS))
async def test_a_bad_verdict_fails_with_its_reason_and_the_majority_decides(
    tmp_path: Path, kind: str
) -> None:
    with capture_logs() as logs:
        result = await _run(tmp_path, (f"misbehave:{kind}",))
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert len(verdicts) == 4
    assert all(v.status is NodeStatus.FAILED for v in verdicts)
    assert all(BAD_VERDICTS[kind] in (v.error or "") for v in verdicts), verdicts[0].error
    # said once, as a warning, unless the verifier failed its verdicts itself
    warned = [e["error"] for e in logs if e["event"] == "verifier failed"]
    assert warned == ([] if kind in FAILED_ITSELF else [verdicts[0].error]), warned
    assert all("\n" not in (v.error or "") for v in verdicts)
    # no valid verdict: the plain vote decides, recorded as such
    assert tree.vote is not None and tree.vote.rule == "majority"
    assert tree.answer == "B" and tree.correct and tree.error is None
    assert tree.vote.counts == {"A": 1, "B": 3}
    m = result.metrics.verifier
    assert m is not None and m.failed_verdicts == 4
    assert (m.problems, m.pick_accuracy, m.auroc) == (0, None, None)  # nothing to judge
    results = _results(result)
    assert results["problems"][0]["vote"]["rule"] == "majority"
    assert [b["score"] for b in results["problems"][0]["vote"]["ballots"]] == [None] * 4
    with StoreReader.open(result.folder / "run.sqlite") as store:
        assert [v["score"] for v in store.verdicts()] == [None] * 4
        assert store.nodes("q1")  # the store kept recording


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["lowest", "lowest-scored-error"])
@pytest.mark.parametrize("aggregate", ["best-of-n", "verifier-weighted", "verifier-tiebreak"])
async def test_a_failed_verdict_ranks_below_the_lowest_scores(
    tmp_path: Path, aggregate: str, kind: str
) -> None:
    # A's verdict fails (with no score, or an error beside a score of 1); B's three score
    # 0: a failure is no better than any score
    result = await _run(tmp_path, (f"misbehave:{kind}",), aggregate)
    tree = result.trees[0]
    assert tree.vote is not None and tree.vote.rule == aggregate
    assert tree.answer == "B" and tree.vote.winner_node == "q1/b2"
    assert "A" not in tree.vote.scores
    assert tree.nodes["q1/b1"].combined_score is None
    failed = [v for v in tree.of_kind(NodeKind.VERDICT) if v.status is NodeStatus.FAILED]
    assert [v.parent_id for v in failed] == ["q1/b1"] and failed[0].error == "cannot tell"
    m = result.metrics.verifier
    assert m is not None and m.pick_accuracy == 1.0 and m.failed_verdicts == 1
    assert m.auroc is None  # the scored candidates are all right: no AUROC


@pytest.mark.anyio
async def test_a_valid_verifier_alongside_a_failing_one_still_decides(tmp_path: Path) -> None:
    result = await _run(tmp_path, ("misbehave:nan", "misbehave:lowest"), "best-of-n")
    tree = result.trees[0]
    assert tree.vote is not None and tree.vote.rule == "best-of-n"
    assert tree.answer == "B"
    assert tree.nodes["q1/b2"].scores == {"misbehave:lowest": 0.0}


@pytest.mark.anyio
async def test_numpy_scores_and_counts_are_valid(tmp_path: Path) -> None:
    # a model's outputs are numpy numbers: a float32 score and int64 token counts count
    result = await _run(tmp_path, ("misbehave:numpy",), "best-of-n")
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.status for v in verdicts] == [NodeStatus.DONE] * 4, verdicts[0].error
    assert tree.vote is not None and tree.vote.rule == "best-of-n"
    assert tree.vote.winner_node == "q1/b4"  # scored 0.75, the highest
    results = _results(result)
    assert [b["score"] for b in results["problems"][0]["vote"]["ballots"]] == [0, 0.25, 0.5, 0.75]
    m = result.metrics.verifier
    assert m is not None and m.prompt_tokens == 12


@pytest.mark.anyio
async def test_a_check_that_raises_is_one_line_before_the_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await _run(tmp_path, ("misbehave:check-raises",))
    why = "verifier 'misbehave:check-raises' refused its argument: the check exploded"
    assert str(caught.value) == why
    assert not (tmp_path / "run").exists()


MODELS_ERRORS = {
    "raise": "verifier misbehave:models-raise could not name its models: no model configured",
    "str": "verifier misbehave:models-str gave models() 'judge-model' (str); "
    "return a list of model names",
    "none": "verifier misbehave:models-none gave models() None (NoneType); "
    "return a list of model names",
    "ints": "verifier misbehave:models-ints gave models() [1, 2] (list); "
    "return a list of model names",
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(MODELS_ERRORS))
async def test_bad_models_is_one_line_before_the_run_folder(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await _run(tmp_path, (f"misbehave:models-{kind}",))
    assert str(caught.value) == MODELS_ERRORS[kind]
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["hang", "hang-default"])
async def test_a_verifier_that_hangs_fails_its_verdicts_in_time(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinktree.verifiers import panel

    monkeypatch.setattr(panel, "VERIFY_TIMEOUT_S", 0.2)  # the default, for "hang-default"
    with anyio.fail_after(30):
        result = await _run(tmp_path, (f"misbehave:{kind}",), "best-of-n")
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    why = (
        f"verifier misbehave:{kind} took longer than 0.2 s on 4 candidates; "
        "give it a longer timeout_s (None: no limit)"
    )
    assert [v.error for v in verdicts] == [why] * 4
    assert tree.vote is not None and tree.vote.rule == "majority" and tree.answer == "B"


@pytest.mark.anyio
async def test_a_plain_def_verify_runs_off_the_loop_one_call_at_a_time(tmp_path: Path) -> None:
    Plain.reset()
    result = await _run(tmp_path, ("misbehave:plain",), "best-of-n", problems=6)
    assert len(Plain.threads) == 6  # one call per problem
    assert threading.get_ident() not in Plain.threads  # none on the loop's thread
    assert Plain.most_at_once == 1  # six problems at once, but never two calls
    for tree in result.trees:
        verdicts = tree.of_kind(NodeKind.VERDICT)
        assert [v.status for v in verdicts] == [NodeStatus.DONE] * 4
        assert [v.score for v in verdicts] == [0.5] * 4
        assert tree.vote is not None and tree.vote.rule == "best-of-n"
    m = result.metrics.verifier
    assert m is not None and m.failed_verdicts == 0


@pytest.mark.anyio
async def test_a_plain_def_verify_that_blocks_fails_its_verdicts_in_time(tmp_path: Path) -> None:
    # it blocks for up to a minute, in its thread: the run goes on, and its timeout holds;
    # the next problem's call does not start beside the one left running
    Plain.reset()
    RELEASE.clear()
    try:
        with anyio.fail_after(30):
            result = await _run(tmp_path, ("misbehave:plain-hang",), "best-of-n", problems=2)
    finally:
        RELEASE.set()
    timed_out = (
        "verifier misbehave:plain-hang took longer than 0.2 s on 4 candidates; "
        "give it a longer timeout_s (None: no limit)"
    )
    kept_out = (
        "a call of verifier misbehave:plain-hang that timed out was still running 0.2 s "
        "later, so this one could not start; give it a longer timeout_s (None: no limit)"
    )
    errors = sorted(  # the verdicts of each problem fail alike
        str(error)
        for tree in result.trees
        for error in {v.error for v in tree.of_kind(NodeKind.VERDICT)}
    )
    assert errors == sorted([timed_out, kept_out])
    assert Plain.most_at_once == 1
    for tree in result.trees:
        assert tree.vote is not None and tree.vote.rule == "majority" and tree.answer == "B"


@pytest.mark.anyio
async def test_a_plain_def_verify_waits_for_its_call_that_timed_out(tmp_path: Path) -> None:
    # the first call takes 0.7 s against a timeout of 0.5: the next waits for it, then runs
    Plain.reset()  # the hang left running before has ended
    result = await _run(tmp_path, ("misbehave:plain-slow-once",), "best-of-n", problems=2)
    assert Plain.most_at_once == 1
    statuses = sorted([v.status for v in tree.of_kind(NodeKind.VERDICT)] for tree in result.trees)
    assert statuses == [[NodeStatus.DONE] * 4, [NodeStatus.FAILED] * 4]


@pytest.mark.anyio
@pytest.mark.parametrize(("kind", "shown"), [("negative", "-1.0"), ("str", "'10'")])
async def test_a_bad_timeout_is_one_line_before_the_run_folder(
    tmp_path: Path, kind: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await _run(tmp_path, (f"misbehave:timeout-{kind}",))
    why = (
        f"verifier misbehave:timeout-{kind} has timeout_s {shown}; give seconds above 0, "
        "or None for no limit"
    )
    assert str(caught.value) == why
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
async def test_a_verifier_that_reorders_its_candidates_leaves_the_others_theirs(
    tmp_path: Path,
) -> None:
    # the first verifier reverses the list it was given; the second still gets the
    # candidates in order, and its top score goes to the one that answers A, not to the
    # candidate at its place in the reversed list
    result = await _run(tmp_path, ("misbehave:reverses", "misbehave:prefers-a"), "best-of-n")
    tree = result.trees[0]
    assert tree.vote is not None and tree.vote.winner_node == "q1/b1"
    assert tree.answer == "A"
    scored = [(v.candidate_node, v.node_id) for v in tree.verdicts]
    assert all(node_id.startswith(f"{candidate}/") for candidate, node_id in scored)


@pytest.mark.anyio
@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("aggregate", ["best-of-n", "verifier-weighted", "verifier-tiebreak"])
async def test_the_candidate_a_verifier_scores_highest_wins(
    tmp_path: Path, aggregate: str, k: int
) -> None:
    # candidates answer A, B, B, B; the verifier scores candidate k 1 and the others 0:
    # k wins, except under the tiebreak rule, where the majority (B) still does
    result = await _run(tmp_path, (f"misbehave:pick-{k}",), aggregate)
    tree = result.trees[0]
    assert tree.vote is not None and tree.vote.rule == aggregate
    tiebreak_lost = aggregate == "verifier-tiebreak" and k == 0
    assert tree.vote.winner_node == ("q1/b2" if tiebreak_lost else f"q1/b{k + 1}")
    assert tree.answer == ("A" if k == 0 and not tiebreak_lost else "B")


PRICE = Price(prompt_per_m=1.0, completion_per_m=2.0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "model"),
    [("spends", "judge-x"), ("models-one", "judge-y"), ("models-two", None), ("ok", None)],
)
async def test_a_verdict_records_its_model_and_is_priced_at_it(
    tmp_path: Path, kind: str, model: str | None
) -> None:
    # a plugin without models() names the model of its verdicts, or its models() names
    # the one model they are all priced at; the run prices them and keeps that price
    prices = {"fake-model": PRICE, "judge-x": PRICE, "judge-y": PRICE, "judge-z": PRICE}
    result = await _run(tmp_path, (f"misbehave:{kind}",), "best-of-n", prices)
    with StoreReader.open(result.folder / "run.sqlite") as store:
        verdicts = store.verdicts()
    assert [v["model"] for v in verdicts] == [model] * 4
    spent = kind != "ok"
    each = PRICE.cost(100, 10) if model is not None else None
    assert [v["cost_usd"] for v in verdicts] == [each if spent else None] * 4
    m = result.metrics.verifier
    assert m is not None
    assert m.cost_usd == (None if each is None else pytest.approx(4 * each))
    manifest = json.loads((result.folder / "run.json").read_text())
    recorded = {"fake-model", *([model] if model else []), *(["judge-z"] if "two" in kind else [])}
    if kind == "models-two":
        recorded.add("judge-y")
    assert set(manifest["prices"]) == recorded


@pytest.mark.anyio
async def test_a_factory_that_raises_is_one_line_before_the_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await _run(tmp_path, ("brittle:factory",))
    assert (
        str(caught.value) == "verifier 'brittle:factory' could not be built: the factory exploded"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
async def test_a_prepare_that_raises_is_one_line_before_the_run_folder(tmp_path: Path) -> None:
    PlainClose.closed = False
    with pytest.raises(ConfigError) as caught:
        await _run(tmp_path, ("brittle:prepare",))
    why = "verifier brittle:prepare could not be prepared: the scorer is not up"
    assert str(caught.value) == why
    assert PlainClose.closed  # what it opened is closed
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
async def test_a_close_that_raises_is_logged_and_the_run_is_kept(tmp_path: Path) -> None:
    with capture_logs() as logs:
        result = await _run(tmp_path, ("brittle:close",))
    closing = [e for e in logs if e["event"] == "verifier failed to close"]
    assert closing == [
        {
            "event": "verifier failed to close",
            "verifier": "brittle:close",
            "error": "close went wrong",
            "log_level": "warning",
        }
    ]
    assert result.trees[0].answer == "B"
    assert _results(result)["problems"][0]["answer"] == "B"


@pytest.mark.anyio
async def test_a_plain_close_is_called(tmp_path: Path) -> None:
    PlainClose.closed = False
    result = await _run(tmp_path, ("brittle:plain-close",))
    assert PlainClose.closed
    assert (result.folder / "results.json").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("verifier", ["judge:score=yes-prob", "pairwise:score=rating"])
async def test_a_judge_call_that_failed_is_sent_again_on_resume(
    tmp_path: Path, verifier: str
) -> None:
    """The judge's endpoint refused its calls (retries spent): the run says its calls
    failed and resumes, scoring them then (it said none failed and refused to resume,
    so the judge's work was lost for good; the pairwise judge's, until now)."""
    from thinktree.orchestrator.run import load_resume
    from thinktree.orchestrator.store import list_runs
    from thinktree.verifiers.judge import JUDGE_SYSTEM

    judging = {"down": True}

    def judged(body: dict[str, Any]) -> bool:
        messages = body.get("messages") or []
        return bool(messages) and messages[0].get("content") == JUDGE_SYSTEM

    def judge_down(body: dict[str, Any]) -> str | None:
        return "reloading" if judging["down"] and judged(body) else None

    def reply(body: dict[str, Any], index: int) -> str:
        if judged(body):  # P("Yes") for the judge; the first response for the pairwise one
            return "Yes" if verifier.startswith("judge") else "1"
        return "Answer: B" if verifier.startswith("judge") or index else "Answer: A"

    problems = [
        Problem(
            id=f"q{i}",
            question="Which?",
            answer_type=AnswerType.CHOICE,
            options={"A": "a", "B": "b"},
            answer="B",
        )
        for i in range(2)
    ]
    behaviour = FakeBehaviour(reply=reply, reject=judge_down)
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=2, budget=16),
            out=tmp_path / "run",
            verifiers=(verifier,),
        )
        first = await execute(problems, cfg, settings)
        # a call per candidate of each problem; pairwise, the one match of each
        failed = 4 if verifier.startswith("judge") else 2
        assert first.failed_requests() == failed
        (summary,) = list_runs(tmp_path)
        assert summary.calls_failed == failed
        judging["down"] = False
        state = load_resume(first.folder)
        assert state.retrying == failed
        again = await execute(state.problems, cfg, state.settings, resume=state)
    assert again.failed_calls() == []
    assert all(t.vote is not None and t.vote.rule != "majority" for t in again.trees)
