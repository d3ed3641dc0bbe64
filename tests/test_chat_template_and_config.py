"""Client-side continuation prompts and endpoint configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from thinktree.agents.chat_template import render_continuation
from thinktree.config import endpoint_from, load_config
from thinktree.errors import ConfigError

# The ChatML template SmolLM2 ships with (a reduced form).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_continuation_prompt_stops_inside_the_assistant_turn() -> None:
    prompt = render_continuation(
        CHATML, [{"role": "user", "content": "2+2?"}], "Let me think. 2+2 is\n\nWait"
    )
    assert prompt == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nLet me think. 2+2 is\n\nWait"
    )
    assert not prompt.endswith("<|im_end|>\n")


def test_template_without_content_is_refused() -> None:
    with pytest.raises(ValueError, match="does not render"):
        render_continuation("{{ 'fixed' }}", [], "x")


def test_endpoint_from_url_takes_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    cfg = endpoint_from("http://127.0.0.1:9/v1/", model="m", config={})
    assert cfg is not None
    assert cfg.base_url == "http://127.0.0.1:9/v1"
    assert cfg.api_key == "sk-test-123"
    assert "sk-test" not in repr(cfg)


def test_no_endpoint_means_embedded_unless_env_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert endpoint_from(None, model=None, config={}) is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:7/v1")
    cfg = endpoint_from(None, model=None, config={})
    assert cfg is not None and cfg.base_url == "http://127.0.0.1:7/v1"


def test_a_model_the_embedded_endpoint_does_not_serve_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded endpoint serves one model: another model's name would label its answers
    as that model's (a bench's model = ["a", "b"] compared the embedded model with itself)."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for spec in (None, "embedded"):
        assert endpoint_from(spec, model="smollm2", config={}) is None
        with pytest.raises(ConfigError, match="'gpt-x': the embedded endpoint serves smollm2"):
            endpoint_from(spec, model="gpt-x", config={})


def test_named_endpoint_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "thinktree.toml"
    path.write_text(
        '[endpoints.gpu]\nbase_url = "http://gpu:8000/v1"\nmodel = "m1"\n'
        'max_connections = 3\napi_key_env = "GPU_KEY"\ncontinuation = "revision"\n'
    )
    monkeypatch.setenv("GPU_KEY", "secret")
    cfg = endpoint_from("gpu", model=None, config=load_config(path))
    assert cfg is not None
    assert (cfg.model, cfg.max_connections, cfg.api_key, cfg.continuation) == (
        "m1",
        3,
        "secret",
        "revision",
    )


def test_an_endpoint_names_itself_for_the_call_store() -> None:
    table = {"base_url": "http://gpu:8000/v1", "cache_as": "gpu-box"}
    cfg = endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
    assert cfg is not None and cfg.cache_as == "gpu-box"
    for bad in ("", "  ", 3):
        config = {"endpoints": {"gpu": {**table, "cache_as": bad}}}
        with pytest.raises(ConfigError, match="cache_as must be a non-empty name") as caught:
            endpoint_from("gpu", model="m", config=config)
        assert str(caught.value).endswith(f"not {bad!r}")  # the value, not its placeholder


def test_config_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[endpoints.gpu\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    typo = {"endpoints": {"gpu": {"base_url": "http://x/v1", "modle": "m"}}}
    with pytest.raises(ConfigError, match="unknown key"):
        endpoint_from("gpu", model=None, config=typo)
    monkeypatch.delenv("MISSING_KEY", raising=False)
    needs = {"endpoints": {"x": {"base_url": "http://x/v1", "api_key_env": "MISSING_KEY"}}}
    with pytest.raises(ConfigError, match="MISSING_KEY"):
        endpoint_from("x", model=None, config=needs)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("native_n", "no", "maybe"),
        ("continuation", "revision", "complete"),
        ("thinking", "cue", True),
        ("http_client", "aiohttp", "httpx"),
        ("max_tokens_field", "max_completion_tokens", "max_new_tokens"),
    ],
)
def test_a_key_that_takes_a_word_takes_only_its_words(key: str, good: object, bad: object) -> None:
    table = {"base_url": "http://gpu:8000/v1"}
    cfg = endpoint_from("gpu", model="m", config={"endpoints": {"gpu": {**table, key: good}}})
    assert cfg is not None and getattr(cfg, key) == good
    with pytest.raises(ConfigError, match=rf"^endpoint 'gpu': {key} must be one of '.*, not "):
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": {**table, key: bad}}})


@pytest.mark.parametrize("bad", [-0.1, 2.5, "1", True])
def test_an_endpoints_temperature_is_a_number_from_0_to_2(bad: object) -> None:
    table = {"base_url": "http://gpu:8000/v1"}
    cfg = endpoint_from("o", model="m", config={"endpoints": {"o": {**table, "temperature": 1}}})
    assert cfg is not None and cfg.temperature == 1
    with pytest.raises(ConfigError, match=r"^endpoint 'o': temperature must be a number from 0"):
        endpoint_from("o", model="m", config={"endpoints": {"o": {**table, "temperature": bad}}})


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("max_connections", 64, 0),
        ("max_connections", 64, "x"),
        ("max_connections", 64, 2.5),
        ("max_attempts", 1, 0),
        ("timeout_s", 0.5, -1),
        ("timeout_s", 30, "soon"),
        ("outage_wait_s", 0, -5),
        ("outage_wait_s", 900, True),
        # TOML writes nan and inf: no timeout, wait or temperature is either
        ("timeout_s", 30, float("nan")),
        ("timeout_s", 30, float("inf")),
        ("timeout_s", 30, 0),
        ("outage_wait_s", 0, float("nan")),
        ("outage_wait_s", 0, float("inf")),
        ("temperature", 1, float("nan")),
        ("check_timeout_s", 0.5, 0),
        ("check_timeout_s", 30, float("inf")),
        # a digit too many, or milliseconds for seconds: each bound is far past any need
        ("max_connections", 10_000, 10_001),
        ("max_connections", 10_000, 1_000_000),
        ("max_attempts", 100, 101),
        ("max_attempts", 100, 100_000),
        ("timeout_s", 86_400, 86_401),
        ("timeout_s", 86_400, 600_000.0),
        ("timeout_s", 86_400, 1e300),
        ("timeout_s", 86_400, 10**400),  # an integer too large for a float
        ("outage_wait_s", 86_400, 86_400.5),
        ("check_timeout_s", 3_600, 3_601),
    ],
)
def test_a_key_that_takes_a_number_takes_only_a_sensible_one(
    key: str, good: object, bad: object
) -> None:
    table = {"base_url": "http://gpu:8000/v1"}
    cfg = endpoint_from("gpu", model="m", config={"endpoints": {"gpu": {**table, key: good}}})
    assert cfg is not None and getattr(cfg, key) == good
    with pytest.raises(ConfigError, match=rf"^endpoint 'gpu': {key} must be .*, not "):
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": {**table, key: bad}}})


@pytest.mark.parametrize(
    ("key", "bad", "says"),
    [
        (
            "max_connections",
            1_000_000,
            "max_connections must be a whole number of calls from 1 to 10000, not 1000000: "
            "each call in flight holds a connection (an open file) of its own",
        ),
        (
            "max_attempts",
            100_000,
            "max_attempts must be a whole number of attempts from 1 to 100, not 100000: after "
            "the 8th, each retry waits the backoff's longest (60 s)",
        ),
        (
            "timeout_s",
            600_000,
            "timeout_s must be a number of seconds above 0, at most 86400 (a day), not 600000: "
            "it is how long one call may take",
        ),
        (
            "outage_wait_s",
            1e9,
            "outage_wait_s must be a number of seconds from 0 to 86400 (a day), not 1000000000.0: "
            "a run that stops for an endpoint that is down resumes later",
        ),
        (
            "check_timeout_s",
            86_400,
            "check_timeout_s must be a number of seconds above 0, at most 3600 (an hour), "
            "not 86400: it is how long the /models listing",
        ),
    ],
)
def test_a_number_past_its_bound_is_refused_with_the_reason(
    key: str, bad: object, says: str
) -> None:
    table = {"base_url": "http://gpu:8000/v1", key: bad}
    with pytest.raises(ConfigError) as caught:
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
    assert str(caught.value).startswith(f"endpoint 'gpu': {says}"), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "bad", "says"),
    [
        ("model", 5, "model must be text (in quotes), not 5"),
        ("api_key_env", 5, "api_key_env must be text (in quotes), not 5"),
        ("base_url", 5, "base_url must be text (in quotes), not 5"),
        ("base_url", "gpu:8000/v1", "base_url must be an http:// or https:// URL"),
    ],
)
def test_a_key_that_takes_text_takes_only_text(key: str, bad: object, says: str) -> None:
    table = {"base_url": "http://gpu:8000/v1", key: bad}
    with pytest.raises(ConfigError, match=re.escape(f"endpoint 'gpu': {says}")):
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})


def test_http_client_aiohttp_keeps_a_plain_http_server_off_the_lean_client() -> None:
    from thinktree.agents.endpoint import EndpointClient, EndpointConfig

    url = "http://127.0.0.1:8000/v1"
    assert EndpointClient(EndpointConfig(name="x", base_url=url)).transport.lean
    plain = EndpointConfig(name="x", base_url=url, http_client="aiohttp")
    assert not EndpointClient(plain).transport.lean


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "https://api.openai.com/v1",
        "http://gpu-box/v1",
        "http://[::1]:8000/v1",
        "http://10.0.0.5:65535/v1",
        "http://gpu:8000/v1/@team",  # an "@" in the path names no user
    ],
)
def test_a_wellformed_endpoint_url_is_taken(url: str) -> None:
    cfg = endpoint_from(url, model="m", config={})
    assert cfg is not None and cfg.base_url == url
    table = endpoint_from("x", model="m", config={"endpoints": {"x": {"base_url": url}}})
    assert table is not None and table.base_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:99999/v1", "the port must be a number from 1 to 65535, not '99999'"),
        ("http://127.0.0.1:8000a/v1", "the port must be a number from 1 to 65535, not '8000a'"),
        ("http://127.0.0.1:-1/v1", "not '-1'"),
        ("http://h:80:90/v1", "not '80:90'"),
        ("http://[bad/v1", "is not a URL"),
        ("http://[::1]x/v1", "'[::1]x' is not a host and port"),
        ("http://ho<st/v1", "'ho<st' is not a host and port"),
        ("http:///v1", "names no host"),
        ("http://host/v1 x", "holds a space"),
        # each route is added at the end of the URL: into the query, or cut off by the "#"
        ("http://127.0.0.1:8000/v1?x=1", "has a query ('?x=1'): thinktree adds each route"),
        ("http://127.0.0.1:8000/v1?", "has a query ('?')"),
        ("http://127.0.0.1:8000/v1#frag", "has a fragment ('#frag')"),
        ("https://api.example.com/v1?key=1#x", "has a query ('?key=1#x')"),
        ("http://127.0.0.1:8000#/v1", "has a fragment ('#/v1')"),
    ],
)
def test_a_malformed_endpoint_url_is_refused_wherever_it_is_given(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"endpoint URL {url!r}") + ".*" + re.escape(says)
    ):
        endpoint_from(url, model="m", config={})
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ConfigError, match=re.escape(f"OPENAI_BASE_URL {url!r}")):
        endpoint_from(None, model="m", config={})
    table = {"endpoints": {"gpu": {"base_url": url}}}
    with pytest.raises(ConfigError, match=re.escape(f"endpoint 'gpu': base_url {url!r}")):
        endpoint_from("gpu", model="m", config=table)
    pool = {"endpoints": {"gpu": {"members": ["http://127.0.0.1:8000/v1", url]}}}
    with pytest.raises(ConfigError, match=re.escape(f"endpoint 'gpu': member {url!r}")):
        endpoint_from("gpu", model="m", config=pool)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@10.0.0.5:8000/v1", "http://***@10.0.0.5:8000/v1"),
        ("https://s3cret@api.example.com/v1", "https://***@api.example.com/v1"),
        ("http://user:s3cret@h:99999/v1", "http://***@h:99999/v1"),  # before the port
        ("http://user:s3cret@h/v1?x=1", "http://***@h/v1?x=1"),
        ("http://a@b:s3cret@h/v1", "http://***@h/v1"),
    ],
)
def test_a_url_with_a_user_or_password_is_refused_without_repeating_it(
    url: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request could be sent with them (the key goes as a bearer token, and aiohttp
    refuses both at once), and the URL shows in messages and run.json."""
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    givens: list[tuple[str | None, dict[str, Any], str]] = [
        (url, {}, f"endpoint URL {shown!r}"),
        (None, {}, f"OPENAI_BASE_URL {shown!r}"),
        ("gpu", {"endpoints": {"gpu": {"base_url": url}}}, f"endpoint 'gpu': base_url {shown!r}"),
        (
            "gpu",
            {"endpoints": {"gpu": {"members": ["http://127.0.0.1:8000/v1", url]}}},
            f"endpoint 'gpu': member {shown!r}",
        ),
    ]
    for spec, config, where in givens:
        with pytest.raises(ConfigError) as caught:
            endpoint_from(spec, model="m", config=config)
        message = str(caught.value)
        assert message.startswith(f"{where} holds a user name or password"), message
        assert "s3cret" not in message and "api_key_env" in message and "\n" not in message


def test_a_url_of_another_scheme_is_not_repeated_with_its_password() -> None:
    for table in (
        {"base_url": "ftp://user:s3cret@h/v1"},
        {"members": ["ftp://user:s3cret@h/v1"]},
    ):
        with pytest.raises(ConfigError, match=re.escape("'ftp://***@h/v1'")) as caught:
            endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
        assert "s3cret" not in str(caught.value)


def test_nan_in_a_config_file_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "thinktree.toml"
    path.write_text('[endpoints.gpu]\nbase_url = "http://gpu:8000/v1"\ntemperature = nan\n')
    with pytest.raises(ConfigError, match=r"^endpoint 'gpu': temperature must be .*, not nan$"):
        endpoint_from("gpu", model="m", config=load_config(path))


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("{ prompt = nan, completion = 0.6 }", "prompt must be a number"),
        ("{ prompt = 0.15, completion = inf }", "completion must be a number"),
        # an integer too large for a float
        pytest.param(
            "{ prompt = 0.15, completion = 1" + "0" * 400 + " }",
            "completion must be a number",
            id="huge",
        ),
    ],
)
def test_a_price_is_a_finite_number(tmp_path: Path, entry: str, says: str) -> None:
    from thinktree.pricing import prices_from_config

    path = tmp_path / "thinktree.toml"
    path.write_text(f'[prices]\n"m" = {entry}\n')
    with pytest.raises(ConfigError, match=f'^price of "m": {says}'):
        prices_from_config(load_config(path))


def test_completions_continuation_needs_a_chat_template() -> None:
    table = {"base_url": "http://gpu:8000/v1", "continuation": "completions"}
    with pytest.raises(ConfigError, match=r"^endpoint 'gpu': continuation = \"completions\" .*"):
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
    with pytest.raises(ConfigError, match="give it as chat_template"):
        endpoint_from(
            "gpu", model="m", config={"endpoints": {"gpu": {**table, "chat_template": ""}}}
        )
    cfg = endpoint_from(
        "gpu", model="m", config={"endpoints": {"gpu": {**table, "chat_template": CHATML}}}
    )
    assert cfg is not None and (cfg.continuation, cfg.chat_template) == ("completions", CHATML)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ bad", "unexpected end of template"),
        ("{% for m in messages %}{{ m.content }}", "looking for the following tags: 'endfor'"),
        ("{{ messages | no_such_filter }}", "No filter named 'no_such_filter'"),
    ],
)
def test_a_chat_template_that_does_not_parse_fails_in_one_line(template: str, says: str) -> None:
    table = {"base_url": "http://gpu:8000/v1", "chat_template": template}
    with pytest.raises(ConfigError) as caught:
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
    message = str(caught.value)
    assert message.startswith("endpoint 'gpu': chat_template does not parse: ")
    assert says in message and "\n" not in message


# A Gemma-style template: no system turn, and the turns must alternate; thinktree's prompts
# open with a system turn, so every call of a run would fail on it.
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        (NO_SYSTEM, "the template raised 'System role not supported' (line 1)"),
        (
            "{% for m in messages %}{{ m.content }}{{ nothing.here }}{% endfor %}",
            "'nothing' is undefined (line 1)",
        ),
        # an unknown filter in a branch is only found when the branch is taken
        (
            "{% for m in messages %}{% if m.role %}{{ m.content | no_such_filter }}{% endif %}"
            "{% endfor %}",
            "No filter named 'no_such_filter'",
        ),
        (
            "{% for m in messages %}\n{{ m.content }}\n{% endfor %}\n"
            "{% if add_generation_prompt %}{{ 1 / 0 }}{% endif %}",
            "division by zero (line 4)",
        ),
        ("{% for m in messages %}{{ m.content + 1 }}{% endfor %}", "(line 1)"),
        # nothing to continue: the assistant's text is never rendered
        ("{% for m in messages %}{{ m.role }}{% endfor %}", "does not render the assistant"),
    ],
    ids=["raise_exception", "undefined", "filter", "generation-prompt", "type", "no-content"],
)
@pytest.mark.parametrize("continuation", ["completions", "auto"])
def test_a_chat_template_that_fails_on_a_runs_conversation_fails_in_one_line(
    template: str, says: str, continuation: str
) -> None:
    """It compiles, yet would fail every call of the run (or of the probe, which picks
    "completions" under "auto" where the server cannot continue a chat message)."""
    table = {
        "base_url": "http://gpu:8000/v1",
        "continuation": continuation,
        "chat_template": template,
    }
    with pytest.raises(ConfigError) as caught:
        endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
    message = str(caught.value)
    assert message.startswith(
        "endpoint 'gpu': chat_template fails on a conversation like a run's "
        "(system, user, the assistant's text to continue): "
    ), message
    assert says in message and "\n" not in message


def test_a_chat_template_that_renders_a_runs_conversation_is_taken() -> None:
    """Templates that refuse only what a run never sends (a tool turn) are fine, and so are
    the ones thinktree's own tests and the embedded model use."""
    picky = (
        "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}"
        "{% endif %}{{ m.role + ': ' + m.content + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    think = (Path(__file__).parent / "data" / "think_template.jinja").read_text()
    for template in (CHATML, picky, think):
        table = {"base_url": "http://gpu:8000/v1", "continuation": "completions"}
        table["chat_template"] = template
        cfg = endpoint_from("gpu", model="m", config={"endpoints": {"gpu": table}})
        assert cfg is not None and cfg.chat_template == template


def test_raise_exception_in_a_chat_template_says_the_templates_reason() -> None:
    from jinja2 import TemplateError

    from thinktree.agents.chat_template import render_prompt

    with pytest.raises(TemplateError, match="raised 'System role not supported'"):
        render_prompt(NO_SYSTEM, [{"role": "system", "content": "x"}])
    assert render_prompt(NO_SYSTEM, [{"role": "user", "content": "hi"}]).endswith(
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize("file", ["thinktree.toml", "bench.toml"])
def test_a_number_too_long_to_read_in_a_toml_file_fails_in_one_line(
    tmp_path: Path, file: str
) -> None:
    """Python reads no integer of 4300 digits or more: tomllib raises a bare ValueError."""
    from thinktree.bench.grid import load_bench_config

    path = tmp_path / file
    path.write_text(
        '[endpoints.gpu]\nbase_url = "http://gpu:8000/v1"\nmax_connections = 1' + "0" * 5000 + "\n"
    )
    load = load_config if file == "thinktree.toml" else load_bench_config
    with pytest.raises(
        ConfigError, match=r"holds a number too long to read \(4300 digits or more\)$"
    ):
        load(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[endpoints]\nfoo = "http://gpu:8000/v1"\n',
            "endpoint 'foo' must be a table of its settings: write [endpoints.foo] with base_url",
        ),
        ('endpoints = "x"\n', "endpoints must be a table of named endpoints"),
        ("endpoints = [1, 2]\n", "endpoints must be a table of named endpoints"),
    ],
)
def test_endpoints_of_the_wrong_shape_fail_in_one_line(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "thinktree.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        endpoint_from("foo", model="m", config=load_config(path))
