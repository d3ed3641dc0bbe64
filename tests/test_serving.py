"""`thinktree serve ENGINE [MODEL]`: the vLLM profile, the launcher, and bad input.

Fast tests check the profile's flags, reasoning-parser detection and every kind of bad
input (one line, non-zero exit, nothing left running); the launcher is driven with a tiny
stand-in command. The slow test starts a real vLLM through `thinktree serve vllm` on a
reasoning-model fixture: the embedded SmolLM2 with a `<think>` chat template written for
the tests and two unused special tokens renamed `<think>`/`</think>` (no new weights).
"""

from __future__ import annotations

import getpass
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from serving_fixtures import Served
from thinktree import embedded
from thinktree.serving import launcher, llamacpp
from thinktree.serving.launcher import ServerError, ServerSpec
from thinktree.serving.vllm import VllmServer, detect_reasoning_parser

DATA = Path(__file__).parent / "data"
THINK_TEMPLATE = DATA / "think_template.jinja"


def thinktree(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "300"
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def hf_folder(root: Path, model_type: str, template: str | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type}))
    if template is not None:
        (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return root


# --- the profile -------------------------------------------------------------------------------


def test_profile_flags_for_a_test_time_scaling_workload(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "Qwen3-0.6B", "qwen3")
    profile = VllmServer(model=str(folder), extra_args=("--seed", "3")).profile()
    args = profile.args(8123)
    assert args[:2] == ["serve", str(folder.resolve())]
    pairs = dict(itertools.pairwise(args))
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--port"] == "8123"
    assert pairs["--served-model-name"] == "Qwen3-0.6B"
    assert pairs["--reasoning-parser"] == "qwen3"
    assert json.loads(pairs["--structured-outputs-config"]) == {"backend": "xgrammar"}
    assert "--enable-prefix-caching" in args
    assert args[-2:] == ["--seed", "3"]


def test_engines_listen_on_the_host_asked_for(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "Qwen3-0.6B", "qwen3")
    vllm_args = VllmServer(model=str(folder), host="0.0.0.0").profile().args(8123)
    assert dict(itertools.pairwise(vllm_args))["--host"] == "0.0.0.0"
    assert vllm_args.count("--host") == 1
    gguf = tmp_path / "m.gguf"
    llama_args = llamacpp.server_args(gguf, "m", 8123, n_threads=1, host="::")
    assert dict(itertools.pairwise(llama_args))["--host"] == "::"
    assert llama_args.count("--host") == 1
    default = llamacpp.server_args(gguf, "m", 8123, n_threads=1)
    assert dict(itertools.pairwise(default))["--host"] == "127.0.0.1"


def test_reasoning_parser_detection(tmp_path: Path) -> None:
    assert detect_reasoning_parser(hf_folder(tmp_path / "a", "qwen3_moe")) == "qwen3"
    distill = hf_folder(tmp_path / "b", "qwen2", "{{ '<|im_start|>assistant\\n<think>\\n' }}")
    assert detect_reasoning_parser(distill) == "deepseek_r1"
    plain = hf_folder(tmp_path / "c", "llama", "{{ messages[0]['content'] }}")
    assert detect_reasoning_parser(plain) is None
    assert detect_reasoning_parser(None) is None
    assert embedded.converted_model_dir().name.startswith("SmolLM2")


def test_no_parser_when_asked_and_model_ids_pass_through(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path / "m", "qwen3")
    assert VllmServer(model=str(folder), reasoning_parser="").profile().reasoning_parser is None
    hub = VllmServer(model="Qwen/Qwen3-0.6B").profile()
    assert hub.model == "Qwen/Qwen3-0.6B" and hub.served_name == "Qwen/Qwen3-0.6B"
    assert hub.reasoning_parser is None  # not on disk: nothing to detect from


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["vllm", "/no/such/model"], ["model path /no/such/model does not exist"]),
        (["vllm", "./missing-model"], ["does not exist"]),
        (["llama-server"], ["unknown engine 'llama-server'", "vllm, llamacpp"]),
        (["vllm", "--n-threads", "2"], ["--n-threads is a llamacpp option"]),
        (["llamacpp", "--reasoning-parser", "qwen3"], ["--reasoning-parser is a vllm option"]),
        (["vllm", "--startup-timeout", "0"], ["--startup-timeout must be positive"]),
        (["vllm", "--host", "no-such-host.invalid"], ["--host no-such-host.invalid is not"]),
        (["llamacpp", "--host", ""], ["--host '' is not an IP address"]),
        (["llamacpp", "--host", "203.0.113.7"], ["not an address of this machine"]),
        (["vllm", "/m", "--host", "fe80::1%eth0"], ["zone id (%eth0)", "global address"]),
        (["vllm", "--host", "[127.0.0.1]"], ["brackets are for IPv6", "write 127.0.0.1"]),
        (["vllm", "--host", "0.0.0.0:8000"], ["has a port", "(0.0.0.0)", "--port 8000"]),
        (["vllm", "--host", "[::1]:8000"], ["has a port", "(::1)", "--port 8000"]),
        (["llamacpp", "--host", "http://127.0.0.1:8000/v1"], ["is a URL", "--port"]),
        (["vllm", "--host", "0.0.0.0", "--", "--host", "::"], ["two hosts", "0.0.0.0"]),
        (["vllm", "/m", "--", "--host=0.0.0.0"], ["two hosts", "127.0.0.1"]),
        (["llamacpp", "--", "--host", "0.0.0.0"], ["two hosts"]),
        (["vllm", "/m", "--", "--hos=0.0.0.0"], ["two hosts"]),  # argparse abbreviates
        (["vllm", "/m", "--hos", "0.0.0.0"], ["two hosts"]),  # click passes it on
        (["vllm", "/m", "--", "--port", "9000"], ["--port after `--`", "two ports", "free"]),
        (["vllm", "/m", "--port", "8123", "--", "--port=9000"], ["two ports", "8123"]),
        (["vllm", "/m", "--", "--seed", "3", "--por", "9000"], ["two ports"]),
        (["llamacpp", "--", "--port", "9000"], ["two ports"]),
        (["vllm", "/m", "--", "--uds", "/tmp/s"], ["--uds after `--`", "Unix socket"]),
        (["vllm", "/m", "--", "--ssl_certfile=c.pem"], ["--ssl-certfile", "HTTPS"]),
        (["vllm", "/m", "--", "--ssl-keyfile", "k.pem"], ["--ssl-keyfile", "HTTPS"]),
        (["vllm", "/m", "--", "--grpc"], ["--grpc", "gRPC", "leave it out"]),
        (["vllm", "/m", "--", "--headless"], ["--headless", "no API server"]),
        (["vllm", "/m", "--", "--served-model-name", "x"], ["--served-name NAME"]),
    ],
)
def test_serve_bad_input(args: list[str], needles: list[str]) -> None:
    one_line_error(thinktree("serve", *args), *needles)


def test_engine_arguments_that_move_the_server_are_refused_before_anything_starts() -> None:
    # checked on the request itself: through the command line, a check that let these
    # through would go on to start the embedded model
    from thinktree.serving.commands import ServeRequest, _check

    for extra in (("--port", "9000"), ("--port=9000",), ("--por", "9000")):
        with pytest.raises(ServerError, match="two ports"):
            _check(ServeRequest(engine="vllm", model=extra[0], extra_args=extra[1:]))
    # options that only share a beginning with --host or --port are the engine's to take
    _check(ServeRequest(engine="vllm", extra_args=("--pooler-config", "{}", "--hostname", "x")))
    _check(ServeRequest(engine="vllm", extra_args=("--grpc-port", "50051", "--seed", "3")))
    with pytest.raises(ServerError, match="Unix socket"):
        _check(ServeRequest(engine="vllm", model="--uds", extra_args=("/tmp/s",)))


def test_serve_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    one_line_error(thinktree("serve", "vllm", str(tmp_path)), "not a model", "config.json")
    one_line_error(thinktree("serve", "vllm", str(tmp_path / "notes.txt")), "is a file")


def test_serve_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = thinktree("serve", "vllm", "--port", str(port))
    one_line_error(proc, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.parametrize("busy_on", ["0.0.0.0", "127.0.0.1"])
def test_serve_port_in_use_on_the_host_asked_for(busy_on: str) -> None:
    with socket.socket() as busy:
        busy.bind((busy_on, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = thinktree("serve", "llamacpp", "--host", "0.0.0.0", "--port", str(port))
    one_line_error(proc, f"port {port} on 0.0.0.0 is already in use")


def test_engine_not_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from thinktree.serving import llamacpp
    from thinktree.serving import vllm as vllm_profile

    monkeypatch.setattr(llamacpp, "installed", lambda: False)
    with pytest.raises(ServerError, match=r"thinktree\[llamacpp\]"):
        llamacpp.spec(embedded.gguf_path(), "m", Path("."))
    monkeypatch.setattr(vllm_profile, "package_dir", lambda: None)
    with pytest.raises(ServerError, match="vLLM is not installed"):
        vllm_profile.launcher_command()


def test_llamacpp_server_ignores_variables_that_would_move_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(28))
    monkeypatch.setattr(llamacpp, "installed", lambda: True)
    moving = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "CONFIG_FILE": "s.json",
        "ssl_certfile": "c",
        "API_KEY": "k",
    }
    for name, value in moving.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("THINKTREE_TEST_KEPT", "1")
    env = llamacpp.spec(gguf, "m", tmp_path, host="127.0.0.1").env
    assert not set(moving) & set(env)
    assert env["THINKTREE_TEST_KEPT"] == "1"


def test_vllm_server_runs_without_a_key_set_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinktree.serving import vllm as vllm_profile

    monkeypatch.setenv("VLLM_API_KEY", "for-another-server")
    monkeypatch.setenv("THINKTREE_TEST_KEPT", "1")
    env = vllm_profile.server_env(tmp_path, offline=True)
    assert "VLLM_API_KEY" not in env and env["THINKTREE_TEST_KEPT"] == "1"


_NEVER_READY = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("INFO loading weights (this takes forever)", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.anyio
async def test_never_healthy_times_out_with_the_log_tail_and_no_orphans(tmp_path: Path) -> None:
    spec = ServerSpec(
        engine="vLLM",
        model="m",
        command=lambda port: [sys.executable, "-c", _NEVER_READY, str(port)],
        env=dict(os.environ),
        log_dir=tmp_path,
        log_stem="never",
    )
    pids: list[int] = []
    original = launcher.spawn

    def spawn(*args: object, **kwargs: object) -> object:
        proc, path = original(*args, **kwargs)  # type: ignore[arg-type]
        pids.append(proc.pid)
        return proc, path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launcher, "spawn", spawn)
        with pytest.raises(ServerError) as info:
            async with launcher.launch(spec, startup_timeout=3):
                pass
    message = str(info.value)
    assert "not ready after 3 s" in message
    assert "loading weights (this takes forever)" in message
    assert str(tmp_path / "never.log") in message
    assert pids and not launcher.group_alive(pids[0])


_STAND_IN = textwrap.dedent(
    """
    import http.server, json, socket, sys
    host, port = sys.argv[1], int(sys.argv[2])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.HTTPServer):  # IPv6 for an address with a colon, as vLLM does
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    Server((host, port), Handler).serve_forever()
    """
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("every", "loopback"),
    [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::ffff:0.0.0.0", "127.0.0.1")],
)
async def test_a_server_on_every_interface_is_checked_on_loopback(
    tmp_path: Path, every: str, loopback: str
) -> None:
    if every == "::" and not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    if every.startswith("::ffff:") and not _ipv4_mapped():
        pytest.skip("this machine takes no IPv4-mapped addresses")
    spec = ServerSpec(
        engine="vLLM",
        model="m",
        command=lambda port: [sys.executable, "-c", _STAND_IN, every, str(port)],
        env=dict(os.environ),
        log_dir=tmp_path,
        log_stem="stand-in",
        host=every,
    )
    async with launcher.launch(spec, startup_timeout=30) as handle:
        port = int(handle.base_url.rsplit(":", 1)[1].removesuffix("/v1"))
        assert handle.base_url == f"http://{loopback}:{port}/v1"
        assert handle.remote_url == f"http://{socket.gethostname()}:{port}/v1"
        family = socket.AF_INET6 if ":" in every else socket.AF_INET
        with socket.socket(family) as probe:  # it took the port on every interface
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                probe.bind((every, port))


@pytest.mark.anyio
async def test_a_server_on_ipv4_mapped_loopback_is_loopback(tmp_path: Path) -> None:
    """--host ::ffff:127.0.0.1 listens on 127.0.0.1 only: no URL for other machines (and so no
    warning that anyone can use it), and it is checked and named as 127.0.0.1."""
    if not _ipv4_mapped():
        pytest.skip("this machine takes no IPv4-mapped addresses")
    spec = ServerSpec(
        engine="vLLM",
        model="m",
        command=lambda port: [sys.executable, "-c", _STAND_IN, "::ffff:127.0.0.1", str(port)],
        env=dict(os.environ),
        log_dir=tmp_path,
        log_stem="stand-in",
        host="::ffff:127.0.0.1",
    )
    async with launcher.launch(spec, startup_timeout=30) as handle:
        assert handle.base_url.startswith("http://127.0.0.1:")
        assert handle.remote_url is None


@pytest.mark.anyio
async def test_a_server_that_wants_an_api_key_is_refused_at_once(tmp_path: Path) -> None:
    """vLLM given --api-key (or VLLM_API_KEY) answers 401 on /v1: it would never count as
    ready, and serve used to wait out its whole startup timeout (15 minutes by default)."""
    guarded = _STAND_IN.replace(
        'self.send_response(200 if self.path == "/v1/models" else 404)',
        'self.send_response(401 if self.path.startswith("/v1/") else 200)',
    )
    assert guarded != _STAND_IN
    spec = ServerSpec(
        engine="vLLM",
        model="m",
        command=lambda port: [sys.executable, "-c", guarded, "127.0.0.1", str(port)],
        env=dict(os.environ),
        log_dir=tmp_path,
        log_stem="guarded",
    )
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        async with launcher.launch(spec, startup_timeout=60):
            pass
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "asks for an API key (it answered 401 to /v1/models)" in message
    assert "leave out --api-key" in message and "\n" not in message


_TEMP_FILES_LIKE_VLLM = textwrap.dedent(
    """
    import json, os, socket, sys, tempfile, uuid
    # as vLLM's processes do: a Unix socket where VLLM_RPC_BASE_PATH says, and
    # torch.distributed's start file in the temporary folder, neither ever removed
    folder = os.environ.get("VLLM_RPC_BASE_PATH", tempfile.gettempdir())
    ipc = socket.socket(socket.AF_UNIX)
    ipc.bind(os.path.join(folder, str(uuid.uuid4())))
    start_file = os.path.join(tempfile.gettempdir(), "vllm_dist_" + uuid.uuid4().hex)
    open(start_file, "w").close()
    with open(sys.argv[3], "w") as f:
        json.dump({
            "sockets": folder,
            "start_file": start_file,
            "compile_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        }, f)
    """
)


def _vllm_like_spec(tmp_path: Path, where: Path, env: dict[str, str]) -> ServerSpec:
    return ServerSpec(
        engine="vLLM",
        model="m",
        command=lambda port: [
            sys.executable,
            "-c",
            _TEMP_FILES_LIKE_VLLM + _STAND_IN,
            "127.0.0.1",
            str(port),
            str(where),
        ],
        env=env,
        log_dir=tmp_path,
        log_stem="sockets",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("named", [False, True])
async def test_a_vllm_server_leaves_no_temporary_files_behind(tmp_path: Path, named: bool) -> None:
    where = tmp_path / "where"
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    env = {**os.environ, **({"VLLM_RPC_BASE_PATH": str(chosen)} if named else {})}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    async with launcher.launch(_vllm_like_spec(tmp_path, where, env), startup_timeout=30):
        seen = json.loads(where.read_text())
        sockets, start_file = Path(seen["sockets"]), Path(seen["start_file"])
        assert _sockets(sockets) == 1 and _present(start_file) == [True]
        own = start_file.parent
        assert own.parent == Path(tempfile.gettempdir()) and own.name.startswith(
            f"thinktree-vllm-{os.getpid()}-"
        )
        assert sockets == (chosen if named else own)
        # torch's compile cache stays where torch keeps it by default, outside that folder
        user = getpass.getuser()
        assert seen["compile_cache"] == os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    # its own folder goes with the server; a socket folder the environment named stays
    assert _present(own) == [False]
    assert _sockets(sockets) == (1 if named else None)


@pytest.mark.anyio
async def test_a_killed_launchers_folder_is_removed_by_the_next_launch(tmp_path: Path) -> None:
    dead_pid = _a_dead_pid()
    orphan = Path(tempfile.mkdtemp(prefix=f"thinktree-vllm-{dead_pid}-"))
    (orphan / "vllm_dist_0").write_text("left by a launcher killed outright")
    alive = Path(tempfile.mkdtemp(prefix=f"thinktree-vllm-{os.getpid()}-"))
    unlike = Path(tempfile.mkdtemp(prefix=f"thinktree-vllm-{dead_pid}x"))
    try:
        where = tmp_path / "where"
        async with launcher.launch(
            _vllm_like_spec(tmp_path, where, dict(os.environ)), startup_timeout=30
        ):
            assert _present(orphan) == [False]
        assert _present(alive, unlike) == [True, True]  # a live launcher's; no such name
    finally:
        for folder in (orphan, alive, unlike):
            shutil.rmtree(folder, ignore_errors=True)


def _a_dead_pid() -> int:
    """The id of a process that has ended."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(gone.stdout)


def _present(*paths: Path) -> list[bool]:
    return [path.exists() for path in paths]


def _sockets(folder: Path) -> int | None:
    """How many Unix sockets ``folder`` holds; None where it is gone."""
    if not folder.exists():
        return None
    return sum(p.is_socket() for p in folder.iterdir())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _ipv4_mapped() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::ffff:127.0.0.1", 0))
    except OSError:
        return False
    return True


def test_hosts_and_the_urls_that_reach_them() -> None:
    assert launcher.connect_host("0.0.0.0") == "127.0.0.1"
    assert launcher.connect_host("::") == "::1"
    assert launcher.connect_host("10.1.2.3") == "10.1.2.3"
    assert launcher.server_url("::1", 8000) == "http://[::1]:8000/v1"
    assert launcher.remote_url("127.0.0.1", 8000) is None
    assert launcher.remote_url("localhost", 8000) is None
    assert launcher.remote_url("10.1.2.3", 8000) == "http://10.1.2.3:8000/v1"
    assert launcher.remote_url("::", 8000) == f"http://{socket.gethostname()}:8000/v1"
    assert launcher.remote_url("::1", 8000) is None
    assert launcher.remote_url("fd00::2", 8000) == "http://[fd00::2]:8000/v1"
    assert launcher.check_host("::1") == "::1"
    with pytest.raises(ServerError, match=r"zone id \(%eth0\).*use a global address"):
        launcher.check_host("fe80::1%eth0")
    with pytest.raises(ServerError, match="not an IP address"):
        launcher.check_host("no-such-host.invalid")


def test_ipv4_mapped_addresses_are_their_ipv4_address() -> None:
    assert launcher.is_loopback("::ffff:127.0.0.1")
    assert launcher.is_loopback("::FFFF:7f00:1")
    assert launcher.remote_url("::ffff:127.0.0.1", 8000) is None
    assert launcher.connect_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert launcher.is_wildcard("::ffff:0.0.0.0")
    assert launcher.connect_host("::ffff:0.0.0.0") == "127.0.0.1"  # not ::1: IPv4 only
    assert launcher.remote_url("::ffff:0.0.0.0", 8000) == f"http://{socket.gethostname()}:8000/v1"
    assert not launcher.is_loopback("::ffff:10.1.2.3")
    assert launcher.remote_url("::ffff:10.1.2.3", 8000) == "http://10.1.2.3:8000/v1"
    assert not launcher.is_loopback("::127.0.0.1")  # IPv4-compatible: another address


def test_hosts_in_the_brackets_of_a_url_are_ipv6_addresses() -> None:
    from thinktree.serving.commands import ServeRequest

    assert launcher.bare_host("[::1]") == "::1"
    assert launcher.bare_host("[::]") == "::"
    assert launcher.bare_host("[127.0.0.1]") == "[127.0.0.1]"  # refused by check_host
    assert launcher.bare_host("[]") == "[]"
    assert launcher.check_host("[::1]") == "::1"
    # the request holds the address as the engines take it and the printed URL brackets it
    request = ServeRequest(engine="vllm", host="[::1]")
    assert request.host == "::1"
    assert launcher.server_url(launcher.connect_host(request.host), 8000) == "http://[::1]:8000/v1"
    assert launcher.remote_url(request.host, 8000) is None
    assert ServeRequest(engine="vllm", host="[::]").host == "::"
    with pytest.raises(ServerError, match=r"zone id \(%eth0\)"):
        launcher.check_host(ServeRequest(host="[fe80::1%eth0]").host)


def test_a_name_with_ipv6_addresses_only_is_refused_with_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engines bind a host name through IPv4: name the IPv6 address to give instead."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        if host != "v6only.test":
            return real(host, *args, **kwargs)  # type: ignore[arg-type]
        if args[1] == socket.AF_INET6:  # (host, port, family, type)
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ServerError, match=r"IPv6 addresses only.*--host ::1$"):
        launcher.check_host("v6only.test")


def test_request_values_that_would_serve_something_else_are_refused() -> None:
    """Checked on the request itself, not through the command line: before these checks,
    `serve vllm ""`, `--served-name ""` and `--startup-timeout nan` went on to start the
    embedded model (the last never timing out)."""
    from thinktree.serving.commands import ServeRequest, _check

    for model in ("", "  "):
        with pytest.raises(ServerError, match="MODEL is empty"):
            _check(ServeRequest(engine="vllm", model=model))
    for name in ("", " ", " x", "x\n"):
        for engine in ("vllm", "llamacpp"):
            with pytest.raises(ServerError, match=r"--served-name .* is empty or has spaces"):
                _check(ServeRequest(engine=engine, served_name=name))
    with pytest.raises(ServerError, match="--startup-timeout must be positive, not nan"):
        _check(ServeRequest(engine="vllm", startup_timeout=float("nan")))
    _check(ServeRequest(engine="vllm", host="[::1]" if _ipv6_loopback() else "127.0.0.1"))


# --- slow: a real vLLM through `thinktree serve vllm` ------------------------------------------


@pytest.mark.slow
def test_serve_vllm_profile_is_what_runs(think_server: Served) -> None:
    assert think_server.base_url.startswith("http://127.0.0.1:")
    models = httpx.get(f"{think_server.base_url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["smol-think"]
    log_path = Path(think_server.line.split("log: ")[1].split(";")[0])
    log_text = log_path.read_text()
    args_line = next(line for line in log_text.splitlines() if "non-default args" in line)
    assert "'reasoning_parser': 'deepseek_r1'" in args_line  # detected from the template
    assert "'enable_prefix_caching': True" in args_line
    assert "backend='xgrammar'" in args_line
    assert "'host': '127.0.0.1'" in args_line


@pytest.mark.slow
def test_serve_stops_on_ctrl_c_without_orphans(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktree.cli", "serve", "llamacpp", "--n-threads", "1"]
        if _llamacpp_installed()
        else [sys.executable, "-m", "thinktree.cli", "serve", "vllm", "--served-name", "x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving "), line + proc.stdout.read()
    # started with no terminal: Ctrl-C cannot reach it, and it says what does
    assert line.rstrip().endswith(f"stop it with: kill {proc.pid}"), line
    children = _group_members(proc.pid)
    assert len(children) >= 2  # thinktree and its server
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped" in rest and "error" not in rest  # Ctrl-C is how it ends, not a failure
    deadline = time.monotonic() + 20
    while any(launcher.pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(launcher.pid_alive(p) for p in children)


# what `thinktree serve` does once its server is up: wait until it is told to stop
_UNTIL_TERMINATED = """
import anyio
from thinktree import cli

anyio.run(cli._until_terminated)
print("stopped", flush=True)
"""


def _caught_signals(pid: int) -> int:
    """The signals process ``pid`` has handlers for, as a bit mask (bit n-1: signal n)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)


def _bit(sig: signal.Signals) -> int:
    return 1 << (int(sig) - 1)


@pytest.mark.parametrize("nohup", [False, True], ids=["from-a-terminal", "under-nohup"])
def test_serve_stops_on_hangup_unless_started_under_nohup(nohup: bool) -> None:
    """`thinktree serve` stops when its terminal closes (SIGHUP), as a command in it does;
    started under `nohup` it goes on serving: its handler for SIGHUP used to undo nohup's
    ignoring the signal, so the server stopped at logout all the same. SIGTERM stops both."""

    def start_as() -> None:  # SIGHUP as nohup leaves it, or as a terminal's command has it
        signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-c", _UNTIL_TERMINATED],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=start_as,
    )
    try:
        deadline = time.monotonic() + 30
        while not _caught_signals(proc.pid) & _bit(signal.SIGTERM):  # it waits for a stop
            assert proc.poll() is None and time.monotonic() < deadline, "it never waited"
            time.sleep(0.05)
        assert bool(_caught_signals(proc.pid) & _bit(signal.SIGHUP)) is not nohup
        proc.send_signal(signal.SIGHUP)
        if nohup:
            time.sleep(0.5)
            assert proc.poll() is None  # the hangup did not stop it
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.strip().endswith("stopped"), out


# what `thinktree serve` says stops it, asked of a process placed as argv[1] says
_HOW_TO_STOP = """
import os, pty, signal, sys
from pathlib import Path

case, out = sys.argv[1], sys.argv[2]


def report():
    from thinktree import cli

    Path(out).write_text(cli._how_to_stop())


if case == "no-terminal":  # started in a session of its own: no terminal at all
    report()
    sys.exit(0)
pid, master = pty.fork()
if pid == 0:  # a session of its own with the pty as its terminal, in its foreground
    if case == "ctrl-c-ignored":  # as a shell without job control starts `cmd &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if case == "background":  # a process group of its own: `cmd &` in an interactive shell
        child = os.fork()
        if child:
            os.waitpid(child, 0)
            os._exit(0)
        os.setpgid(0, 0)
    report()
    os._exit(0)
os.waitpid(pid, 0)
os.close(master)
"""


@pytest.mark.parametrize("case", ["foreground", "background", "ctrl-c-ignored", "no-terminal"])
def test_serve_says_ctrl_c_stops_it_only_where_ctrl_c_reaches_it(case: str, tmp_path: Path) -> None:
    """In a terminal's foreground Ctrl-C stops `serve`; started in the background, with
    Ctrl-C ignored, or with no terminal, it cannot: it said "Ctrl-C to stop" all the same,
    and now names the signal that does."""
    out = tmp_path / "said"
    subprocess.run(
        [sys.executable, "-c", _HOW_TO_STOP, case, str(out)],
        check=True,
        timeout=60,
        start_new_session=case == "no-terminal",
    )
    said = out.read_text()
    if case == "foreground":
        assert said == "Ctrl-C to stop"
    else:
        assert said.startswith("stop it with: kill ") and int(said.split()[-1]) > 1, said


def _llamacpp_installed() -> bool:
    from thinktree.serving import llamacpp

    return llamacpp.installed()


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[2] == str(pgid):
                found.append(int(entry.name))
    # the server runs in its own session: add its group too
    for pid in list(found):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
                except OSError:
                    continue
                if fields[1] == str(pid) and int(entry.name) not in found:
                    found.append(int(entry.name))
    return found


def test_engine_arguments_without_a_model_are_the_engines_not_a_model_path() -> None:
    from thinktree.serving.commands import ServeRequest

    request = ServeRequest(engine="vllm", model="--seed", extra_args=("3",))
    assert request.model is None and request.extra_args == ("--seed", "3")
    named = ServeRequest(engine="vllm", model="org/model", extra_args=("--seed", "3"))
    assert named.model == "org/model" and named.extra_args == ("--seed", "3")


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
async def test_the_embedded_model_under_another_name_is_served_under_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """`serve ENGINE --served-name x` without a MODEL serves the embedded model as x (it
    used to start the embedded server as smollm2, the name dropped), and does not record it
    for runs, which look for the embedded model under its own name. Nothing is started:
    the launcher is replaced by one that hands back the spec it was given."""
    from contextlib import asynccontextmanager

    from thinktree.serving import commands
    from thinktree.serving import vllm as vllm_profile
    from thinktree.serving.commands import ServeRequest
    from thinktree.serving.launcher import ServerHandle

    folder = hf_folder(tmp_path / "SmolLM2-converted", "llama")
    gguf = tmp_path / "smollm2.gguf"
    gguf.write_bytes(b"GGUF" + bytes(28))
    monkeypatch.setattr(embedded, "ensure_converted_model", lambda **_: folder)
    monkeypatch.setattr(embedded, "gguf_path", lambda: gguf)
    monkeypatch.setattr(embedded, "_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(vllm_profile, "package_dir", lambda: tmp_path)
    monkeypatch.setattr(vllm_profile, "launcher_command", lambda: ["vllm"])
    monkeypatch.setattr(llamacpp, "installed", lambda: True)
    specs: list[ServerSpec] = []
    embedded_calls: list[dict[str, object]] = []

    @asynccontextmanager
    async def launch(spec: ServerSpec, **kwargs: object):  # type: ignore[no-untyped-def]
        specs.append(spec)
        assert not kwargs.get("record_state")
        yield ServerHandle("http://127.0.0.1:1/v1", spec.model, None, True, None)

    @asynccontextmanager
    async def embedded_server(**kwargs: object):  # type: ignore[no-untyped-def]
        embedded_calls.append(kwargs)
        yield ServerHandle("http://127.0.0.1:1/v1", embedded.EMBEDDED_MODEL, None, True, None)

    monkeypatch.setattr(launcher, "launch", launch)  # as the commands module calls it
    monkeypatch.setattr(embedded, "embedded_server", embedded_server)

    async with commands.serve_until_stopped(ServeRequest(engine=engine, served_name="x")) as s:
        assert s.model == "x"
    assert not embedded_calls
    (spec,) = specs
    assert spec.model == "x" and spec.state_path is None
    args = dict(itertools.pairwise(spec.command(8123)))
    if engine == "vllm":
        assert args["serve"] == str(folder.resolve()) and args["--served-model-name"] == "x"
        assert spec.env.get("HF_HUB_OFFLINE") == "1"
    else:
        assert args["--model"] == str(gguf.resolve()) and args["--model_alias"] == "x"

    # without a name, the embedded server itself, recorded for runs to reuse
    async with commands.serve_until_stopped(ServeRequest(engine=engine)) as s:
        assert s.model == embedded.EMBEDDED_MODEL
    (call,) = embedded_calls
    assert call["engine"] == engine and call["record_state"] is True and call["reuse"] is False
    assert len(specs) == 1
