"""The supply chain, offline: every lock is pinned and hashed, the installs require the hashes, the
tools are pinned exactly, and `make audit` never reports "could not audit" as a pass.

(The images' digests are checked beside the manifests: tests/integration/test_infra_manifests.py.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import ROOT

LOCKS = {
    "requirements.lock": "the project's dependencies",
    "requirements-build.lock": "the build backend",
    "requirements-bootstrap.lock": "uv",
    "requirements-audit.lock": "pip-audit",
}
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+?)\s*(?:\\|$)")


def audit_lock():
    spec = importlib.util.spec_from_file_location("audit_lock", ROOT / "tools" / "audit_lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("audit_lock", module)
    spec.loader.exec_module(module)
    return module


def entries(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) for every requirement of a lock; fails on one not pinned with ==."""
    found: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / lock).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            m = _REQUIREMENT.match(line)
            assert m, f"{lock}: not pinned with ==: {line!r}"
            current = m.group(1).lower()
            found[current] = (m.group(3), [])
        elif current and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            found[current][1].append(h.group(1))
    return found


def make_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", MAKEFILE, re.M)
    assert m, f"no {name} in the Makefile"
    return m.group(1)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_requirement_is_pinned_and_hashed(lock):
    pins = entries(lock)
    assert pins, lock
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"{lock}: no --hash for {unhashed} (make lock: uv pip compile --generate-hashes)"
    assert "--generate-hashes" in (ROOT / lock).read_text(encoding="utf-8").splitlines()[1], lock


def test_locked_torch_is_the_cpu_build_and_matches_the_local_wheel():
    version, hashes = entries("requirements.lock")["torch"]
    assert version.endswith("+cpu"), version
    folder = os.environ.get("PIP_FIND_LINKS")
    wheels = sorted(Path(folder).glob(f"torch-{version}-*.whl")) if folder else []
    if not wheels:
        pytest.skip("no local torch wheel (PIP_FIND_LINKS): the hash comes from PyTorch's CPU index")
    for wheel in wheels:
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert digest in hashes, f"{wheel.name}: sha256 {digest} is not in requirements.lock"


def test_build_lock_covers_the_build_backend():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    build = entries("requirements-build.lock")
    for requirement in [*requires, "editables", "setuptools"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        assert name in build, f"{name} (build-system.requires) is not in requirements-build.lock"


def test_installs_require_hashes_and_never_mix_indexes():
    assert "unsafe-best-match" not in MAKEFILE and "--extra-index-url" not in MAKEFILE
    syncs = re.findall(r"uv pip sync\b[^\n]*", MAKEFILE)
    assert syncs and all("--require-hashes" in s for s in syncs), syncs
    assert "$(BUILD_PINS)" in syncs[0], syncs  # an sdist in the lock is built from hashed build deps
    installs = re.findall(r"uv pip install\b[^\n]*", MAKEFILE)
    assert installs and all("--no-deps" in i and "$(BUILD_PINS)" in i for i in installs), installs
    assert "BUILD_PINS = --build-constraints requirements-build.lock --require-build-hashes " in MAKEFILE
    torch_source = re.search(r"^TORCH_SOURCE = (.*)$", MAKEFILE, re.M)
    assert torch_source and torch_source.group(1).endswith(",--torch-backend cpu)"), torch_source


def test_tools_are_pinned_exactly():
    assert entries("requirements-bootstrap.lock") == {
        "uv": (make_var("UV_VERSION"), entries("requirements-bootstrap.lock")["uv"][1])
    }
    assert entries("requirements-audit.lock")["pip-audit"][0] == make_var("PIP_AUDIT_VERSION")
    assert re.search(
        r"pip install [^\n]*--require-hashes --only-binary :all: \\\n\s+-r requirements-bootstrap\.lock", MAKEFILE
    )
    # No open-ended tool install anywhere the build or CI runs.
    for name in ("Makefile", "Dockerfile", ".ci/run"):
        text = (ROOT / name).read_text(encoding="utf-8")
        loose = re.findall(r"pip install[^\n]*[\"' ][A-Za-z0-9_.-]+(?:>=|>|~=)[^\n]*", text)
        assert not loose, f"{name}: {loose}"
    assert "repo: local" in (ROOT / ".pre-commit-config.yaml").read_text()
    assert "rev:" not in (ROOT / ".pre-commit-config.yaml").read_text(), "a remote hook repository"


def test_audit_is_not_part_of_make_test():
    test_target = re.search(r"^test:(.*)$", MAKEFILE, re.M)
    assert test_target and "audit" not in test_target.group(1)
    assert re.search(r"^audit:", MAKEFILE, re.M)


# --- make audit's verdict ----------------------------------------------------------------------


def _report(*deps: dict) -> dict:
    return {"dependencies": list(deps), "fixes": []}


def _vuln(vid: str, *aliases: str) -> dict:
    return {"id": vid, "aliases": list(aliases), "fix_versions": ["9.9"], "description": "..."}


def test_audit_fails_when_nothing_could_be_audited():
    """pip-audit itself says 'No known vulnerabilities found' and exits 0 here: that is not a pass."""
    module = audit_lock()
    report = _report(
        {"name": "six", "skip_reason": "Dependency not found on PyPI and could not be audited: six (1.17.0)"},
        {"name": "idna", "version": "3.20", "vulns": []},
    )
    code, lines = module.verdict(report, [])
    assert code == 2
    assert any(line.startswith("FAIL: could not audit 1 of 2 packages") for line in lines), lines


def test_audit_fails_on_a_vulnerability_without_an_exception_and_passes_with_one():
    module = audit_lock()
    report = _report({"name": "Example_Pkg", "version": "1.0", "vulns": [_vuln("PYSEC-2026-1", "GHSA-aaaa-bbbb-cccc")]})
    code, lines = module.verdict(report, [])
    assert code == 1 and any("VULNERABLE  Example_Pkg==1.0: PYSEC-2026-1" in line for line in lines), lines

    accepted = module.Accepted("GHSA-aaaa-bbbb-cccc", "example-pkg", "not reachable from driftloop", None)
    code, lines = module.verdict(report, [accepted])
    assert code == 0 and lines[-1].startswith("ok: audited 1 of 1 packages"), lines
    # An exception for another package does not cover it.
    other = module.Accepted("GHSA-aaaa-bbbb-cccc", "other", "...", None)
    assert module.verdict(report, [other])[0] == 1


def test_audit_exceptions_need_a_reason_and_expire(tmp_path):
    module = audit_lock()
    path = tmp_path / "audit-exceptions.toml"
    path.write_text(
        '[[exception]]\nid = "GHSA-1"\npackage = "a"\nreason = "why"\nexpires = 2026-01-31\n'
        '[[exception]]\nid = "GHSA-2"\npackage = "b"\nreason = ""\n'
        '[[exception]]\nid = "GHSA-3"\npackage = "c"\nreason = "why"\n'
    )
    entries_, problems = module.load_exceptions(path, dt.date(2026, 2, 1))
    assert [e.id for e in entries_] == ["GHSA-3"]
    assert any("GHSA-1 (a) expired on 2026-01-31" in p for p in problems), problems
    assert any("exception #2 lacks reason" in p for p in problems), problems
    # The recorded file itself parses without problems.
    assert module.load_exceptions(ROOT / "audit-exceptions.toml", dt.date.today())[1] == []


def test_audit_reads_local_builds_as_their_public_release():
    module = audit_lock()
    text = "torch==2.13.0+cpu \\\n    --hash=sha256:00\nsix==1.17.0 \\\n    --hash=sha256:11\n"
    assert (
        module.public_versions(text) == "torch==2.13.0 \\\n    --hash=sha256:00\nsix==1.17.0 \\\n    --hash=sha256:11\n"
    )
