"""Endpoints from flags, the environment or a TOML file of named endpoints.

```toml
[endpoints.gpu]
base_url = "http://10.0.0.5:8000/v1"
model = "m1-7B-23K"
max_connections = 64

[endpoints.openai]
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"   # the key itself never goes in the file
```
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from thinktree.agents.endpoint import EndpointConfig
from thinktree.errors import ConfigError

DEFAULT_CONFIG = Path("thinktree.toml")
_ENDPOINT_KEYS = {
    "base_url",
    "model",
    "api_key_env",
    "max_connections",
    "timeout_s",
    "max_attempts",
    "continuation",
    "native_n",
    "chat_template",
}
_KNOWN = {"openai": "https://api.openai.com/v1"}


def load_config(path: Path | None) -> dict[str, Any]:
    """The parsed TOML file (``thinktree.toml`` in the working folder when present)."""
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            return {}
        path = DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def endpoint_from(
    spec: str | None, *, model: str | None, config: dict[str, Any]
) -> EndpointConfig | None:
    """Resolve ``--endpoint``: a URL, a name from the config, or None for the embedded model.

    With no ``--endpoint``, ``OPENAI_BASE_URL`` in the environment names the endpoint.
    """
    if spec is None:
        env_url = os.environ.get("OPENAI_BASE_URL")
        if not env_url:
            return None
        spec = env_url
    if spec == "embedded":
        return None
    if spec.startswith(("http://", "https://")):
        return EndpointConfig(
            name=spec,
            base_url=spec.rstrip("/"),
            model=model,
            api_key=os.environ.get("OPENAI_API_KEY"),
        )
    table = config.get("endpoints", {}).get(spec)
    if table is None:
        if spec in _KNOWN:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                raise ConfigError(f"endpoint '{spec}' needs OPENAI_API_KEY in the environment")
            return EndpointConfig(name=spec, base_url=_KNOWN[spec], model=model, api_key=key)
        names = ", ".join(sorted(config.get("endpoints", {}))) or "none configured"
        raise ConfigError(
            f"unknown endpoint '{spec}': give a URL (http://host:port/v1), 'embedded', "
            f"or a name from thinktree.toml ({names})"
        )
    return _from_table(spec, table, model)


def _from_table(name: str, table: dict[str, Any], model: str | None) -> EndpointConfig:
    unknown = set(table) - _ENDPOINT_KEYS
    if unknown:
        raise ConfigError(
            f"endpoint '{name}': unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_ENDPOINT_KEYS))}"
        )
    if "base_url" not in table:
        raise ConfigError(f"endpoint '{name}' needs a base_url")
    key_env = table.get("api_key_env")
    api_key = os.environ.get(key_env) if key_env else os.environ.get("OPENAI_API_KEY")
    if key_env and not api_key:
        raise ConfigError(f"endpoint '{name}' needs {key_env} in the environment")
    fields: dict[str, Any] = {
        k: v for k, v in table.items() if k in _ENDPOINT_KEYS - {"base_url", "api_key_env"}
    }
    fields["model"] = model or table.get("model")
    try:
        return EndpointConfig(
            name=name, base_url=str(table["base_url"]).rstrip("/"), api_key=api_key, **fields
        )
    except TypeError as exc:
        raise ConfigError(f"endpoint '{name}': {exc}") from None
