"""The MLflow adapter: tracking runs, the model store, aliases and routing, and listings.

This package is the only part of driftloop that imports mlflow. Aliases (``champion``,
``challenger``) decide which version serves; stages are deprecated and never used.

==============  ==========================================================================
module          responsibility
==============  ==========================================================================
``connection``  the MLflow client for one store, the error policy, MLflow's global URI lock
``tracking``    the experiment; runs with params, metrics and artifacts; run links
``store``       plain model files, signed, logged as a pyfunc from code; registering,
                loading (signature checked) and tagging versions
``trust``       the signing key and the trusted public keys: which versions may load
``aliases``     ``champion`` / ``challenger`` and the rollout tag: the routing replicas poll
``listing``     what ``driftloop status`` shows: versions with aliases and tags, recent runs
``facade``      :class:`Registry`, composing them behind the methods the rest of driftloop calls
``names``       the alias names, the rollout tag and its parser: no MLflow
``rest``        the routing and the classifier over a tracking server's REST API: no MLflow
==============  ==========================================================================

Importing this package imports no MLflow: :class:`Registry` is loaded on first use, so a serving
process that reads the routing over HTTP (:mod:`.rest`) stays lean.

Error policy, the same for every method: "not found" (no such model, version, alias or run) is
a normal answer for a read (None, an empty dict or list, the default rollout state) and a no-op
for :meth:`Registry.delete_alias`; any other failure raises, naming the tracking URL:
:class:`~driftloop.core.errors.ServerUnreachable` when the server does not answer, and
:class:`~driftloop.core.errors.RegistryError` for every other MLflow error (refused credentials,
a bad request, a server error: ``transient`` for a 5xx or a rate limit, which the one retry policy
of :mod:`driftloop.core.retry` repeats). No method swallows an error; an error that is not
MLflow's (a bug, a local file that cannot be read) propagates unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from driftloop.adapters.registry.names import CHALLENGER, CHAMPION, ROLLOUT_TAG, TRACKING_SERVER
from driftloop.core.errors import RegistryError

if TYPE_CHECKING:
    from driftloop.adapters.registry.facade import Registry

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ROLLOUT_TAG",
    "TRACKING_SERVER",
    "Registry",
    "RegistryError",
]


def __getattr__(name: str) -> Any:
    # The MLflow-backed names load on first use (PEP 562).
    if name == "Registry":
        from driftloop.adapters.registry.facade import Registry

        return Registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
