"""Client overhead of thinktree against the limit, the raw SDK and its-hub, on one workload.

Workload: P problems x 16 samples (default P=200: 3,200 calls), at most 64 calls in
flight, a fixed short completion (the fake server's 12-token reply), majority vote.
thinktree runs as `thinktree run` does, its run store, trace and progress bar on (the
bar drawn as in a terminal, into memory), the terminal view off.

Run: .venv/bin/python benchmarks/overhead.py [--problems 200] [--rounds 2]

The fake OpenAI-compatible server runs in its own process, and every measured client
runs in a fresh worker process of its own, so client CPU (``time.process_time``, all
threads) and peak RSS (``ru_maxrss``) belong to that client alone. The cases alternate
(A B C ... then ... C B A) for ``--rounds`` rounds, and every ratio is taken between
cases of the same round, never against fixed times. thinktree runs on the event loop its
CLI starts (uvloop where installed, see ``thinktree.event_loop``); the limit and its-hub
run on that loop too, and the targets are judged between clients on one loop, while
asyncio's own loop is shown beside them. its-hub is a benchmark-only peer:
install it with ``.venv/bin/pip install -e '.[bench]'``; without it the script says so,
leaves its column and ratios out, and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import io
import json
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SAMPLES = 16
IN_FLIGHT = 64
MAX_TOKENS = 16
MODEL = "fake-model"
QUESTION = "Which letter comes right after A in the alphabet? Options: A, B, C, D."
ANSWER_RE = r"Answer:\s*(\w+)"

Outcome = tuple[int, int, str]  # what a case made: calls, samples and a note

SERVER_CODE = """
import asyncio, sys
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

async def main() -> None:
    async with FakeServer(FakeBehaviour(model=%r, native_n=True)) as server:
        print(server.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


# -- the workers: each runs in a fresh process and writes one JSON result ------------


@dataclass
class Sample:
    """What one worker measured."""

    case: str
    calls: int
    samples: int
    wall_s: float
    cpu_s: float
    rss_mib: float
    base_rss_mib: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _client_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended: thinktree's run
    store writes from a process of its own, and its CPU is the client's too."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vote(answers: Sequence[str | None]) -> str | None:
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def _answer(text: str | None) -> str | None:
    import re

    found = re.search(ANSWER_RE, text or "")
    return found.group(1) if found else None


def _messages() -> list[dict[str, str]]:
    """thinktree's own prompt for the problem, so every client sends the same request."""
    from thinktree.agents.prompts import messages_for
    from thinktree.problems import Problem

    return messages_for(Problem(id="p", question=QUESTION, answer="B"))


async def _bounded(calls: int, one: Callable[[int], Awaitable[str | None]]) -> list[str | None]:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def go(i: int) -> str | None:
        async with sem:
            return await one(i)

    return list(await asyncio.gather(*(go(i) for i in range(calls))))


def _votes(answers: list[str | None], problems: int) -> int:
    """Majority vote per problem; returns how many problems voted B (the right answer)."""
    right = 0
    for p in range(problems):
        right += _vote(answers[p * SAMPLES : (p + 1) * SAMPLES]) == "B"
    return right


async def case_bare(url: str, problems: int, _: Path) -> Outcome:
    import aiohttp

    body = {"model": MODEL, "messages": _messages(), "max_tokens": MAX_TOKENS, "temperature": 0.7}
    calls = problems * SAMPLES
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(_: int) -> str | None:
            async with session.post(f"{url}/chat/completions", json=body) as resp:
                resp.raise_for_status()
                data = await resp.json()
            return _answer(data["choices"][0]["message"]["content"])

        answers = await _bounded(calls, one)
    return calls, calls, f"{_votes(answers, problems)}/{problems} right"


async def _bare_lean(url: str, problems: int, n: int) -> Outcome:
    """thinktree's lean HTTP/1.1 pool and nothing else: ``problems x SAMPLES / n`` requests
    of ``n`` samples each, every sample's answer read with a regex, a majority vote."""
    import json

    from thinktree.agents.http1 import ConnectionPool

    request: dict[str, Any] = {
        "model": MODEL,
        "messages": _messages(),
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
    }
    if n > 1:
        request["n"] = n
    body = json.dumps(request).encode()
    calls = problems * SAMPLES // n
    headers = {"Content-Type": "application/json"}
    pool = ConnectionPool(url, headers=headers, limit=IN_FLIGHT, timeout_s=60)
    try:

        async def one(_: int) -> list[str | None]:
            answer = await pool.request("POST", "chat/completions", body)
            if answer.status != 200:
                raise RuntimeError(f"status {answer.status}")
            choices = json.loads(answer.body)["choices"]
            return [_answer(choice["message"]["content"]) for choice in choices]

        sem = asyncio.Semaphore(IN_FLIGHT)

        async def go(i: int) -> list[str | None]:
            async with sem:
                return await one(i)

        replies = await asyncio.gather(*(go(i) for i in range(calls)))
    finally:
        await pool.aclose()
    answers = [a for reply in replies for a in reply]
    return calls, len(answers), f"{_votes(answers, problems)}/{problems} right"


async def case_bare_lean(url: str, problems: int, _: Path) -> Outcome:
    """The limit of thinktree's own HTTP client: its lean HTTP/1.1 pool, nothing else."""
    return await _bare_lean(url, problems, 1)


async def case_bare_lean_n16(url: str, problems: int, _: Path) -> Outcome:
    """The same limit with one request of ``n=16`` per problem: what tt16 could reach."""
    return await _bare_lean(url, problems, SAMPLES)


async def _sdk(url: str, problems: int, *, aiohttp_transport: bool, stream: bool) -> Outcome:
    import openai

    http_client = openai.DefaultAioHttpClient() if aiohttp_transport else None
    client = openai.AsyncOpenAI(
        base_url=url, api_key="EMPTY", max_retries=0, http_client=http_client
    )
    calls = problems * SAMPLES
    messages: Any = _messages()

    async def one(_: int) -> str | None:
        if not stream:
            resp = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=MAX_TOKENS,
                temperature=0.7,
            )
            return _answer(resp.choices[0].message.content)
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0.7,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        async with chunks:
            async for chunk in chunks:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
        return _answer(text)

    try:
        answers = await _bounded(calls, one)
    finally:
        await client.close()
    return calls, calls, f"{_votes(answers, problems)}/{problems} right"


async def case_sdk_httpx(url: str, problems: int, _: Path) -> Outcome:
    return await _sdk(url, problems, aiohttp_transport=False, stream=False)


async def case_sdk_aiohttp(url: str, problems: int, _: Path) -> Outcome:
    return await _sdk(url, problems, aiohttp_transport=True, stream=False)


async def case_sdk_aiohttp_stream(url: str, problems: int, _: Path) -> Outcome:
    return await _sdk(url, problems, aiohttp_transport=True, stream=True)


async def case_itshub(url: str, problems: int, _: Path) -> Outcome:
    import logging

    its_hub = importlib.import_module("its_hub")
    self_consistency = importlib.import_module("its_hub.core.algorithms.self_consistency")
    orchestrator = importlib.import_module("its_hub.core.orchestrator")

    logging.disable(logging.WARNING)
    lm = its_hub.OpenAICompatibleLanguageModel(
        endpoint=url, api_key="EMPTY", model_name=MODEL, max_tokens=MAX_TOKENS, temperature=0.7
    )
    # One orchestrator for every problem: at most 64 calls in flight over the whole run.
    sc = its_hub.SelfConsistency(
        consistency_space_projection_func=self_consistency.create_regex_projection_function(
            ANSWER_RE
        ),
        orchestrator=orchestrator.LMOrchestrator(max_concurrency=IN_FLIGHT),
    )
    try:
        results = await asyncio.gather(
            *(
                sc.ainfer(lm, _messages(), budget=SAMPLES, return_response_only=False)
                for _ in range(problems)
            )
        )
    finally:
        await lm.close()
    right = sum(_answer(r.the_one["content"]) == "B" for r in results)
    samples = sum(len(r.responses) for r in results)
    return samples, samples, f"{right}/{problems} right"


class InFlight:
    """A subscriber counting model calls in flight (generation nodes started, not ended)."""

    wants_deltas = False

    def __init__(self) -> None:
        # imported once here, not for each event (an import statement costs about 1 µs)
        from thinktree.orchestrator.events import NodeFailed, NodeFinished, NodeKind, NodeStarted

        self.now = 0
        self.peak = 0
        self.failed = 0
        self._running: set[str] = set()
        self._started, self._generation = NodeStarted, NodeKind.GENERATION
        self._ended, self._failed = (NodeFinished, NodeFailed), NodeFailed

    def handle(self, event: Any) -> None:
        if isinstance(event, self._started) and event.kind == self._generation:
            self._running.add(event.node_id)
            self.peak = max(self.peak, len(self._running))
        elif isinstance(event, self._ended) and event.node_id in self._running:
            self._running.discard(event.node_id)
            self.failed += isinstance(event, self._failed)

    async def aclose(self) -> None:
        return None


# When the run's first event (RunStarted) and its last (RunFinished) reached the
# subscribers, by time.perf_counter(): what came before the one and after the other is
# the run's work once per run (probe, run folder, stores; results.json, the stores' end).
_PHASES: dict[str, float] = {}


class Phases:
    """A subscriber noting when the run started and finished (into ``_PHASES``).

    It costs the run next to nothing: the run's first event starts the first batch the bus
    hands over and its last ends the last, so it reads two events a batch, not each one."""

    wants_deltas = False

    def handle_batch(self, events: Sequence[Any]) -> None:
        if events:
            self.handle(events[0])
            self.handle(events[-1])

    def handle(self, event: Any) -> None:
        if event.type in ("run-started", "run-finished"):
            _PHASES[event.type] = time.perf_counter()

    async def aclose(self) -> None:
        return None


async def _thinktree(
    url: str,
    problems: int,
    tmp: Path,
    *,
    native_n: bool,
    in_flight: int = IN_FLIGHT,
    watch: InFlight | None = None,
    http_client: Literal["auto", "aiohttp"] = "auto",
) -> Callable[[], Outcome]:
    """Run the problems as ``thinktree run`` would; what checks the run's files afterwards
    (the samples in its trees, the calls in its call store), left for after the clock."""
    from rich.console import Console

    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.agents.modes import ModeSettings
    from thinktree.orchestrator.bus import Subscriber
    from thinktree.orchestrator.events import NodeKind, NodeStatus
    from thinktree.orchestrator.run import CALLS, RunSettings, execute
    from thinktree.orchestrator.subscribers import ConsoleProgress
    from thinktree.problems import Problem

    items = [Problem(id=f"p{i:04d}", question=QUESTION, answer="B") for i in range(problems)]
    endpoint = EndpointConfig(
        name="fake",
        base_url=url,
        model=MODEL,
        max_connections=in_flight,
        native_n="yes" if native_n else "no",
        continuation="chat",
        http_client=http_client,
    )
    settings = RunSettings(
        modes=ModeSettings(mode="parallel", n=SAMPLES, budget=MAX_TOKENS),
        aggregate="majority",
        # problems at once; the endpoint's limiter caps the calls in flight
        concurrency=max(IN_FLIGHT, -(-in_flight // SAMPLES) + 1),
        out=tmp / "run",
    )
    # the CLI's progress bar, drawn as in a terminal (10 times a second), into memory
    bar = ConsoleProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    subscribers: list[Subscriber] = [bar, Phases(), *([watch] if watch else [])]
    result = await execute(items, endpoint, settings, subscribers=subscribers)

    def check() -> Outcome:
        samples = sum(
            1
            for tree in result.trees
            for node in tree.walk()
            if node.kind == NodeKind.GENERATION and node.status == NodeStatus.DONE
        )
        conn = sqlite3.connect(result.folder / CALLS)
        try:
            calls = int(conn.execute("SELECT count(*) FROM responses").fetchone()[0])
        finally:
            conn.close()
        right = sum(1 for t in result.trees if t.correct)
        return calls, samples, f"{right}/{problems} right"

    return check


async def case_tt1(url: str, problems: int, tmp: Path) -> Callable[[], Outcome]:
    return await _thinktree(url, problems, tmp, native_n=False)


async def case_tt1_aiohttp(url: str, problems: int, tmp: Path) -> Callable[[], Outcome]:
    return await _thinktree(url, problems, tmp, native_n=False, http_client="aiohttp")


async def case_tt16(url: str, problems: int, tmp: Path) -> Callable[[], Outcome]:
    return await _thinktree(url, problems, tmp, native_n=True)


async def case_many(url: str, in_flight: int, tmp: Path) -> Outcome:
    """thinktree 1/call with ``in_flight`` calls allowed at once, on enough problems to fill it."""
    watch = InFlight()
    problems = max(2, -(-2 * in_flight // SAMPLES))
    check = await _thinktree(url, problems, tmp, native_n=False, in_flight=in_flight, watch=watch)
    calls, samples, note = check()
    return calls, samples, f"peak {watch.peak} in flight, {watch.failed} failed, {note}"


# A case's outcome: calls, samples and a note; or what works it out from the files the case
# left, so that reading them back is not timed as the client's work
Case = Callable[[str, int, Path], Awaitable[Outcome | Callable[[], Outcome]]]

# name -> (label, client, event loop). Peers run on asyncio's own loop, as their users
# run them; thinktree on the loop its CLI starts (thinktree.event_loop: uvloop where
# installed). The limit and its-hub also run on uvloop, so every judged ratio compares
# clients on the same loop.
CASES: dict[str, tuple[str, Case, str]] = {
    "bare": ("bare aiohttp (limit)", case_bare, "asyncio"),
    "bare-uvloop": ("bare aiohttp, uvloop (limit)", case_bare, "uvloop"),
    "bare-lean": ("bare lean HTTP/1.1 (thinktree's)", case_bare_lean, "thinktree"),
    "bare-lean-n16": ("bare lean HTTP/1.1, n=16", case_bare_lean_n16, "thinktree"),
    "sdk-httpx": ("openai SDK, httpx", case_sdk_httpx, "asyncio"),
    "sdk-aiohttp": ("openai SDK, aiohttp", case_sdk_aiohttp, "asyncio"),
    "sdk-aiohttp-stream": ("openai SDK, aiohttp, stream", case_sdk_aiohttp_stream, "asyncio"),
    "itshub": ("its-hub self-consistency", case_itshub, "asyncio"),
    "itshub-uvloop": ("its-hub self-consistency, uvloop", case_itshub, "uvloop"),
    "tt1-asyncio": ("thinktree 1/call, asyncio loop", case_tt1, "asyncio"),
    "tt1": ("thinktree parallel@16, 1/call", case_tt1, "thinktree"),
    "tt1-aiohttp": ("thinktree 1/call, aiohttp client", case_tt1_aiohttp, "thinktree"),
    "tt16": ("thinktree parallel@16, n=16", case_tt16, "thinktree"),
}


def _synthetic_events(count: int) -> list[Any]:
    """A parallel run's event mix: per problem 1 start, 16 x (start, finish), vote, finish
    (each sample is its branch: one node, its call's)."""
    from thinktree.orchestrator.events import (
        NodeFinished,
        NodeKind,
        NodeStarted,
        ProblemFinished,
        ProblemStarted,
        RunFinished,
        RunStarted,
        VoteCast,
    )

    text = "Let me think step by step. The answer is B.\nAnswer: B"
    events: list[Any] = [
        RunStarted(run_id="bench", mode="parallel", endpoint="fake", model=MODEL, problems=0)
    ]
    p = 0
    while len(events) < count - 1:
        pid = f"p{p:05d}"
        events.append(ProblemStarted(problem_id=pid, node_id=pid, question=QUESTION, gold="B"))
        for b in range(1, SAMPLES + 1):
            branch = f"{pid}/b{b}"
            events.append(
                NodeStarted(
                    node_id=branch,
                    problem_id=pid,
                    parent_id=pid,
                    kind=NodeKind.GENERATION,
                    label=f"branch {b}",
                    max_tokens=MAX_TOKENS,
                    continuation="new",
                )
            )
            events.append(
                NodeFinished(
                    node_id=branch,
                    text=text,
                    finish_reason="stop",
                    prompt_tokens=40,
                    completion_tokens=12,
                    answer="B",
                    extraction="answer-line",
                    latency_s=0.01,
                    call_id=f"{pid}-{b}",
                )
            )
        events.append(
            VoteCast(
                problem_id=pid,
                node_id=pid,
                rule="majority",
                answer="B",
                winner_node=f"{pid}/b1",
                counts={"B": SAMPLES},
            )
        )
        events.append(ProblemFinished(problem_id=pid, answer="B", correct=True, covered=True))
        p += 1
    events.append(RunFinished(run_id="bench", status="completed"))
    return events


async def case_bus(events_wanted: int, tmp: Path, *, trace: bool) -> Outcome:
    from thinktree.orchestrator.bus import Subscriber, event_bus
    from thinktree.orchestrator.store import RunStore
    from thinktree.orchestrator.subscribers import TraceWriter, TreeRecorder

    events = _synthetic_events(events_wanted)
    recorder = TreeRecorder()
    store = RunStore(tmp / "run.sqlite")
    # as a run has them: the trace feeds the store its lines; without it the store makes them
    subs: list[Subscriber] = [recorder]
    subs.append(TraceWriter(tmp / "trace.jsonl", also=store.feed) if trace else store)
    async with event_bus(subs) as bus:  # on exit every event is delivered
        for event in events:
            await bus.emit(event)
    await store.aclose()  # and committed
    if store.error:
        raise RuntimeError(f"run store failed: {store.error}")
    return len(events), len(events), f"{len(recorder.tree.problems)} problems in the tree"


def worker(args: argparse.Namespace) -> None:
    """Run one case in this (fresh) process and write its Sample as JSON."""
    import anyio

    from thinktree import event_loop

    base_rss = _maxrss_mib()
    with tempfile.TemporaryDirectory(prefix="tt-overhead-") as tmp_name:
        tmp = Path(tmp_name)

        async def main() -> Outcome | Callable[[], Outcome]:
            if args.worker in ("bus", "bus-trace"):
                return await case_bus(args.bus_events, tmp, trace=args.worker == "bus-trace")
            if args.worker == "many":
                return await case_many(args.url, args.in_flight, tmp)
            return await CASES[args.worker][1](args.url, args.problems, tmp)

        loop = CASES[args.worker][2] if args.worker in CASES else "thinktree"
        if loop == "thinktree":
            loop = event_loop.loop_name()

        # the heavy imports happen before the clock starts
        if args.worker.startswith(("tt", "bus", "many")):
            importlib.import_module("thinktree.orchestrator.run")
        elif args.worker.startswith("itshub"):
            importlib.import_module("its_hub.core.lms.openai_lm")
        elif args.worker.startswith("bare-lean"):
            importlib.import_module("thinktree.agents.http1")
            importlib.import_module("thinktree.agents.prompts")
        else:
            importlib.import_module("aiohttp")
            importlib.import_module("openai")
        # so are the loop's own (anyio.run imports its backend, and uvloop, on first use):
        # they are no client's work, and used to add ~40 ms to every case's clock
        importlib.import_module("anyio._backends._asyncio")
        if loop == "uvloop":
            importlib.import_module("uvloop")
        base_rss = _maxrss_mib()
        gc.collect()  # the imports' garbage is collected before the clock, for every case
        cpu0, wall0 = _client_cpu_s(), time.perf_counter()
        if args.profile:
            profiler = importlib.import_module("pyinstrument").Profiler(
                interval=0.0005, async_mode="disabled"
            )
            profiler.start()
        options = {"use_uvloop": loop == "uvloop"}
        outcome = anyio.run(main, backend="asyncio", backend_options=options)
        wall, cpu = time.perf_counter() - wall0, _client_cpu_s() - cpu0
        calls, samples, note = outcome() if callable(outcome) else outcome
        if args.profile:
            profiler.stop()
            Path(args.profile).write_text(
                profiler.output_text(unicode=False, show_all=False, color=False)
            )
    sample = Sample(args.worker, calls, samples, wall, cpu, _maxrss_mib(), base_rss, note)
    if {"run-started", "run-finished"} <= _PHASES.keys():
        sample.extra["setup_s"] = _PHASES["run-started"] - wall0
        sample.extra["finish_s"] = wall0 + wall - _PHASES["run-finished"]
    Path(args.result).write_text(json.dumps(sample.__dict__))


# -- the driver -----------------------------------------------------------------------


class Server:
    """The fake server in its own process; ``cpu_s()`` is its CPU time so far."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE % MODEL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the fake server did not start")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_worker(
    case: str, args: argparse.Namespace, server: Server | None, profile: str = ""
) -> Sample:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        result = Path(out.name)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        case,
        "--result",
        str(result),
        "--problems",
        str(args.problems),
        "--bus-events",
        str(args.bus_events),
        "--in-flight",
        str(args.in_flight),
        "--url",
        server.url if server else "",
    ]
    if profile:
        cmd += ["--profile", profile]
    before = server.cpu_s() if server else 0.0
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    server_cpu = (server.cpu_s() - before) if server else 0.0
    try:
        if done.returncode != 0:
            raise RuntimeError(f"{case} failed:\n{done.stderr.strip()[-2000:]}")
        sample = Sample(**json.loads(result.read_text()))
    finally:
        result.unlink(missing_ok=True)
    sample.extra["server_cpu_s"] = server_cpu
    return sample


@dataclass
class Totals:
    label: str
    runs: list[Sample] = field(default_factory=list)

    def _sum(self, attr: str) -> float:
        return float(sum(getattr(r, attr) for r in self.runs))

    @property
    def calls_s(self) -> float:
        return self._sum("calls") / self._sum("wall_s")

    @property
    def samples_s(self) -> float:
        return self._sum("samples") / self._sum("wall_s")

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self._sum("cpu_s") / self._sum("calls")

    @property
    def rss(self) -> float:
        return max(r.rss_mib for r in self.runs)

    @property
    def rss_growth(self) -> float:
        return max(r.rss_mib - r.base_rss_mib for r in self.runs)

    @property
    def server_busy(self) -> float:
        return float(sum(r.extra["server_cpu_s"] for r in self.runs)) / self._sum("wall_s")

    @property
    def client_busy(self) -> float:
        return self._sum("cpu_s") / self._sum("wall_s")


def _ratio(
    totals: dict[str, Totals], a: str, b: str, rate: str
) -> tuple[float, float, float] | None:
    """Mean, min and max over rounds of (a's rate / b's rate) within the same round."""
    if a not in totals or b not in totals:
        return None
    per_round = []
    for ra, rb in zip(totals[a].runs, totals[b].runs, strict=False):
        ta, tb = Totals("", [ra]), Totals("", [rb])
        per_round.append(getattr(ta, rate) / getattr(tb, rate))
    return statistics.fmean(per_round), min(per_round), max(per_round)


def _fmt_ratio(found: tuple[float, float, float] | None, target: float, label: str) -> str:
    if found is None:
        return f"  {label}: not measured"
    mean, lo, hi = found
    verdict = "MET" if mean >= target else "NOT MET"
    return f"  {label}: {mean:.2f}x (rounds {lo:.2f}-{hi:.2f}); target >= {target:g}x: {verdict}"


def _n16_context(totals: dict[str, Totals], hub: str, loop: str) -> None:
    """What the n=16 target asks for next to what the transport alone allows."""
    if "tt16" not in totals or "bare-lean-n16" not in totals:
        return
    found = _ratio(totals, "tt16", "bare-lean-n16", "samples_s")
    print(
        _fmt_ratio(found, 0.0, f"thinktree n=16 vs bare lean n=16, samples/s ({loop} both)").split(
            "; target"
        )[0]
    )
    if hub in totals:
        limit = _ratio(totals, "bare-lean-n16", hub, "samples_s")
        assert limit is not None
        print(f"    (bare lean n=16 itself is {limit[0]:.1f}x its-hub's samples/s)")
    tt16, lean = totals["tt16"], totals["bare-lean-n16"]
    per_sample = 1e6 * (tt16._sum("cpu_s") - lean._sum("cpu_s")) / tt16._sum("samples")
    line = (
        f"  thinktree n=16 CPU per sample beyond its HTTP client and a regex: {per_sample:.0f} us"
    )
    if hub in totals:
        # samples/s >= 5x its-hub's means a sample's whole wall time within this
        wanted = 1e6 / (5 * totals[hub].samples_s)
        line += f"; 5x its-hub leaves {wanted:.0f} us of wall time per sample in all"
    print(line)
    if all("setup_s" in r.extra for r in tt16.runs):
        _once_per_run(tt16, totals.get(hub))


def _once_per_run(tt16: Totals, hub: Totals | None) -> None:
    """How much of thinktree's n=16 wall time is its work once per run, before its first
    event and after its last, and its rate over the rest: where the n=16 target's gap is."""
    setup = statistics.median(1000 * r.extra["setup_s"] for r in tt16.runs)
    finish = statistics.median(1000 * r.extra["finish_s"] for r in tt16.runs)
    wall = statistics.median(1000 * r.wall_s for r in tt16.runs)
    print(
        f"  thinktree n=16, once per run: {setup:.0f} ms before its first event (the probe, "
        f"the run folder, its stores) and {finish:.0f} ms after its last (results.json, the "
        f"stores' end), of {wall:.0f} ms (medians)"
    )
    if hub is None:
        return
    between = [
        (r.samples / (r.wall_s - r.extra["setup_s"] - r.extra["finish_s"])) / (h.samples / h.wall_s)
        for r, h in zip(tt16.runs, hub.runs, strict=False)
    ]
    print(
        f"    between its first and last events: {statistics.fmean(between):.2f}x its-hub's "
        f"samples/s (rounds {min(between):.2f}-{max(between):.2f}; context, not the target)"
    )


def driver(args: argparse.Namespace) -> int:
    calls = args.problems * SAMPLES
    print(
        f"workload: {args.problems} problems x {SAMPLES} samples = {calls} calls, "
        f"<= {IN_FLIGHT} in flight, {MAX_TOKENS}-token cap, 12-token reply, majority vote; "
        f"{args.rounds} rounds alternating; {os.cpu_count()} cores; python {sys.version.split()[0]}"
    )
    cases = list(CASES)
    itshub_reason = ""
    try:
        importlib.import_module("its_hub.core.lms.openai_lm")
    except ImportError as exc:
        itshub_reason = (
            f"not installed ({exc.name}); install it with: .venv/bin/pip install -e '.[bench]'"
        )
        cases = [c for c in cases if not c.startswith("itshub")]
    if importlib.util.find_spec("uvloop") is None:
        cases = [c for c in cases if CASES[c][2] != "uvloop"]
    server = Server()
    totals: dict[str, Totals] = {c: Totals(CASES[c][0]) for c in cases}
    started = time.perf_counter()
    try:
        run_worker("bare", args, server)  # warm-up: the server's first requests
        for r in range(args.rounds):
            order = cases if r % 2 == 0 else cases[::-1]
            for case in list(order):
                if case not in totals:
                    continue
                try:
                    totals[case].runs.append(run_worker(case, args, server))
                except RuntimeError as exc:
                    if not case.startswith("itshub"):
                        raise
                    itshub_reason = f"its API could not be driven: {str(exc).splitlines()[-1]}"
                    cases = [c for c in cases if not c.startswith("itshub")]
                    for name in ("itshub", "itshub-uvloop"):
                        totals.pop(name, None)
        many = run_worker("many", args, server)
        bus = {k: Totals(k) for k in ("bus", "bus-trace")}
        for _ in range(args.rounds):
            for k in bus:
                bus[k].runs.append(run_worker(k, args, None))
        profile = ""
        if args.profile:
            profile = str(Path(args.profile).resolve())
            run_worker("tt1", args, server, profile=profile)
    finally:
        server.close()

    limit = totals["bare-uvloop"] if "bare-uvloop" in totals else totals["bare"]
    print(
        f"server check ({limit.label}): server process busy {limit.server_busy:.0%} of wall, "
        f"client busy {limit.client_busy:.0%} -> "
        + (
            "the SERVER may be the bottleneck: ratios against bare are understated"
            if limit.server_busy >= 0.85
            else "the server is NOT the bottleneck"
            + (" (the client is)" if limit.client_busy >= 0.85 else "; other load shares the cores")
        )
    )
    print()
    head = (
        f"{'case':32} {'calls/s':>8} {'samples/s':>10} {'CPU ms/1k calls':>16} "
        f"{'peak RSS MiB':>13} {'(+ over import)':>15} {'srv busy':>8}  check"
    )
    print(head)
    print("-" * len(head))
    for t in totals.values():
        print(
            f"{t.label:32} {t.calls_s:8.0f} {t.samples_s:10.0f} {t.cpu_ms_per_call * 1000:16.0f} "
            f"{t.rss:13.1f} {t.rss_growth:15.1f} {t.server_busy:8.0%}  {t.runs[-1].note}"
        )
    if itshub_reason:
        print(f"its-hub: not measured ({itshub_reason})")
    for k, t in bus.items():
        label = "event bus: tree + store" if k == "bus" else "event bus: tree + store + trace"
        ev_s = t._sum("calls") / t._sum("wall_s")
        us = 1e6 * t._sum("cpu_s") / t._sum("calls")
        print(
            f"{label:32} {ev_s:8.0f} events/s, CPU {us:.1f} us/event, "
            f"peak RSS {t.rss:.1f} MiB  ({t.runs[-1].calls} events; {t.runs[-1].note})"
        )
    print(
        f"{args.in_flight:,} calls in flight: {many.calls} calls at "
        f"{many.calls / many.wall_s:.0f} calls/s, peak RSS {many.rss_mib:.1f} MiB "
        f"(+{many.rss_mib - many.base_rss_mib:.1f} over import), {many.note}"
    )
    print()
    from thinktree import event_loop

    loop = event_loop.loop_name()
    same = "-uvloop" if loop == "uvloop" else ""
    bare, hub = f"bare{same}", f"itshub{same}"
    print(f"ratios (per round, same run; judged on one loop: thinktree's, {loop}):")
    print(
        _fmt_ratio(
            _ratio(totals, "tt1", hub, "calls_s"),
            1.0,
            f"thinktree 1/call vs its-hub, calls/s ({loop} both)",
        )
    )
    print(
        _fmt_ratio(
            _ratio(totals, "tt1", bare, "calls_s"),
            0.5,
            f"thinktree 1/call vs bare aiohttp, calls/s ({loop} both)",
        )
    )
    print(
        _fmt_ratio(
            _ratio(totals, "tt16", hub, "samples_s"),
            5.0,
            f"thinktree n=16 vs its-hub, samples/s ({loop} both)",
        )
    )
    _n16_context(totals, hub, loop)
    for a, b, label in (
        ("tt1", "itshub", f"thinktree 1/call ({loop}) vs its-hub as its users run it (asyncio)"),
        ("tt1-asyncio", "itshub", "thinktree 1/call vs its-hub, both on asyncio"),
        ("tt1-asyncio", "bare", "thinktree 1/call vs bare aiohttp, both on asyncio"),
        ("tt1", "tt1-aiohttp", "thinktree 1/call, its lean HTTP/1.1 client vs aiohttp"),
        ("bare-lean", bare, f"bare lean HTTP/1.1 vs bare aiohttp, calls/s ({loop} both)"),
        ("sdk-aiohttp", "bare", "SDK aiohttp vs bare aiohttp, calls/s"),
        ("itshub", "bare", "its-hub vs bare aiohttp, calls/s"),
    ):
        if a in totals and b in totals:
            print(_fmt_ratio(_ratio(totals, a, b, "calls_s"), 0.0, label).split("; target")[0])
    # thinktree's calls go out through its lean HTTP/1.1 client, as the bare-lean case's
    # do: what it spends beyond that client alone, on the same loop, is its own machinery
    # (events, ledger, stores, extraction).
    tt, http_cpu = totals["tt1"].cpu_ms_per_call, totals["bare-lean"].cpu_ms_per_call
    machinery = tt - http_cpu
    verdict = "MET" if machinery <= 0.2 else "NOT MET"
    print(
        f"  thinktree machinery CPU/call = {tt:.3f} - its HTTP client alone {http_cpu:.3f} "
        f"({loop} both) = {machinery:.3f} ms; target <= 0.2 ms: {verdict}"
    )
    peak, failed = (int(x) for x in re.findall(r"peak (\d+) in flight, (\d+) failed", many.note)[0])
    verdict = "MET" if failed == 0 and peak >= args.in_flight else "NOT MET"
    print(
        f"  {args.in_flight:,} calls allowed in flight: peak {peak} started and unfinished, "
        f"{failed} failed, "
        f"peak RSS +{many.rss_mib - many.base_rss_mib:.1f} MiB over import; "
        f"target all in flight, no errors: {verdict}"
    )
    ev_s = bus["bus"]._sum("calls") / bus["bus"]._sum("wall_s")
    verdict = "MET" if ev_s >= 50_000 else "NOT MET"
    print(f"  event bus with the store: {ev_s:,.0f} events/s; target >= 50,000: {verdict}")
    if args.profile:
        print(f"profile of one thinktree 1/call run: {args.profile}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--problems", type=int, default=200, help="problems (x16 calls each)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (>= 2)")
    parser.add_argument("--bus-events", type=int, default=200_000, help="events for the bus test")
    parser.add_argument(
        "--in-flight", type=int, default=1000, help="calls in flight for the concurrency test"
    )
    parser.add_argument(
        "--profile", default="", help="also profile one thinktree run (pyinstrument) to this file"
    )
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.problems <= 0 or args.rounds <= 0:
        parser.error("--problems and --rounds must be positive")
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
