"""Manual alias moves: the actor is the authenticated identity; the history is checked before a
rollback trusts it, and is private to its user."""

from __future__ import annotations

import stat

import pytest

from driftloop.adapters.history import FileChampionHistory, now_iso
from driftloop.adapters.registry import Registry
from driftloop.core.actors import Actor, os_user, resolve_actor
from driftloop.core.errors import RunFailed
from driftloop.core.types import HistoryEntry
from driftloop.rollout import champion


def test_the_authenticated_identity_is_the_actor_and_by_only_a_note():
    actor = resolve_actor("training", "alice\nforged: line")
    assert actor == Actor("training", True, "alice forged: line")
    assert actor.recorded() == "manual:training on behalf of alice forged: line"
    assert "authenticated by MLflow" in actor.described()


def test_without_authentication_the_os_user_is_recorded_as_unauthenticated():
    actor = resolve_actor(None, "")
    assert actor == Actor(f"local:{os_user()}", False)
    assert actor.recorded() == f"manual:local:{os_user()} (unauthenticated)"
    assert "not authenticated" in actor.described()
    assert len(resolve_actor(None, "x" * 1000).on_behalf_of) == 200


def test_the_registry_names_the_user_it_authenticates(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "monitor")
    assert Registry("http://127.0.0.1:9", "m").acting_user() == "monitor"  # no call is made
    # A local store authenticates nobody, whatever the environment says.
    assert Registry(f"sqlite:///{tmp_path / 'm.db'}", "m").acting_user() is None
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    assert Registry("http://127.0.0.1:9", "m").acting_user() is None


def _move(version: str, previous: str | None) -> HistoryEntry:
    return HistoryEntry(now_iso(), "intent-router", "champion", previous, version, "promote", "test", "test")


def test_the_history_file_is_private(tmp_path):
    path = tmp_path / "new-state" / "champion_history.jsonl"
    FileChampionHistory(path).append(_move("1", None))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    old = tmp_path / "old.jsonl"  # written 644 by an earlier version: tightened at the next line
    old.write_text("")
    old.chmod(0o644)
    FileChampionHistory(old).append(_move("1", None))
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_rollback_refuses_a_version_the_registry_does_not_have(tmp_path):
    """An edited history (or one from another store) cannot choose what serves."""
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "intent-router", artifact_root=tmp_path / "a")
    history = FileChampionHistory(tmp_path / "h.jsonl")
    history.append(_move("1", None))
    history.append(_move("7", "1"))  # v7 was never registered
    with pytest.raises(RunFailed, match=r"names v7 .* no such version"):
        champion.rollback(registry, history, reason="test", actor="manual:test")
    assert registry.champion() is None and len(history.entries()) == 2


def test_serving_shows_a_fingerprint_of_the_rollout_never_its_id():
    from driftloop.core.types import RolloutState

    state = RolloutState(rollout_id="0123456789ab", mode="canary", challenger="2", weight=0.1, stage="c")
    assert state.fingerprint and state.rollout_id not in state.fingerprint
    assert state.fingerprint == RolloutState(rollout_id="0123456789ab").fingerprint  # replicas compare
    assert RolloutState().fingerprint == ""
