"""secrets.env is mode 600 after every load, whatever mode it had."""

from __future__ import annotations

import stat

from driftloop.config.settings import load_settings
from driftloop.ops import stack as stack_mod


def test_secrets_env_is_private_even_if_it_existed_with_another_mode(tmp_path, monkeypatch):
    for name in stack_mod.SECRET_SPECS:
        monkeypatch.delenv(name, raising=False)
    stack = stack_mod.from_settings(load_settings(["stack"]), tmp_path)
    path = stack.path("secrets.env")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("DRIFTLOOP_PG_PASSWORD=old\n")
    path.chmod(0o644)
    secrets = stack_mod.load_secrets(stack)  # adds the missing ones, rewriting the file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secrets.pg_password == "old"
    path.chmod(0o640)
    stack_mod.load_secrets(stack, create=False)  # nothing missing: read only, still tightened
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
