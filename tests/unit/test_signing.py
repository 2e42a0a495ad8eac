"""Ed25519 signatures over model manifests."""

from __future__ import annotations

import pytest

from driftloop.core import signing
from driftloop.core.signing import SignatureError


def test_a_signature_verifies_with_the_trusted_key_and_names_it():
    pair = signing.generate()
    assert signing.public_of(pair.private) == pair.public
    sig = signing.sign(b"manifest", pair.private)
    assert sig.startswith(f"ed25519:{pair.key_id}:")
    other = signing.generate()
    assert signing.verify(b"manifest", sig, [other.public, pair.public]) == pair.key_id
    assert "BEGIN PUBLIC KEY" in signing.public_pem(pair.public)


@pytest.mark.parametrize(
    ("data", "mangle", "trusted", "message"),
    [
        (b"manifest!", lambda s: s, "own", "does not match"),
        (b"manifest", lambda s: s[:-6] + "AAAAA=", "own", "does not match|not base64"),
        (b"manifest", lambda s: s, "other", "not trusted"),
        (b"manifest", lambda s: s, "none", "no trusted public key"),
        (b"manifest", lambda s: "", "own", "no signature"),
        (b"manifest", lambda s: s.replace("ed25519", "rsa"), "own", "not an ed25519 signature"),
        (b"manifest", lambda s: s + ":x", "own", "not an ed25519 signature"),
    ],
)
def test_a_wrong_signature_is_refused_with_its_reason(data, mangle, trusted, message):
    pair, other = signing.generate(), signing.generate()
    sig = mangle(signing.sign(b"manifest", pair.private))
    keys = {"own": [pair.public], "other": [other.public], "none": []}[trusted]
    with pytest.raises(SignatureError, match=message) as info:
        signing.verify(data, sig, keys)
    assert pair.private not in str(info.value) and pair.public not in str(info.value)


def test_a_malformed_key_is_named_not_shown():
    with pytest.raises(SignatureError, match="the signing key: not base64"):
        signing.sign(b"x", "not-a-key!")
    with pytest.raises(SignatureError, match="a public key: 3 bytes"):
        signing.key_id("AAAA")


def test_keys_new_writes_a_private_key_once_and_show_names_what_is_trusted(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from driftloop.entry.cli import app

    runner = CliRunner()
    out = tmp_path / "signing.key"
    made = runner.invoke(app, ["keys", "new", "--private-out", str(out)])
    assert made.exit_code == 0, made.output
    assert out.stat().st_mode & 0o777 == 0o600
    private = out.read_text().strip()
    public = signing.public_of(private)
    assert public in made.output and private not in made.output
    again = runner.invoke(app, ["keys", "new", "--private-out", str(out)])
    assert again.exit_code == 2 and out.read_text().strip() == private
    monkeypatch.setenv("DRIFTLOOP_SIGNING_KEY", private)
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path / "state"))
    shown = runner.invoke(app, ["keys", "show"])
    assert shown.exit_code == 0, shown.output
    assert (
        f"signs with: key {signing.key_id(public)}" in shown.output
        and f"trusts: {signing.key_id(public)}" in shown.output
    )
    assert private not in shown.output
