"""The DVC adapter: every training set the loop builds becomes a DVC-tracked version.

The loop writes into a DVC repository of its own (``<state_dir>/datasets``, initialised without
git) so that a scheduled run never dirties the user's git checkout. Each version is cached and
pushed to the configured remote (a local folder by default, S3 at scale); its md5 is recorded on
the model version, and :meth:`DatasetStore.restore` brings back the exact file from that md5
through ``dvc pull`` alone.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import yaml

from driftloop.adapters.private import private_dir, restrict_tree, write_private
from driftloop.core.types import DataVersion
from driftloop.data.dataset import LABEL, TEXT, read_labelled

# DVC repos are not safe for concurrent writers in one process (its lock is per process).
_LOCK = threading.Lock()


class DatasetStore:
    def __init__(self, root: Path, remote_url: str | None = None, endpoint_url: str | None = None):
        self.root = Path(root).resolve()
        self.remote_url = remote_url or str(self.root.parent / "dvc-remote")
        # An S3-compatible server; DVC's S3 remote reads the keys from the environment.
        self.endpoint_url = endpoint_url

    def _remote_conf(self) -> dict:
        conf = {"url": self.remote_url}
        if self.endpoint_url and self.remote_url.startswith("s3://"):
            conf["endpointurl"] = self.endpoint_url
        return conf

    def _repo(self):
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        from dvc.repo import Repo

        if not (self.root / ".dvc").exists():
            private_dir(self.root)
            repo = Repo.init(str(self.root), no_scm=True)
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = False
                conf["core"]["autostage"] = False
        else:
            repo = Repo(str(self.root))
        # The remote follows the configuration: switching embedded <-> stack is configuration only.
        wanted = self._remote_conf()
        if repo.config["remote"].get("store") != wanted or repo.config["core"].get("remote") != "store":
            with repo.config.edit() as conf:
                conf["remote"]["store"] = wanted
                conf["core"]["remote"] = "store"
            repo = Repo(str(self.root))
        return repo

    def commit(self, frame: pd.DataFrame, name: str) -> DataVersion:
        """Write ``frame`` as ``<name>.csv``, ``dvc add`` and ``dvc push`` it; return its version."""
        with _LOCK:
            repo = self._repo()
            path = write_private(self.root / f"{name}.csv", _csv(frame), durable=False)
            repo.add(str(path))
            repo.push(targets=[str(path) + ".dvc"])
            self._restrict()
            meta = yaml.safe_load((self.root / f"{name}.csv.dvc").read_text())["outs"][0]
            return DataVersion(md5=meta["md5"], path=str(path), size=int(meta["size"]), rows=len(frame))

    def restore(self, md5: str, dest: Path) -> Path:
        """Bring back the exact file with this md5 (from the cache, else the remote) to ``dest``.
        A ``dest`` that already holds exactly that content is left as it is (monitor runs reuse it)."""
        dest = Path(dest)
        if dest.is_file() and hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest() == md5:
            return dest
        with _LOCK:
            repo = self._repo()
            name = f"restore-{md5}.csv"
            dvcfile = self.root / f"{name}.dvc"
            dvcfile.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": name}]}))
            try:
                repo.pull(targets=[str(dvcfile)])
                private_dir(dest.parent)
                write_private(dest, (self.root / name).read_bytes(), durable=False)
            finally:
                dvcfile.unlink(missing_ok=True)
                (self.root / name).unlink(missing_ok=True)
                self._restrict()
            return dest

    def texts(self, md5s: Iterable[str], scratch: Path) -> list[str]:
        """Every text of these versions, each restored by its md5 into ``scratch`` (from the cache,
        else the remote). A version that cannot be restored raises: a caller that keeps what the
        versions hold (log retention) must not go on as if it held nothing."""
        out: list[str] = []
        for md5 in sorted(set(md5s)):
            path = self.restore(md5, Path(scratch) / f"{md5}.csv")
            out.extend(read_labelled(path, TEXT, LABEL)[TEXT].tolist())
        return out

    # -- privacy: modes, and removing a version's bytes ------------------------------------------------

    def _local_remote(self) -> Path | None:
        return None if "://" in self.remote_url else Path(self.remote_url)

    def _restrict(self) -> None:
        """DVC writes its cache and the local remote itself (cache files 0444): take the group
        and other bits off everything it wrote (files 0600 or 0400, folders 0700)."""
        restrict_tree(self.root)
        remote = self._local_remote()
        if remote is not None:
            restrict_tree(remote)

    def object_paths(self, md5: str) -> list[Path]:
        """Where the bytes of the version ``md5`` are on this machine: the DVC cache and a local
        remote (DVC 3's ``files/md5/<2>/<30>`` layout)."""
        rel = Path("files") / "md5" / md5[:2] / md5[2:]
        places = [self.root / ".dvc" / "cache" / rel]
        remote = self._local_remote()
        if remote is not None:
            places.append(remote / rel)
        return [p for p in places if p.exists()]

    def remote_key(self, md5: str) -> tuple[str, str] | None:
        """The bucket and key of the version ``md5`` on an S3 remote (None: the remote is local)."""
        if not self.remote_url.startswith("s3://"):
            return None
        bucket, _, prefix = self.remote_url.removeprefix("s3://").partition("/")
        key = "/".join(p for p in (prefix.strip("/"), "files", "md5", md5[:2], md5[2:]) if p)
        return bucket, key

    def drop(self, md5: str) -> list[str]:
        """Delete the bytes of the version ``md5`` from the cache and a local remote (an S3 remote's
        object is the caller's: :meth:`remote_key`); what was deleted. After this the version
        cannot be restored: :meth:`restore` raises."""
        gone = []
        with _LOCK:
            for path in self.object_paths(md5):
                path.chmod(0o600)
                path.unlink()
                gone.append(str(path))
        return gone

    def workspace(self) -> dict[Path, str]:
        """The data files in the repository's folder and the md5 each one's ``.dvc`` file names
        (the last version committed under that name)."""
        out: dict[Path, str] = {}
        for dvcfile in sorted(self.root.glob("*.csv.dvc")):
            try:
                md5 = yaml.safe_load(dvcfile.read_text())["outs"][0]["md5"]
            except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
                continue
            out[self.root / dvcfile.name.removesuffix(".dvc")] = md5
        return out


def _csv(frame: pd.DataFrame) -> bytes:
    """The bytes :func:`driftloop.data.dataset.write_labelled` writes."""
    return frame[[TEXT, LABEL]].to_csv(index=False).encode()
