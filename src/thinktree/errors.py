"""User-facing errors: each carries a one-line message that says what to fix."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_error(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """The first error of ``kind`` in ``exc``, looking inside exception groups (a task
    group wraps the errors of its tasks in one); None when there is none."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kind)
            if found is not None:
                return found
    return None


class ThinktreeError(Exception):
    """An error the CLI reports as one line and a non-zero exit, without a traceback."""


class ConfigError(ThinktreeError):
    """A bad option, flag or configuration value."""


class EndpointError(ThinktreeError):
    """An endpoint that cannot be reached, refuses the request or does not serve the model."""


class ContextExceeded(EndpointError):
    """The endpoint refused a prompt longer than the model's context: the same request
    would be refused again, so no retry or resume sends it (its line keeps what it had)."""


class BudgetExhausted(ThinktreeError):
    """A request would pass a token budget."""


class RunLimitReached(ThinktreeError):
    """The run's token or money limit is reached: no new call may start."""


class RunStopping(ThinktreeError):
    """An error that stops the whole run (resumable), never taken for one problem's failure."""


class RecordingError(RunStopping):
    """A run's own files cannot be written (a full disk, a folder gone read-only).

    The run stops: a run that cannot keep what it pays for must not go on paying.
    """


class EndpointDown(RunStopping):
    """The endpoint stopped answering and did not come back within its ``outage_wait_s``."""
