"""The view's state: counters, filters and change tracking, without any widget."""

from __future__ import annotations

from typing import Any

import pytest

from thinktree.orchestrator.events import (
    Event,
    NodeDelta,
    NodeFinished,
    NodeKind,
    NodeStarted,
    NodeStatus,
    ProblemFinished,
    ProblemStarted,
    RunFinished,
    RunStarted,
    VoteCast,
)
from thinktree.tui.render import (
    header,
    line_answer,
    node_detail,
    node_label,
    problem_row,
    subtree_tokens,
    winner_path,
)
from thinktree.tui.state import Outcome, RunView, allowed_tokens, outcome
from thinktree.tui.synthetic import synthetic_run


def view_of(problems: int, branches: int, running: int = 0) -> RunView:
    view = RunView()
    for event in synthetic_run(problems, branches, running=running):
        view.apply(event)
    return view


def test_counters_follow_the_events() -> None:
    view = view_of(10, 3, running=2)
    assert view.total == 10
    assert view.done == 8
    assert view.outcomes[Outcome.RUNNING] == 2
    assert sum(view.outcomes.values()) == 10
    assert view.retries == 1
    assert view.last_retry is not None and view.last_retry.reason == "rate limited"
    assert view.completion_tokens == sum(p.completion_tokens() for p in view.tree.problems.values())
    assert view.finished is None
    assert view.elapsed > 0
    assert view.skipped == 0


def test_filters_partition_the_problems() -> None:
    view = view_of(12, 3, running=2)
    everything = view.problems_in("all")
    assert everything == view.order and len(everything) == 12
    done, running = view.problems_in("done"), view.problems_in("running")
    assert sorted(done + running) == sorted(everything)
    right, wrong = view.problems_in("right"), view.problems_in("wrong")
    assert right and wrong
    assert not set(right) & set(wrong)
    problems = view.tree.problems
    assert all(problems[p].correct is True for p in right)
    assert all(outcome(problems[p]) in (Outcome.WRONG, Outcome.FAILED) for p in wrong)


def test_allowed_tokens_come_from_the_engines_own_strategy() -> None:
    started = RunStarted(
        run_id="r",
        mode="parallel",
        endpoint="e",
        model="m",
        problems=10,
        settings={"mode": "parallel", "n": 4, "budget": 100, "answer_tokens": 20, "seed": 0},
    )
    assert allowed_tokens(started) == 10 * 4 * 120
    assert (
        allowed_tokens(RunStarted(run_id="r", mode="budget", endpoint="e", model="m", problems=1))
        is None
    )
    bad = RunStarted(
        run_id="r", mode="budget", endpoint="e", model="m", problems=1, settings={"budget": -5}
    )
    assert allowed_tokens(bad) is None


@pytest.mark.parametrize(
    ("limits", "allowed"),
    [
        ({"max_problem_tokens": 200}, 10 * 200),
        ({"max_run_tokens": 1000}, 1000),
        ({"max_problem_tokens": 200, "max_run_tokens": 100_000}, 10 * 200),
        ({"max_problem_tokens": None, "max_run_tokens": None}, 10 * 4 * 120),
    ],
)
def test_the_view_allows_what_results_json_allows(limits: dict[str, Any], allowed: int) -> None:
    """The header's budget takes the run's limits as results.json does (it ignored them)."""
    settings = {"mode": "parallel", "n": 4, "budget": 100, "answer_tokens": 20, **limits}
    started = RunStarted(
        run_id="r", mode="parallel", endpoint="e", model="m", problems=10, settings=settings
    )
    assert allowed_tokens(started) == allowed


def test_changes_say_what_to_redraw_and_reset() -> None:
    view = view_of(2, 2)
    changes = view.take_changes()
    assert changes.problem_list and changes.header
    assert changes.problems == {"p1", "p2"}
    assert view.take_changes().problems == set()
    view.apply(NodeDelta(node_id="p1/b1", text="more"))
    changes = view.take_changes()
    assert changes.problems == {"p1"} and changes.nodes == {"p1/b1"}
    assert not changes.problem_list


def test_unknown_nodes_and_repeated_finishes_do_not_break_the_counts() -> None:
    view = view_of(3, 2)
    before = dict(view.outcomes)
    view.apply(NodeDelta(node_id="nowhere", text="x"))
    view.apply(
        NodeFinished(
            node_id="nowhere", text="", finish_reason=None, prompt_tokens=0, completion_tokens=5
        )
    )
    view.apply(ProblemFinished(problem_id="p1", answer="1", correct=True, covered=True))
    view.apply(ProblemFinished(problem_id="ghost", answer="1", correct=True, covered=True))
    assert view.skipped == 3
    assert sum(view.outcomes.values()) == sum(before.values())


def test_labels_show_status_tokens_answers_and_the_winner() -> None:
    view = view_of(3, 3)
    problem = view.tree.problems["p1"]
    assert problem.vote is not None and problem.vote.winner_node
    winners = winner_path(problem)
    assert problem.vote.winner_node in winners and "p1" in winners
    tokens = subtree_tokens(problem)
    assert tokens["p1"] == problem.completion_tokens()
    winner = problem.nodes[problem.vote.winner_node]
    label = node_label(problem, winner, tokens[winner.id], winners)
    # laid out as any other line: the label right after the star, the answer 2 later
    assert label.plain.startswith(f"✓ ★ {winner.label}  → {winner.answer}")
    # the winner is a "Wait" under its branch's first call: the branch's line shows the
    # answer its branch was counted with, which its first call did not state
    branch = problem.nodes[winner.parent_id or ""]
    assert branch.kind is NodeKind.GENERATION and branch.answer is None
    assert node_label(problem, branch, tokens[branch.id], winners).plain.startswith(
        f"✓ ★ {branch.label}  → {winner.answer}"
    )
    root = node_label(problem, problem.root, tokens["p1"], winners)
    assert "What is" in root.plain and f"→ {problem.answer}" in root.plain
    assert problem_row(problem).plain.startswith(("✓ p1", "✗ p1"))
    top = header(view, elapsed=75.0, source="replay").plain
    assert "run 20250101-000000-synth" in top and "problems 3/3" in top
    assert "1:15" in top and "retries 1" in top and "run completed" in top


def test_a_pending_retry_shows_its_wait() -> None:
    view = RunView()
    for event in synthetic_run(3, 1, running=2):
        view.apply(event)
    retry = view.last_retry
    assert retry is not None
    assert "waiting 12 s: rate limited" in header(view, elapsed=retry.at, source="live").plain
    assert "waiting" not in header(view, elapsed=retry.at + 13, source="live").plain


def test_a_restarted_delta_replaces_the_nodes_streamed_text() -> None:
    view = RunView()
    for event in synthetic_run(1, 1, running=1):
        view.apply(event)
    node = next(n for n in view.tree.problems["p1"].walk() if n.status.value == "running")
    node.text = ""
    view.apply(NodeDelta(node_id=node.id, text="cut off mid-"))
    view.apply(NodeDelta(node_id=node.id, text="Let me ", restart=True))
    view.apply(NodeDelta(node_id=node.id, text="think."))
    assert node.text == "Let me think."
    assert node.id in view.take_changes().nodes


def test_a_finished_run_leaves_nothing_running() -> None:
    view = view_of(4, 2, running=2)
    assert view.outcomes[Outcome.RUNNING] == 2
    view.take_changes()
    view.apply(RunFinished(run_id="r", status="cancelled"))
    assert view.outcomes[Outcome.RUNNING] == 0
    assert view.outcomes[Outcome.STOPPED] == 2
    assert view.done == 2 and sum(view.outcomes.values()) == 4
    nodes = [n for p in view.tree.problems.values() for n in p.nodes.values()]
    assert not [n for n in nodes if n.status is NodeStatus.RUNNING]
    stopped = [p for p in view.order if outcome(view.tree.problems[p]) is Outcome.STOPPED]
    assert stopped == ["p3", "p4"] and view.problems_in("running") == []
    changes = view.take_changes()
    assert changes.problem_list and set(stopped) <= changes.problems
    line = header(view, elapsed=1.0, source="replay").plain.splitlines()[1]
    assert "running" not in line and "(2 stopped)" in line and "problems 2/4" in line
    assert problem_row(view.tree.problems["p3"]).plain.startswith("⊘ p3")


def test_problems_an_error_left_ungraded_count_as_failed_unanswered_ones_as_wrong() -> None:
    """As results.json counts them: a problem whose calls failed is not graded (failed);
    one the model left without an answer is graded, as wrong, its error saying why."""
    view = RunView()
    view.apply(RunStarted(run_id="r", mode="parallel", endpoint="e", model="m", problems=3))
    for pid in ("q1", "q2", "q3"):
        view.apply(ProblemStarted(problem_id=pid, node_id=pid, question="?", gold="yes"))
    calls = "1 model call(s) failed, the first with: endpoint 'e' answered HTTP 500"
    view.apply(
        ProblemFinished(problem_id="q1", answer=None, correct=None, covered=None, error=calls)
    )
    unanswered = "no candidate stated an answer"
    view.apply(
        ProblemFinished(
            problem_id="q2", answer=None, correct=False, covered=False, error=unanswered
        )
    )
    view.apply(ProblemFinished(problem_id="q3", answer="yes", correct=True, covered=True))
    problems = view.tree.problems
    assert [outcome(problems[p]) for p in ("q1", "q2", "q3")] == [
        Outcome.FAILED,
        Outcome.WRONG,
        Outcome.RIGHT,
    ]
    line = header(view, elapsed=1.0, source="replay").plain.splitlines()[1]
    assert "✓ 1 ✗ 1" in line and "! 1 failed" in line
    assert problem_row(problems["q1"]).plain.startswith("! q1")
    assert problem_row(problems["q2"]).plain.startswith("✗ q2")
    # its tree's root and its detail mark it as the list does: "✗" there read as wrong
    q1 = problems["q1"]
    assert node_label(q1, q1.root, 0, set()).plain.startswith("! q1")
    assert node_detail(q1, q1.root)[0].plain.startswith("! failed")
    assert node_label(problems["q2"], problems["q2"].root, 0, set()).plain.startswith("✓ q2")
    # the wrong filter lists what the header counts as wrong; a failed one is done
    assert view.problems_in("wrong") == ["q2"]
    assert view.problems_in("done") == ["q1", "q2", "q3"]


def test_a_choice_problems_detail_shows_its_options() -> None:
    """'→ D' means something only beside option D: the problem's detail lists them."""
    from thinktree.orchestrator.trace import event_from_dict
    from thinktree.tui.render import node_detail

    view = RunView()
    view.apply(RunStarted(run_id="r", mode="budget", endpoint="e", model="m", problems=2))
    options = {"A": "Aspirin", "B": "Heparin"}
    view.apply(
        ProblemStarted(problem_id="q", node_id="q", question="Which?", gold="B", options=options)
    )
    # a trace written before options were recorded reads as a problem without them
    old = {
        "type": "problem-started",
        "problem_id": "o",
        "node_id": "o",
        "question": "Old?",
        "gold": None,
    }
    view.apply(event_from_dict(old))
    tree = view.tree.problems["q"]
    assert node_detail(tree, tree.root)[1].plain == "Which?\n\nA. Aspirin\nB. Heparin"
    old_tree = view.tree.problems["o"]
    assert node_detail(old_tree, old_tree.root)[1].plain == "Old?"


def test_a_node_that_goes_on_from_a_cue_shows_the_cue_before_its_text() -> None:
    """A revision step's text goes on from thinktree's "Wait" (", what's that?"): its
    detail, and its branch's line of thought, show the cue first, dimmed, as the model
    read it. A trace written before cues were recorded reads as a node without one."""
    from thinktree.orchestrator.trace import event_from_dict
    from thinktree.tui.render import CUE_STYLE

    view = RunView()
    view.apply(RunStarted(run_id="r", mode="hybrid", endpoint="e", model="m", problems=1))
    view.apply(ProblemStarted(problem_id="q", node_id="q", question="Which?", gold="B"))
    view.apply(
        NodeStarted(node_id="q/b1", problem_id="q", parent_id="q", kind=NodeKind.BRANCH, label="b1")
    )
    steps = [
        ("q/b1/step1", "", "B, I think."),
        ("q/b1/step2", "\n\nWait", ", what's that? B."),
        ("q/b1/step3", "\n\nWait", ""),
    ]
    for node_id, cue, text in steps:
        view.apply(
            NodeStarted(
                node_id=node_id,
                problem_id="q",
                parent_id="q/b1",
                kind=NodeKind.STEP,
                label=node_id.rsplit("/", 1)[1],
                continuation="chat" if cue else "new",
                cue=cue,
            )
        )
        view.apply(
            NodeFinished(
                node_id=node_id,
                text=text,
                finish_reason="stop",
                prompt_tokens=5,
                completion_tokens=len(text.split()),
            )
        )
    old = {
        "type": "node-started",
        "problem_id": "q",
        "node_id": "q/old",
        "parent_id": "q",
        "kind": "step",
        "label": "old",
        "continuation": "chat",
    }
    view.apply(event_from_dict(old))
    tree = view.tree.problems["q"]
    first, second, third = (tree.nodes[f"q/b1/step{i}"] for i in (1, 2, 3))
    body = node_detail(tree, second)[1]
    assert body.plain == "Wait, what's that? B."
    assert (body.spans[0].start, body.spans[0].end, body.spans[0].style) == (0, 4, CUE_STYLE)
    assert node_detail(tree, first)[1].plain == "B, I think."
    assert node_detail(tree, third)[1].plain == "Wait (no text)"
    before = tree.nodes["q/old"]
    assert before.cue == "" and node_detail(tree, before)[1].plain == "(streaming…)"
    thread = node_detail(tree, tree.nodes["q/b1"])[1].plain
    assert thread == "── step1 ──\nB, I think.\n── step2 ──\nWait, what's that? B.\n"


def test_a_problem_a_limit_cut_short_says_so_in_its_detail() -> None:
    """It showed only its answer and grade, as if it had run all its steps."""
    from thinktree.tui.render import node_detail

    view = RunView()
    view.apply(RunStarted(run_id="r", mode="sequential", endpoint="e", model="m", problems=1))
    view.apply(ProblemStarted(problem_id="q", node_id="q", question="Which?", gold="B"))
    why = "run stopped: its token limit of 500 is reached (453 spent)"
    view.apply(
        ProblemFinished(problem_id="q", answer="C", correct=False, covered=False, stopped=why)
    )
    tree = view.tree.problems["q"]
    assert f"stopped {why}" in node_detail(tree, tree.root)[0].plain


def test_a_problem_detail_shows_the_auto_choice_and_a_score_votes_scores() -> None:
    """Neither was shown: an auto problem's chosen mode and its reason, nor the scores that
    decided a verifier's vote (its counts, a tie, hid why the winner won)."""
    from thinktree.orchestrator.events import StrategyChosen, VoteCast
    from thinktree.tui.render import node_detail

    view = RunView()
    view.apply(RunStarted(run_id="r", mode="auto", endpoint="e", model="m", problems=1))
    view.apply(ProblemStarted(problem_id="q", node_id="q", question="Which?", gold="B"))
    why = "the pilot's samples disagree (A, B): hard; they used 78% of their budget, so 2x budget"
    view.apply(
        StrategyChosen(problem_id="q", node_id="q/pilot", mode="sequential", budget=128, reason=why)
    )
    scores = {"A": 0.132964228, "B": 0.132964238}
    view.apply(
        VoteCast(
            problem_id="q",
            node_id="q",
            rule="verifier-weighted",
            answer="B",
            winner_node="q/b2",
            counts={"A": 1, "B": 1},
            scores=scores,
        )
    )
    meta = node_detail(view.tree.problems["q"], view.tree.problems["q"].root)[0].plain
    assert "chose sequential at budget 128" in meta and f"because {why}" in meta
    assert "vote verifier-weighted: A×1, B×1" in meta and "scores B 0.133, A 0.133" in meta


def test_a_long_node_id_in_the_detail_keeps_its_tail() -> None:
    """A node's id starts with its problem's: cut at its end, a long one lost the part
    that says which node it is."""
    from thinktree.tui.render import node_detail

    pid = "medqa-test-us-4-option-" + "x" * 80
    view = RunView()
    view.apply(RunStarted(run_id="r", mode="parallel", endpoint="e", model="m", problems=1))
    view.apply(ProblemStarted(problem_id=pid, node_id=pid, question="Which?", gold="B"))
    node_id = f"{pid}/b12/think"
    view.apply(
        NodeStarted(
            node_id=node_id,
            problem_id=pid,
            parent_id=pid,
            kind=NodeKind.GENERATION,
            label="thinking",
        )
    )
    tree = view.tree.problems[pid]
    first_line = node_detail(tree, tree.nodes[node_id])[0].plain.splitlines()[0]
    shown = first_line.split("generation", 1)[1].strip()
    assert len(shown) == 80 and shown.startswith("medqa-test") and shown.endswith("/b12/think")


def test_a_row_too_wide_gives_way_in_its_order_and_takes_back_what_it_can() -> None:
    from thinktree.tui.rows import DROP_MARKS, RowBuilder

    row = RowBuilder()
    row.add("✓ ")
    label = row.add("abcdefghij")
    count = row.add("123 tok", lead="  ", least=0)  # whole or not at all
    answer = row.add("日本語の答え", lead="  → ")  # wide characters: 12 cells
    fitted = row.row((count, 0), (label, 6), (label, 1), (DROP_MARKS, 0), (answer, 1))
    assert fitted.fit().plain == fitted.plain == "✓ abcdefghij  123 tok  → 日本語の答え"
    # the count goes whole, a "…" in its place
    assert fitted.fit(35).plain == "✓ abcdefghij  …  → 日本語の答え"
    assert fitted.fit(25).plain == "✓ abc…  …  → 日本語の答え"
    assert fitted.fit(22).plain == "✓ …  …  → 日本語の答え"
    # the mark goes before the answer is cut, and the label takes back the room it left
    assert fitted.fit(21).plain == "✓ ab…  → 日本語の答え"
    assert fitted.fit(19).plain == "✓ …  → 日本語の答え"
    for width in range(1, 40):
        assert fitted.fit(width).cell_len <= width


def test_pieces_left_out_leave_one_mark_where_they_were() -> None:
    """A count or a vote left out of a narrow row shows "…" in its place, as a cut label
    does; a run of them shows one."""
    from thinktree.tui.rows import DROP_MARKS, RowBuilder

    row = RowBuilder()
    row.add("✓ p1")
    answer = row.add("42", lead="  → ")
    count = row.add("1,234 tok", "dim", lead="  ", least=0)
    votes = row.add("majority 3/4", lead="  ", least=0)
    capped = row.add("capped", lead="  ", least=0)
    fitted = row.row((count, 0), (votes, 0), (capped, 0), (DROP_MARKS, 0), (answer, 1))
    assert fitted.fit(43).plain == "✓ p1  → 42  1,234 tok  majority 3/4  capped"
    assert fitted.fit(40).plain == "✓ p1  → 42  …  majority 3/4  capped"
    shown = fitted.fit(20)
    assert shown.plain == "✓ p1  → 42  …"  # three left out, one mark
    assert [shown.plain[s.start : s.end] for s in shown.spans] == ["  …"]  # in the count's dim
    assert fitted.fit(12).plain == "✓ p1  → 42"  # no room for the mark: the answer stays
    assert fitted.fit(9).plain == "✓ p1  → …"


def test_a_labelled_piece_left_out_leaves_no_label_without_its_value() -> None:
    from thinktree.tui.rows import RowBuilder

    row = RowBuilder()
    row.add("p1")
    tokens = row.add("1,234 / 9,000", "bold", lead="  ", label="tokens ", least=0)
    clock = row.add("1:15", "bold", lead="  ", label="⏱ ", least=0)
    row.add("live", "cyan", lead="  ", label="·  ")
    fitted = row.row((tokens, 0), (clock, 0))
    assert fitted.plain == fitted.fit(41).plain == "p1  tokens 1,234 / 9,000  ⏱ 1:15  ·  live"
    whole = fitted.fit(41)
    styles = [(whole.plain[s.start : s.end], str(s.style)) for s in whole.spans]
    assert styles[:3] == [("  tokens ", "dim"), ("1,234 / 9,000", "bold"), ("  ⏱ ", "dim")]
    assert fitted.fit(30).plain == "p1  …  ⏱ 1:15  ·  live"  # the label went with its value
    assert fitted.fit(16).plain == "p1  …  ·  live"
    assert fitted.fits(14) and not fitted.fits(13)  # the row's end would be cut below it


def test_an_interrupted_runs_header_says_so_at_60_columns() -> None:
    """'its process ended  run interr…': the source gives way to the run's end, which
    says the same and more."""
    view = view_of(6, 2, running=2)
    view.interrupt()
    hint = "resume with: thinktree run --resume runs/20250101-000000-synth"
    top = header(view, elapsed=75.0, source="its process ended", hint=hint)
    assert "run interrupted" in top.fit(60).plain.splitlines()[1]
    assert "its process ended  run interrupted" in top.fit(80).plain


def test_a_narrow_header_keeps_the_mode_and_the_runs_state() -> None:
    view = view_of(3, 2)
    top = header(view, elapsed=75.0, source="replay")
    assert top.fit().plain == top.plain  # whole where there is no width
    lines = {width: top.fit(width).plain.splitlines() for width in range(20, 121)}
    for width, (run, progress) in lines.items():
        assert len(run) <= width and len(progress) <= width
        assert progress.startswith(" problems 3/3")
    assert lines[120][0].endswith("  endpoint synthetic  model toy-model-1  mode parallel")
    # the run's id gives way first, then the labels: the mode, then the model and endpoint
    assert "run 2025…" in lines[80][0] and lines[80][0].endswith("mode parallel")
    assert lines[50][0] == " thinktree   parallel · toy-model-1 · synthetic"
    assert lines[36][0].startswith(" thinktree   parallel · toy")
    # the tokens and the clock give way to whether the run is live, replayed or over
    assert "tokens 129 / 1,728  ⏱ 1:15" in lines[80][1]
    assert lines[50][1].endswith("  ·  replay  run completed") and "⏱" not in lines[50][1]
    # a hint is cut at its end (the folder) first, and never short of its command
    hint = "resume with: thinktree run --resume runs/20250101-000000-synth"
    hinted = header(view, elapsed=75.0, source="replay", hint=hint)
    assert hinted.fit(200).plain.endswith(hint)
    for width in range(50, 200):  # the run's state in view (see above)
        progress = hinted.fit(width).plain.splitlines()[1]
        assert len(progress) <= width
        _, state, shown = progress.rpartition("run completed")
        assert state, (width, progress)
        assert shown in ("", "  …", f"  {hint}") or (
            shown.startswith("  resume with: thinktree run --resume ") and shown.endswith("…")
        ), (width, shown)


def test_a_live_runs_narrow_header_marks_what_it_leaves_out() -> None:
    """At 60 columns a live run's header dropped the tokens and the clock with no "…" in
    their place: the source, never cut, pushed the line past the pane, and its end was cut
    with the marks. The source gives way at its end now, keeping "live run"."""
    view = view_of(4, 2, running=1)
    top = header(view, elapsed=75.0, source="live run · following…")
    for width in range(52, 100):  # the counts, a "…", "·  " and "live run…" take 52
        progress = top.fit(width).plain.splitlines()[1]
        assert len(progress) <= width and "live run" in progress, (width, progress)
        if "⏱" not in progress:
            assert "  …  " in progress, (width, progress)


def test_a_narrow_header_keeps_whether_the_run_is_live_replayed_or_over() -> None:
    """Below 47 columns the counts of right and wrong, never cut, pushed the line past the
    pane and its end was cut: 'live run', 'replay' or 'run completed' went first."""
    going, ended, interrupted = view_of(3, 2, running=1), view_of(3, 2), view_of(3, 2, running=1)
    interrupted.interrupt()
    hint = "resume with: thinktree run --resume runs/20250101-000000-synth"
    cases = [
        (going, "live run", "live run"),
        (going, "following", "following"),
        (ended, "replay", "run completed"),
        (ended, "finished", "run completed"),
        (interrupted, "its process ended", "run interrupted"),
    ]
    for view, source, state in cases:
        top = header(view, elapsed=75.0, source=source, hint=hint)
        for width in range(32, 121):
            progress = top.fit(width).plain.splitlines()[1]
            assert len(progress) <= width and progress.startswith(" problems ")
            assert state in progress, (source, width, progress)
            # the counts give way whole: never "✗ 1" without its "✓ 2"
            assert "✗" not in progress or "✓" in progress, (source, width, progress)


def test_tree_lines_cut_to_a_pane_keep_their_status_and_answer() -> None:
    view = view_of(3, 3)
    problem = view.tree.problems["p1"]
    tokens, winners = subtree_tokens(problem), winner_path(problem)
    for node in problem.walk():
        whole = node_label(problem, node, tokens[node.id], winners).plain
        answer = f"→ {problem.answer}" if node is problem.root else f"→ {node.answer}"
        for width in range(12, len(whole) + 2):
            line = node_label(problem, node, tokens[node.id], winners, width).plain
            assert len(line) <= width
            assert line[0] == whole[0]  # the status mark
            if node.answer is not None or node is problem.root:
                assert answer in line
            # whatever gives way leaves a "…", where there is room for one beside the answer
            assert line == whole or "…" in line or len(line) + 3 > width
    root = problem.root
    line = node_label(problem, root, tokens["p1"], winners, 30).plain
    assert line.startswith("✓ p1  → ") and line.endswith("…")  # the question is cut
    listed = problem_row(problem).plain
    assert listed == f"✓ p1 → {problem.answer}"
    for width in range(len(listed) - 1, len(listed) + 2):
        line = problem_row(problem, width).plain
        assert len(line) <= width and line.endswith(f" → {problem.answer}")  # the id gives way


def test_retries_behind_calls_read_back_count_once_the_run_ends() -> None:
    """A resumed run's results count the retries behind the calls it read back: the view
    learns them from the run's end; a trace written before it said so reads as none."""
    from thinktree.orchestrator.trace import event_from_dict

    view = view_of(2, 1, running=1)  # one retry of its own (synthetic_run's rate limit)
    assert view.retries == 1
    view.apply(RunFinished(run_id="r", status="completed", read_back_retries=3))
    assert view.retries == 4
    assert "retries 4" in header(view, elapsed=1.0, source="replay").plain
    old = event_from_dict({"type": "run-finished", "at": 1.0, "run_id": "r", "status": "done"})
    assert isinstance(old, RunFinished) and old.read_back_retries == 0


def test_an_id_is_cut_in_its_middle_so_ids_sharing_a_start_stay_apart() -> None:
    from thinktree.tui.rows import RowBuilder

    shown = []
    for pid in ("medqa-test-0001", "medqa-test-0417"):
        row = RowBuilder()
        row.add("✓ ")
        cut = row.add(pid, middle=True)
        answer = row.add("B", lead=" → ")
        shown.append(row.row((cut, 1), (answer, 1)).fit(14).plain)
    assert shown == ["✓ med…0001 → B", "✓ med…0417 → B"]
    wide = RowBuilder()
    wide.add("日本語の問題0417", middle=True)
    assert wide.row((0, 1)).fit(7).plain == "日…417"  # cut by cells, not characters


def test_events_that_do_not_fit_the_tree_are_skipped_not_looped_on() -> None:
    """An edited trace, or two runs' put together: a node under itself, or started twice
    (its parent would list it again, a node its own ancestor), or a problem on a node of
    another's. Applied, walking the tree would never end."""
    view = view_of(2, 2)
    problem = view.tree.problems["p1"]
    before = {pid: list(p.walk()) for pid, p in view.tree.problems.items()}
    misfits = [
        NodeStarted(
            node_id="p1/x", problem_id="p1", parent_id="p1/x", kind=NodeKind.STEP, label="x"
        ),
        NodeStarted(
            node_id="p1", problem_id="p1", parent_id="p1/b1", kind=NodeKind.STEP, label="y"
        ),
        NodeStarted(
            node_id="p1/b1", problem_id="p1", parent_id="p1/b2", kind=NodeKind.STEP, label="z"
        ),
        NodeStarted(
            node_id="p2/b1", problem_id="p1", parent_id="p1", kind=NodeKind.STEP, label="w"
        ),
        NodeStarted(
            node_id="q/a", problem_id="nowhere", parent_id="q", kind=NodeKind.STEP, label="v"
        ),
        ProblemStarted(problem_id="p3", node_id="p1/b1", question="?", gold=None),
    ]
    for event in misfits:
        view.apply(event)
    assert view.skipped == len(misfits)
    assert {pid: list(p.walk()) for pid, p in view.tree.problems.items()} == before
    assert "p3" not in view.tree.problems and view.tree.node("p1/b1").problem_id == "p1"
    for node in problem.walk():
        node_label(problem, node, subtree_tokens(problem)[node.id], winner_path(problem))
    # a problem started again on its own root is the problem anew, as before
    view.apply(ProblemStarted(problem_id="p1", node_id="p1", question="again", gold=None))
    assert view.tree.problems["p1"].question == "again"


def _call(
    node_id: str, parent: str, kind: NodeKind, answer: str | None, text: str = "…"
) -> list[Event]:
    """A node's start and end, under the problem its parent's id starts with."""
    problem = parent.split("/")[0]
    return [
        NodeStarted(
            node_id=node_id, problem_id=problem, parent_id=parent, kind=kind, label=node_id
        ),
        NodeFinished(
            node_id=node_id,
            text=text,
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
            answer=answer,
        ),
    ]


def test_a_branch_line_shows_the_answer_its_branch_ended_with_not_its_first_calls() -> None:
    """A parallel branch's node is its first call; a "Wait" or a forced answer under it
    can change the branch's answer, and the branch's line (all a folded tree shows) says
    the branch's, as the vote counted it."""
    view = RunView()
    for event in [
        ProblemStarted(problem_id="q", node_id="q", question="?", gold="B"),
        *_call("q/b1", "q", NodeKind.GENERATION, "A"),
        *_call("q/b1/wait1", "q/b1", NodeKind.EXTENSION, "B"),
        *_call("q/b1/answer", "q/b1", NodeKind.FORCED_ANSWER, None),  # said nothing
        *_call("q/b2", "q", NodeKind.GENERATION, "C"),
        *_call("q/b2/v", "q/b2", NodeKind.VERDICT, "D"),  # a verifier's, not the branch's
    ]:
        view.apply(event)
    tree = view.tree.problems["q"]
    first, second = tree.nodes["q/b1"], tree.nodes["q/b2"]
    assert line_answer(tree, first) == "B"  # the last of its calls to state one
    assert line_answer(tree, tree.nodes["q/b1/wait1"]) == "B"
    assert line_answer(tree, second) == "C"
    assert node_label(tree, first, 3, set()).plain.startswith("✓ q/b1  → B")
    # once the vote is in, the branch's ballot says (here read from the whole text)
    view.apply(
        VoteCast(
            problem_id="q",
            node_id="q",
            rule="majority",
            answer="A",
            winner_node="q/b1/answer",
            counts={"A": 1, "C": 1},
            ballots=[{"node": "q/b1/answer", "answer": "A"}, {"node": "q/b2", "answer": "C"}],
        )
    )
    assert line_answer(tree, first) == "A" and line_answer(tree, second) == "C"


def test_a_text_of_megabytes_is_shown_by_its_start_and_end() -> None:
    """The pane lays out all it is given on every change: a node's text of megabytes
    (or a branch of many long steps) stalled the view for seconds a keypress."""
    from thinktree.tui.render import node_detail

    huge = "START " + "reasoning, " * 200_000 + "Answer: B END"
    texts = {"p1/b1": huge}
    view = RunView()
    for event in synthetic_run(1, 2, texts=texts, deltas=False):
        view.apply(event)
    # a branch of steps (hybrid's): its node shows its steps' texts one after another
    for event in [
        *_call("p1/h1", "p1", NodeKind.BRANCH, None, text=""),
        *_call("p1/h1/step1", "p1/h1", NodeKind.STEP, None, text=huge),
    ]:
        view.apply(event)
    tree = view.tree.problems["p1"]
    node = tree.nodes["p1/b1"]
    assert node.text == huge  # the state keeps it all; only what is laid out is bounded
    for shown in (node, tree.nodes["p1/h1"]):  # the node, and a branch's thread
        body = node_detail(tree, shown)[1].plain
        assert len(body) < 50_000, (shown.id, len(body))
        assert "START reasoning" in body and "Answer: B END" in body, shown.id
        assert "characters left out here" in body


def test_megabytes_streamed_in_small_pieces_are_applied_in_linear_time() -> None:
    """Each piece was added by copying the node's text so far: 200,000 pieces of a
    1.6 MB text took minutes, with the view frozen."""
    import time

    view = RunView()
    for event in synthetic_run(1, 2, running=1, deltas=False):
        view.apply(event)
    running = [n for n in view.tree.problems["p1"].walk() if n.status is NodeStatus.RUNNING]
    long, other = running[-1].id, running[-2].id
    pieces = 200_000
    deltas: list[Any] = []
    for i in range(pieces):  # another node streams at the same time, its pieces between
        deltas.append(NodeDelta(node_id=long, text=f"{i % 10} tok tk "))
        if i % 100 == 0:
            deltas.append(NodeDelta(node_id=other, text=f"{i} "))
    deltas.insert(1000, NodeDelta(node_id=long, text="again: ", restart=True))
    deltas.insert(3000, NodeDelta(node_id="nowhere", text="x"))
    before, skipped = view.events, view.skipped
    started = time.perf_counter()
    for start in range(0, len(deltas), 2000):
        view.apply_batch(deltas[start : start + 2000])
    assert time.perf_counter() - started < 5
    assert view.events == before + len(deltas) and view.skipped == skipped + 1
    shown = [d for d in deltas[1001:] if d.node_id == long]
    nodes = view.tree.problems["p1"].nodes
    assert nodes[long].text == "again: " + "".join(d.text for d in shown)
    assert nodes[other].text == "".join(f"{i} " for i in range(0, pieces, 100))
