"""The routing and the classifier of one registered model, read from an MLflow tracking server's
REST API with the standard library: what a serving process needs, without importing MLflow.

MLflow's client costs a serving process about a third of its memory and a few milliseconds of
the GIL on every poll; the replica needs three calls of the server's REST API (MLflow 3):

- ``GET /api/2.0/mlflow/registered-models/get``: the aliases and the tags, so the champion and
  the rollout state, in one call (what :meth:`RestModelSource.routing` polls);
- ``GET /api/2.0/mlflow/model-versions/get-download-uri``: where a version's model lives
  (``mlflow-artifacts:/…`` when the server proxies the artifacts, ``mlflow server``'s default);
- ``GET /api/2.0/mlflow/model-versions/get``: the version's tags, its signature among them;
- ``GET /api/2.0/mlflow-artifacts/artifacts/<path>``: its ``MLmodel`` (which names the model
  folder), the folder's ``MANIFEST.json`` and the files it lists, loaded only once the signature
  and every file check out (:class:`~driftloop.adapters.registry.trust.ModelTrust`; no pickle).

A version whose artifacts the server does not proxy (an ``s3://`` or local download URI) is
loaded by the MLflow client instead (:class:`~driftloop.adapters.registry.facade.Registry`),
imported only then. The error policy is the package's: "no such model" is a routing without a
champion; a failed connection is :class:`~driftloop.core.errors.ServerUnreachable` naming the
tracking URL; any other error answer is :class:`~driftloop.core.errors.RegistryError`
(``transient`` for a 5xx or a 429).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.adapters.registry.names import (
    CHAMPION,
    SIGNATURE_TAG,
    TRACKING_SERVER,
    parse_monitor_status,
    parse_rollout_state,
)
from driftloop.adapters.registry.trust import ModelTrust, manifest_files, model_artifact_path
from driftloop.core.errors import RegistryError, ServerUnreachable
from driftloop.core.types import ModelRef, Routing
from driftloop.models.families import TextClassifier
from driftloop.models.persist import MANIFEST

if TYPE_CHECKING:
    from driftloop.adapters.registry.facade import Registry

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED_SCHEME = "mlflow-artifacts"
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_CHUNK = 1 << 20


def is_http(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is a tracking server this source can talk to."""
    return tracking_uri.startswith(("http://", "https://"))


def _auth_header() -> str | None:
    # The variables MLflow's own client reads, so a server behind auth needs nothing new.
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return f"Bearer {token}"
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


class _ErrorAnswer(Exception):
    """The server answered with an error status: its HTTP status, MLflow error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RestModelSource:
    """One registered model on an MLflow tracking server (``http(s)://``), read over its REST API.

    Implements serving's ``ModelSource``: :meth:`routing` and :meth:`load`.
    """

    def __init__(self, tracking_uri: str, model_name: str, *, timeout_s: float = 10.0, trust: ModelTrust | None = None):
        if not is_http(tracking_uri):
            raise ValueError(f"the REST source needs an http(s) tracking URI, not {tracking_uri!r}")
        self.tracking_uri = tracking_uri.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.trust = trust if trust is not None else ModelTrust.from_environment()
        self._client: Registry | None = None

    # -- the two calls serving makes ----------------------------------------------------------
    def routing(self) -> Routing:
        """The champion and the rollout state in one call; no champion when the model does not exist."""
        try:
            body = self._get_json(f"{API}/registered-models/get", {"name": self.model_name}, "reading the routing")
        except _ErrorAnswer as exc:
            if exc.code == _NOT_FOUND:
                return Routing(None)
            raise self._registry_error(f"reading the routing of {self.model_name!r}", exc) from None
        model = body.get("registered_model") or {}
        aliases = {a.get("alias"): a.get("version") for a in model.get("aliases") or []}
        tags = {t.get("key"): t.get("value") for t in model.get("tags") or []}
        version = aliases.get(CHAMPION)
        champion = ModelRef(self.model_name, str(version)) if version is not None else None
        return Routing(champion, parse_rollout_state(tags, self.tracking_uri), parse_monitor_status(tags))

    def load(self, ref: ModelRef) -> TextClassifier:
        """The classifier registered as ``ref``, once its signature and files check out; a missing
        version raises RegistryError, a refused one ModelRefused."""
        action = f"loading {ref}"
        query = {"name": ref.name, "version": ref.version}
        try:
            version = self._get_json(f"{API}/model-versions/get", query, action).get("model_version") or {}
            where = self._get_json(f"{API}/model-versions/get-download-uri", query, action)["artifact_uri"]
        except _ErrorAnswer as exc:
            raise self._registry_error(action, exc) from None
        except KeyError:
            raise RegistryError(
                f"MLflow at {self.tracking_uri}: {action}: no download URI", url=self.tracking_uri
            ) from None
        signature = {t.get("key"): t.get("value") for t in version.get("tags") or []}.get(SIGNATURE_TAG)
        parts = urllib.parse.urlsplit(where)
        if parts.scheme != PROXIED_SCHEME:
            return self._load_with_mlflow(ref, where)
        # mlflow-artifacts:/path on this server; mlflow-artifacts://host:port/path on another.
        base = f"{urllib.parse.urlsplit(self.tracking_uri).scheme}://{parts.netloc}" if parts.netloc else None
        model_dir = parts.path.strip("/")
        try:
            mlmodel = self._get_bytes(self._artifact(model_dir, "MLmodel"), base, action)
            files_dir = f"{model_dir}/{model_artifact_path(mlmodel, str(ref), self.tracking_uri)}"
            manifest = self._get_bytes(self._artifact(files_dir, MANIFEST), base, action)
            # An unsigned or foreign manifest is refused before any file it lists is fetched.
            self.trust.check_signature(manifest, signature, str(ref), self.tracking_uri)
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp)
                (local / MANIFEST).write_bytes(manifest)
                # Exactly the files the manifest lists (names checked to stay inside the folder).
                for relative in manifest_files(manifest, str(ref), self.tracking_uri):
                    target = local / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as file:
                        self._download(self._artifact(files_dir, relative), base, action, file)
                return self.trust.load(local, signature, str(ref), self.tracking_uri)
        except _ErrorAnswer as exc:
            raise self._registry_error(action, exc) from None

    # -- HTTP -----------------------------------------------------------------------------------
    @staticmethod
    def _artifact(model_dir: str, relative: str) -> str:
        return f"{ARTIFACTS_API}/{urllib.parse.quote(f'{model_dir}/{relative}')}"

    def _open(self, path: str, query: dict[str, str] | None, base: str | None, action: str) -> Any:
        url = f"{base or self.tracking_uri}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310  http(s), checked in __init__
        auth = _auth_header()
        if auth:
            request.add_header("Authorization", auth)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310  as above
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            try:
                err = json.loads(raw)
            except ValueError:
                err = {}
            if not isinstance(err, dict):
                err = {}
            raise _ErrorAnswer(
                exc.code, str(err.get("error_code", "")), str(err.get("message") or raw[:200] or exc.reason)
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from exc

    def _get_bytes(self, path: str, base: str | None, action: str) -> bytes:
        with self._open(path, None, base, action) as resp:
            return resp.read()

    def _get_json(self, path: str, query: dict[str, str], action: str) -> dict[str, Any]:
        with self._open(path, query, None, action) as resp:
            raw = resp.read()
        try:
            body = json.loads(raw)
        except ValueError:
            raise RegistryError(
                f"MLflow at {self.tracking_uri}: {action}: the answer is not JSON", url=self.tracking_uri
            ) from None
        if not isinstance(body, dict):
            raise RegistryError(f"MLflow at {self.tracking_uri}: {action}: unexpected answer", url=self.tracking_uri)
        return body

    def _download(self, path: str, base: str | None, action: str, file: Any) -> None:
        with self._open(path, None, base, action) as resp:
            while chunk := resp.read(_CHUNK):
                file.write(chunk)

    def _unreachable(self, exc: BaseException) -> ServerUnreachable:
        reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError):
            why = "timed out"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror[:1].lower() + reason.strerror[1:]
        else:
            why = str(reason) or type(reason).__name__
        return ServerUnreachable(f"cannot reach {TRACKING_SERVER} at {self.tracking_uri}: {why}", url=self.tracking_uri)

    def _registry_error(self, action: str, exc: _ErrorAnswer) -> RegistryError:
        return RegistryError(
            f"MLflow at {self.tracking_uri}: {action} failed: {exc.message}",
            url=self.tracking_uri,
            transient=exc.status >= 500 or exc.status == 429,
        )

    # -- artifacts the server does not proxy --------------------------------------------------
    def _load_with_mlflow(self, ref: ModelRef, where: str) -> TextClassifier:
        if self._client is None:
            log.warning(
                "%s is at %s, which %s does not serve: loading it with the MLflow client",
                ref,
                where,
                self.tracking_uri,
            )
            from driftloop.adapters.registry.facade import Registry

            self._client = Registry(self.tracking_uri, self.model_name, trust=self.trust)
        return self._client.load(ref)
