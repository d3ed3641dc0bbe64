"""Client-side chat templates, for continuing an assistant message over ``/v1/completions``.

Servers that cannot continue a chat message (``continue_final_message``) can still
continue raw text: render the conversation with the model's own chat template, cut it
right after the assistant's text, and send that as a completion prompt.
"""

from __future__ import annotations

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SENTINEL = "\x00THINKTREE-CONTINUE\x00"


def template_error(template: str) -> str | None:
    """Why ``template`` does not compile as a chat template, in one line; None when it does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        env.from_string(template)
    except TemplateSyntaxError as exc:  # an unknown filter or test too
        said = " ".join(str(exc.message or exc).split()).rstrip(".")
        return f"{said} (line {exc.lineno})"
    return None


def render_prompt(
    template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = ""
) -> str:
    """The raw prompt for a new assistant turn (the template's generation prompt included)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
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
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    rendered = env.from_string(template).render(
        messages=[*messages, {"role": "assistant", "content": _SENTINEL}],
        add_generation_prompt=False,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    head, found, _ = rendered.partition(_SENTINEL)
    if not found:
        raise ValueError("the chat template does not render the assistant message's content")
    return head + assistant_prefix
