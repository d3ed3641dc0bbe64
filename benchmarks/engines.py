"""The embedded model on vLLM vs llama.cpp: start-up time and tokens per second.

Run: .venv/bin/python benchmarks/engines.py [--tokens 48] [--rounds 2] [--fresh]

Each engine serves the same GGUF-derived SmolLM2 (vLLM: the converted bf16 folder;
llama.cpp: the GGUF itself). Running servers recorded by `thinktree serve` are reused
unless --fresh starts new ones (then the start-up time is measured). The cases alternate
round by round (vLLM, llama.cpp, then llama.cpp, vLLM) so machine noise hits both alike:
one stream, and 4 requests in flight, each through thinktree's endpoint client.
"""

from __future__ import annotations

import argparse
import time
from contextlib import AsyncExitStack

import anyio

from thinktree.agents.endpoint import EndpointClient
from thinktree.agents.prompts import messages_for
from thinktree.datasets import load_demo
from thinktree.embedded import embedded_server, endpoint_for


async def _tok_s(client: EndpointClient, in_flight: int, tokens: int) -> float:
    problems = load_demo()[:in_flight]
    done: list[int] = []

    async def one(i: int) -> None:
        result = await client.chat(
            messages_for(problems[i]), max_tokens=tokens, temperature=0.7, seed=i
        )
        done.append(result.completion_tokens)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(in_flight):
            tg.start_soon(one, i)
    return sum(done) / (time.monotonic() - started)


async def main(tokens: int, rounds: int, fresh: bool) -> None:
    engines = ("vllm", "llamacpp")
    async with AsyncExitStack() as stack:
        clients: dict[str, EndpointClient] = {}
        for engine in engines:
            started = time.monotonic()
            server = await stack.enter_async_context(
                embedded_server(engine=engine, reuse=not fresh, n_threads=None)
            )
            took = time.monotonic() - started
            how = "started" if server.owned else "reused"
            print(f"{engine:9s} {how} at {server.base_url} in {took:.1f} s")
            client = EndpointClient(endpoint_for(server))
            await client.resolve_model()
            stack.push_async_callback(client.aclose)
            clients[engine] = client
        results: dict[tuple[str, int], list[float]] = {}
        for r in range(rounds):
            order = engines if r % 2 == 0 else engines[::-1]
            for in_flight in (1, 4):
                for engine in order:
                    rate = await _tok_s(clients[engine], in_flight, tokens)
                    results.setdefault((engine, in_flight), []).append(rate)
    print(f"\ntok/s ({tokens} tokens per request, {rounds} rounds, mean)")
    for in_flight in (1, 4):
        rates = {e: sum(results[(e, in_flight)]) / rounds for e in engines}
        ratio = rates["vllm"] / rates["llamacpp"] if rates["llamacpp"] else float("nan")
        print(
            f"  {in_flight} in flight: vLLM {rates['vllm']:.1f}  llama.cpp {rates['llamacpp']:.1f}"
            f"  (vLLM/llama.cpp {ratio:.2f}x)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="start new servers (timed)")
    args = parser.parse_args()
    anyio.run(main, args.tokens, args.rounds, args.fresh)
