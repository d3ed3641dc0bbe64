"""Small messages the view's widgets send up to the app."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ProblemHighlighted(Message):
    """The user moved the problem list's cursor onto ``problem_id``."""

    problem_id: str


@dataclass
class ProblemOpened(Message):
    """The user pressed enter (or clicked) on ``problem_id`` in the problem list."""

    problem_id: str


@dataclass
class UserNavigated(Message):
    """The user moved around a tree or pane by hand (so following the newest node stops)."""

    widget: str
