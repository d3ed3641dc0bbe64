"""A scripted reward-model server on 127.0.0.1 with vLLM's pooling API shapes.

It answers ``POST /classify`` (``{"model", "input"}`` → ``data[i].probs``), ``POST /pooling``
(→ ``data[i].data``, a list of floats), ``POST /score`` (``{"model", "text_1", "text_2"}``
→ ``data[i].score``), ``GET /v1/models`` and ``GET /health``, scoring each text with a
function the test gives. ``malformed=True`` answers every scoring request with a body
that lacks ``data``; ``down = True``, with HTTP 503. Prompt tokens are counted as words.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

Score = Callable[[str], float]


class RewardServer:
    """``async with RewardServer(score) as s: s.url`` — a real HTTP scorer."""

    def __init__(
        self, score: Score, *, model: str = "fake-reward", malformed: bool = False
    ) -> None:
        self.score = score
        self.model = model
        self.malformed = malformed
        self.down = False  # True: every scoring request answers 503, as a server restarting
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        """The server's root, ``http://127.0.0.1:PORT`` (``/v1`` may be appended)."""
        return f"http://127.0.0.1:{self._port}"

    async def __aenter__(self) -> RewardServer:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        for route in ("classify", "pooling", "score"):
            app.router.add_post(f"/{route}", self._handler(route))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self._port = sock.getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    def _handler(self, route: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            self.requests.append((route, body))
            if self.down:
                return web.json_response({"error": {"message": "restarting"}}, status=503)
            if body.get("model") != self.model:
                return web.json_response(
                    {"error": {"message": f"model {body.get('model')!r} not served"}}, status=404
                )
            if route == "score":
                texts = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
                texts = [f"{body['text_1']}\n{t}" for t in texts]
            else:
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if self.malformed:
                return web.json_response({"object": "list", "model": self.model})
            data = []
            for i, text in enumerate(texts):
                value = float(self.score(text))
                if route == "classify":
                    data.append({"index": i, "label": "LABEL_1", "probs": [1 - value, value]})
                elif route == "pooling":
                    logit = math.log(value / (1 - value)) if 0 < value < 1 else value
                    data.append({"index": i, "object": "pooling", "data": [logit]})
                else:
                    data.append({"index": i, "object": "score", "score": value})
            tokens = sum(len(t.split()) for t in texts)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}
            return web.json_response(
                {
                    "id": f"{route}-1",
                    "object": "list",
                    "model": self.model,
                    "data": data,
                    "usage": usage,
                }
            )

        return handle
