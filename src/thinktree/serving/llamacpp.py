"""The llama.cpp profile: llama-cpp-python's OpenAI-compatible server on a GGUF file.

It serves one request at a time (others queue), so ``--interrupt_requests False`` keeps a
new request from cutting off a stream in flight; ``--n_threads`` says how many cores it may
use. What it can and cannot do differs from vLLM and is found out by the probe.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from thinktree.serving.launcher import LOOPBACK, ServerError, ServerSpec

INSTALL_HINT = (
    "install the llamacpp extra: "
    "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'thinktree[llamacpp]' "
    "(bash scripts/install.sh does it)"
)

# llama_cpp.server lets HOST and PORT override its --host and --port, reads its whole
# command line from CONFIG_FILE instead, and takes the settings it is not given (HTTPS
# and an API key among them) from the environment. Each would have it answer elsewhere,
# or otherwise, than at the URL thinktree checks and prints without a key, and such
# generic names are most likely set for another use.
_MOVING_ENV = frozenset({"HOST", "PORT", "CONFIG_FILE", "SSL_KEYFILE", "SSL_CERTFILE", "API_KEY"})


def installed() -> bool:
    """Whether llama-cpp-python and its server extra are importable (without importing)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context")
    )


def check_gguf(path: Path) -> Path:
    """``path`` when it is a GGUF file; otherwise a one-line :class:`ServerError`."""
    if not path.exists():
        raise ServerError(f"model path {path} does not exist; give a .gguf file")
    if not path.is_file():
        raise ServerError(f"{path} is not a model file: llama.cpp serves a single .gguf file")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ServerError(f"{path} is not a GGUF model file (it does not start with GGUF)")
    return path.resolve()


def server_args(
    gguf: Path,
    served_name: str,
    port: int,
    *,
    n_threads: int | None,
    n_ctx: int = 4096,
    host: str = LOOPBACK,
) -> list[str]:
    """The arguments of ``python -m llama_cpp.server`` for one model on ``host``."""
    threads = n_threads if n_threads is not None else max(1, os.cpu_count() or 1)
    return [
        "--model",
        str(gguf),
        "--model_alias",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(n_ctx),
        "--interrupt_requests",
        "False",
    ]


def spec(
    gguf: Path,
    served_name: str,
    cache: Path,
    *,
    n_threads: int | None = None,
    n_ctx: int = 4096,
    state_path: Path | None = None,
    log_stem: str = "llamacpp-server",
    host: str = LOOPBACK,
) -> ServerSpec:
    """The launcher's spec for serving ``gguf`` under ``served_name`` on ``host``."""
    if n_threads is not None and n_threads <= 0:
        raise ServerError(f"--n-threads must be positive, not {n_threads}")
    if not installed():
        raise ServerError(f"llama-cpp-python is not installed; {INSTALL_HINT}")
    model = check_gguf(gguf)
    # pydantic-settings matches names in any case
    env = {k: v for k, v in os.environ.items() if k.upper() not in _MOVING_ENV}
    env["PYTHONUNBUFFERED"] = "1"

    def command(port: int) -> list[str]:
        args = server_args(model, served_name, port, n_threads=n_threads, n_ctx=n_ctx, host=host)
        return [sys.executable, "-m", "llama_cpp.server", *args]

    return ServerSpec(
        engine="llama.cpp",
        engine_key="llamacpp",
        model=served_name,
        command=command,
        env=env,
        log_dir=cache,
        log_stem=log_stem,
        state_path=state_path,
        host=host,
    )


def embedded_spec(
    gguf: Path,
    served_name: str,
    cache: Path,
    *,
    n_threads: int | None,
    state_path: Path,
    host: str = LOOPBACK,
) -> ServerSpec:
    """The embedded model's GGUF on llama.cpp, recorded for reuse at ``state_path``."""
    return spec(
        gguf,
        served_name,
        cache,
        n_threads=n_threads,
        state_path=state_path,
        log_stem="embedded-llamacpp-server",
        host=host,
    )


def gguf_chat_template(gguf: Path) -> tuple[str, str, str] | None:
    """The chat template and BOS/EOS strings stored in a GGUF file, or None.

    Servers that cannot continue a chat message are sent raw ``/v1/completions`` prompts
    rendered with this template on the client.
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    reader = GGUFReader(str(gguf))

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")

    def number(key: str) -> int | None:
        field = reader.fields.get(key)
        if field is None or not field.data:
            return None
        return int(field.parts[field.data[0]][0])

    template = text("tokenizer.chat_template")
    if template is None:
        return None
    tokens = reader.fields.get("tokenizer.ggml.tokens")

    def token(key: str) -> str:
        index = number(key)
        if tokens is None or index is None or index >= len(tokens.data):
            return ""
        return bytes(tokens.parts[tokens.data[index]]).decode("utf-8", "replace")

    return template, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
