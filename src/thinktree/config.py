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

import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from thinktree.agents.chat_template import template_error
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
    "check_timeout_s",
}
_KNOWN = {"openai": "https://api.openai.com/v1"}
_TEXTS = ("base_url", "model", "api_key_env", "chat_template", "think_end")
# the keys that take a number: (whole numbers only, lowest, highest, what to write)
_NUMBERS: dict[str, tuple[bool, float, float | None, str]] = {
    "max_connections": (True, 1, None, "a whole number of calls, 1 or more"),
    "max_attempts": (True, 1, None, "a whole number of attempts, 1 or more"),
    "timeout_s": (False, 1e-3, None, "a number of seconds above 0"),
    "outage_wait_s": (False, 0, None, "a number of seconds (0 or more)"),
    "check_timeout_s": (False, 1e-3, None, "a number of seconds above 0"),
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
        endpoint_tables(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def endpoint_from(
    spec: str | None, *, model: str | None, config: dict[str, Any]
) -> EndpointConfig | None:
    """Resolve ``--endpoint``: a URL, a name from the config, or None for the embedded model.

    With no ``--endpoint``, ``OPENAI_BASE_URL`` in the environment names the endpoint.
    """
    given = "endpoint URL"
    if spec is None:
        env_url = os.environ.get("OPENAI_BASE_URL")
        if not env_url:
            return None
        spec, given = env_url, "OPENAI_BASE_URL"
    if spec == "embedded":
        return None
    if spec.startswith(("http://", "https://")):
        check_url(spec, f"{given} {spec!r}")
        return EndpointConfig(
            name=spec,
            base_url=spec.rstrip("/"),
            model=model,
            api_key=os.environ.get("OPENAI_API_KEY"),
        )
    table = endpoint_tables(config).get(spec)
    if table is None:
        if spec in _KNOWN:
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                raise ConfigError(f"endpoint '{spec}' needs OPENAI_API_KEY in the environment")
            return EndpointConfig(name=spec, base_url=_KNOWN[spec], model=model, api_key=key)
        names = ", ".join(sorted(endpoint_tables(config))) or "none configured"
        raise ConfigError(
            f"unknown endpoint '{spec}': give a URL (http://host:port/v1), 'embedded', "
            f"or a name from thinktree.toml ({names})"
        )
    return _from_table(spec, table, model)


def endpoint_tables(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's ``[endpoints]``: a table of named endpoint tables (empty when there is
    none); a one-line ConfigError for any other shape (the keys of each are checked when
    the endpoint is named)."""
    tables = config.get("endpoints", {})
    if not isinstance(tables, dict):
        raise ConfigError(
            "endpoints must be a table of named endpoints, each [endpoints.NAME] with "
            f'base_url = "http://HOST:PORT/v1" under it, not endpoints = {tables!r}'
        )
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"endpoint '{name}' must be a table of its settings: write [endpoints.{name}] "
                f'with base_url = "http://HOST:PORT/v1" under it, not {name} = {table!r}'
            )
    return tables


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
    if "base_url" in table:
        check_url(table["base_url"], f"endpoint '{name}': base_url {table['base_url']!r}")
    if "chat_template" in table and (problem := template_error(table["chat_template"])):
        raise ConfigError(f"endpoint '{name}': chat_template does not parse: {problem}")
    # the probe takes a template from the config only: without one, every call that
    # continues over /v1/completions would fail in the middle of the run
    if table.get("continuation") == "completions" and not table.get("chat_template"):
        raise ConfigError(
            f"endpoint '{name}': continuation = \"completions\" renders prompts with the "
            "model's chat template: give it as chat_template, or choose continuation "
            '"auto", "chat" or "revision"'
        )
    for key, (whole, low, high, says) in _NUMBERS.items():
        value = table.get(key)
        if value is None:
            continue
        kind = int if whole else int | float
        if (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))  # TOML has nan and inf
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
        check_url(url, f"endpoint '{name}': member {url!r}")
        limit = entry.get("max_connections", default_limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ConfigError(
                f"endpoint '{name}': member {url} needs a positive max_connections, not {limit!r}"
            )
        if any(m.base_url == url for m in members):
            raise ConfigError(f"endpoint '{name}': member {url} is listed twice")
        members.append(PoolMember(base_url=url, max_connections=limit))
    return tuple(members)


# what may stand between "//" and the path: a host name or an [IPv6] address, then a port
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]|[\w.~%-]*)(?::(?P<port>.*))?")


def check_url(url: str, what: str) -> None:
    """Refuse ``url`` (an endpoint's base URL, ``what`` in the message) when no request could
    be sent to it: a scheme other than http(s), no host, a port outside 1-65535, stray text.

    Checked here, where every endpoint is resolved, so that a bad URL fails in one line
    before a run folder exists instead of deep in the HTTP client.
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{what} holds a space or a control character; give the URL alone")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        raise ConfigError(f"{what} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{what} must start with http:// or https://")
    host_port = parts.netloc.rpartition("@")[2]  # past any user:password@
    where = _HOST_PORT.fullmatch(host_port)
    if where is None:
        raise ConfigError(
            f"{what}: {host_port!r} is not a host and port; write it as http://HOST:PORT/v1"
        )
    if not where["host"]:
        raise ConfigError(f"{what} names no host: write it as http://HOST:PORT/v1")
    port = where["port"]
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"{what}: the port must be a number from 1 to 65535, not {port!r}")
