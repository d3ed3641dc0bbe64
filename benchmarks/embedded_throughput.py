"""Tokens per second of the embedded model, driven by thinktree and by the raw client.

Run: .venv/bin/python benchmarks/embedded_throughput.py [--tokens 32] [--rounds 2]
     [--in-flight 1,4,8,16] [--base-url URL]

Three measurements, each alternating its cases round by round (A B, then B A) so that
machine noise hits all of them alike:

1. thinktree vs the raw client: the same chat requests (thinktree's prompt for each
   problem, the same max_tokens, temperature and seeds), 8 in flight, sent once through
   the raw ``openai.AsyncOpenAI`` client and once through thinktree's endpoint client
   (with its call store on, as in a run). Target: thinktree >= 0.95x the raw tok/s.
2. aggregate tok/s through thinktree at 1, 4, 8 and 16 requests in flight.
3. parallel@8 as one ``n=8`` request per problem vs 8 requests per problem (both as
   thinktree runs): tok/s, and the prompt tokens billed (usage), which is the prefill
   that ``n`` saves; where vLLM reports prefix-cache hits, those are printed too.
4. ``n=8`` requests whose choices are counted by their token ids (``return_token_ids``,
   what thinktree asks where the probe finds it) vs by per-token logprobs (its fallback):
   tok/s, this client's CPU per call, and the bytes of one reply each way.

Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai

from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import messages_for
from thinktree.config import url_option
from thinktree.datasets import load_demo
from thinktree.embedded import embedded_server
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import Problem

TEMPERATURE = 0.7

Request = tuple[list[dict[str, str]], int]  # messages, seed


def _requests(problems: list[Problem], count: int) -> list[Request]:
    """``count`` requests cycling over the problems, each with its own stable seed."""
    out = []
    for i in range(count):
        problem = problems[i % len(problems)]
        digest = hashlib.blake2b(f"bench:{problem.id}:{i}".encode(), digest_size=4).digest()
        out.append((messages_for(problem), int.from_bytes(digest, "big") & 0x7FFFFFFF))
    return out


async def _bounded(
    requests: list[Request], in_flight: int, one: Callable[[Request], Awaitable[int]]
) -> tuple[int, float]:
    """Completion tokens and seconds for all ``requests``, ``in_flight`` at a time."""
    limiter = anyio.CapacityLimiter(in_flight)
    tokens: list[int] = []

    async def go(request: Request) -> None:
        async with limiter:
            tokens.append(await one(request))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(go, request)
    return sum(tokens), time.perf_counter() - started


def _raw(
    client: openai.AsyncOpenAI, model: str, tokens: int
) -> Callable[[Request], Awaitable[int]]:
    async def one(request: Request) -> int:
        messages, seed = request
        resp = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=tokens,
            temperature=TEMPERATURE,
            seed=seed,
        )
        return resp.usage.completion_tokens if resp.usage else 0

    return one


def _thinktree(client: EndpointClient, tokens: int) -> Callable[[Request], Awaitable[int]]:
    count = iter(range(1 << 30))

    async def one(request: Request) -> int:
        messages, seed = request
        result = await client.chat(
            messages, max_tokens=tokens, temperature=TEMPERATURE, seed=seed, key=str(next(count))
        )
        return result.completion_tokens

    return one


def _rate(runs: list[tuple[int, float]]) -> float:
    return sum(t for t, _ in runs) / sum(s for _, s in runs)


def _metric(base_url: str, name: str) -> float | None:
    """A counter summed over its labels from vLLM's /metrics (None when absent)."""
    try:
        text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = re.findall(rf"^vllm:{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in found) if found else None


async def measure(base_url: str, model: str, args: argparse.Namespace) -> None:
    problems = load_demo()
    in_flights = [int(x) for x in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="tt-throughput-") as tmp:
        client = EndpointClient(
            EndpointConfig(name="bench", base_url=base_url, model=model, max_connections=64)
        )
        client.cache = SqliteCallCache(Path(tmp) / "calls.sqlite")
        raw = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="EMPTY",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        try:
            model = await client.resolve_model()
            print(
                f"model '{model}' at {base_url}: {args.tokens}-token cap, temperature "
                f"{TEMPERATURE}, {args.rounds} rounds alternating"
            )
            ours, theirs = _thinktree(client, args.tokens), _raw(raw, client.model, args.tokens)
            # 1. the same requests through thinktree and through the raw client
            same = _requests(problems, args.requests)
            # warm-up: every prompt once, so the server's prefix cache holds each of them
            # before either client is timed (else the first case of the first round pays
            # for every prompt's prefill, and the other case never does)
            await _bounded(same, 8, _raw(raw, client.model, 1))
            seen: dict[str, list[tuple[int, float]]] = {"raw": [], "thinktree": []}
            for r in range(args.rounds):
                order = ["raw", "thinktree"] if r % 2 == 0 else ["thinktree", "raw"]
                for name in order:
                    one = theirs if name == "raw" else ours
                    seen[name].append(await _bounded(same, 8, one))
            ratios = [t[0] / t[1] / (r[0] / r[1]) for r, t in zip(*seen.values(), strict=True)]
            ratio = sum(ratios) / len(ratios)
            print(
                f"raw openai client, 8 in flight:  {_rate(seen['raw']):6.1f} tok/s "
                f"({args.requests} requests x {args.rounds})"
            )
            print(f"thinktree client, 8 in flight:   {_rate(seen['thinktree']):6.1f} tok/s")
            verdict = "MET" if ratio >= 0.95 else "NOT MET"
            print(
                f"  thinktree vs raw: {ratio:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
                f"target >= 0.95x: {verdict}"
            )
            # 2. aggregate tok/s by requests in flight
            curve: dict[int, list[tuple[int, float]]] = {k: [] for k in in_flights}
            for r in range(args.rounds):
                for k in in_flights if r % 2 == 0 else in_flights[::-1]:
                    batch = _requests(problems, max(2 * k, 4))
                    curve[k].append(await _bounded(batch, k, ours))
            base = _rate(curve[in_flights[0]])
            for k, level in curve.items():
                print(
                    f"thinktree, {k:2d} in flight: {_rate(level):6.1f} tok/s "
                    f"({_rate(level) / base:.1f}x {in_flights[0]} in flight)"
                )
        finally:
            await raw.close()
            await client.aclose()
            if client.cache is not None:
                client.cache.close()
        # 3. parallel@8: one n=8 request vs 8 requests, as thinktree runs
        picked = problems[: args.problems]
        runs: dict[str, list[dict[str, Any]]] = {"n=8": [], "8 requests": []}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                hits0 = _metric(base_url, "prefix_cache_hits")
                endpoint = EndpointConfig(
                    name="bench",
                    base_url=base_url,
                    model=model,
                    native_n="yes" if name == "n=8" else "no",
                    continuation="chat",
                )
                settings = RunSettings(
                    modes=ModeSettings(mode="parallel", n=8, budget=args.tokens),
                    out=Path(tmp) / f"{name}-{r}".replace("=", "").replace(" ", ""),
                    concurrency=2,
                    seed=r,
                )
                started = time.perf_counter()
                result = await execute(picked, endpoint, settings)
                secs = time.perf_counter() - started
                hits1 = _metric(base_url, "prefix_cache_hits")
                runs[name].append(
                    {
                        "completion": result.metrics.completion_tokens,
                        "prompt": result.metrics.prompt_tokens,
                        "calls": result.metrics.calls,
                        "secs": secs,
                        "hits": None if hits0 is None or hits1 is None else hits1 - hits0,
                    }
                )
        print(f"parallel@8 on {len(picked)} problems ({args.tokens}-token thinking cap):")
        rates = {}
        for name, measured in runs.items():
            completion = sum(m["completion"] for m in measured)
            secs = sum(m["secs"] for m in measured)
            prompt = sum(m["prompt"] for m in measured)
            calls = sum(m["calls"] for m in measured)
            hits = [m["hits"] for m in measured]
            rates[name] = completion / secs
            cache = (
                f", vLLM prefix-cache hits {sum(hits):.0f} tokens"
                if all(h is not None for h in hits)
                else ""
            )
            print(
                f"  {name:11s} {rates[name]:6.1f} tok/s, {calls} calls, "
                f"prompt tokens billed {prompt}{cache}"
            )
        billed_n = sum(m["prompt"] for m in runs["n=8"])
        billed_8 = sum(m["prompt"] for m in runs["8 requests"])
        saving = 1 - billed_n / billed_8 if billed_8 else float("nan")
        print(
            f"  n=8 vs 8 requests: {rates['n=8'] / rates['8 requests']:.2f}x tok/s; "
            f"prefill saving {saving:.0%} of the prompt tokens"
        )
    # 4. n=8 choices counted by token ids vs by logprobs
    await _counting(base_url, model, problems, args)


async def _counting(
    base_url: str, model: str, problems: list[Problem], args: argparse.Namespace
) -> None:
    """``n=8`` requests whose choices are counted by their token ids vs by logprobs."""
    requests = _requests(problems, args.requests)
    client = EndpointClient(EndpointConfig(name="bench", base_url=base_url, model=model))
    seen: dict[str, list[tuple[int, float, float]]] = {"logprobs": [], "token ids": []}
    sizes: dict[str, int] = {}
    try:
        model = await client.resolve_model()
        for r in range(args.rounds):
            for name in list(seen) if r % 2 == 0 else list(seen)[::-1]:

                async def one(request: Request, ids: bool = name == "token ids") -> int:
                    messages, seed = request
                    result = await client.chat(
                        messages,
                        max_tokens=args.tokens,
                        n=8,
                        temperature=TEMPERATURE,
                        seed=seed,
                        token_ids=ids,
                    )
                    return result.completion_tokens

                cpu = time.process_time()
                tokens, secs = await _bounded(requests, 4, one)
                seen[name].append((tokens, secs, time.process_time() - cpu))
        messages, seed = requests[0]
        async with httpx.AsyncClient(timeout=600) as http:
            for name in seen:
                body: dict[str, Any] = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": args.tokens,
                    "n": 8,
                    "temperature": TEMPERATURE,
                    "seed": seed,
                    **({"return_token_ids": True} if name == "token ids" else {"logprobs": True}),
                }
                resp = await http.post(f"{base_url}/chat/completions", json=body)
                resp.raise_for_status()
                sizes[name] = len(resp.content)
    finally:
        await client.aclose()
    calls = len(requests) * args.rounds
    print(f"n=8 choices counted two ways ({calls} requests each, 4 in flight):")
    rates = {}
    for name, runs in seen.items():
        rates[name] = sum(t for t, _, _ in runs) / sum(s for _, s, _ in runs)
        cpu_ms = sum(c for _, _, c in runs) / calls * 1e3
        print(
            f"  by {name:9s} {rates[name]:6.1f} tok/s, client CPU {cpu_ms:.2f} ms per call, "
            f"one reply {sizes[name]:,} bytes"
        )
    print(
        f"  token ids vs logprobs: {rates['token ids'] / rates['logprobs']:.2f}x tok/s, "
        f"{sizes['token ids'] / sizes['logprobs']:.2f}x the reply bytes"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", type=url_option)
    parser.add_argument("--model", default=None, help="model name (default: the served one)")
    parser.add_argument("--tokens", type=int, default=32, help="max tokens per request")
    parser.add_argument("--requests", type=int, default=16, help="requests per raw/thinktree case")
    parser.add_argument("--in-flight", default="1,4,8,16", help="comma-separated levels")
    parser.add_argument("--problems", type=int, default=4, help="problems for parallel@8")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.base_url:
        await measure(args.base_url, args.model or "", args)
        return 0
    async with embedded_server() as server:
        await measure(server.base_url, args.model or server.model, args)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
