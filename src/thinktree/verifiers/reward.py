"""Reward models: scores from a classification/reward model served by vLLM, or any HTTP
scorer with the same shape (``/classify``, ``/pooling`` or ``/score``).

``--verifier reward:URL[,route=classify|pooling|score][,model=NAME][,label=K]`` scores
each whole response (the question, the reasoning, the final answer). ``classify`` takes
the probability of class ``label`` (default: the last); ``pooling`` the last output: a
raw reward (one value) through a sigmoid, or class probabilities (two or more values, as a
process reward model's) the last one's; ``score`` the pair score of (question, response),
which must be in [0, 1] (a cross-encoder's probability). URL is the server (with or
without ``/v1``) or a name from thinktree.toml; the model is the one it serves unless
``model=`` says. Where the model has a price, its prompt tokens count under the run's
money limit.

``--verifier prm:URL[,agg=min|last|product|mean][,…]`` is the process-reward variant:
the response is split into steps on blank lines, every prefix (the question and steps
1…k) is scored, and the step scores are aggregated by ``agg`` (default ``min``).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from thinktree.errors import ConfigError, EndpointError, RunLimitReached
from thinktree.orchestrator.events import JUDGE_CALL_FAILED
from thinktree.problems import Problem
from thinktree.verifiers.base import (
    CandidateView,
    Metered,
    Verdict,
    VerifierSetup,
    cost,
    known_options,
    options,
    same_server,
)
from thinktree.verifiers.judge import question_block, response_block

ROUTES = ("classify", "pooling", "score")
AGGREGATES = ("min", "last", "product", "mean")
_STEP_BREAK = re.compile(r"\n\s*\n")
_TIMEOUT_S = 120.0


def split_steps(text: str) -> list[str]:
    """The reasoning's steps: its paragraphs (split on blank lines), empty ones dropped."""
    return [s.strip() for s in _STEP_BREAK.split(text) if s.strip()]


def aggregate_steps(scores: Sequence[float], how: str) -> float:
    match how:
        case "min":
            return min(scores)
        case "last":
            return scores[-1]
        case "product":
            return math.prod(scores)
        case _:
            return math.fsum(scores) / len(scores)


def _sigmoid(value: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * value))  # no overflow at either end


def _pooled(values: Any) -> float:
    """A ``/pooling`` output's score: its last output (the last token's, the last step's).

    One value is a raw reward, squashed by a sigmoid; two or more are class probabilities,
    of which the last (the positive class) is the score. Decided by the output's shape,
    never by its value, so every candidate's score goes through the same map and their
    order is kept (a rule by value kept 0.2 as 0.2 and made -1 into 0.27)."""
    while isinstance(values, list) and values and isinstance(values[-1], list):
        values = values[-1]
    if not isinstance(values, list):
        return _sigmoid(float(values))
    if len(values) == 1:
        return _sigmoid(float(values[0]))
    probability = float(values[-1]) if values else math.nan
    if not 0.0 <= probability <= 1.0:
        raise ValueError(
            f"the scorer's pooling output ends in {values[-3:]}: neither one reward nor "
            "class probabilities"
        )
    return probability


class ScorerDown(Exception):
    """The scorer could not be reached, or kept answering an error it may get over (429,
    5xx), after every attempt: its verdicts fail as calls a resume makes again."""


#: What a scoring request may fail with: the server, a reply that does not parse, or the
#: run's limit refusing it. Each fails the verdicts with the reason; the run goes on.
_SCORING_FAILED = (
    httpx.HTTPError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    RunLimitReached,
    ScorerDown,
)
#: How often a scoring request is sent before the scorer counts as down, and the waits
#: between (an outage of a few seconds, a server restarting, is ridden out)
_ATTEMPTS = 4
_WAIT_S = 0.5
_PASSING = frozenset({408, 429, 500, 502, 503, 504})  # statuses a later attempt may not get


def _failed(what: str, exc: BaseException) -> Verdict:
    """A verdict failed by ``exc``: one a resume asks again where the scorer was down."""
    said = JUDGE_CALL_FAILED if isinstance(exc, ScorerDown) else ""
    return Verdict.failed(f"{said}{what}: {' '.join(str(exc).split()) or type(exc).__name__}")


class RewardClient:
    """One scoring server: posts texts to its route and reads one score per text."""

    def __init__(self, arg: str | None, setup: VerifierSetup, *, verifier: str) -> None:
        opts = options(arg)
        target = opts.get("") or opts.get("url")
        if not target:
            raise ConfigError(f"--verifier {verifier} needs the scorer: {verifier}:URL")
        self.route = opts.get("route", "classify")
        if self.route not in ROUTES:
            raise ConfigError(f"reward route '{self.route}' is unknown; use {', '.join(ROUTES)}")
        base = setup.endpoint_for(target).base_url.rstrip("/")
        self.root = base.removesuffix("/v1")
        self.model = opts.get("model")
        self.label = int(opts["label"]) if opts.get("label") else -1
        self.prices = setup.prices
        self.spending = setup.spending
        self.checked = setup.checked
        self.http = httpx.AsyncClient(timeout=_TIMEOUT_S)

    async def aclose(self) -> None:
        await self.http.aclose()

    def identity(self) -> tuple[object, ...]:
        """What decides the scores, once :meth:`ready` found the model: the server, its
        route, the model and the class read. Two scorers that share it score the same."""
        return same_server(self.root), self.route, self.model, self.label

    def describe(self) -> str:
        """The scorer's model and server, for a message."""
        return f"model '{self.model}' at {self.root}, route {self.route}"

    def models(self) -> list[str]:
        """The scorer's model, which its calls are priced by, once :meth:`ready` found it."""
        return [self.model] if self.model else []

    async def _model(self) -> str:
        if self.model is None:
            resp = await self.http.get(f"{self.root}/v1/models")
            resp.raise_for_status()
            served = [m["id"] for m in _object(resp).get("data", [])]
            if len(served) != 1:
                raise ValueError(f"the scorer serves {served or 'no model'}; pass model=NAME")
            self.model = served[0]
        return self.model

    async def ready(self) -> None:
        """Score one tiny pair, unmetered, before the run starts (as the run probes its own
        endpoint): a scorer that cannot be reached, serves no single model or answers
        nothing readable on its route is a one-line error, not every verdict failed. The
        other runs that share the setup's ``checked`` (a bench's cells) do not try again."""
        key = ("scorer", self.root, self.route, self.model, self.label)
        try:
            self.model = await self.checked.get(key, self._try)
        except _SCORING_FAILED as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise EndpointError(f"the scorer at {self.root} cannot score: {detail}") from None

    async def _try(self) -> str:
        model = await self._model()
        (score,), _tokens = await self._post(model, [("Is this a test?", "Yes.")])
        if not 0.0 <= score <= 1.0:  # nan too
            raise ValueError(f"it gave a test pair {score:g}, no score in [0, 1]")
        return model

    async def score(
        self, pairs: Sequence[tuple[str, str]], problem_id: str = ""
    ) -> tuple[list[float], int]:
        """A score per (question, response) pair, and the prompt tokens the server counted
        (under the run's money limit, for ``problem_id``)."""
        model = await self._model()
        async with self._metered(problem_id, model, [t for pair in pairs for t in pair]) as call:
            scores, tokens = await self._post(model, pairs)
            if call is not None:
                call.settle(tokens, 0)
        return scores, tokens

    async def _post(self, model: str, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], int]:
        """One scoring request: a score per pair, and the prompt tokens it counted."""
        body: dict[str, Any]
        if self.route == "score":
            body = {"model": model, "text_1": pairs[0][0], "text_2": [r for _, r in pairs]}
            if any(q != pairs[0][0] for q, _ in pairs):
                raise ValueError("the score route takes one question per request")
        else:
            body = {"model": model, "input": [f"{q}\n\n{r}" for q, r in pairs]}
        resp = await self._send(body)
        data = _object(resp)
        usage = data.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0)
        rows = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        if len(rows) != len(pairs):
            raise ValueError(f"the scorer returned {len(rows)} scores for {len(pairs)} texts")
        return [self._read(row) for row in rows], tokens

    async def _send(self, body: dict[str, Any]) -> httpx.Response:
        """POST ``body`` to the route, again after an error a later attempt may not get."""
        url = f"{self.root}/{self.route}"
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                resp = await self.http.post(url, json=body)
            except httpx.TransportError as exc:
                why = f"the scorer at {self.root} cannot be reached ({type(exc).__name__})"
            else:
                if resp.status_code == 200:
                    return resp
                why = f"the scorer answered HTTP {resp.status_code} on /{self.route}"
                if resp.status_code not in _PASSING:
                    raise ValueError(why)  # the same request would get the same answer
            if attempt < _ATTEMPTS:
                await anyio.sleep(_WAIT_S * 2 ** (attempt - 1))
        raise ScorerDown(f"{why}, {_ATTEMPTS} times")

    @asynccontextmanager
    async def _metered(
        self, problem_id: str, model: str, texts: Sequence[str]
    ) -> AsyncIterator[Metered | None]:
        """The scoring call under the run's money limit (a scorer makes no completion tokens)."""
        if self.spending is None:
            yield None
            return
        price = self.prices.get(model)
        async with self.spending.call(problem_id, model, price, texts, 0) as call:
            yield call

    def _read(self, row: dict[str, Any]) -> float:
        if self.route == "classify":
            return float(row["probs"][self.label])  # a bad one fails its verdict alone
        if self.route == "score":
            score = float(row["score"])
            if not 0.0 <= score <= 1.0:
                raise ValueError(
                    f"the scorer's score {score:g} is outside [0, 1]: the score route reads "
                    "a probability (a cross-encoder's)"
                )
            return score
        return _pooled(row["data"])

    def cost(self, prompt_tokens: int) -> float | None:
        return cost(self.prices.get(self.model or ""), prompt_tokens, 0)


class RewardModel:
    """Scores each whole response (outcome reward)."""

    timeout_s = None  # its calls have their endpoint's timeouts, and wait on the run's limits

    kind = "reward"

    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        self.client = RewardClient(arg, setup, verifier="reward")

    async def identity(self) -> tuple[object, ...]:
        return self.client.identity()

    def describe(self) -> str:
        return self.client.describe()

    async def prepare(self) -> None:
        await self.client.ready()

    def models(self) -> list[str]:
        return self.client.models()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        question = question_block(problem)
        try:
            scores, tokens = await self.client.score(
                [(question, response_block(c)) for c in candidates], problem.id
            )
        except _SCORING_FAILED as exc:
            return [_failed("reward model", exc) for _ in candidates]
        shares = _split(tokens, len(candidates))
        return [
            Verdict(
                score=s,
                rationale=f"reward {s:.3f} ({self.client.route})",
                prompt_tokens=t,
                cost_usd=self.client.cost(t),
            )
            for s, t in zip(scores, shares, strict=True)
        ]


class ProcessReward:
    """Scores each step of each response and aggregates the step scores."""

    timeout_s = None  # its calls have their endpoint's timeouts, and wait on the run's limits

    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        self.how = options(arg).get("agg", "min")
        if self.how not in AGGREGATES:
            raise ConfigError(f"prm agg '{self.how}' is unknown; use {', '.join(AGGREGATES)}")
        self.client = RewardClient(arg, setup, verifier="prm")

    kind = "prm"

    async def identity(self) -> tuple[object, ...]:
        return (*self.client.identity(), self.how)

    def describe(self) -> str:
        return f"{self.client.describe()}, steps by {self.how}"

    async def prepare(self) -> None:
        await self.client.ready()

    def models(self) -> list[str]:
        return self.client.models()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        question = question_block(problem)
        steps = [split_steps(response_block(c)) for c in candidates]
        pairs = [(question, "\n\n".join(own[:k])) for own in steps for k in range(1, len(own) + 1)]
        try:
            flat, tokens = await self.client.score(pairs, problem.id)
        except _SCORING_FAILED as exc:
            return [_failed("process reward model", exc) for _ in candidates]
        verdicts: list[Verdict] = []
        start = 0
        shares = _split(tokens, len(candidates))
        for own, spent in zip(steps, shares, strict=True):
            mine = flat[start : start + len(own)]
            start += len(own)
            score = aggregate_steps(mine, self.how)
            listed = " ".join(f"{s:.2f}" for s in mine)
            verdicts.append(
                Verdict(
                    score=score,
                    rationale=f"{len(mine)} steps: {listed} → {self.how} {score:.3f}",
                    prompt_tokens=spent,
                    cost_usd=self.client.cost(spent),
                )
            )
        return verdicts


def _object(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object a scorer answered; a ValueError for any other JSON."""
    data = resp.json()
    if not isinstance(data, dict):
        raise ValueError(f"the scorer answered {type(data).__name__} JSON, not an object")
    return data


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


#: The options of ``reward`` (its scorer, bare or as ``url=``); ``prm`` takes ``agg`` too.
REWARD_OPTIONS = ("", "url", "route", "model", "label")


def _check(arg: str | None, verifier: str = "reward") -> None:
    known = (*REWARD_OPTIONS, "agg") if verifier == "prm" else REWARD_OPTIONS
    opts = known_options(verifier, arg, known)
    if not (opts.get("") or opts.get("url")):
        raise ConfigError("a reward verifier needs its scorer: reward:URL or prm:URL")
    if opts.get("route", "classify") not in ROUTES:
        raise ConfigError(f"reward route '{opts['route']}' is unknown; use {', '.join(ROUTES)}")
    if opts.get("agg", "min") not in AGGREGATES:
        raise ConfigError(f"prm agg '{opts['agg']}' is unknown; use {', '.join(AGGREGATES)}")
    if opts.get("label"):
        try:
            int(opts["label"])
        except ValueError:
            raise ConfigError(
                f"reward label must be a class index, not {opts['label']!r}"
            ) from None


def reward(arg: str | None, setup: VerifierSetup) -> RewardModel:
    """``--verifier reward:URL[,route=…][,model=…][,label=K]``."""
    return RewardModel(arg, setup)


def process_reward(arg: str | None, setup: VerifierSetup) -> ProcessReward:
    """``--verifier prm:URL[,agg=min|last|product|mean][,route=…][,model=…]``."""
    return ProcessReward(arg, setup)


reward.check = _check  # type: ignore[attr-defined]
process_reward.check = lambda arg: _check(arg, "prm")  # type: ignore[attr-defined]
