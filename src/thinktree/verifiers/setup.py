"""Builds a run's verifier panel from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.errors import ConfigError
from thinktree.verifiers.base import CheckedOnce, Spending, VerifierSetup
from thinktree.verifiers.judge import PointwiseJudge
from thinktree.verifiers.pairwise import PairwiseJudge
from thinktree.verifiers.panel import VerifierPanel
from thinktree.verifiers.registry import build_verifiers
from thinktree.verifiers.reward import ProcessReward, RewardModel

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
        await _refuse_same_judge(settings.verifiers, panel)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await panel.aclose()
        raise
    return panel


async def _refuse_same_judge(specs: tuple[str, ...], panel: VerifierPanel) -> None:
    """A one-line ConfigError where two specs are the same verifier: one kind (``judge``,
    ``pairwise``, ``reward``, ``prm``) asking the same server and model the same way
    (``judge:embedded`` beside ``judge`` on the embedded model, a named endpoint beside its
    URL, a scorer's URL with and without its ``/v1``). Its calls and scores would be the
    same, and count twice in each candidate's mean score. Judges on other models, or
    scoring otherwise (``score=rating`` beside P("Yes"), another route or class), are
    distinct; a plugin is its own to tell."""
    seen: dict[tuple[object, ...], str] = {}
    for spec, named in zip(specs, panel.verifiers, strict=True):
        verifier = named.verifier
        key: tuple[object, ...]
        if isinstance(verifier, PointwiseJudge | PairwiseJudge):
            key = (verifier.kind, *await verifier.judge.identity())
            said = verifier.judge.describe()
        elif isinstance(verifier, RewardModel | ProcessReward):
            key = (verifier.kind, *await verifier.identity())
            said = verifier.describe()
        else:
            continue
        if key in seen:
            raise ConfigError(
                f"--verifier {spec} is the same verifier as --verifier {seen[key]} "
                f"({said}, scored the same way): it would count twice in each candidate's "
                "score; give one of them"
            )
        seen[key] = spec
