"""Who moves an alias by hand: the identity the registry authenticated, not a name typed on the
command line.

With MLflow's basic auth on (``MLFLOW_TRACKING_USERNAME`` against a tracking server: the stack's
identities), the actor is that user, and MLflow checks that it may edit the registered model.
Without it (the embedded default's local store), nobody is authenticated: the actor is
``local:<OS user>`` and the record says so. ``--by`` is a note kept next to it ("on behalf of"),
never the actor.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass

from driftloop.core.errors import RunFailed

NOTE_MAX = 200


class MoveRefused(RunFailed):
    """The registry refused the identity a manual move would be made as (it lacks EDIT on the
    registered model, or its credentials are wrong)."""


def os_user() -> str:
    """The operating-system user running this process."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for the uid (a container without /etc/passwd entry)
        return f"uid-{os.getuid()}"


@dataclass(frozen=True)
class Actor:
    """Who acts: ``name`` (an MLflow user, or ``local:<OS user>``), whether the registry
    authenticated it, and the free-text note of whom it acts for."""

    name: str
    authenticated: bool
    on_behalf_of: str = ""

    def recorded(self) -> str:
        """The history's and the rollout state's ``actor``: ``manual:training``,
        ``manual:local:alice (unauthenticated)``, then `` on behalf of <note>`` when given."""
        text = f"manual:{self.name}" + ("" if self.authenticated else " (unauthenticated)")
        return text + (f" on behalf of {self.on_behalf_of}" if self.on_behalf_of else "")

    def described(self) -> str:
        """For a person: who, and how we know."""
        how = "authenticated by MLflow" if self.authenticated else "not authenticated: local store"
        note = f", on behalf of {self.on_behalf_of}" if self.on_behalf_of else ""
        return f"{self.name} ({how}{note})"


def resolve_actor(registry_user: str | None, note: str = "") -> Actor:
    """The actor of a manual move: ``registry_user`` (what the registry authenticates this
    process as, None when nothing is) or the OS user, with ``note`` cleaned to one short line."""
    clean = " ".join((note or "").split())[:NOTE_MAX]
    if registry_user:
        return Actor(registry_user, True, clean)
    return Actor(f"local:{os_user()}", False, clean)
