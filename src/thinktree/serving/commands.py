"""``thinktree serve ENGINE [MODEL]``: what to start, checked before anything starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from thinktree import embedded
from thinktree.serving import launcher, llamacpp
from thinktree.serving import vllm as vllm_profile
from thinktree.serving.launcher import ServerError, ServerHandle


@dataclass(frozen=True)
class ServeRequest:
    """The ``serve`` command's arguments."""

    engine: str = "vllm"
    model: str | None = None
    port: int | None = None
    host: str = launcher.LOOPBACK
    n_threads: int | None = None
    served_name: str | None = None
    reasoning_parser: str | None = None
    chat_template: Path | None = None
    max_model_len: int | None = None
    startup_timeout: float = 900
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # [::1], as a URL writes it, is the address ::1 (the printed URL adds the brackets)
        object.__setattr__(self, "host", launcher.bare_host(self.host))
        # without a MODEL, the first engine argument (`serve vllm -- --seed 3`) lands in
        # MODEL's place: it is the engine's, and the embedded model is served
        if self.model is not None and self.model.startswith("-"):
            object.__setattr__(self, "extra_args", (self.model, *self.extra_args))
            object.__setattr__(self, "model", None)


# vLLM options that would have the server answer other than at the URL thinktree checks and
# prints: the option, its shortest abbreviation, and what vLLM would do instead
_ELSEWHERE = (
    ("--uds", "--ud", "listen on a Unix socket"),
    ("--ssl-certfile", "--ssl-certf", "serve HTTPS"),
    ("--ssl-keyfile", "--ssl-k", "serve HTTPS"),
    ("--grpc", "--grpc", "serve gRPC"),  # exact: --grpc-port keeps HTTP on --port
    ("--headless", "--hea", "start no API server"),
)


def _gives(args: tuple[str, ...], option: str, shortest: str) -> bool:
    """Whether the engine arguments ``args`` give the engine option ``option``.

    The engines parse with argparse, which also takes ``--option=VALUE`` and abbreviations
    down to ``shortest``, the shortest one vLLM's other options leave unambiguous (``--por``
    for ``--port``); vLLM reads ``_`` in a name as ``-``.
    """
    for arg in args:
        name = arg.split("=", 1)[0].replace("_", "-")
        if name.startswith(shortest) and option.startswith(name):
            return True
    return False


def _check(request: ServeRequest) -> None:
    if request.engine not in embedded.ENGINES:
        raise ServerError(
            f"unknown engine '{request.engine}'; choose one of: {', '.join(embedded.ENGINES)}"
        )
    launcher.check_host(request.host)
    if request.model is not None and not request.model.strip():
        raise ServerError(
            "MODEL is empty; give a model (a folder, a model id or a .gguf file), or leave "
            "it out for the embedded model"
        )
    name = request.served_name
    if name is not None and (not name or name != name.strip()):
        raise ServerError(
            f"--served-name {name!r} is empty or has spaces around it; clients ask for the "
            "model by this name"
        )
    if _gives(request.extra_args, "--host", "--ho"):
        raise ServerError(
            f"--host after `--` would give the server two hosts (thinktree's is "
            f"{request.host}); give it once, as thinktree serve --host HOST"
        )
    if _gives(request.extra_args, "--port", "--por"):
        ours = request.port if request.port is not None else "a free one it picks"
        raise ServerError(
            f"--port after `--` would give the server two ports (thinktree's is {ours}); "
            "give it once, as thinktree serve --port PORT"
        )
    if not request.startup_timeout > 0:  # NaN too: it would never time out
        raise ServerError(f"--startup-timeout must be positive, not {request.startup_timeout}")
    if request.max_model_len is not None and request.max_model_len <= 0:
        raise ServerError(f"--max-model-len must be positive, not {request.max_model_len}")
    if request.engine == "llamacpp":
        for flag, value in (
            ("--reasoning-parser", request.reasoning_parser),
            ("--chat-template", request.chat_template),
            ("--max-model-len", request.max_model_len),
        ):
            if value is not None:
                raise ServerError(f"{flag} is a vllm option; llamacpp does not take it")
        if request.extra_args:
            raise ServerError("extra engine arguments are passed to vllm only")
    elif request.n_threads is not None:
        raise ServerError("--n-threads is a llamacpp option; vllm does not take it")
    for option, shortest, instead in _ELSEWHERE:  # only vllm gets here with engine arguments
        if _gives(request.extra_args, option, shortest):
            raise ServerError(
                f"{option} after `--` would have vLLM {instead} instead of the plain HTTP "
                "API that thinktree checks and prints; leave it out"
            )
    if _gives(request.extra_args, "--served-model-name", "--ser"):
        # thinktree waits for the model under its own name
        raise ServerError(
            "--served-model-name after `--` would give the model a name thinktree does not "
            "wait for; give it as thinktree serve --served-name NAME"
        )
    if request.port is not None:
        launcher.check_port_free(request.port, request.host)
    else:
        launcher.free_port(request.host)  # the host is one this machine can listen on


@asynccontextmanager
async def serve_until_stopped(request: ServeRequest) -> AsyncIterator[ServerHandle]:
    """Start the requested server (recording the embedded one for runs to reuse).

    The embedded model under another name (``--served-name``), or with other settings, is
    not recorded: runs start or reuse the embedded model under its own name.
    """
    _check(request)
    plain = (request.reasoning_parser, request.chat_template, request.max_model_len)
    as_is = request.served_name is None and not request.extra_args and plain == (None,) * 3
    if request.model is None and as_is:
        async with embedded.embedded_server(
            engine=request.engine,
            port=request.port,
            reuse=False,
            record_state=True,
            startup_timeout=request.startup_timeout,
            n_threads=request.n_threads,
            host=request.host,
        ) as server:
            yield server
        return
    cache = embedded._cache_dir()
    if request.engine == "llamacpp":
        gguf = Path(request.model) if request.model else embedded.gguf_path()
        spec = llamacpp.spec(
            gguf,
            request.served_name or gguf.stem,
            cache,
            n_threads=request.n_threads,
            host=request.host,
        )
    else:
        if vllm_profile.package_dir() is None:  # before converting the embedded model
            raise ServerError(f"vLLM is not installed; {vllm_profile.INSTALL_HINT}")
        model = request.model or str(embedded.ensure_converted_model())
        parser = request.reasoning_parser
        target = vllm_profile.VllmServer(
            model=model,
            served_name=request.served_name
            or (embedded.EMBEDDED_MODEL if request.model is None else None),
            reasoning_parser="" if parser == "none" else parser,
            max_model_len=request.max_model_len,
            chat_template=request.chat_template,
            extra_args=request.extra_args,
            offline=request.model is None,
            host=request.host,
        )
        spec = target.spec(cache)
    async with launcher.launch(
        spec, port=request.port, startup_timeout=request.startup_timeout
    ) as handle:
        yield handle
