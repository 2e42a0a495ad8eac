"""Container images by digest: list the references that are not, and pin them where a registry answers.

    python tools/pin_images.py --check   # every image reference without @sha256 (no network); exit 1 if any
    python tools/pin_images.py --pin     # resolve each tag to its digest and rewrite the files in place

The files: infra/docker-compose.yml, infra/k8s/*.yaml and the Dockerfile (its FROM lines and its
`# syntax=` frontend image). A pinned reference keeps its tag for the reader and adds the digest,
which is what the container runtime pulls: `postgres:16.6-bookworm@sha256:…`.

`--pin` asks a registry, so it must run where one is reachable, with one of these on PATH (tried
in this order, or chosen with --resolver): `crane digest`, `skopeo inspect --raw` (the digest is
the sha256 of the manifest's bytes), `docker buildx imagetools inspect`. For a multi-platform image
the digest is the image index's, so every platform stays pinned.

The images this project builds (driftloop-serving, driftloop-worker) are not pinned here: compose
builds them locally (`--build`), and on Kubernetes their digest is known only after the push; it
goes into the manifests through kustomize (`images:` with `digest:`) and the work pool's job
template (docs/security.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILT_HERE = ("driftloop-serving", "driftloop-worker")
RESOLVERS = ("crane", "skopeo", "docker")

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# `image: ref` in compose and Kubernetes YAML (quoted or not); template placeholders are skipped.
_YAML_IMAGE = re.compile(r"^(?P<pre>\s*(?:-\s+)?image:\s*)(?P<q>[\"']?)(?P<ref>[^\s\"'#{}]+)(?P=q)")
_FROM = re.compile(r"^(?P<pre>FROM\s+(?:--platform=\S+\s+)?)(?P<ref>\S+)(?P<rest>.*)$", re.I)
_SYNTAX = re.compile(r"^(?P<pre>#\s*syntax\s*=\s*)(?P<ref>\S+)")
# The flow-run image in the work pool's job template (JSON inside a ConfigMap): `"image": "…"`
# (fixed in the Job's manifest) or a variable's `"default": "…"`.
_JSON_DEFAULT = re.compile(r"^\s*\"(?:default|image)\":\s*\"(?P<ref>(?:[^\"/\s]+/)*driftloop-[a-z-]+[:@][^\"\s]+)\"")
_STAGE = re.compile(r"^FROM\s+.*\s+AS\s+(\S+)\s*$", re.I)


@dataclass(frozen=True)
class Reference:
    path: str  # relative to the root
    line: int  # 1-based
    ref: str

    @property
    def pinned(self) -> bool:
        return "@sha256:" in self.ref

    @property
    def built_here(self) -> bool:
        name = self.ref.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
        return name in BUILT_HERE


def files(root: Path) -> list[Path]:
    return [
        root / "infra" / "docker-compose.yml",
        *sorted((root / "infra" / "k8s").glob("*.yaml")),
        root / "Dockerfile",
    ]


def references(root: Path = ROOT) -> list[Reference]:
    """Every image reference in the files, in file and line order."""
    found = []
    for path in files(root):
        rel = path.relative_to(root).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        stages = {m.group(1).lower() for line in lines if (m := _STAGE.match(line))}
        for number, line in enumerate(lines, start=1):
            if path.name == "Dockerfile":
                m = _FROM.match(line) or (_SYNTAX.match(line) if number == 1 else None)
                if m and m.group("ref").lower() not in stages and m.group("ref") != "scratch":
                    found.append(Reference(rel, number, m.group("ref")))
            elif m := _YAML_IMAGE.match(line) or _JSON_DEFAULT.match(line):
                found.append(Reference(rel, number, m.group("ref")))
    return found


def unpinned(root: Path = ROOT) -> list[Reference]:
    """The references to pull from a registry that name a tag only (no digest)."""
    return [r for r in references(root) if not r.pinned and not r.built_here]


def resolve(ref: str, resolver: str) -> str:
    """The registry's digest (sha256:…) for one tag."""
    if resolver == "crane":
        out = subprocess.run(["crane", "digest", ref], capture_output=True, text=True, check=True).stdout.strip()
    elif resolver == "skopeo":
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker://{ref}"], capture_output=True, check=True).stdout
        out = "sha256:" + hashlib.sha256(raw).hexdigest()
    elif resolver == "docker":
        text = subprocess.run(
            ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out = json.loads(text)["digest"]
    else:
        raise ValueError(f"unknown resolver {resolver!r}")
    if not _DIGEST.match(out):
        raise RuntimeError(f"{resolver} answered {out!r} for {ref}, not a sha256 digest")
    return out


def pick_resolver(wanted: str | None) -> str:
    for name in [wanted] if wanted else RESOLVERS:
        if shutil.which(name):
            return name
    raise SystemExit(f"none of {wanted or ', '.join(RESOLVERS)} is on PATH: install crane or skopeo")


def pin(root: Path, resolver: str) -> list[tuple[Reference, str]]:
    """Rewrite every unpinned reference as ref@digest; returns what was pinned."""
    todo = unpinned(root)
    digests = {ref: resolve(ref, resolver) for ref in sorted({r.ref for r in todo})}
    done = []
    for path in {r.path for r in todo}:
        file = root / path
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
        for r in (r for r in todo if r.path == path):
            old = lines[r.line - 1]
            new = old.replace(r.ref, f"{r.ref}@{digests[r.ref]}", 1)
            if new == old:
                raise RuntimeError(f"{r.path}:{r.line}: {r.ref} not found on its line")
            lines[r.line - 1] = new
            done.append((r, digests[r.ref]))
        file.write_text("".join(lines), encoding="utf-8")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="list the unpinned references; exit 1 if any")
    mode.add_argument("--pin", action="store_true", help="resolve and rewrite them (needs a registry)")
    parser.add_argument("--resolver", choices=RESOLVERS, help="the tool that asks the registry")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.pin:
        for r, digest in pin(args.root, pick_resolver(args.resolver)):
            print(f"{r.path}:{r.line}: {r.ref} -> {r.ref}@{digest}")
    left = unpinned(args.root)
    for r in left:
        print(f"{r.path}:{r.line}: {r.ref} (tag only, no digest)")
    built = [r for r in references(args.root) if r.built_here]
    for r in built:
        print(f"{r.path}:{r.line}: {r.ref} (built by this project: its digest comes with the push)")
    print(f"{len(left)} image references without a digest" if left else "every pulled image is pinned by digest")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
