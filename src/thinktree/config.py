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

import argparse
import dataclasses
import math
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import idna

from thinktree.agents.chat_template import render_error, template_error
from thinktree.agents.endpoint import EndpointConfig, PoolMember
from thinktree.errors import ConfigError

DEFAULT_CONFIG = Path("thinktree.toml")
#: The top-level tables of a config file: named endpoints, and prices per model.
CONFIG_TABLES = ("endpoints", "prices")
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
# The largest number each key takes. Each is far past what any endpoint needs, so a larger
# one is a typo (a digit too many, milliseconds for seconds), which would otherwise be
# taken as it is and show only in the middle of a run, or never.
MOST_CONNECTIONS = 10_000
MOST_ATTEMPTS = 100
LONGEST_WAIT_S = 86_400  # a day
LONGEST_CHECK_S = 3_600  # an hour


class _Number(typing.NamedTuple):
    """What a key that takes a number takes, and what the message says of it."""

    whole: bool  # whole numbers only
    low: float
    high: float
    says: str  # what to write
    why: str = ""  # why nothing above ``high``: what the key does with it


_NUMBERS: dict[str, _Number] = {
    "max_connections": _Number(
        True,
        1,
        MOST_CONNECTIONS,
        f"a whole number of calls from 1 to {MOST_CONNECTIONS}",
        "each call in flight holds a connection (an open file) of its own, and that many "
        "at once is far past what one server batches; a pool (members) spreads more calls "
        "over several servers",
    ),
    "max_attempts": _Number(
        True,
        1,
        MOST_ATTEMPTS,
        f"a whole number of attempts from 1 to {MOST_ATTEMPTS}",
        "after the 8th, each retry waits the backoff's longest (60 s), so 100 attempts "
        "already retry one failing call for an hour and a half; a server that is down is "
        "waited for by outage_wait_s instead",
    ),
    "timeout_s": _Number(
        False,
        1e-3,
        LONGEST_WAIT_S,
        f"a number of seconds above 0, at most {LONGEST_WAIT_S} (a day)",
        "it is how long one call may take, and no call takes a day (milliseconds?)",
    ),
    "outage_wait_s": _Number(
        False,
        0,
        LONGEST_WAIT_S,
        f"a number of seconds from 0 to {LONGEST_WAIT_S} (a day)",
        "a run that stops for an endpoint that is down resumes later without paying again "
        "for what it finished (thinktree run --resume FOLDER)",
    ),
    "check_timeout_s": _Number(
        False,
        1e-3,
        LONGEST_CHECK_S,
        f"a number of seconds above 0, at most {LONGEST_CHECK_S} (an hour)",
        "it is how long the /models listing before a run may take, which a working server "
        "answers at once (30 s by default)",
    ),
    "temperature": _Number(False, 0, 2, "a number from 0 to 2 (the one this model takes)"),
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
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file; give a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:  # utf-8-sig: an editor may have saved it with a byte order mark (Windows Notepad)
        config = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValueError:  # an integer of 4,300 digits or more, which Python will not read
        raise ConfigError(
            f"{path}: holds a number too long to read (4300 digits or more)"
        ) from None
    # a misspelt table ([endpoint.gpu], [price]) would be ignored, and its endpoints or
    # prices missed with no word of why
    unknown = set(config) - set(CONFIG_TABLES)
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; a config has "
            f"{' and '.join(f'[{name}]' for name in CONFIG_TABLES)}"
        )
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
            _check_embedded(model)
            return None
        spec, given = env_url, "OPENAI_BASE_URL"
    if spec == "embedded":
        _check_embedded(model)
        return None
    if spec.startswith(("http://", "https://")):
        base_url = check_url(spec, f"{given} {spec!r}")
        return EndpointConfig(
            name=spec,
            base_url=base_url.rstrip("/"),
            model=model,
            api_key=api_key("OPENAI_API_KEY"),
        )
    table = endpoint_tables(config).get(spec)
    if table is None:
        if spec in _KNOWN:
            key = api_key("OPENAI_API_KEY")
            if not key:
                raise ConfigError(f"endpoint '{spec}' needs OPENAI_API_KEY in the environment")
            return EndpointConfig(name=spec, base_url=_KNOWN[spec], model=model, api_key=key)
        names = ", ".join(sorted(endpoint_tables(config))) or "none configured"
        if given == "OPENAI_BASE_URL":  # the environment's, not --endpoint's
            raise ConfigError(
                f"OPENAI_BASE_URL {spec!r} (in the environment) is not an endpoint: give it "
                f"as a URL (http://host:port/v1), or a name from thinktree.toml ({names}), "
                "or unset it"
            )
        raise ConfigError(
            f"unknown endpoint '{spec}': give a URL (http://host:port/v1), 'embedded', "
            f"or a name from the config's [endpoints] ({names})"
        )
    return _from_table(spec, table, model)


def _check_embedded(model: str | None) -> None:
    """A one-line ConfigError for a model the embedded endpoint does not serve: the run
    would label the embedded model's answers as that model's."""
    from thinktree.embedded import EMBEDDED_MODEL

    if model is not None and model != EMBEDDED_MODEL:
        raise ConfigError(
            f"model {model!r}: the embedded endpoint serves {EMBEDDED_MODEL} only; give the "
            "endpoint that serves it (a URL or a name from thinktree.toml)"
        )


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
            f"not {redacted(table['base_url'])!r}"
        )
    url = f"pool:{name}"  # a pool's calls go to its members
    if "base_url" in table:
        url = check_url(table["base_url"], f"endpoint '{name}': base_url {table['base_url']!r}")
    _check_template(name, table.get("chat_template"), table.get("continuation"))
    for key, number in _NUMBERS.items():
        value = table.get(key)
        if value is not None:
            check_number(name, key, value, number)
    members = pool_members(name, table)
    if "base_url" not in table and not members:
        raise ConfigError(f"endpoint '{name}' needs a base_url (or members, for a pool)")
    if "base_url" in table and members:  # a pool's calls go to its members only
        raise ConfigError(
            f"endpoint '{name}' has both a base_url and members; a pool has members only "
            "(add the base_url's server to them)"
        )
    key_env = table.get("api_key_env")
    try:
        secret = api_key(key_env or "OPENAI_API_KEY")
    except ConfigError as exc:
        raise ConfigError(f"endpoint '{name}': {exc}") from None
    if key_env and not secret:
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
    try:
        return EndpointConfig(
            name=name, base_url=url.rstrip("/"), api_key=secret, members=members, **fields
        )
    except TypeError as exc:
        raise ConfigError(f"endpoint '{name}': {exc}") from None


def _check_template(name: str, template: str | None, continuation: str | None) -> None:
    """Refuse endpoint ``name``'s chat template where it does not parse, or fails on a
    conversation like a run's; and continuation over /v1/completions without one."""
    if template is not None and (problem := template_error(template)):
        raise ConfigError(f"endpoint '{name}': chat_template does not parse: {problem}")
    # one that parses may still fail on every call of the run: render a conversation like
    # the run's now, before a run folder exists, rather than fail in the middle of the run
    if template and (problem := render_error(template)):
        raise ConfigError(
            f"endpoint '{name}': chat_template fails on a conversation like a run's "
            f"(system, user, the assistant's text to continue): {problem}"
        )
    # the probe takes a template from the config only: without one, every call that
    # continues over /v1/completions would fail in the middle of the run
    if continuation == "completions" and not template:
        raise ConfigError(
            f"endpoint '{name}': continuation = \"completions\" renders prompts with the "
            "model's chat template: give it as chat_template, or choose continuation "
            '"auto", "chat" or "revision"'
        )


def check_endpoint(endpoint: EndpointConfig) -> EndpointConfig:
    """``endpoint``, made in Python (given to :func:`thinktree.run`), with its URLs as the
    HTTP clients take them; refused where its config table would be: a value out of its
    range or of the wrong type, a URL that is none, a chat template that fails."""
    name = endpoint.name
    for key, words in _CHOICES.items():
        if (value := getattr(endpoint, key)) not in words:
            raise ConfigError(
                f"endpoint '{name}': {key} must be one of {', '.join(map(repr, words))}, "
                f"not {value!r}"
            )
    for key in ("name", "base_url", "think_end", "model", "api_key", "chat_template", "cache_as"):
        value = getattr(endpoint, key)
        if not isinstance(value, str) and (value is not None or key in _REQUIRED_TEXTS):
            raise ConfigError(f"endpoint '{name}': {key} must be text, not {value!r}")
    for key, number in _NUMBERS.items():
        if (value := getattr(endpoint, key)) is not None:
            check_number(name, key, value, number)
    members = []
    for member in endpoint.members:
        what = f"member {member.base_url}: "
        limit = _NUMBERS["max_connections"]
        check_number(name, "max_connections", member.max_connections, limit, what=what)
        url = check_url(member.base_url, f"endpoint '{name}': {what}base_url {member.base_url!r}")
        members.append(PoolMember(url.rstrip("/"), member.max_connections))
    base_url = endpoint.base_url
    if not members:
        base_url = check_url(base_url, f"endpoint '{name}': base_url {base_url!r}").rstrip("/")
    _check_template(name, endpoint.chat_template, endpoint.continuation)
    return dataclasses.replace(endpoint, base_url=base_url, members=tuple(members))


_REQUIRED_TEXTS = ("name", "base_url", "think_end")


def check_number(name: str, key: str, value: object, number: _Number, *, what: str = "") -> None:
    """Refuse ``value`` of endpoint ``name``'s ``key`` unless ``number`` takes it; ``what``
    names where it was given when that is not the endpoint's own table (a pool member)."""
    kind = int if number.whole else int | float
    if (
        not isinstance(value, kind)
        or isinstance(value, bool)
        or (isinstance(value, float) and not math.isfinite(value))  # TOML has nan and inf
        or value < number.low
    ):
        raise ConfigError(
            f"endpoint '{name}': {what}{key} must be {number.says}, not {_shown(value)}"
        )
    if value > number.high:
        why = f": {number.why}" if number.why else ""
        raise ConfigError(
            f"endpoint '{name}': {what}{key} must be {number.says}, not {_shown(value)}{why}"
        )


def _shown(value: object) -> str:
    """``value`` in a message: a whole number of many digits by its first and its length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:6]}… (a number of {len(digits)} digits)"
    return repr(value)


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
            raise ConfigError(f"endpoint '{name}': member {redacted(url)!r} is not an http(s) URL")
        url = check_url(url, f"endpoint '{name}': member {url!r}")
        limit = entry.get("max_connections", default_limit)
        number = _NUMBERS["max_connections"]
        check_number(name, "max_connections", limit, number, what=f"member {url}: ")
        if any(m.base_url == url for m in members):
            raise ConfigError(f"endpoint '{name}': member {url} is listed twice")
        members.append(PoolMember(base_url=url, max_connections=limit))
    return tuple(members)


# what may stand between "//" and the path: a host name or an [IPv6] address, then a port
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]|[\w.~%-]*)(?::(?P<port>.*))?")


def check_url(url: str, what: str) -> str:
    """``url`` (an endpoint's base URL, ``what`` in the message) as the HTTP clients take it:
    a host in another script IDNA-encoded (``http://жж.local/v1`` is
    ``http://xn--f1aa.local/v1``, as a browser sends it) and any other letter past ASCII in
    its path percent-encoded, since a request's head is ASCII.

    Refused when no request could be sent to it: a scheme other than http(s), no host, a
    host no IDNA encoding takes, a port outside 1-65535, stray text; or when requests would
    go astray: a query or fragment (each route is added at the end of the URL), a user name
    or password (the HTTP client refuses them beside the bearer token, so every request
    would fail, and messages and run.json would show them).

    Checked here, where every endpoint is resolved, so that a bad URL fails in one line
    before a run folder exists instead of deep in the HTTP client.
    """
    shown = redacted(url)
    if shown != url:  # never repeat the password: the message may end up in a log
        what = what.replace(url, shown).replace(repr(url)[1:-1], repr(shown)[1:-1])
        raise ConfigError(
            f"{what} holds a user name or password before its host: no request could be "
            "sent with them (thinktree sends the API key as a bearer token), and they would "
            "show in messages and run records; give the URL without them, and the key with "
            "api_key_env in thinktree.toml (or OPENAI_API_KEY)"
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"{what} holds a space or a control character; give the URL alone")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        raise ConfigError(f"{what} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{what} must start with http:// or https://")
    marks = [at for at in (url.find("?"), url.find("#")) if at >= 0]
    if marks:
        tail = url[min(marks) :]
        part = "a query" if tail.startswith("?") else "a fragment"
        raise ConfigError(
            f"{what} has {part} ({tail!r}): thinktree adds each route (/chat/completions, "
            "/models) at the end of the base URL, so every request would go astray; give "
            "the URL up to its path, as http://HOST:PORT/v1"
        )
    where = _HOST_PORT.fullmatch(parts.netloc)
    if where is None:
        raise ConfigError(
            f"{what}: {parts.netloc!r} is not a host and port; write it as http://HOST:PORT/v1"
        )
    if not where["host"]:
        raise ConfigError(f"{what} names no host: write it as http://HOST:PORT/v1")
    port = where["port"]
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"{what}: the port must be a number from 1 to 65535, not {port!r}")
    if url.isascii():
        return url
    host = where["host"]
    if not host.isascii():
        if host.startswith("["):
            raise ConfigError(f"{what}: an IPv6 address is written in ASCII, not {host!r}")
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ConfigError(f"{what}: {host!r} is not a host name ({exc})") from None
    netloc = host + parts.netloc[len(where["host"]) :]
    path = quote(parts.path, safe="".join(map(chr, range(0x21, 0x7F))))
    return str(urlunsplit((parts.scheme, netloc, path, "", "")))


def url_option(text: str) -> str:
    """``text`` given to a script's ``--base-url``, checked as :func:`check_url` checks an
    endpoint's URL (argparse's ``type=``: a bad one is argparse's one-line error)."""
    try:
        url = check_url(text, repr(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return url.rstrip("/")


def api_key(variable: str) -> str | None:
    """The API key in the environment variable ``variable``; None when it is unset or blank.

    Whitespace around it is dropped (the line end of a key read from a file, CR and LF
    from a Windows one): a key holds none, so what is left is the key. Any other character
    outside printable ASCII (a "…" copied with a shortened key, a control character) is
    refused in one line that names the variable and the character, never the key: it
    would break or garble every request's head, and the server's answer may repeat it.
    """
    given = os.environ.get(variable)
    if given is None or not given.strip():
        return None
    key = given.strip()
    before = len(given) - len(given.lstrip())
    for at, char in enumerate(key, start=before + 1):
        if not "!" <= char <= "~":
            raise ConfigError(
                f"the API key in {variable} holds {char!r} (U+{ord(char):04X}) at position "
                f"{at}: a key is printable ASCII with no spaces; set {variable} to the key "
                "alone, copied whole"
            )
    return key


def redacted(url: str) -> str:
    """``url`` with any user name and password before its host shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    end = min((at for mark in "/?#" if (at := rest.find(mark)) >= 0), default=len(rest))
    if not sep or "@" not in rest[:end]:
        return url
    return f"{scheme}://***@{rest[:end].rpartition('@')[2]}{rest[end:]}"
