"""Applying alias moves: the registry says who serves, the history says why.

Every move goes through here so the registry and the champion history never disagree about an
alias move that driftloop made.
"""

from __future__ import annotations

from driftloop.adapters.history import ChampionHistory, now_iso
from driftloop.adapters.registry import Registry
from driftloop.core.errors import RunFailed
from driftloop.core.types import HistoryEntry, ModelRef


def move_alias(
    registry: Registry,
    history: ChampionHistory,
    alias: str,
    ref: ModelRef,
    *,
    action: str,
    reason: str,
    actor: str,
    report: str = "",
) -> HistoryEntry:
    """Point ``alias`` at ``ref`` and append the move to the history.

    The history line is written after the registry call succeeded: a line always describes a
    move that happened. (A crash between the two leaves a move without its line; ``status``
    shows the registry, which is the source of truth for who serves.)
    """
    previous = registry.alias(alias)
    registry.set_alias(alias, ref)
    return history.append(
        HistoryEntry(
            time=now_iso(),
            model=ref.name,
            alias=alias,
            from_version=previous.version if previous else None,
            to_version=ref.version,
            action=action,
            reason=reason,
            actor=actor,
            report=report,
        )
    )


def clear_alias(
    registry: Registry, history: ChampionHistory, alias: str, *, reason: str, actor: str
) -> HistoryEntry | None:
    """Remove ``alias`` (e.g. ``challenger`` once it became champion) and record it."""
    previous = registry.alias(alias)
    if previous is None:
        return None
    registry.delete_alias(alias)
    return history.append(
        HistoryEntry(
            time=now_iso(),
            model=previous.name,
            alias=alias,
            from_version=previous.version,
            to_version=None,
            action="clear",
            reason=reason,
            actor=actor,
        )
    )


def rollback(
    registry: Registry, history: ChampionHistory, *, reason: str, actor: str, report: str = ""
) -> HistoryEntry | None:
    """Return ``champion`` to the last good version in the history (not a guess).

    The history is a file or a table that someone other than the registry's users may write, so
    its answer is checked against the registry first: a version it names that is not registered
    is refused (:class:`RunFailed`), and nothing moves. (A registered version still loads only if
    it is signed by a trusted key.)"""
    current = registry.champion()
    target = history.last_good("champion", exclude=current.version if current else None)
    if target is None:
        return None
    if not registry.has_version(target):
        raise RunFailed(
            f"the champion history names v{target} of {registry.model_name!r} as the last good champion, "
            "but the registry has no such version: the history does not match the registry (edited or "
            "from another tracking store); nothing was moved"
        )
    return move_alias(
        registry,
        history,
        "champion",
        ModelRef(registry.model_name, target),
        action="rollback",
        reason=reason,
        actor=actor,
        report=report,
    )
