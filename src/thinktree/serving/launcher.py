"""Start an OpenAI-compatible model server, wait for it, and stop it.

A server listens on 127.0.0.1 unless its spec names another host (``thinktree serve
--host``); it is always checked through an address of this machine.

Every engine (vLLM, llama-cpp-python) goes through :func:`launch`: the server runs in its
own process group with its output in a log file; it is stopped on exit, on errors, on
Ctrl-C and cancellation, at interpreter exit, and (through ``PR_SET_PDEATHSIG``) when this
process dies outright. A server started for ``thinktree serve`` is recorded in a state file
so that other runs reuse it instead of starting their own.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import getpass
import ipaddress
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import structlog

from thinktree._files import atomic_write
from thinktree.errors import ThinktreeError

log = structlog.get_logger(__name__)

_STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1
LOOPBACK = "127.0.0.1"


class ServerError(ThinktreeError, RuntimeError):
    """A model server cannot be prepared, started or reached; one user-facing line."""


@dataclass
class ServerHandle:
    """A running server.

    ``owned`` is true when this process started it (and will stop it); false when it reuses
    a server recorded by ``thinktree serve``.
    """

    base_url: str
    """The URL to reach it at from this machine."""
    model: str
    pid: int | None
    owned: bool
    log_path: Path | None
    engine: str = "vllm"
    startup_s: float | None = None
    remote_url: str | None = None
    """The URL other machines reach it at; None when it listens on loopback only."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its command for a port, environment, names and files."""

    engine: str
    """The engine's name in messages: "vLLM", "llama.cpp"."""
    model: str
    """The name the server serves the model under."""
    command: Callable[[int], list[str]]
    env: dict[str, str]
    log_dir: Path
    log_stem: str
    """Logs go to ``<log_dir>/<log_stem>.log`` (numbered while another server writes it)."""
    state_path: Path | None = None
    """Where ``thinktree serve`` records the server for reuse."""
    health_paths: tuple[str, ...] = ("/v1/models",)
    """Paths (from the server root) that must answer 200 before it counts as ready."""
    engine_key: str = "vllm"
    extra: dict[str, Any] = field(default_factory=dict)
    host: str = LOOPBACK
    """The address the server listens on; ``command`` must pass the same one."""


# --- hosts and ports ---------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    """The socket family vLLM and uvicorn bind ``host`` with: IPv6 when it has a colon."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmapped(address: _Address) -> _Address:
    """The IPv4 address behind an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``), else itself.

    A server bound to a mapped address listens on that IPv4 address (Python before 3.13
    does not count ``::ffff:127.0.0.1`` as loopback, nor ``::ffff:0.0.0.0`` as unspecified).
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def bare_host(host: str) -> str:
    """``host`` without the brackets a URL writes around an IPv6 address (``[::1]``)."""
    if len(host) > 2 and host[0] == "[" and host[-1] == "]":
        try:
            inner = ipaddress.ip_address(host[1:-1])
        except ValueError:
            return host
        if isinstance(inner, ipaddress.IPv6Address):
            return host[1:-1]
    return host


def _not_a_host(host: str) -> str | None:
    """What is wrong with a ``--host`` written as a URL, with a port or in brackets."""
    if "://" in host:
        return (
            f"--host {host} is a URL; give the address alone (such as 127.0.0.1 or ::1), "
            "and the port with --port"
        )
    address, colon, port = host.rpartition(":")
    if colon and port.isdigit() and address and (":" not in address or address[0] == "["):
        return (
            f"--host {host} has a port; give the address alone ({bare_host(address)}) "
            f"and the port as --port {port}"
        )
    if host.startswith("[") or host.endswith("]"):
        return (
            f"--host {host}: brackets are for IPv6 addresses; write "
            f"{host.removeprefix('[').removesuffix(']')}"
        )
    return None


def check_host(host: str) -> str:
    """``host`` when it is an IP address or a name that resolves; else a one-line error.

    An IPv6 address may come in the brackets of a URL (``[::1]``).
    """
    if not host or host != host.strip():
        raise ServerError(f"--host {host!r} is not an IP address or a host name")
    host = bare_host(host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        # A URL writes the zone as %25 (RFC 6874), which httpx passes to the resolver as
        # is and cannot connect to; Python's two-part bind() also drops the zone.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ServerError(
                f"--host {host} has a zone id (%{address.scope_id}) that thinktree cannot "
                "reach the server through; use a global address of this machine, or :: "
                "for every interface"
            )
        return host
    wrong = _not_a_host(host)
    if wrong is not None:
        raise ServerError(wrong)
    try:
        socket.getaddrinfo(host, None, _family(host), socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        v6 = _resolved(host, socket.AF_INET6) if _family(host) == socket.AF_INET else []
        if v6:
            # the engines listen on a name through IPv4 only (uvicorn binds a host without
            # a colon as AF_INET)
            raise ServerError(
                f"--host {host} has IPv6 addresses only, and the engines listen on a host "
                f"name through IPv4; give its address instead: --host {v6[0]}"
            ) from None
        raise ServerError(
            f"--host {host} is not an IP address or a name this machine resolves ({why})"
        ) from None
    return host


def _resolved(host: str, family: socket.AddressFamily) -> list[str]:
    try:
        found = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]).split("%")[0] for info in found]


def _addresses(host: str) -> list[_Address]:
    """The addresses ``host`` listens on, an IPv4-mapped one as its IPv4 address."""
    try:
        return [_unmapped(ipaddress.ip_address(host))]
    except ValueError:
        pass
    return [_unmapped(ipaddress.ip_address(a)) for a in _resolved(host, _family(host))]


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means every interface (0.0.0.0, ::, ::ffff:0.0.0.0)."""
    addresses = _addresses(host)
    return bool(addresses) and all(a.is_unspecified for a in addresses)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.1, ::1, localhost,
    ::ffff:127.0.0.1)."""
    addresses = _addresses(host)
    return bool(addresses) and all(a.is_loopback for a in addresses)


def connect_host(host: str) -> str:
    """The address that reaches a server listening on ``host`` from this machine.

    An IPv4-mapped address is reached through its IPv4 address, as other clients write it.
    """
    if is_wildcard(host):
        ipv4 = all(isinstance(a, ipaddress.IPv4Address) for a in _addresses(host))
        return LOOPBACK if ipv4 else "::1"
    try:
        return str(_unmapped(ipaddress.ip_address(host)))
    except ValueError:
        return host


def server_url(host: str, port: int) -> str:
    """``http://HOST:PORT/v1``, with an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def remote_url(host: str, port: int) -> str | None:
    """The URL other machines reach a server on ``host`` at; None for a loopback host.

    A server on every interface is named by this machine's host name.
    """
    if is_loopback(host):
        return None
    return server_url(socket.gethostname() if is_wildcard(host) else connect_host(host), port)


def _bind(host: str, port: int) -> int:
    """Bind (and release) ``host:port``, as the server would; the port it got."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound: int = sock.getsockname()[1]
        return bound


def free_port(host: str = LOOPBACK) -> int:
    """A port on ``host`` that nothing listens on now."""
    try:
        return _bind(host, 0)
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}: {_reason(exc)}") from None


def check_port_free(port: int, host: str = LOOPBACK) -> None:
    """Raise a one-line :class:`ServerError` when ``port`` on ``host`` is taken."""
    if not 0 < port < 65536:
        raise ServerError(f"--port must be between 1 and 65535, not {port}")
    try:
        _bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {port} on {host} is already in use; pick another with --port"
            ) from None
        raise ServerError(f"cannot use port {port} on {host}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "it is not an address of this machine"
    return exc.strerror or str(exc)


# --- processes ---------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
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


def group_alive(pgid: int) -> bool:
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


def death_signal_preexec() -> Callable[[], None] | None:
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


RPC_FOLDER_ENV = "VLLM_RPC_BASE_PATH"
"""Where a vLLM server's processes make the Unix sockets they talk over."""
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Where torch keeps the kernels it compiled."""
_TEMP_PREFIX = "thinktree-vllm-"
_TEMP_FOLDER = re.compile(re.escape(_TEMP_PREFIX) + r"(\d+)-[^-]+")
"""A vLLM server's temporary folder: the id of the process that launched it, then mkdtemp's."""

_owned: dict[int, subprocess.Popen[bytes]] = {}
_folders: dict[int, Path] = {}
"""The temporary folder of each server in ``_owned`` that has one."""
_owned_lock = threading.Lock()


def _stop_owned_at_exit() -> None:
    """atexit fallback: stop every server this process started and has not stopped yet."""
    with _owned_lock:
        procs = list(_owned.values())
        folders = list(_folders.values())
        _owned.clear()
        _folders.clear()
    for proc in procs:
        stop_sync(proc)
    for folder in folders:
        _remove(folder)


atexit.register(_stop_owned_at_exit)


def stop_sync(proc: subprocess.Popen[bytes], timeout: float = _STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, wait up to ``timeout`` seconds, then SIGKILL it."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(proc.pid):
            break
        time.sleep(0.2)
    else:
        _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


async def stop(proc: subprocess.Popen[bytes]) -> None:
    """The async form of :func:`stop_sync`; run it shielded from cancellation."""
    log.info("stopping model server", pid=proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        proc.poll()
        if not group_alive(proc.pid):
            break
        await anyio.sleep(0.2)
    else:
        log.warning("model server ignored SIGTERM; killing it", pid=proc.pid)
        _signal_group(proc.pid, signal.SIGKILL)
        for _ in range(50):
            if proc.poll() is not None and not group_alive(proc.pid):
                break
            await anyio.sleep(0.1)
    proc.poll()
    with _owned_lock:
        _owned.pop(proc.pid, None)


def open_log(log_dir: Path, stem: str) -> tuple[Path, IO[bytes]]:
    """Open ``<stem>.log`` for a new server, or a numbered one while it is in use.

    The open file holds an exclusive ``flock`` that the server inherits with its stdout, so
    the lock shows that a live server still writes to the file.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    candidates = [log_dir / f"{stem}.log"]
    candidates += [log_dir / f"{stem}-{i}.log" for i in range(1, 100)]
    for path in candidates:
        handle = path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.truncate(0)
        return path, handle
    raise ServerError(f"too many model servers write logs in {log_dir}")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = re.compile(
    r"^(Traceback |File \"|\^+$|~+|During handling|The above exception|\[rank\d+\]:?\s*$)"
)


def last_meaningful_line(text: str) -> str:
    """The last line of ``text`` that says something (not a traceback frame or marker)."""
    for raw in reversed(text.splitlines()):
        line = _ANSI.sub("", raw).strip()
        if line and not _NOISE.match(line) and not set(line) <= set("^~-= "):
            return line if len(line) <= 300 else line[:297] + "..."
    return "(no output)"


def tail_of(path: Path, size: int = 64_000) -> str:
    """The last ``size`` bytes of a log file, decoded."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --- health and state --------------------------------------------------------------------------


def root_url(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _serves_model(response: httpx.Response, model: str) -> bool:
    if response.status_code != 200:
        return False
    try:
        data: Any = response.json()
        return any(m.get("id") == model for m in data.get("data", []))
    except (ValueError, AttributeError):
        return False


def read_state(path: Path) -> dict[str, Any] | None:
    """The record of a server left by ``thinktree serve``, or None."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("base_url"), str):
        return None
    if not isinstance(data.get("pid"), int):
        return None
    return data


def write_state(path: Path, handle: ServerHandle) -> None:
    state = {
        "base_url": handle.base_url,
        "model": handle.model,
        "pid": handle.pid,
        "engine": handle.engine,
        "log": str(handle.log_path) if handle.log_path else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(state) + "\n")


def remove_state(path: Path, pid: int) -> None:
    state = read_state(path)
    if state is not None and state["pid"] == pid:
        path.unlink(missing_ok=True)


def find_recorded(path: Path, default_model: str, engine: str = "vllm") -> ServerHandle | None:
    """The server recorded in ``path`` if its process is alive and it answers.

    A record whose process is gone is removed.
    """
    state = read_state(path)
    if state is None:
        return None
    pid: int = state["pid"]
    if not pid_alive(pid):
        remove_state(path, pid)
        return None
    base_url: str = state["base_url"]
    model = str(state.get("model", default_model))
    try:
        with httpx.Client(timeout=3.0) as client:
            if not _serves_model(client.get(f"{base_url}/models"), model):
                return None
    except httpx.HTTPError:
        return None
    log_path = state.get("log")
    return ServerHandle(
        base_url=base_url,
        model=model,
        pid=pid,
        owned=False,
        log_path=Path(log_path) if isinstance(log_path, str) else None,
        engine=str(state.get("engine", engine)),
    )


async def wait_healthy(
    proc: subprocess.Popen[bytes], spec: ServerSpec, base_url: str, log_path: Path, limit_s: float
) -> None:
    """Wait until the server answers its health paths and lists the model, or raise.

    A server that exits, or is not ready within ``limit_s``, raises a one-line
    :class:`ServerError` with the last meaningful line of its log.
    """
    deadline = time.monotonic() + limit_s
    root = root_url(base_url)
    async with httpx.AsyncClient(timeout=3.0) as client:
        while True:
            code = proc.poll()
            if code is not None:
                last = last_meaningful_line(tail_of(log_path))
                raise ServerError(
                    f"the {spec.engine} server exited (code {code}) before it was ready: "
                    f"{last} (log: {log_path})"
                )
            if time.monotonic() > deadline:
                last = last_meaningful_line(tail_of(log_path))
                raise ServerError(
                    f"the {spec.engine} server was not ready after {limit_s:.0f} s; "
                    f"its log ends: {last} (log: {log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                ok = True
                for path in spec.health_paths:
                    url = f"{base_url}/models" if path == "/v1/models" else f"{root}{path}"
                    answer = await client.get(url)
                    _check_open(answer, spec, path)
                    if path == "/v1/models":
                        ok = _serves_model(answer, spec.model)
                    else:
                        ok = answer.status_code == 200
                    if not ok:
                        break
                if ok:
                    return
            await anyio.sleep(0.5)


def _check_open(answer: httpx.Response, spec: ServerSpec, path: str) -> None:
    """A server that wants an API key would never count as ready: say so at once.

    thinktree starts its servers without authentication (its clients send no key, and the
    engines' key variables are left out of their environment), so a key can only come
    from an engine argument.
    """
    if answer.status_code in (401, 403):
        raise ServerError(
            f"the {spec.engine} server asks for an API key (it answered "
            f"{answer.status_code} to {path}): thinktree serves without one; leave out "
            "--api-key"
        )


# --- the server --------------------------------------------------------------------------------


def spawn(
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    log_stem: str,
    engine: str,
    preexec: Callable[[], None] | None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the server in its own process group, its output going to a log file.

    Call it from the thread that lives as long as the server should: ``PR_SET_PDEATHSIG``
    fires when the creating thread ends.
    """
    log_path, log_file = open_log(log_dir, log_stem)
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise ServerError(f"cannot start the {engine} server: {exc}") from None
    finally:
        log_file.close()  # the child holds its own copy, and with it the log's lock
    with _owned_lock:
        _owned[proc.pid] = proc
    return proc, log_path


@asynccontextmanager
async def launch(
    spec: ServerSpec,
    *,
    port: int | None = None,
    record_state: bool = False,
    startup_timeout: float = 600,
    preexec_factory: Callable[[], Callable[[], None] | None] = death_signal_preexec,
) -> AsyncIterator[ServerHandle]:
    """Run the server of ``spec`` on its host for the duration of the block.

    It starts on ``port`` (a free one by default), is waited for through an address of this
    machine, and is stopped when the block ends, however it ends. ``record_state`` records
    it for other runs to reuse.
    """
    if port is not None:
        check_port_free(port, spec.host)
    port = port if port is not None else free_port(spec.host)
    command = spec.command(port)
    base_url = server_url(connect_host(spec.host), port)
    started = time.monotonic()
    env, folder = _own_temp_folder(spec)
    try:
        proc, log_path = spawn(
            command, env, spec.log_dir, spec.log_stem, spec.engine, preexec_factory()
        )
    except BaseException:
        _remove(folder)
        raise
    if folder is not None:
        with _owned_lock:
            _folders[proc.pid] = folder
    log.info(
        "starting model server",
        engine=spec.engine,
        base_url=base_url,
        pid=proc.pid,
        log=str(log_path),
        command=" ".join(command),
    )
    handle = ServerHandle(
        base_url=base_url,
        model=spec.model,
        pid=proc.pid,
        owned=True,
        log_path=log_path,
        engine=spec.engine_key,
        remote_url=remote_url(spec.host, port),
    )
    try:
        await wait_healthy(proc, spec, base_url, log_path, startup_timeout)
        handle.startup_s = round(time.monotonic() - started, 1)
        log.info(
            "model server ready",
            engine=spec.engine,
            base_url=base_url,
            pid=proc.pid,
            seconds=handle.startup_s,
        )
        if record_state and spec.state_path is not None:
            write_state(spec.state_path, handle)
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            if record_state and spec.state_path is not None:
                remove_state(spec.state_path, proc.pid)
            await stop(proc)
            with _owned_lock:
                _folders.pop(proc.pid, None)
            _remove(folder)


def _own_temp_folder(spec: ServerSpec) -> tuple[dict[str, str], Path | None]:
    """``spec``'s environment, with a temporary folder of its own for a vLLM server.

    vLLM leaves files in the temporary folder at each start: the Unix sockets its processes
    talk over (seven, where ``VLLM_RPC_BASE_PATH`` says) and torch.distributed's start file
    (``vllm_dist_*``, where ``TMPDIR`` says). Both go in a folder of its own, removed once the
    server stopped. Torch's compile cache, which lives in the temporary folder and makes
    later starts faster, stays where it was. A socket folder the environment names is used
    as it is. The folder's name holds this process's id, so that the next launch removes
    the folder of a process that was killed before it could.
    """
    if spec.engine_key != "vllm":
        return spec.env, None
    _remove_orphaned_folders()
    folder = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
    env = {**spec.env, "TMPDIR": str(folder)}
    env.setdefault(RPC_FOLDER_ENV, str(folder))
    env.setdefault(COMPILE_CACHE_ENV, _default_compile_cache())
    return env, folder


def _remove_orphaned_folders() -> None:
    """Remove the temporary folders of vLLM servers whose launching process is gone."""
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMP_FOLDER.fullmatch(entry.name)
        if match and not pid_alive(int(match[1])) and entry.is_dir():
            log.debug("removing an orphaned server folder", folder=str(entry))
            shutil.rmtree(entry, ignore_errors=True)


def _default_compile_cache() -> str:
    """Where torch keeps its compile cache when ``TORCHINDUCTOR_CACHE_DIR`` names none."""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}"
    return os.path.join(
        tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)
    )


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
