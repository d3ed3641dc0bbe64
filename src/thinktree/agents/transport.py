"""The hot path's HTTP: lean keep-alive connections, the openai SDK's response and error types.

The SDK spends more CPU per call building and parsing a request than the rest of a
run spends on it (its request options, transforms and models). This transport sends
the same JSON body straight to the server and parses the answer with pydantic-core
into the SDK's own response models (``ChatCompletion``, ``Completion`` and their
chunks). A plain ``http://`` endpoint (a local model server) goes through
:mod:`thinktree.agents.http1`, a third of aiohttp's CPU per call; any other (TLS, a
query in the URL) through one aiohttp session. Failures become the SDK's own
exceptions, so retries and error messages built on them
(:func:`thinktree.agents.endpoint.classify`) treat every path alike: ``APIStatusError``
subclasses by status, ``APIConnectionError``, ``APIResponseValidationError`` for a body
that is not the JSON it should be.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Final, TypeVar

import aiohttp
import openai
import pydantic

from thinktree import __version__
from thinktree._json import dump_bytes
from thinktree.agents import http1

try:  # the HTTP library the SDK's exceptions carry requests and responses of
    import httpx2 as _http  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - SDK releases built on httpx
    import httpx as _http  # type: ignore[no-redef,unused-ignore]

__all__ = ["Transport", "parse"]

M = TypeVar("M", bound=pydantic.BaseModel)

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


class Transport:
    """POSTs to one OpenAI-compatible server. Create inside the run's event loop.

    ``lean=False`` keeps a plain ``http://`` endpoint on aiohttp too.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        max_connections: int,
        lean: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._pool: http1.ConnectionPool | None = None
        if lean and http1.handles(self.base_url):
            headers = {**self._headers, "User-Agent": f"thinktree/{__version__}"}
            self._pool = http1.ConnectionPool(
                self.base_url, headers=headers, limit=max_connections, timeout_s=timeout_s
            )

    @property
    def lean(self) -> bool:
        """Whether calls go through the lean HTTP/1.1 client (else aiohttp)."""
        return self._pool is not None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=self._timeout,
                read_bufsize=1 << 20,  # a long SSE line (n choices with logprobs) fits
            )
        return self._session

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def post(self, route: str, body: dict[str, Any]) -> Awaitable[bytes]:
        """POST ``body`` as JSON to ``route``; the answer's raw bytes (status < 400).

        Not a coroutine itself (nor :meth:`get`): a frame of its own above the request
        would be resumed on every wake-up of every call."""
        return self._fetch("POST", route, dump_bytes(body))

    def get(self, route: str) -> Awaitable[bytes]:
        """GET ``route``; the answer's raw bytes (status < 400)."""
        return self._fetch("GET", route, None)

    async def _fetch(self, method: str, route: str, data: bytes | None) -> bytes:
        headers: Any
        try:
            if self._pool is not None:  # it takes the route: the URL is for errors only
                answer = await self._pool.request(method, route, data)
                status, headers, raw = answer.status, answer.headers, answer.body
            else:
                url = f"{self.base_url}/{route}"
                request = self._open().request(method, url, data=data, headers=self._headers)
                async with request as resp:
                    raw = await resp.read()
                    status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(f"{self.base_url}/{route}", exc) from exc
        if status >= 400 or (status >= 300 and self._pool is not None):  # aiohttp redirects
            raise _status_error(f"{self.base_url}/{route}", status, dict(headers), raw)
        return raw

    async def stream(self, route: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST ``body`` and yield each server-sent event's ``data:`` until ``[DONE]``."""
        url = f"{self.base_url}/{route}"
        data = dump_bytes(body)
        try:
            if self._pool is not None:
                async with self._pool.stream("POST", route, data) as answer:
                    if answer.status >= 300:
                        raw = await answer.read()
                        raise _status_error(url, answer.status, answer.headers, raw)
                    while lines := await answer.lines():
                        for line in lines:
                            event = _event(url, line)
                            if event is _DONE:
                                return
                            if event is not None:
                                yield event
            else:
                async with self._open().post(url, data=data, headers=self._headers) as resp:
                    if resp.status >= 400:
                        raw = await resp.read()
                        raise _status_error(url, resp.status, dict(resp.headers), raw)
                    async for line in resp.content:
                        event = _event(url, line)
                        if event is _DONE:
                            return
                        if event is not None:
                            yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(url, exc) from exc


_DONE: Final = b"[DONE]"


def _event(url: str, line: bytes) -> bytes | None:
    """A server-sent event line's ``data:`` (:data:`_DONE` at the end), None for other lines."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == _DONE:
        return _DONE
    if data.startswith(b'{"error"'):
        raise _stream_error(url, data)
    return data


def parse(model: type[M], raw: bytes | dict[str, Any], url: str = "") -> M:
    """``raw`` (JSON bytes, or already decoded) as the SDK model ``model``.

    Anything that does not fit raises the SDK's ``APIResponseValidationError``.
    """
    try:
        if isinstance(raw, dict):
            return model.model_validate(raw)
        return model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
        errors = exc.errors()
        raise openai.APIResponseValidationError(
            response=_response(url, 200, {}, text.encode()),
            body=text,
            message=f"the server's answer is not a valid {model.__name__}: "
            + (str(errors[0]["msg"]) if errors else str(exc)),
        ) from None


def _request(url: str) -> Any:
    return _http.Request("POST", url)


def _response(url: str, status: int, headers: Any, raw: bytes) -> Any:
    return _http.Response(status, headers=dict(headers), content=raw, request=_request(url))


def _connection_error(url: str, exc: BaseException) -> openai.APIConnectionError:
    if isinstance(exc, TimeoutError):
        return openai.APITimeoutError(request=_request(url))
    return openai.APIConnectionError(message=f"Connection error: {exc!r}", request=_request(url))


def _status_error(url: str, status: int, headers: dict[str, str], raw: bytes) -> Exception:
    """The SDK's exception for an HTTP error status, with its message and body."""
    text = raw.decode("utf-8", "replace").strip()
    body: object = text
    message = f"Error code: {status}"
    try:
        body = json.loads(text)
    except ValueError:
        if text:
            message += f" - {text[:500]}"
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
    if 300 <= status < 400:
        location = headers.get("location") or headers.get("Location")
        where = f"to {location}" if location else "elsewhere"
        message += f" - the server redirects {where}: set the endpoint's base_url to it"
    data = body.get("error", body) if isinstance(body, dict) else body
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = openai.InternalServerError if status >= 500 else openai.APIStatusError
    return cls(message, response=_response(url, status, headers, raw), body=data)


def _stream_error(url: str, data: bytes) -> openai.APIError:
    try:
        error = json.loads(data).get("error")
    except ValueError:
        error = None
    detail = error.get("message") if isinstance(error, dict) else None
    return openai.APIError(str(detail or "the stream reported an error"), _request(url), body=error)
