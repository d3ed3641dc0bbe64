"""Room for a run's connections among the files this process may open (``ulimit -n``).

Every connection to a server is an open file. Where the soft limit on open files is lower
than an endpoint's ``max_connections`` (1,024 is common), connections beyond it fail, and
so does anything else the run opens meanwhile: its run store stopped recording ("unable
to open database file") while the run went on. A process may raise its soft limit up to
its hard limit itself; :func:`make_room` does so before a run starts, or refuses the run
in one line where even the hard limit is too low.
"""

from __future__ import annotations

import resource
from typing import Final

from thinktree.agents.endpoint import EndpointConfig
from thinktree.errors import ConfigError

__all__ = ["SPARE", "connections_of", "make_room"]

#: Files a run holds beside its connections: its stores (each with its WAL and index),
#: trace, locks, logs, a verifier's few connections, and the interpreter's own.
SPARE: Final = 128


def connections_of(endpoint: EndpointConfig) -> int:
    """The most connections ``endpoint`` may hold open at once (a pool: all its members')."""
    if endpoint.members:
        return sum(member.max_connections for member in endpoint.members)
    return endpoint.max_connections


def make_room(endpoint: EndpointConfig) -> None:
    """Let this process open ``endpoint``'s connections and :data:`SPARE` files besides:
    its soft limit on open files is raised as far as that needs (never past its hard
    limit). A one-line :class:`ConfigError` where the hard limit is too low."""
    connections = connections_of(endpoint)
    needed = connections + SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    allowed = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if allowed > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))
        except (ValueError, OSError):
            allowed = soft
    if allowed < needed:
        raise ConfigError(
            f"endpoint '{endpoint.name}': max_connections {connections} needs about {needed} "
            f"open files, and this process may open {allowed} (ulimit -n): lower "
            "max_connections, or raise the limit (ulimit -n in the shell that starts thinktree)"
        )
