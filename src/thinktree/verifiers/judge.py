"""LLM judges: a model on any endpoint rates candidates (pointwise here; see pairwise.py).

``--verifier judge`` uses the run's own endpoint; ``judge:NAME`` (or ``judge:endpoint=NAME``)
an endpoint from thinktree.toml or a URL, e.g. a proprietary judge over an open solver.
``score=yes-prob`` reads P("Yes") from the judge's token logprobs, ``score=rating`` asks
for a 0–10 rating under a constraint; the default (``auto``) uses P("Yes") where the
judge endpoint returns logprobs. A rating the judge states unreadably fails the verdict
with the reason; the run goes on. Its calls count under the run's token and money limits
(:class:`~thinktree.verifiers.base.Spending`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from thinktree.agents.capabilities import Capabilities, probe
from thinktree.agents.endpoint import Completion, EndpointClient, Message, server_name
from thinktree.errors import ConfigError, ContextExceeded, EndpointError, RunLimitReached
from thinktree.orchestrator.call_cache import verifier_call
from thinktree.orchestrator.events import JUDGE_CALL_FAILED, PAST_CONTEXT
from thinktree.pricing import Price
from thinktree.problems import Problem
from thinktree.verifiers.base import (
    CandidateView,
    Spending,
    Verdict,
    VerifierSetup,
    cost,
    known_options,
    options,
    same_server,
)

JUDGE_SYSTEM = "You are a strict and careful grader of answers to exam questions."
MAX_CANDIDATE_CHARS = 4000
# a rating from 0 to 10, decimals allowed; never a part of a longer number or a negative one
_RATING = re.compile(r"(?<![\d.\-])(10(?:\.0+)?|\d(?:\.\d+)?)(?![\d.]*\d)")
# the scale the judge may restate around its rating: "0 to 10", "0-10", "/10", "out of 10"
_SCALE = re.compile(r"\b0\s*(?:to|-|–)\s*10\b|/\s*10\b|\bout\s+of\s+10\b", re.IGNORECASE)
_SCORES = ("auto", "yes-prob", "rating")
_TOP_TOKENS = 10  # first-token alternatives a judge's P("Yes") is read from


def read_rating(text: str) -> float | None:
    """The judge's rating from 0 to 10 in ``text`` (its first, the scale it restates left
    out: "On a scale of 0 to 10: 9" is 9, "8/10" is 8), or None where it gives none."""
    found = _RATING.search(_SCALE.sub(" ", text))
    return None if found is None else float(found.group(1))


def question_block(problem: Problem) -> str:
    parts = []
    if problem.context:
        parts.append(f"Context:\n{problem.context.strip()}")
    parts.append(f"Question: {problem.question.strip()}")
    if problem.options:
        parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in problem.options.items()))
    return "\n\n".join(parts)


def response_block(view: CandidateView) -> str:
    text = view.text.strip()
    if len(text) > MAX_CANDIDATE_CHARS:
        text = "…" + text[-MAX_CANDIDATE_CHARS:]
    return f"{text}\n\nFinal answer: {view.answer}"


class JudgeClient(Protocol):
    """What a judge sends its calls through: its endpoint's client, or :class:`MeteredJudge`."""

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        extra: dict[str, Any] | None = None,
        key: str | None = None,
        top_logprobs: int | None = None,
    ) -> Completion: ...


@dataclass(slots=True)
class MeteredJudge:
    """A judge's client whose calls for one problem count under the run's limits: each
    may be cut (it is sent with less ``max_tokens``) or refused
    (:class:`~thinktree.errors.RunLimitReached`), and the problem then says so. Where the
    client keeps a call store (the run's own endpoint), a resumed run reads a call recorded
    with its ``key`` back at its recorded grant (:meth:`Spending.read_back`)."""

    client: EndpointClient
    spending: Spending
    problem_id: str
    price: Price | None

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        extra: dict[str, Any] | None = None,
        key: str | None = None,
        top_logprobs: int | None = None,
    ) -> Completion:

        async def send(grant: int) -> Completion:
            return await self.client.chat(
                messages,
                max_tokens=grant,
                temperature=temperature,
                extra=extra,
                key=key,
                top_logprobs=top_logprobs,
            )

        if key is not None and self.client.cache is not None:  # only a kept call reads back
            found = await self.spending.read_back(self.problem_id, key, max_tokens, send)
            if found is not None:
                return found
        texts = [str(m.get("content") or "") for m in messages]
        if extra:  # an answer schema an API may add to the prompt
            texts.append(json.dumps(extra))
        model = self.client.model
        async with self.spending.call(
            self.problem_id, model, self.price, texts, max_tokens
        ) as call:
            with verifier_call(call.cut):
                result = await send(call.max_tokens)
            call.settle(result.prompt_tokens, result.completion_tokens)
        return result


class JudgeEndpoint:
    """The judge's endpoint: the run's own, or one it opens (and closes) itself."""

    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        opts = options(arg)
        self.score = opts.get("score", "auto")
        if self.score not in _SCORES:
            raise ConfigError(f"judge score '{self.score}' is unknown; use {', '.join(_SCORES)}")
        name = opts.get("endpoint") or opts.get("")
        self._setup = setup
        self._own = name is not None
        self.client = EndpointClient(setup.endpoint_for(name)) if name else setup.client
        self.caps: Capabilities | None = None if name else setup.caps
        self._lock = anyio.Lock()

    async def ready(self) -> tuple[EndpointClient, Capabilities]:
        """The client, its model resolved and its logprobs and constraints probed (once).

        A run probes here before it starts (:meth:`prepare`), as it probes its own endpoint:
        the probe's few requests are the run's set-up, counted under none of its limits.
        The other runs that share the setup's :class:`~thinktree.verifiers.base.CheckedOnce`
        (a bench's cells) take what it found instead of probing again."""
        async with self._lock:
            if self.caps is None:
                cfg = self.client.config
                try:
                    model, caps = await self._setup.checked.get(
                        ("judge endpoint", cfg.name, cfg.base_url, cfg.model), self._probe
                    )
                except EndpointError as exc:
                    raise ConfigError(f"judge endpoint: {exc}") from None
                self.client.model = model
                self.caps = copy.deepcopy(caps)  # a run may note things in its own copy
        return self.client, self.caps

    async def _probe(self) -> tuple[str, Capabilities]:
        model = await self.client.resolve_model()
        return model, await probe(self.client, what={"logprobs", "constraints"})

    async def prepare(self) -> None:
        """Before the run starts: the endpoint probed (:meth:`ready`), and a score it
        cannot give refused in one line, not in every verdict once the run has paid."""
        _, caps = await self.ready()
        self.uses_logprobs(caps)

    async def identity(self) -> tuple[str, str | None, float | None, bool]:
        """What decides the judge's calls, its endpoint probed (:meth:`ready`): the server
        (as the call store names it), the model, a temperature the endpoint fixes, and
        whether it reads P("Yes") from logprobs or asks for a rating (``score=auto`` is one
        of the two). Two judges of one kind that share it ask the same and score the same."""
        client, caps = await self.ready()
        server = same_server(server_name(client.config))
        # the run's own client has its model once the run looked (a bench's check, not yet)
        model = client.model or await client.resolve_model()
        return server, model, client.config.temperature, self.uses_logprobs(caps)

    def describe(self) -> str:
        """The judge's model and endpoint, for a message."""
        return f"model '{self.client.model}' on {self.client.config.describe()}"

    def calls_for(self, problem: Problem, client: EndpointClient) -> JudgeClient:
        """``client`` (from :meth:`ready`) as the judge's calls for ``problem`` go through:
        counted under the run's limits where it has them."""
        spending = self._setup.spending
        if spending is None:
            return client
        return MeteredJudge(client, spending, problem.id, self._setup.prices.get(client.model))

    def models(self) -> list[str]:
        """The model the judge's calls are priced by, once :meth:`ready` resolved it."""
        return [self.client.model] if self.client.model else []

    def uses_logprobs(self, caps: Capabilities) -> bool:
        """Whether the judge reads its logprobs; a one-line ConfigError for ``yes-prob`` on
        an endpoint that returns none."""
        if self.score == "yes-prob" and not caps.logprobs:
            raise ConfigError(
                f"judge score=yes-prob reads token logprobs, which the judge's endpoint "
                f"{self.client.config.describe()} does not return; use score=rating or "
                "score=auto, or a judge endpoint that returns logprobs"
            )
        return self.score == "yes-prob" or (self.score == "auto" and caps.logprobs)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self._setup.prices.get(self.client.model)
        return cost(price, prompt_tokens, completion_tokens)

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()


def choice_fields(caps: Capabilities, choices: Sequence[str]) -> dict[str, Any]:
    """Request fields that limit the reply to one of ``choices`` (none if unsupported)."""
    if "vllm" in caps.constraints:
        return {"structured_outputs": {"choice": list(choices)}}
    if "json_schema" in caps.constraints:
        schema = {
            "type": "object",
            "properties": {"value": {"enum": list(choices)}},
            "required": ["value"],
            "additionalProperties": False,
        }
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "strict": True, "schema": schema},
            }
        }
    return {}


def read_choice(text: str, fields: dict[str, Any]) -> str:
    """The chosen value of a reply to a :func:`choice_fields` request."""
    if "response_format" in fields:
        try:
            return str(json.loads(text)["value"]).strip()
        except (ValueError, KeyError, TypeError):
            return text.strip()
    return text.strip()


async def token_probs(
    client: JudgeClient,
    messages: list[Message],
    fields: dict[str, Any],
    wanted: Sequence[str],
    *,
    key: str | None = None,
) -> tuple[dict[str, float], int, int]:
    """The probability of each of ``wanted`` as the first token of the reply, renormalised.

    Reads the judge's top logprobs of one generated token; returns the probabilities (an
    empty dict when none of ``wanted`` is among the top tokens) and the tokens spent.
    The call is an ordinary one of ``client`` (its limiter, retries and typed errors);
    with a ``key`` and a call store, a resumed run reads it back instead of paying again.
    Raises :class:`~thinktree.errors.EndpointError` when it fails for good, and
    :class:`~thinktree.errors.RunLimitReached` where the run's limits refuse it.
    """
    result = await client.chat(
        messages,
        max_tokens=1,
        temperature=0.0,
        extra=fields or None,
        key=key,
        top_logprobs=_TOP_TOKENS,
    )
    mass = dict.fromkeys(wanted, 0.0)
    tops = result.choices[0].top_logprobs if result.choices else None
    for token, logprob in (tops or {}).items():
        key_token = token.strip().lower()
        for w in wanted:
            if key_token == w.lower():
                mass[w] += math.exp(logprob)
    total = sum(mass.values())
    spent = result.prompt_tokens, result.completion_tokens
    if total <= 0:
        return {}, *spent
    return {w: m / total for w, m in mass.items()}, *spent


class PointwiseJudge:
    """Asks the judge of each candidate on its own: is its final answer correct?"""

    kind = "judge"
    timeout_s = None  # its calls have their endpoint's timeouts, and wait on the run's limits

    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        self.judge = JudgeEndpoint(arg, setup)

    async def prepare(self) -> None:
        """Probe the judge's endpoint before the run starts (see :meth:`JudgeEndpoint.prepare`)."""
        await self.judge.prepare()

    def models(self) -> list[str]:
        return self.judge.models()

    async def aclose(self) -> None:
        await self.judge.aclose()

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        endpoint, caps = await self.judge.ready()
        client = self.judge.calls_for(problem, endpoint)
        yes_prob = self.judge.uses_logprobs(caps)
        verdicts: list[Verdict] = [Verdict.failed("not judged")] * len(candidates)

        async def one(i: int) -> None:
            view = candidates[i]
            if yes_prob:
                verdicts[i] = await self._yes_prob(client, caps, problem, view)
            else:
                verdicts[i] = await self._rating(client, caps, problem, view)

        async with anyio.create_task_group() as tg:
            for i in range(len(candidates)):
                tg.start_soon(one, i)
        return verdicts

    async def _yes_prob(
        self, client: JudgeClient, caps: Capabilities, problem: Problem, view: CandidateView
    ) -> Verdict:
        ask = "Is the final answer of this response correct? Reply Yes or No."
        messages = _messages(problem, view, ask)
        fields = choice_fields(caps, ("Yes", "No"))
        try:
            probs, prompt, completion = await token_probs(
                client, messages, fields, ("Yes", "No"), key=f"{view.node_id}/judge"
            )
        except (EndpointError, RunLimitReached) as exc:
            return _call_failed(exc)
        spent: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        if not probs:
            return Verdict.failed(
                "the judge put neither Yes nor No among its top tokens",
                **spent,
                cost_usd=self.judge.cost(prompt, completion),
            )
        score = probs["Yes"]
        return Verdict(
            score=score,
            rationale=f'P("Yes") = {score:.3f}',
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self.judge.cost(prompt, completion),
        )

    async def _rating(
        self, client: JudgeClient, caps: Capabilities, problem: Problem, view: CandidateView
    ) -> Verdict:
        ask = (
            "How likely is the final answer of this response to be correct? Rate it from 0 "
            "(surely wrong) to 10 (surely right). Reply with the number only."
        )
        fields = choice_fields(caps, [str(i) for i in range(11)])
        try:
            result = await client.chat(
                _messages(problem, view, ask),
                max_tokens=8,
                temperature=0.0,
                extra=fields,
                key=f"{view.node_id}/judge",
            )
        except (EndpointError, RunLimitReached) as exc:
            return _call_failed(exc)
        text = result.choices[0].text if result.choices else ""
        spent: dict[str, Any] = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        rating = read_rating(read_choice(text, fields))
        if rating is None:
            return Verdict.failed(
                f"the judge's rating is unreadable: {text[:60]!r}",
                **spent,
                cost_usd=self.judge.cost(result.prompt_tokens, result.completion_tokens),
            )
        return Verdict(
            score=rating / 10,
            rationale=f"rating {rating:g}/10",
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=self.judge.cost(result.prompt_tokens, result.completion_tokens),
        )


def _messages(problem: Problem, view: CandidateView, ask: str) -> list[Message]:
    user = f"{question_block(problem)}\n\nA response:\n<<<\n{response_block(view)}\n>>>\n\n{ask}"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def pointwise(arg: str | None, setup: VerifierSetup) -> PointwiseJudge:
    """``--verifier judge[:ENDPOINT][,score=auto|yes-prob|rating]``."""
    return PointwiseJudge(arg, setup)


#: The options a judge (``judge``, ``pairwise``) takes: its endpoint, bare or named, and
#: how it scores.
JUDGE_OPTIONS = ("", "endpoint", "score")


def check_options(arg: str | None, verifier: str = "judge") -> None:
    """Check a judge's options (``score=`` among them) before the run starts."""
    score = known_options(verifier, arg, JUDGE_OPTIONS).get("score", "auto")
    if score not in _SCORES:
        raise ConfigError(f"judge score '{score}' is unknown; use {', '.join(_SCORES)}")


pointwise.check = check_options  # type: ignore[attr-defined]


def _call_failed(exc: EndpointError | RunLimitReached) -> Verdict:
    """The verdict of a judge call that failed: one a resume asks again, unless the
    endpoint refused its prompt as longer than the model's context (it would again)."""
    if isinstance(exc, ContextExceeded):
        return Verdict.failed(f"{PAST_CONTEXT}: {exc}")
    return Verdict.failed(f"{JUDGE_CALL_FAILED}{exc}")
