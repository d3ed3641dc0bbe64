"""Asking before the view of a live run closes: keep the run going without it, or stop it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from thinktree.hints import resume_command

QuitChoice = Literal["keep", "stop"]


def quit_message(folder: str | None, config: Path | str | None = None) -> Text:
    """What the dialog says; ``folder`` is the run folder to resume, when known, and
    ``config`` the config file the run's endpoint was named in."""
    text = Text()
    text.append("The run is still going.\n\n", style="bold")
    text.append("[k]", style="bold")
    text.append(" keep it running without the view\n")
    text.append("[s]", style="bold")
    if folder is None:  # it has not begun: stopped now, it leaves nothing to resume
        text.append(" stop it (it has not started yet: nothing to resume)\n")
    else:
        text.append(" stop it (resume later with: ")
        text.append(resume_command(folder, config))  # a path is plain text, never markup
        text.append(")\n")
    text.append("[esc]", style="bold")
    text.append(" back")
    return text


class QuitLiveRun(ModalScreen[QuitChoice | None]):
    """Dismissed with "keep", "stop", or None (back to the view)."""

    DEFAULT_CSS = """
    QuitLiveRun {
        align: center middle;
    }
    QuitLiveRun > Vertical {
        width: auto;
        max-width: 90%;
        height: auto;
        max-height: 100%;
        overflow-y: auto;
        border: round $warning;
        padding: 0 1;
        background: $surface;
    }
    QuitLiveRun #quit-message {
        width: auto;
        max-width: 100%;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "choose('keep')", "Keep running"),
        Binding("s", "choose('stop')", "Stop the run"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, folder: str | None, config: Path | str | None = None) -> None:
        super().__init__()
        self.folder = folder
        self.config = config

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(quit_message(self.folder, self.config), markup=False, id="quit-message")
        yield Footer()  # this dialog's keys, not the view's beneath it

    def action_choose(self, choice: QuitChoice) -> None:
        self.dismiss(choice)

    def action_back(self) -> None:
        self.dismiss(None)
