"""Tokens per second of the embedded model: one stream, 8 in flight, and n=8 in one request.

Run: .venv/bin/python benchmarks/embedded_throughput.py [--base-url URL]
Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
The three measurements alternate (A B C A B C) so machine noise hits all of them alike.
"""

from __future__ import annotations

import argparse
import time

import anyio

from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.embedded import embedded_server

PROMPT = [{"role": "user", "content": "Explain in detail how the heart pumps blood."}]
TOKENS = 64


async def one_stream(client: EndpointClient) -> tuple[int, float]:
    start = time.perf_counter()
    result = await client.chat(PROMPT, max_tokens=TOKENS, temperature=0.8, seed=1)
    return result.completion_tokens, time.perf_counter() - start


async def eight_in_flight(client: EndpointClient) -> tuple[int, float]:
    start = time.perf_counter()
    totals: list[int] = []

    async def go(i: int) -> None:
        result = await client.chat(PROMPT, max_tokens=TOKENS, temperature=0.8, seed=i)
        totals.append(result.completion_tokens)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(go, i)
    return sum(totals), time.perf_counter() - start


async def n_eight(client: EndpointClient) -> tuple[int, float]:
    start = time.perf_counter()
    result = await client.chat(PROMPT, max_tokens=TOKENS, temperature=0.8, seed=1, n=8)
    return result.completion_tokens, time.perf_counter() - start


async def measure(base_url: str, model: str, rounds: int) -> None:
    client = EndpointClient(EndpointConfig(name="bench", base_url=base_url, model=model))
    try:
        await client.resolve_model()
        await one_stream(client)  # warm-up
        cases = {"1 stream": one_stream, "8 in flight": eight_in_flight, "n=8": n_eight}
        seen: dict[str, list[tuple[int, float]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                seen[name].append(await case(client))
        base = None
        for name, runs in seen.items():
            tokens = sum(t for t, _ in runs)
            secs = sum(s for _, s in runs)
            rate = tokens / secs
            base = base or rate
            print(
                f"{name:12s} {rate:7.1f} tok/s   ({tokens} tokens in {secs:.1f} s, "
                f"{rate / base:.1f}x one stream)"
            )
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.base_url:
        await measure(args.base_url, args.model, args.rounds)
        return
    async with embedded_server() as server:
        await measure(server.base_url, server.model, args.rounds)


if __name__ == "__main__":
    anyio.run(main)
