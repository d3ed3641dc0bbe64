"""Client-side chat templates, for continuing an assistant message over ``/v1/completions``.

Servers that cannot continue a chat message (``continue_final_message``) can still
continue raw text: render the conversation with the model's own chat template, cut it
right after the assistant's text, and send that as a completion prompt.
"""

from __future__ import annotations

from types import TracebackType
from typing import NoReturn

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SENTINEL = "\x00THINKTREE-CONTINUE\x00"

# A conversation shaped like those a run renders (:func:`thinktree.agents.prompts.messages_for`:
# a system and a user turn, then the assistant's text so far), and the probe's one user turn.
_SAMPLE_RUN = [
    {"role": "system", "content": "You are a careful expert."},
    {"role": "user", "content": "Question: Is 17 a prime number?"},
]
_SAMPLE_PROBE = [{"role": "user", "content": "Is 17 a prime number? Think briefly."}]
_SAMPLE_PREFIX = "17 has no divisor but 1 and itself.\n\nWait"


def _raise_exception(message: str) -> NoReturn:
    """What a Hugging Face chat template calls to refuse a conversation (as transformers
    renders them): an error that says the template's own reason."""
    raise TemplateError(f"the template raised {message!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env


def template_error(template: str) -> str | None:
    """Why ``template`` does not compile as a chat template, in one line; None when it does."""
    try:
        _environment().from_string(template)
    except TemplateSyntaxError as exc:  # an unknown filter or test too
        said = " ".join(str(exc.message or exc).split()).rstrip(".")
        return f"{said} (line {exc.lineno})"
    return None


def render_error(template: str) -> str | None:
    """Why ``template`` (one that compiles) fails to render the prompts a run sends, in one
    line; None when it renders them.

    A template can compile and still fail on every call: it calls ``raise_exception`` for a
    system turn, reads an attribute of a variable nobody passes, uses a filter that does not
    exist in a branch every conversation takes, or never renders the assistant's content
    (nothing to continue). Each prompt a run or the probe renders is rendered once here,
    on a conversation of the same shape.
    """
    try:
        for messages in (_SAMPLE_RUN, _SAMPLE_PROBE):
            render_prompt(template, messages)
            generation_opener(template, messages)
            render_continuation(template, messages, _SAMPLE_PREFIX)
    except Exception as exc:  # a template may raise anything: 1/0, a TypeError, its own
        said = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        line = _template_line(exc.__traceback__)
        return f"{said} (line {line})" if line is not None else said
    return None


def _template_line(tb: TracebackType | None) -> int | None:
    """The line of the template where an error was raised, when it was raised in it."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_prompt(
    template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = ""
) -> str:
    """The raw prompt for a new assistant turn (the template's generation prompt included)."""
    return (
        _environment()
        .from_string(template)
        .render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )
    )


def generation_opener(template: str, messages: list[dict[str, str]]) -> str:
    """What the generation prompt adds after the assistant header, such as ``<think>\n``.

    A reasoning model's template may open the thinking itself; the model's text then
    starts inside it, and continuing that text needs the opener in front of it.
    """
    head = render_continuation(template, messages, "")
    full = render_prompt(template, messages)
    return full[len(head) :] if full.startswith(head) else ""


def render_continuation(
    template: str,
    messages: list[dict[str, str]],
    assistant_prefix: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The raw prompt that makes the model go on from ``assistant_prefix``.

    The conversation is rendered with the assistant message set to a sentinel; the
    prompt is everything before the sentinel plus the real prefix, so whatever the
    template puts after an assistant message (end-of-turn tokens) is left out.
    """
    rendered = (
        _environment()
        .from_string(template)
        .render(
            messages=[*messages, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    )
    head, found, _ = rendered.partition(_SENTINEL)
    if not found:
        raise ValueError("the chat template does not render the assistant message's content")
    return head + assistant_prefix
