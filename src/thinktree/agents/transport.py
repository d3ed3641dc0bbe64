"""The hot path's HTTP: one aiohttp session, the openai SDK's response and error types.

The SDK spends more CPU per call building and parsing a request than the rest of a
run spends on it (its request options, transforms and models). This transport sends
the same JSON body straight through aiohttp and parses the answer with pydantic-core
into the SDK's own response models (``ChatCompletion``, ``Completion`` and their
chunks). Failures become the SDK's own exceptions, so retries and error messages
built on them (:func:`thinktree.agents.endpoint.classify`) treat both paths alike:
``APIStatusError`` subclasses by status, ``APIConnectionError``,
``APIResponseValidationError`` for a body that is not the JSON it should be.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, TypeVar

import aiohttp
import openai
import pydantic

from thinktree._json import dump_bytes

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
    """POSTs to one OpenAI-compatible server. Create inside the run's event loop."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float, max_connections: int
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

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=self._timeout,
                read_bufsize=1 << 20,  # a long SSE line (n choices with logprobs) fits
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, route: str, body: dict[str, Any]) -> bytes:
        """POST ``body`` as JSON to ``route``; the answer's raw bytes (status < 400)."""
        url = f"{self.base_url}/{route}"
        try:
            async with self._open().post(url, data=dump_bytes(body), headers=self._headers) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(url, exc) from exc
        if status >= 400:
            raise _status_error(url, status, dict(headers), raw)
        return raw

    async def get(self, route: str) -> bytes:
        """GET ``route``; the answer's raw bytes (status < 400)."""
        url = f"{self.base_url}/{route}"
        try:
            async with self._open().get(url, headers=self._headers) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(url, exc) from exc
        if status >= 400:
            raise _status_error(url, status, dict(headers), raw)
        return raw

    async def stream(self, route: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST ``body`` and yield each server-sent event's ``data:`` until ``[DONE]``."""
        url = f"{self.base_url}/{route}"
        try:
            async with self._open().post(url, data=dump_bytes(body), headers=self._headers) as resp:
                if resp.status >= 400:
                    raise _status_error(url, resp.status, dict(resp.headers), await resp.read())
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    if data.startswith(b'{"error"'):
                        raise _stream_error(url, data)
                    yield data
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(url, exc) from exc


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
