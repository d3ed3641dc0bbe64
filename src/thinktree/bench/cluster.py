"""Running a cell's shards: on a Ray cluster (``thinktree bench --ray``), or in this process.

``--ray`` alone starts a local Ray instance owned by the command and shut down after it;
``--ray ADDRESS`` joins a running cluster (``HOST:PORT`` of its head, ``ray://HOST:PORT``
through Ray Client, or ``auto``). Each shard is one Ray task of one CPU; a task whose
worker dies is run again by Ray (``max_retries``) and resumes the shard's folder.

Shard folders are read and written by path, so every node must see the bench folder at
the same path (a shared filesystem); the driver checks nothing else about the nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.to_thread
import structlog

from thinktree.bench.sharding import ShardReport, ShardSpec, run_shard
from thinktree.errors import ConfigError, ThinktreeError
from thinktree.verifiers.base import CheckedOnce

log = structlog.get_logger(__name__)

#: How long to wait for a cluster's address to answer before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Times Ray runs a shard again after its worker died (a kill, a lost node).
MAX_RETRIES = 3


class ShardRunner(Protocol):
    """Runs shard specs to completion, by whatever means; ``cpus`` sizes the default split."""

    @property
    def cpus(self) -> int: ...

    async def run(
        self, specs: Sequence[ShardSpec], on_poll: Callable[[], None] | None = None
    ) -> list[ShardReport]:
        """Run every shard; ``on_poll`` is called every so often while they run."""
        ...


class InProcessShards:
    """One shard after another in this process (resuming a Ray bench without Ray); the
    shards share the bench's ``checked`` (a judge's endpoint is not probed per shard)."""

    cpus = 1

    def __init__(self, checked: CheckedOnce | None = None) -> None:
        self.checked = checked

    async def run(
        self, specs: Sequence[ShardSpec], on_poll: Callable[[], None] | None = None
    ) -> list[ShardReport]:
        reports = []
        for spec in specs:
            reports.append(await anyio.to_thread.run_sync(run_shard, spec, self.checked))
            if on_poll is not None:
                on_poll()
        return reports


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray, which is not installed: pip install 'thinktree[ray]'"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """Where ``address`` points (None for ``auto``, which Ray resolves itself)."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray {address}: give HOST:PORT (the head's GCS port, 6379 by default), "
            "ray://HOST:PORT (Ray Client, 10001 by default), or nothing for a local cluster"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line ConfigError unless something listens at ``address`` (before Ray starts)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer within {timeout_s:.0f} s"
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _reason(exc: BaseException) -> str:
    """The first line of what Ray says, or of the cause that says more (a token refused)."""
    seen: BaseException | None = exc
    while seen is not None:
        if "InvalidAuthToken" in str(seen):
            return (
                "the cluster refused this driver's token (InvalidAuthToken); a cluster with "
                "token authentication needs RAY_AUTH_MODE=token here, and its token in "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token"
            )
        seen = seen.__cause__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _task(spec: ShardSpec) -> ShardReport:
    """A Ray worker's entry point: log to a file beside the shard, then run it."""
    from thinktree.logging_setup import configure

    configure(json_file=spec.folder.with_name(f"{spec.folder.name}.log"))
    return run_shard(spec)


class RayCluster:
    """A connection to a Ray cluster for one command; a local one is started and stopped.

    Use as a context manager: entering connects (one-line ConfigError when the cluster
    cannot be reached), leaving disconnects, and stops a cluster it started.
    """

    def __init__(
        self,
        address: str | None,
        *,
        num_cpus: int | None = None,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._ray: Any = None

    def __enter__(self) -> RayCluster:
        ray = _ray()
        if self.address is not None:
            check_reachable(self.address)
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,  # workers log to files beside their shards
            "logging_level": logging.ERROR,
        }
        env = {"RAY_USAGE_STATS_ENABLED": "0"}  # no phoning home from a run
        if self.address is None:
            options["num_cpus"] = self.num_cpus or os.cpu_count() or 1
        else:  # something that answers but is no Ray head: give up in seconds, not 20 s
            env["RAY_gcs_server_port_wait_time_s"] = str(int(CONNECT_TIMEOUT_S))
        try:
            quiet = _stderr_quiet() if self.address is not None else contextlib.nullcontext()
            with _environment(env), quiet:
                # "local": a new instance, even when `ray start` left one to join
                ray.init(address=self.address or "local", **options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError …
            with contextlib.suppress(Exception):
                ray.shutdown()
            where = self.address or "a local Ray instance"
            raise ConfigError(f"cannot connect to {where}: {_reason(exc)}") from None
        self._ray = ray
        log.info("ray connected", address=self.address or "local", cpus=self.cpus)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    @property
    def cpus(self) -> int:
        assert self._ray is not None, "enter the RayCluster first"
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    async def run(
        self, specs: Sequence[ShardSpec], on_poll: Callable[[], None] | None = None
    ) -> list[ShardReport]:
        """Run every shard as a Ray task; a shard's error is raised as one line."""
        ray = self._ray
        assert ray is not None, "enter the RayCluster first"
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(_task)
        spec_of = {remote.remote(spec): spec for spec in specs}
        pending = list(spec_of)
        reports: list[ShardReport] = []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in done:
                    reports.append(self._result(ref, spec_of[ref]))
                if on_poll is not None:
                    on_poll()
                if pending:
                    await anyio.sleep(0.2)
        finally:
            for ref in pending:  # cancelled, or another shard failed: stop the rest
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        reports.sort(key=lambda r: r.index)
        return reports

    def _result(self, ref: Any, spec: ShardSpec) -> ShardReport:
        ray = self._ray
        try:
            report = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ThinktreeError):
                raise cause from None
            raise ThinktreeError(
                f"shard {spec.index} of {spec.cell} failed: {type(cause).__name__}: {cause}"
            ) from None
        except ray.exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ThinktreeError(
                f"shard {spec.index} of {spec.cell} was lost after {self.max_retries + 1} "
                f"tries: {first}"
            ) from None
        assert isinstance(report, ShardReport)
        if report.attempt > 1:
            log.info("shard re-run", cell=spec.cell, shard=spec.index, attempt=report.attempt)
        return report


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in the environment (unless already set) for the ``with`` block."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _stderr_quiet() -> Iterator[None]:
    """Ray's native code logs its connection retries straight to file descriptor 2;
    hold them back while connecting, so a failure reads as one line."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
