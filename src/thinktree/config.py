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
import typing
from pathlib import Path
from typing import Any, Literal

from thinktree.agents.endpoint import EndpointConfig, PoolMember
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
    "members",
    "think_end",
    "thinking",
    "cache_as",
    "http_client",
    "max_tokens_field",
    "temperature",
    "outage_wait_s",
}
_KNOWN = {"openai": "https://api.openai.com/v1"}
_TEXTS = ("base_url", "model", "api_key_env", "chat_template", "think_end")
# the keys that take a number: (whole numbers only, lowest, highest, what to write)
_NUMBERS: dict[str, tuple[bool, float, float | None, str]] = {
    "max_connections": (True, 1, None, "a whole number of calls, 1 or more"),
    "max_attempts": (True, 1, None, "a whole number of attempts, 1 or more"),
    "timeout_s": (False, 1e-3, None, "a number of seconds above 0"),
    "outage_wait_s": (False, 0, None, "a number of seconds (0 or more)"),
    "temperature": (False, 0, 2, "a number from 0 to 2 (the one this model takes)"),
}
# the keys that take one of a few words, and those words
_CHOICES: dict[str, tuple[str, ...]] = {
    name: typing.get_args(hint)
    for name, hint in typing.get_type_hints(EndpointConfig).items()
    if typing.get_origin(hint) is Literal
}


def load_config(path: Path | None) -> dict[str, Any]:
    """The parsed TOML file (``thinktree.toml`` in the working folder when present)."""
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            return {}
        path = DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        check_endpoint_tables(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def check_endpoint_tables(config: dict[str, Any]) -> None:
    """A one-line ConfigError unless ``[endpoints]`` is a table of tables (their keys are
    checked when an endpoint is named)."""
    tables = config.get("endpoints", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"[endpoints] must be a table of named endpoints, not {tables!r}")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"endpoint '{name}' must be a table ([endpoints.{name}] with a base_url), "
                f"not {table!r}"
            )


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
    for key, words in _CHOICES.items():
        if key in table and table[key] not in words:
            raise ConfigError(
                f"endpoint '{name}': {key} must be one of {', '.join(map(repr, words))}, "
                f"not {table[key]!r}"
            )
    for key in _TEXTS:
        if key in table and not isinstance(table[key], str):
            raise ConfigError(
                f"endpoint '{name}': {key} must be text (in quotes), not {table[key]!r}"
            )
    if "base_url" in table and not table["base_url"].startswith(("http://", "https://")):
        raise ConfigError(
            f"endpoint '{name}': base_url must be an http:// or https:// URL, "
            f"not {table['base_url']!r}"
        )
    for key, (whole, low, high, says) in _NUMBERS.items():
        value = table.get(key)
        if value is None:
            continue
        kind = int if whole else int | float
        if (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            raise ConfigError(f"endpoint '{name}': {key} must be {says}, not {value!r}")
    members = pool_members(name, table)
    if "base_url" not in table and not members:
        raise ConfigError(f"endpoint '{name}' needs a base_url (or members, for a pool)")
    if "base_url" in table and members:  # a pool's calls go to its members only
        raise ConfigError(
            f"endpoint '{name}' has both a base_url and members; a pool has members only "
            "(add the base_url's server to them)"
        )
    key_env = table.get("api_key_env")
    api_key = os.environ.get(key_env) if key_env else os.environ.get("OPENAI_API_KEY")
    if key_env and not api_key:
        raise ConfigError(f"endpoint '{name}' needs {key_env} in the environment")
    fields: dict[str, Any] = {
        k: v
        for k, v in table.items()
        if k in _ENDPOINT_KEYS - {"base_url", "api_key_env", "members"}
    }
    cache_as = table.get("cache_as")
    if cache_as is not None and (not isinstance(cache_as, str) or not cache_as.strip()):
        raise ConfigError(
            f"endpoint '{name}': cache_as must be a non-empty name (it stands for the server "
            f"in call fingerprints), not {cache_as!r}"
        )
    fields["model"] = model or table.get("model")
    base_url = str(table["base_url"]) if "base_url" in table else f"pool:{name}"
    try:
        return EndpointConfig(
            name=name, base_url=base_url.rstrip("/"), api_key=api_key, members=members, **fields
        )
    except TypeError as exc:
        raise ConfigError(f"endpoint '{name}': {exc}") from None


def pool_members(name: str, table: dict[str, Any]) -> tuple[PoolMember, ...]:
    """The ``members`` of a pool endpoint: URLs, or tables with ``base_url``/``max_connections``.

    Each member's limit defaults to the endpoint's ``max_connections``.
    """
    raw = table.get("members")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"endpoint '{name}': members must be a non-empty list of server URLs")
    default_limit = table.get("max_connections", 32)
    members: list[PoolMember] = []
    for item in raw:
        entry = {"base_url": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("base_url"), str):
            raise ConfigError(
                f"endpoint '{name}': each member is a URL or a table with a base_url, not {item!r}"
            )
        unknown = set(entry) - {"base_url", "max_connections"}
        if unknown:
            raise ConfigError(
                f"endpoint '{name}': unknown member key(s) {', '.join(sorted(unknown))}; "
                "known: base_url, max_connections"
            )
        url = entry["base_url"].rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint '{name}': member {url!r} is not an http(s) URL")
        limit = entry.get("max_connections", default_limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ConfigError(
                f"endpoint '{name}': member {url} needs a positive max_connections, not {limit!r}"
            )
        if any(m.base_url == url for m in members):
            raise ConfigError(f"endpoint '{name}': member {url} is listed twice")
        members.append(PoolMember(base_url=url, max_connections=limit))
    return tuple(members)
