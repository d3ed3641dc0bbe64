"""Helpers for tests that drive the terminal view of a live run with Textual's pilot."""

from __future__ import annotations

from textual.pilot import Pilot

from thinktree.tui.app import ThinktreeApp


async def engine_ended(pilot: Pilot[object]) -> ThinktreeApp:
    """The pilot's app once its run's events are all in and its engine has ended, its view
    redrawn from them."""
    app = pilot.app
    assert isinstance(app, ThinktreeApp)
    await app.source_done.wait()
    while app.engine_running:
        await pilot.pause(0.01)
    app.refresh_view()
    return app
