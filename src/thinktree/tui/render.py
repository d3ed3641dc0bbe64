"""Text for every part of the screen, built from the run's state.

Everything that came from the model or the data goes through :mod:`sanitize` and into
``Text`` objects as plain strings; nothing here is ever parsed as markup.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.tree import Node, ProblemTree
from thinktree.sanitize import clean, one_line
from thinktree.tui.rows import DROP_MARKS, Row, RowBuilder, middle_cut
from thinktree.tui.state import Outcome, RunView, outcome

STATUS_MARKS: dict[NodeStatus, tuple[str, str]] = {
    NodeStatus.PENDING: ("·", "dim"),
    NodeStatus.RUNNING: ("…", "yellow"),
    NodeStatus.DONE: ("✓", "green"),
    NodeStatus.FAILED: ("✗", "red"),
    NodeStatus.CANCELLED: ("⊘", "dim"),
}
OUTCOME_MARKS: dict[Outcome, tuple[str, str]] = {
    Outcome.RUNNING: ("…", "yellow"),
    Outcome.RIGHT: ("✓", "green"),
    Outcome.WRONG: ("✗", "red"),
    Outcome.DONE: ("•", "blue"),
    Outcome.FAILED: ("!", "bold red"),
    Outcome.STOPPED: ("⊘", "dim"),
}
WINNER_STYLE = "bold black on green"
CUE_STYLE = "dim italic"  # thinktree's cue before the text that goes on from it


def status_mark(node: Node) -> tuple[str, str]:
    """``node``'s mark and style; a failed problem's is the problem list's ("!"), not a
    failed call's ("✗", which beside a problem reads as an answer graded wrong)."""
    if node.kind is NodeKind.PROBLEM and node.status is NodeStatus.FAILED:
        return OUTCOME_MARKS[Outcome.FAILED]
    return STATUS_MARKS[node.status]


#: Characters of a node's text the detail pane lays out: its start and its end, half each.
#: The pane lays out all it holds on each change, so a text of megabytes would stall the
#: view for seconds per keypress; the trace keeps every character.
TEXT_SHOWN = 40_000


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Header:
    """The header's two lines, each fitted to the width it is drawn in (:meth:`fit`).

    ``run`` says which run this is with a label before each part; where it does not fit
    even without the run's id (its folder has it), ``compact`` says it without labels,
    the mode first (never cut), then the model's and the endpoint's names. ``progress``
    gives way in this order: the hint's end (the folder of a command to resume), a retry's
    reason, the retries, the tokens, the clock, the rest of the hint, then the counts of
    problems right, wrong, stopped, running and failed; how far the run has got and whether
    it is live, replayed or over stay.
    """

    run: Row
    compact: Row
    progress: Row

    @property
    def plain(self) -> str:
        """Everything the header says, uncut."""
        return f"{self.run.plain}\n{self.progress.plain}"

    def fit(self, width: int | None = None) -> Text:
        """Both lines in at most ``width`` cells each (None: whole)."""
        run = self.run if width is None or self.run.fits(width) else self.compact
        text = run.fit(width)
        text.append("\n")
        text.append_text(self.progress.fit(width))
        return text


def header(view: RunView, *, elapsed: float, source: str, hint: str | None = None) -> Header:
    """Two lines: what run this is, then how far it has got (and ``hint``: what to do
    next, last)."""
    run, compact = _run_lines(view)
    return Header(run, compact, _progress_line(view, elapsed=elapsed, source=source, hint=hint))


def _run_lines(view: RunView) -> tuple[Row, Row]:
    """The header's first line with labels, and without (see :class:`Header`)."""
    run, compact = RowBuilder(), RowBuilder()
    for row in (run, compact):
        row.add(" thinktree ", "bold reverse")
    started = view.started
    if started is None:
        said = (
            "waiting for the run to start…"
            if view.ended is None
            else "the run ended before it started"
        )
        run.add(said, "dim", lead="  ")
        return run.row(), run.row()
    run_id = run.add(
        one_line(started.run_id, 200), "bold", lead="  ", label="run ", least=8, middle=True
    )
    for label, value in (
        ("endpoint", started.endpoint),
        ("model", started.model),
        ("mode", started.mode),
    ):
        run.add(one_line(value, 200), "bold", lead="  ", label=f"{label} ")
    compact.add(one_line(started.mode, 200), "bold", lead="  ")  # never cut
    model = compact.add(one_line(started.model, 200), "bold", lead=" · ")
    endpoint = compact.add(one_line(started.endpoint, 200), "bold", lead=" · ")
    return run.row((run_id, 0)), compact.row(
        (endpoint, 12), (model, 16), (endpoint, 6), (model, 8), (endpoint, 0), (model, 0)
    )


_HINT_KEPT = len("resume with: thinktree run --resume …")


def _progress_line(view: RunView, *, elapsed: float, source: str, hint: str | None) -> Row:
    row = RowBuilder()
    row.add(f"{view.done}/{view.total}", "bold", lead=" ", label="problems ")
    # the counts by outcome, each whole or not at all: they give way before the run's state
    running = stopped = right = wrong = failed = None
    if count := view.outcomes[Outcome.RUNNING]:
        running = row.add(f"({count} running)", "yellow", lead=" ", least=0)
    if count := view.outcomes[Outcome.STOPPED]:
        stopped = row.add(f"({count} stopped)", "dim", lead=" ", least=0)
    if view.outcomes[Outcome.RIGHT] or view.outcomes[Outcome.WRONG]:
        right = row.add(f"✓ {view.outcomes[Outcome.RIGHT]}", "green", lead="  ", least=0)
        wrong = row.add(
            f"✗ {view.outcomes[Outcome.WRONG]}", "red", lead=" ", least=0, with_previous=True
        )
    if count := view.outcomes[Outcome.FAILED]:
        failed = row.add(f"! {count} failed", "bold red", lead="  ", least=0)
    counts = [(wrong, 0), (right, 0), (stopped, 0), (running, 0), (failed, 0)]
    # whole or not at all: a count cut short would read as another count (and the tokens
    # allowed are one piece with the tokens spent, never shown without them)
    spent = f"{view.completion_tokens:,}"
    if view.allowed_tokens:
        spent += f" / {view.allowed_tokens:,}"
    tokens = row.add(spent, "bold", lead="  ", label="tokens ", least=0)
    ticking = row.add(clock(elapsed), "bold", lead="  ", label="⏱ ", least=0)
    retries = None
    if view.retries:
        retries = row.add(f"retries {view.retries}", "magenta", lead="  ", least=0)
    waiting = None
    retry = view.last_retry
    if retry is not None and view.ended is None and elapsed < retry.at + retry.wait_s:
        waited = f"waiting {retry.at + retry.wait_s - elapsed:.0f} s"
        # cut, its reason gives way: the countdown stays whole
        waiting = row.add(
            f"{waited}: {one_line(retry.reason, 40)}",
            "bold magenta",
            lead="  ",
            least=len(waited) + 1,
        )
    shown = row.add(source, "cyan", lead="  ", label="·  ")
    kept = cell_len(source.split(" · ")[0]) + 1  # "live run", "replay 4×", and a "…"
    ended = view.ended
    if ended is not None:
        style = "green" if ended == "completed" else "bold red"
        row.add(f"  run {one_line(ended, 20)}", style)
    error = None
    if view.error:
        error = row.add(one_line(view.error, 80), "bold red", lead="  ", least=20)
    # what to do next: its end (a folder) gives way first, then the figures, then the rest
    said = row.add(one_line(hint), "yellow", lead="  ", least=_HINT_KEPT) if hint else None
    return row.row(
        (said, _HINT_KEPT),
        (error, 20),
        (waiting, 0),
        (retries, 0),
        (tokens, 0),
        (ticking, 0),
        (said, 0),
        # a run still going keeps the start of what its source says ("live run …"), not
        # the "…" of the counts left out, which a cut of the line's end would take too
        *([(shown, kept)] if ended is None else []),
        *counts,
        # where the run's end is said ("run interrupted"), the source ("its process
        # ended") says no more, and gives way last, after the marks of what went
        *([(DROP_MARKS, 0), (shown, 0)] if ended is not None else []),
    )


def problem_row(problem: ProblemTree, width: int | None = None) -> Text:
    """One line of the problem list: outcome mark, id, answer (in ``width`` cells: the
    id gives way first)."""
    mark, style = OUTCOME_MARKS[outcome(problem)]
    row = RowBuilder()
    row.add(mark, style)
    row.add(" ")
    pid = row.add(one_line(problem.problem_id), middle=True)
    answer = None
    if problem.finished:
        answer = row.add(one_line(problem.answer or "—", 20), "dim", lead=" → ")
    return row.row((pid, 6), (answer, 8), (pid, 1), (answer, 1)).fit(width)


def problem_row_key(problem: ProblemTree) -> Hashable:
    """What :func:`problem_row` shows: when it is unchanged, so is the line."""
    return (outcome(problem), problem.finished, problem.answer)


def subtree_tokens(problem: ProblemTree) -> dict[str, int]:
    """Completion tokens spent under each node (itself included): the solver's, so the
    problem's are those the run's summary counts; a verdict shows its verifier's own."""
    totals: dict[str, int] = {}
    for node in reversed(problem.walk()):
        below = sum(totals[c] for c in node.children if problem.nodes[c].kind != NodeKind.VERDICT)
        totals[node.id] = node.completion_tokens + below
    return totals


def winner_path(problem: ProblemTree) -> set[str]:
    """The vote's winning node and its ancestors (empty before the vote)."""
    vote = problem.vote
    if vote is None or vote.winner_node is None or vote.winner_node not in problem.nodes:
        return set()
    path: set[str] = set()
    node_id: str | None = vote.winner_node
    while node_id is not None and node_id in problem.nodes:
        path.add(node_id)
        node_id = problem.nodes[node_id].parent_id
    return path


_LATER_CALLS = frozenset({NodeKind.EXTENSION, NodeKind.FORCED_ANSWER})


def line_answer(problem: ProblemTree, node: Node) -> str | None:
    """The answer ``node``'s line ended with, for its tree line.

    A parallel branch's node is its first call, and what the branch added later (a
    "Wait", a forced answer) hangs under it: the branch's answer is the one the vote
    counted for it, and before the vote the last of its calls to state one. Any other
    node's is its own.
    """
    later = [
        child
        for child in (problem.nodes.get(child_id) for child_id in node.children)
        if child is not None and child.kind in _LATER_CALLS
    ]
    if not later:
        return node.answer
    line = {node.id, *(child.id for child in later)}
    if problem.vote is not None:
        for ballot in problem.vote.ballots:
            if ballot.get("node") in line:
                answer = ballot.get("answer")
                return answer if isinstance(answer, str) else None
    answer = node.answer
    for child in later:
        if child.answer is not None:
            answer = child.answer
    return answer


def node_label(
    problem: ProblemTree, node: Node, tokens: int, winners: set[str], width: int | None = None
) -> Text:
    """A tree line: status mark, label, the extracted answer, tokens, the vote's pick (in
    ``width`` cells: see :func:`node_row`)."""
    return node_row(problem, node, tokens, winners).fit(width)


def node_row(problem: ProblemTree, node: Node, tokens: int, winners: set[str]) -> Row:
    """A tree line in pieces. Cut to a narrow pane, the status mark and the answer stay;
    token counts go first (a "…" stands where they were), then the label is cut (to "…"
    at worst)."""
    if node.kind is NodeKind.PROBLEM:
        return _problem_line(problem, node, tokens)
    mark, style = STATUS_MARKS[node.status]
    row = RowBuilder()
    row.add(mark, style)
    row.add(" ")
    if node.id in winners:
        row.add("★ ", "bold green")
    if problem.vote is not None and problem.vote.winner_node == node.id:
        label_style = WINNER_STYLE
    else:
        label_style = "bold" if node.kind is NodeKind.BRANCH else ""
    label = row.add(one_line(node.label, 40), label_style)
    answer = None
    said = line_answer(problem, node)
    if said is not None:
        answer = row.add(one_line(said, 30), lead="  → ")
    score = node.score if node.score is not None else node.combined_score
    scored = None
    if score is not None:
        scored = row.add(f"score {score:.2f}", "cyan", lead="  ", least=0)
    count = None
    if node.children:
        if tokens:
            count = row.add(f"{tokens:,} tok", "dim", lead="  ", least=0)
    elif node.status is NodeStatus.RUNNING:
        if node.text:
            count = row.add(f"streaming {len(node.text):,} chars", "dim", lead="  ", least=0)
    elif node.max_tokens:
        count = row.add(f"{tokens:,}/{node.max_tokens:,} tok", "dim", lead="  ", least=0)
    elif tokens:
        count = row.add(f"{tokens:,} tok", "dim", lead="  ", least=0)
    capped = None
    if node.finish_reason == "length":
        capped = row.add("capped", "yellow", lead="  ", least=0)
    error = None
    if node.error:
        error = row.add(one_line(node.error, 60), "red", lead="  ", least=4)
    return row.row(
        (count, 0),
        (error, 16),
        (DROP_MARKS, 0),  # the label is worth more than the mark of what went
        (label, 6),
        (scored, 0),
        (capped, 0),
        (error, 0),
        (label, 1),
        (answer, 1),
    )


def _problem_line(problem: ProblemTree, node: Node, tokens: int) -> Row:
    """The problem's own tree line: the question gives way first, then the counts."""
    mark, style = status_mark(node)
    row = RowBuilder()
    row.add(mark, style)
    row.add(" ")
    pid = row.add(one_line(problem.problem_id), "bold", middle=True)
    answer = None
    if problem.finished:
        answer = row.add(one_line(problem.answer or "—", 30), "bold", lead="  → ")
        if problem.correct is not None:
            graded, graded_style = OUTCOME_MARKS[outcome(problem)]
            row.add(f" {graded}", graded_style)
    count = row.add(f"{tokens:,} tok", "dim", lead="  ", least=0) if tokens else None
    votes = None
    vote = problem.vote
    if vote is not None and vote.answer is not None and vote.counts:
        won = vote.counts.get(vote.answer, 0)
        summary = f"{one_line(vote.rule, 20)} {won}/{sum(vote.counts.values())}"
        votes = row.add(summary, lead="  ", least=0)
    error = None
    if problem.error:
        error = row.add(one_line(problem.error, 60), "red", lead="  ", least=4)
    question = row.add(one_line(problem.question, 60), "italic", lead="  ", least=4)
    return row.row(
        (question, 12),
        (count, 0),
        (votes, 0),
        (question, 0),
        (error, 16),
        (DROP_MARKS, 0),  # the id is worth more than the mark of what went
        (pid, 8),
        (error, 0),
        (pid, 1),
        (answer, 1),
    )


def _field(text: Text, name: str, value: str, style: str = "") -> None:
    text.append(f"{name} ", style="dim")
    text.append(value, style=style)
    text.append("   ")


def node_detail(problem: ProblemTree, node: Node) -> tuple[Text, Text]:
    """The detail pane: a few lines about ``node``, then its full text, literally."""
    meta = Text()
    mark, style = status_mark(node)
    meta.append(f"{mark} {node.status}", style=style)
    meta.append(f"  {node.kind}  ", style="dim")
    meta.append(middle_cut(one_line(node.id), 80), style="bold")  # its tail says which node
    meta.append("\n")
    if node.kind is NodeKind.PROBLEM:
        meta = _problem_meta(meta, problem)
        meta.rstrip()
        return meta, literal_body(problem_text(problem))
    tokens = subtree_tokens(problem)[node.id]
    cap = f" / {node.max_tokens:,}" if node.max_tokens else ""
    if node.status is NodeStatus.RUNNING and not node.children:
        _field(meta, "streamed", f"{len(node.text):,} chars")
        if node.max_tokens:
            _field(meta, "cap", f"{node.max_tokens:,} tok")
    else:
        _field(meta, "tokens", f"{tokens:,}{cap}")
    if node.prompt_tokens:
        _field(meta, "prompt", f"{node.prompt_tokens:,}")
    if node.finish_reason:
        _field(meta, "finish", one_line(node.finish_reason, 20))
    if node.latency_s:
        _field(meta, "latency", f"{node.latency_s:.2f} s")
    if node.continuation:
        _field(meta, "via", one_line(node.continuation, 20))
    meta.append("\n")
    if node.answer is not None:
        _field(meta, "answer", one_line(node.answer, 60), "bold")
        if node.extraction:
            _field(meta, "from", one_line(node.extraction, 30))
    if problem.vote is not None and problem.vote.winner_node == node.id:
        meta.append(" ★ the vote's winner ", style=WINNER_STYLE)
    if node.error:
        meta.append("\nerror ", style="bold red")
        meta.append(clean(node.error), style="red")
    meta.rstrip()
    if node.kind is NodeKind.BRANCH or (not node.text and node.children):
        return meta, _thread(problem, node)
    running = node.status is NodeStatus.RUNNING
    return meta, literal_body(node.text, running=running, cue=node.cue)


def _problem_meta(meta: Text, problem: ProblemTree) -> Text:
    _field(meta, "gold", one_line(problem.gold, 40) if problem.gold is not None else "—")
    if problem.finished:
        _field(meta, "answer", one_line(problem.answer or "—", 40), "bold")
        if problem.correct is not None:
            mark, style = OUTCOME_MARKS[Outcome.RIGHT if problem.correct else Outcome.WRONG]
            _field(meta, "graded", f"{mark} {'right' if problem.correct else 'wrong'}", style)
        if problem.covered is not None:
            _field(meta, "covered", "yes" if problem.covered else "no")
    _field(meta, "tokens", f"{problem.completion_tokens():,}")
    if problem.decision is not None:  # the auto mode's choice, and why
        chosen = problem.decision
        meta.append("\n")
        _field(meta, "chose", f"{one_line(chosen.mode, 20)} at budget {chosen.budget:,}")
        meta.append("\n")
        _field(meta, "because", one_line(chosen.reason, 200))
    vote = problem.vote
    if vote is not None:
        meta.append("\n")
        counts = ", ".join(
            f"{one_line(k, 20)}×{v}" for k, v in sorted(vote.counts.items(), key=lambda kv: -kv[1])
        )
        _field(meta, "vote", f"{one_line(vote.rule, 20)}: {counts or '—'}")
        if vote.scores and any(vote.scores.get(k) != float(v) for k, v in vote.counts.items()):
            # a score rule (a verifier's): what decided it, not only the counts
            ranked = sorted(vote.scores.items(), key=lambda kv: -kv[1])
            meta.append("\n")
            _field(meta, "scores", ", ".join(f"{one_line(k, 20)} {v:.4g}" for k, v in ranked))
        if vote.winner_node:
            meta.append("\n")
            _field(meta, "winner", one_line(vote.winner_node, 60), "bold green")
    if problem.stopped and problem.stopped != problem.error:  # a limit cut it short
        meta.append("\nstopped ", style="bold yellow")
        meta.append(clean(problem.stopped), style="yellow")
    if problem.error:
        meta.append("\nerror ", style="bold red")
        meta.append(clean(problem.error), style="red")
    return meta


def _thread(problem: ProblemTree, node: Node) -> Text:
    """A branch's steps one after another: the whole line of thought."""
    body = Text()
    steps = [child for child in problem.walk(node.id)[1:] if child.text]
    for child in steps:
        body.append(f"── {one_line(child.label, 40)} ──\n", style="dim")
        _append_cue(body, child.cue)
        _append_bounded(body, child.text, max(TEXT_SHOWN // len(steps), 2000))
        body.append("\n")
    if not body:
        body.append("(no text yet)", style="dim")
    return body


def problem_text(problem: ProblemTree) -> str:
    """The question as the model was asked it: with a choice problem's options below it."""
    if not problem.options:
        return problem.question
    options = "\n".join(f"{letter}. {text}" for letter, text in problem.options.items())
    return f"{problem.question}\n\n{options}"


def literal_body(text: str, *, running: bool = False, cue: str = "") -> Text:
    """The node's text exactly as the model wrote it (controls made visible), after the
    cue it went on from, dimmed: thinktree's words, not the model's."""
    body = Text()
    _append_cue(body, cue)
    if not text:
        lead = " " if body else ""
        body.append(lead + ("(streaming…)" if running else "(no text)"), style="dim")
        return body
    _append_bounded(body, text, TEXT_SHOWN)
    if running:
        body.append(" ▌", style="yellow")
    return body


def _append_cue(body: Text, cue: str) -> None:
    """The cue a node's text goes on from ("Wait", "The final answer is"), dimmed."""
    if cue.strip():
        body.append(clean(cue.strip()), style=CUE_STYLE)


def _append_bounded(body: Text, text: str, limit: int) -> None:
    """``text`` (controls made visible) onto ``body``; past ``limit`` characters only its
    start and its end, with a line that says how much is left out between them."""
    if len(text) <= limit:
        body.append(clean(text))
        return
    half = limit // 2
    body.append(clean(text[:half]))
    left_out = len(text) - 2 * half
    body.append(f"\n[… {left_out:,} characters left out here: the trace has them all …]\n", "dim")
    body.append(clean(text[-half:]))
