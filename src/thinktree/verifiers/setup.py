"""Builds a run's verifier panel from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.errors import ConfigError
from thinktree.verifiers.base import CheckedOnce, Spending, VerifierSetup
from thinktree.verifiers.panel import VerifierPanel
from thinktree.verifiers.registry import build_verifiers

if TYPE_CHECKING:
    from thinktree.orchestrator.run import RunSettings


async def open_panel(
    settings: RunSettings,
    client: EndpointClient,
    caps: Capabilities,
    spending: Spending | None = None,
    checked: CheckedOnce | None = None,
) -> VerifierPanel | None:
    """The panel of ``settings.verifiers``, prepared (None when there are none); close it
    with ``aclose``.

    ``spending``: the run's limits, which the verifiers' model calls count under too;
    ``checked``: what other runs' verifiers found before them (a bench's), not checked again.
    """
    if not settings.verifiers:
        return None

    def endpoint_for(name: str) -> EndpointConfig:
        from thinktree.config import endpoint_from

        found = endpoint_from(name, model=None, config=settings.config)
        if found is None:  # "embedded": the run's own endpoint when that is the embedded one
            if client.config.name != "embedded":
                raise ConfigError("a judge on 'embedded' needs the run on the embedded model")
            return client.config
        return found

    setup = VerifierSetup(
        client=client,
        caps=caps,
        endpoint_for=endpoint_for,
        prices=dict(settings.prices),
        spending=spending,
        checked=checked or CheckedOnce(),
    )
    panel = VerifierPanel(build_verifiers(settings.verifiers, setup), spending, setup.prices)
    try:
        await panel.prepare()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await panel.aclose()
        raise
    return panel
