"""`make audit`: pip-audit over requirements.lock, with recorded exceptions.

pip-audit reads the lock as it is (every requirement pinned with `==` and hashed:
`--require-hashes --disable-pip`, so nothing is resolved or downloaded) and asks a vulnerability
service about each pinned version. This wrapper turns its JSON report into one verdict:

- exit 0: every package was audited, and every known vulnerability is listed in
  audit-exceptions.toml with a reason (and, if the entry has one, an `expires` date not yet past);
- exit 1: a known vulnerability without a recorded exception;
- exit 2: a package could not be audited (no vulnerability service reachable, a package the
  service does not know), or pip-audit itself failed. pip-audit exits 0 in that case ("No known
  vulnerabilities found"), which must not pass for a clean audit.

A local version label is audited as its public release: torch==2.13.0+cpu as torch 2.13.0 (the
+cpu build is built from that release; the services know only public versions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LOCAL_LABEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*==[^\s+;\\]+)\+[A-Za-z0-9.]+", re.M)


@dataclass(frozen=True)
class Accepted:
    id: str
    package: str
    reason: str
    expires: dt.date | None


def load_exceptions(path: Path, today: dt.date) -> tuple[list[Accepted], list[str]]:
    """The recorded exceptions, and the problems with the file (missing reason, expired entry)."""
    if not path.exists():
        return [], []
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries, problems = [], []
    for number, raw in enumerate(data.get("exception", []), start=1):
        missing = [key for key in ("id", "package", "reason") if not str(raw.get(key, "")).strip()]
        if missing:
            problems.append(f"{path.name}: exception #{number} lacks {', '.join(missing)}")
            continue
        expires = raw.get("expires")
        if expires is not None and not isinstance(expires, dt.date):
            problems.append(f"{path.name}: exception {raw['id']}: expires must be a date (2027-01-31)")
            continue
        if expires is not None and expires < today:
            problems.append(f"{path.name}: exception {raw['id']} ({raw['package']}) expired on {expires}")
            continue
        entries.append(Accepted(raw["id"], _canonical(raw["package"]), raw["reason"].strip(), expires))
    return entries, problems


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_versions(lock_text: str) -> str:
    """The lock with local version labels dropped (name==1.2+cpu -> name==1.2), hashes kept."""
    return _LOCAL_LABEL.sub(r"\1", lock_text)


def run_pip_audit(pip_audit: str, lock: Path, extra: list[str]) -> tuple[int, dict | None, str]:
    with tempfile.TemporaryDirectory(prefix="driftloop-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(public_versions(lock.read_text(encoding="utf-8")), encoding="utf-8")
        report = Path(tmp) / "report.json"
        command = [
            pip_audit,
            "--requirement",
            str(requirements),
            "--require-hashes",
            "--disable-pip",
            "--progress-spinner",
            "off",
            "--format",
            "json",
            "--output",
            str(report),
            *extra,
        ]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        data = json.loads(report.read_text(encoding="utf-8")) if report.exists() and report.stat().st_size else None
        return proc.returncode, data, proc.stdout + proc.stderr


def verdict(data: dict, exceptions: list[Accepted]) -> tuple[int, list[str]]:
    """(exit code, lines to print) for pip-audit's JSON report."""
    lines: list[str] = []
    dependencies = data.get("dependencies", [])
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = [d for d in dependencies if not d.get("skip_reason")]
    failing, accepted, used = [], [], set()
    for dep in audited:
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            match = next(
                (e for e in exceptions if e.id in ids and e.package == _canonical(dep["name"])),
                None,
            )
            where = f"{dep['name']}=={dep['version']}: {vuln['id']}"
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            if match:
                used.add(match.id)
                accepted.append(f"  accepted  {where} ({match.reason})")
            else:
                failing.append(f"  VULNERABLE  {where} (fixed in: {fixes})")
    lines += failing + accepted
    for entry in exceptions:
        if entry.id not in used:
            lines.append(f"  note: exception {entry.id} ({entry.package}) matched nothing: remove it")
    for dep in skipped:
        lines.append(f"  NOT AUDITED  {dep['skip_reason']}")
    summary = (
        f"audited {len(audited)} of {len(dependencies)} packages: {len(failing)} vulnerabilities without "
        f"an exception, {len(accepted)} accepted in audit-exceptions.toml"
    )
    if skipped:
        lines.append(
            f"FAIL: could not audit {len(skipped)} of {len(dependencies)} packages (is a vulnerability "
            "service reachable? pip-audit's own 'No known vulnerabilities found' means nothing here)"
        )
        lines.append(summary)
        return 2, lines
    lines.append(("FAIL: " if failing else "ok: ") + summary)
    return (1 if failing else 0), lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pip-audit", default="pip-audit", help="the pip-audit executable")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--exceptions", type=Path, default=ROOT / "audit-exceptions.toml")
    args, extra = parser.parse_known_args(argv)

    exceptions, problems = load_exceptions(args.exceptions, dt.datetime.now(dt.UTC).date())
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        return 1
    code, data, output = run_pip_audit(args.pip_audit, args.lock, extra)
    if data is None:
        print(output.rstrip())
        print(f"FAIL: pip-audit exited {code} without a report: nothing was audited")
        return 2
    status, lines = verdict(data, exceptions)
    print(f"pip-audit over {args.lock.name} ({len(data.get('dependencies', []))} pinned packages)")
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
