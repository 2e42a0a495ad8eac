"""The real stack on one machine, without Docker: PostgreSQL, SeaweedFS (S3), an MLflow tracking
server on PostgreSQL with its artifacts in S3, a Prefect server on PostgreSQL, a Prefect process
worker, and Prometheus scraping the serving app. Every server binds to 127.0.0.1.

``up`` is safe to run twice: a healthy server is left alone, data folders (all under
``stack.dir``) are initialised once and kept. ``down`` stops what ``up`` started, in reverse.
Every server asks who you are: MLflow runs its basic-auth app (a user per component),
SeaweedFS checks JWTs on its filer and volume ports and S3 keys per component, Prefect's API asks
for an auth string, PostgreSQL has a login role per database. The secrets (:data:`SECRET_SPECS`)
come from the environment, else from ``<dir>/secrets.env``; missing ones are generated once into
that file (mode 600, outside git) so that a restart finds the same keys. This module manages
processes only: it never imports Prefect or MLflow (it calls their REST APIs with httpx), so the
CLI can call it before either is configured.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import secrets as _secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from driftloop.adapters import s3
from driftloop.config.settings import Settings, StackSettings
from driftloop.core.errors import RunFailed
from driftloop.ops import procs
from driftloop.ops.prefect_server import CLIENT_RETRIES

ORDER = ["postgres", "s3", "mlflow", "prefect", "worker", "prometheus"]
WAVES = [["postgres", "s3"], ["mlflow", "prefect"], ["worker", "prometheus"]]
# MLflow's and Prefect's, and driftloop's own (history.backend: postgres keeps the champion history
# and the trigger ledger there; adapters.history_pg creates its tables on first use).
DATABASES = ("mlflow", "prefect", "driftloop")
SYSTEM_PACKAGES = {"postgres": "postgresql", "prometheus": "prometheus"}
INSTALL_SCRIPT = Path(__file__).resolve().parents[3] / "infra" / "install-system-deps.sh"


class StackError(RunFailed, RuntimeError):
    pass


# The components that reach the stack as clients, each with identities of its own (an MLflow user,
# S3 keys): what each may do is in docs/security.md ("Credentials on the stack").
IDENTITIES = ("training", "serving", "monitor")
# The variable naming which of them a driftloop process acts as (export_client_env); training by
# default: the CLI's loop commands train, register and promote.
IDENTITY_ENV = "DRIFTLOOP_STACK_IDENTITY"


def _token() -> str:
    return _secrets.token_urlsafe(24)


def _access_key() -> str:
    return "dl" + _secrets.token_hex(8)


def _secret_key() -> str:
    return _secrets.token_urlsafe(30)


# Every secret of a stack: the variable (in the environment or <dir>/secrets.env) and how a missing
# one is made. Nothing here is ever written to git, a command line, a tag, a param or a log.
SECRET_SPECS: dict[str, Callable[[], str]] = {
    # PostgreSQL: one login role per database (the superuser has no password: set-up only, over
    # the socket in the data folder). DRIFTLOOP_PG_PASSWORD is the history's (history.password_env).
    "DRIFTLOOP_PG_PASSWORD": _token,
    "DRIFTLOOP_PG_MLFLOW_PASSWORD": _token,
    "DRIFTLOOP_PG_PREFECT_PASSWORD": _token,
    # SeaweedFS: the JWT keys that the volume servers and the filer check on every HTTP write and
    # read, and S3 keys per identity (admin: bucket set-up only; mlflow: the MLflow server's
    # artifact proxy).
    "DRIFTLOOP_S3_JWT_VOLUME_KEY": _token,
    "DRIFTLOOP_S3_JWT_FILER_KEY": _token,
    **{
        f"DRIFTLOOP_S3_{who.upper()}_{part}": make
        for who in ("admin", "mlflow", *IDENTITIES)
        for part, make in (("ACCESS_KEY", _access_key), ("SECRET_KEY", _secret_key))
    },
    # MLflow's basic-auth app: the admin (set-up only), one user per identity, and the key that
    # signs its session cookies and CSRF tokens.
    "DRIFTLOOP_MLFLOW_FLASK_SECRET": _token,
    **{f"DRIFTLOOP_MLFLOW_{who.upper()}_PASSWORD": _token for who in ("admin", *IDENTITIES)},
    # Prefect: the one string its API asks of every client (the worker, the CLI, the UI).
    "DRIFTLOOP_PREFECT_AUTH_STRING": lambda: "driftloop:" + _token(),
}


@dataclass(frozen=True)
class Secrets:
    """The secrets of one stack, by variable name (:data:`SECRET_SPECS`)."""

    values: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    @property
    def pg_password(self) -> str:
        """The ``driftloop`` role's (the history's database)."""
        return self.values["DRIFTLOOP_PG_PASSWORD"]

    @property
    def s3_access_key(self) -> str:
        """The S3 admin's access key (set-up only)."""
        return self.values["DRIFTLOOP_S3_ADMIN_ACCESS_KEY"]

    @property
    def s3_secret_key(self) -> str:
        return self.values["DRIFTLOOP_S3_ADMIN_SECRET_KEY"]

    def s3_keys(self, who: str) -> tuple[str, str]:
        prefix = f"DRIFTLOOP_S3_{who.upper()}"
        return self.values[f"{prefix}_ACCESS_KEY"], self.values[f"{prefix}_SECRET_KEY"]

    def mlflow_password(self, who: str) -> str:
        return self.values[f"DRIFTLOOP_MLFLOW_{who.upper()}_PASSWORD"]

    @property
    def prefect_auth_string(self) -> str:
        return self.values["DRIFTLOOP_PREFECT_AUTH_STRING"]

    def env(self) -> dict[str, str]:
        return dict(self.values)


@dataclass
class Stack:
    """Paths, URLs and secrets of one stack; :func:`up` and :func:`down` act on it."""

    cfg: StackSettings
    project_root: Path
    serving_port: int = 8000
    secrets: Secrets | None = None
    started: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        d = Path(self.cfg.dir)
        return (d if d.is_absolute() else self.project_root / d).resolve()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # URLs a client needs (printed by `stack up`, used by configs/stack.yaml).
    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.prefect_port}/api"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.prometheus_port}"

    def pg_login(self, db: str) -> tuple[str, str]:
        """The login role of database ``db`` and its password (the only role its pg_hba line admits)."""
        assert self.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
        if db == "driftloop":
            return self.cfg.postgres_user, self.secrets.pg_password
        return db, self.secrets[f"DRIFTLOOP_PG_{db.upper()}_PASSWORD"]

    def database_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        user, password = self.pg_login(db)
        return f"{driver}://{user}:{quote(password, safe='')}@127.0.0.1:{self.cfg.postgres_port}/{db}"

    @property
    def history_dsn(self) -> str:
        """The ``history.dsn`` of this stack's ``driftloop`` database: no password in it (that is
        ``DRIFTLOOP_PG_PASSWORD``, in :meth:`client_env`)."""
        return f"postgresql://{self.cfg.postgres_user}@127.0.0.1:{self.cfg.postgres_port}/driftloop"

    def urls(self) -> dict[str, str]:
        return {
            "postgres": f"postgresql://{self.cfg.postgres_user}@127.0.0.1:{self.cfg.postgres_port}",
            "s3": self.s3_url,
            "mlflow": self.mlflow_url,
            "prefect": self.prefect_api_url.removesuffix("/api"),
            "worker": f"work pool '{self.cfg.work_pool}'",
            "prometheus": self.prometheus_url,
        }

    def client_env(self, identity: str = "training") -> dict[str, str]:
        """What a driftloop process acting as ``identity`` (:data:`IDENTITIES`) needs in its
        environment to use this stack: its S3 keys, its MLflow user, the history's PostgreSQL
        password; the Prefect auth string for those that run flows (not serving)."""
        assert self.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
        if identity not in IDENTITIES:
            raise StackError(f"unknown stack identity {identity!r}; known: {', '.join(IDENTITIES)}")
        access, secret = self.secrets.s3_keys(identity)
        env = {
            "DRIFTLOOP_PG_PASSWORD": self.secrets.pg_password,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_TRACKING_USERNAME": identity,
            "MLFLOW_TRACKING_PASSWORD": self.secrets.mlflow_password(identity),
        }
        if identity != "serving":
            env["PREFECT_API_AUTH_STRING"] = self.secrets.prefect_auth_string
        return env


def from_settings(settings: Settings, project_root: Path | None = None) -> Stack:
    return Stack(settings.stack, (project_root or Path.cwd()).resolve(), serving_port=settings.serving.port)


# ---------------------------------------------------------------- secrets


def _private(path: Path) -> None:
    """Mode 600 for a file of secrets, whatever it had (a copy, an editor, an umask): only its
    owner may read it."""
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def load_secrets(stack: Stack, create: bool = True) -> Secrets:
    """Each secret from the environment, else ``<dir>/secrets.env``; else (``create``) a new random
    one, saved there with the others (a stack made by an older release gets the new ones added)."""
    path = stack.path("secrets.env")
    saved: dict[str, str] = {}
    if path.exists():
        _private(path)
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and value and not key.startswith("#"):
                saved[key.strip()] = value.strip()
    values = {name: os.environ.get(name) or saved.get(name, "") for name in SECRET_SPECS}
    missing = [k for k, v in values.items() if not v]
    if missing and not create:
        raise StackError(f"no stack secrets: set {', '.join(missing)} or run `driftloop stack up` ({path})")
    if missing:
        for name in missing:
            values[name] = SECRET_SPECS[name]()
        stack.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode applies to a new file only: an existing one keeps its own
        with os.fdopen(fd, "w") as fh:
            fh.write("# Generated by `driftloop stack up`; never commit. The environment overrides these.\n")
            fh.writelines(f"{k}={v}\n" for k, v in (saved | values).items())
    stack.secrets = Secrets(values)
    return stack.secrets


def export_client_env(settings: Settings, project_root: Path | None = None) -> bool:
    """Put the local stack's credentials for one identity (``DRIFTLOOP_STACK_IDENTITY``: training,
    the default, serving or monitor) into this process's environment where the configuration
    points at the stack and they are not set (the environment's own values win): the S3 keys for
    an ``s3://`` DVC remote or ``logs.backend: s3``, the PostgreSQL password for
    ``history.backend: postgres``, the MLflow user for a tracking server on loopback, the Prefect
    auth string for a Prefect API on loopback.
    True when something was exported."""
    uses_s3 = (settings.storage.dvc_remote or "").startswith("s3://") or settings.logs.backend == "s3"
    on_stack = uses_s3 or settings.history.backend == "postgres"
    if not on_stack:
        return False
    stack = from_settings(settings, project_root)
    if not stack.path("secrets.env").exists():
        return False
    load_secrets(stack, create=False)
    identity = os.environ.get(IDENTITY_ENV) or "training"
    env = stack.client_env(identity)
    password = env.pop("DRIFTLOOP_PG_PASSWORD")
    groups = [
        (uses_s3, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")),
        (
            settings.tracking_uri.startswith("http://127.0.0.1"),
            ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
        ),
        ((settings.prefect.api_url or "").startswith("http://127.0.0.1"), ("PREFECT_API_AUTH_STRING",)),
    ]
    exported: dict[str, str] = {}
    for wanted, keys in groups:
        # a pair (user and password, access and secret key) comes from one place or not at all
        if wanted and not any(os.environ.get(k) for k in keys[:2]):
            exported |= {k: env[k] for k in keys if k in env}
    if settings.history.backend == "postgres" and not os.environ.get(settings.history.password_env):
        exported[settings.history.password_env] = password
    for key, value in exported.items():
        os.environ.setdefault(key, value)
    return bool(exported)


# ---------------------------------------------------------------- processes


def _pidfile(stack: Stack, name: str) -> Path:
    return stack.path("run", f"{name}.pid")


def _read_pid(stack: Stack, name: str) -> int | None:
    try:
        pid = int(_pidfile(stack, name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) else None


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    stack.path("run").mkdir(parents=True, exist_ok=True)
    stack.path("logs").mkdir(parents=True, exist_ok=True)
    with open(stack.path("logs", f"{name}.log"), "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ | (env or {}),
            cwd=str(cwd or stack.project_root),
            start_new_session=True,
        )
    _pidfile(stack, name).write_text(str(proc.pid))
    return proc.pid


def _kill_group(pid: int, timeout_s: float = 15.0) -> None:
    procs.stop_group(pid, timeout_s)
    # The service is this process's child when it started it (`up` then `down` in one process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait(
    check: Callable[[], bool], what: str, timeout_s: float, log: Path | None = None, pid: int | None = None
) -> float:
    # A readiness wait for a service just started, with its own timeout: not the server-call retry
    # policy (driftloop.core.retry), which is for calls to a server that was up.
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        if pid is not None and not procs.alive(pid):
            break
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    state = "exited" if pid is not None and not procs.alive(pid) else f"not healthy after {timeout_s:.0f} s"
    raise StackError(f"{what} {state}; log {log}:\n{tail}")


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- system packages


def find_postgres_bin() -> Path:
    """Debian keeps initdb/pg_ctl under /usr/lib/postgresql/<major>/bin, off the PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise StackError("PostgreSQL is not installed (Debian package postgresql): run `make system-deps`")


def missing_system_packages(services: Iterable[str]) -> list[str]:
    out = []
    for name in services:
        if name == "postgres":
            try:
                find_postgres_bin()
            except StackError:
                out.append(SYSTEM_PACKAGES[name])
        elif name == "prometheus" and not shutil.which("prometheus"):
            out.append(SYSTEM_PACKAGES[name])
    return out


def install_system_packages(packages: list[str]) -> None:
    """Install Debian packages with the project's script (it keeps their services from starting)."""
    if not packages:
        return
    result = subprocess.run(["bash", str(INSTALL_SCRIPT), *packages], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"installing {packages} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


# ---------------------------------------------------------------- PostgreSQL


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the Debian 'postgres' user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def superuser_connection(stack: Stack, db: str = "postgres") -> Any:  # a psycopg2 connection
    """The set-up connection: the superuser over the socket in the data folder (mode 700: only
    the user PostgreSQL runs as, and root, reach it). Over TCP the superuser cannot log in."""
    import psycopg2

    return psycopg2.connect(
        host=str(stack.path("postgres")),
        port=stack.cfg.postgres_port,
        user=stack.cfg.postgres_superuser,
        dbname=db,
        connect_timeout=2,
    )


def _pg_ready(stack: Stack) -> bool:
    import psycopg2

    try:
        conn = superuser_connection(stack)
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


def pg_hba(stack: Stack) -> str:
    """Who may log in where: the superuser over the socket only; over TCP each database admits its
    own role with a password (SCRAM) and nobody else; anything not listed is refused."""
    lines = [
        "# Written by `driftloop stack up` at every start; edits are overwritten.",
        f"local all {stack.cfg.postgres_superuser} trust",
    ]
    for db in DATABASES:
        user, _ = stack.pg_login(db)
        lines.append(f"host {db} {user} 127.0.0.1/32 scram-sha-256")
    return "\n".join(lines) + "\n"


def _pg_start(stack: Stack) -> None:
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    bindir = find_postgres_bin()
    data = stack.path("postgres")
    if os.geteuid() == 0:
        # The postgres user must reach the data folder: every parent needs o+x.
        for parent in [data.parent, *data.parent.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise StackError(
                    f"{parent} is not searchable by the postgres user (mode {oct(mode & 0o777)}); "
                    f"choose a stack.dir under a world-searchable folder"
                )
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        try:
            subprocess.run(
                [
                    *_as_postgres_user(),
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    stack.cfg.postgres_superuser,
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed: {exc.stderr[-2000:]}") from None
    hba = data / "pg_hba.conf"
    hba.write_text(pg_hba(stack))
    if os.geteuid() == 0:
        shutil.chown(hba, "postgres", "postgres")
    stack.path("logs").mkdir(parents=True, exist_ok=True)
    log = stack.path("logs", "postgres.log")
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {stack.cfg.postgres_port} -c unix_socket_directories={data} "
        f"-c max_connections=200"
    )
    result = subprocess.run(
        [
            *_as_postgres_user(),
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        raise StackError(f"PostgreSQL did not start: {result.stderr.strip()}\n{tail}")
    _wait(lambda: _pg_ready(stack), "PostgreSQL", 30, log)
    _ensure_databases(stack)


def _ensure_databases(stack: Stack) -> None:
    """Each database with its own login role (its owner; the password from the secrets, set again
    at every `up`, which is how a rotated one takes effect); only that role may connect to it."""
    import psycopg2
    from psycopg2 import sql

    try:
        conn = superuser_connection(stack)
    except psycopg2.OperationalError as exc:
        if "does not exist" in str(exc):
            raise StackError(
                f"the stack's PostgreSQL ({stack.path('postgres')}) was initialised before each database had "
                f"its own role (its superuser is not {stack.cfg.postgres_superuser!r}); stop the stack, move "
                f"that folder away and run `driftloop stack up` again (MLflow's and Prefect's data start afresh)"
            ) from None
        raise
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for db in DATABASES:
                user, password = stack.pg_login(db)
                role = sql.Identifier(user)
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
                    (password,),
                )
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), role))
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    finally:
        conn.close()


def _pg_stop(stack: Stack) -> None:
    data = stack.path("postgres")
    if not (data / "postmaster.pid").exists():
        return
    subprocess.run(
        [*_as_postgres_user(), str(find_postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        capture_output=True,
        text=True,
        check=False,
    )


# ---------------------------------------------------------------- SeaweedFS


def _s3_client(stack: Stack) -> Any:  # a boto3 S3 client (boto3 is untyped: see s3.client)
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    return s3.client(stack.s3_url, stack.secrets.s3_access_key, stack.secrets.s3_secret_key)


def _s3_ready(stack: Stack) -> bool:
    return s3.ready(_s3_client(stack))


# weed mini runs a master, a volume server, a filer and the S3 gateway, each with an HTTP and a
# gRPC port. They move together with s3_port, so a second stack (the tests') can run beside one on
# the defaults; WebDAV, the admin UI and the Iceberg/Lance catalogs are not needed and stay off.
_WEED_PORTS = {
    "master.port": 9333,
    "master.port.grpc": 19333,
    "volume.port": 9340,
    "volume.port.grpc": 19340,
    "filer.port": 8888,
    "filer.port.grpc": 18888,
    "s3.port": 8333,
    "s3.port.grpc": 18333,
    "admin.port": 23646,
    "admin.port.grpc": 33646,
}


def _weed_ports(s3_port: int) -> list[str]:
    offset = s3_port - _WEED_PORTS["s3.port"]
    return [f"-{flag}={port + offset}" for flag, port in _WEED_PORTS.items()] + [
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


# What each S3 identity may do, by key prefix of the bucket (SeaweedFS's identity actions: Read,
# Write (put and delete), List, per bucket or per "bucket/prefix*"; List is per bucket only).
# mlflow/ holds the model files, written only through the MLflow server's artifact proxy (which
# checks the MLflow user); dvc/ the training sets; logs/ the prediction and feedback logs.
S3_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "mlflow": {"Read": ("mlflow/",), "Write": ("mlflow/",)},
    "training": {"Read": ("dvc/", "logs/", "mlflow/"), "Write": ("dvc/", "logs/")},
    "serving": {"Read": ("mlflow/", "logs/"), "Write": ("logs/",)},
    "monitor": {"Read": ("dvc/", "logs/", "mlflow/")},
}


def s3_identities(stack: Stack) -> dict[str, Any]:
    """SeaweedFS's S3 identities (its -s3.config file): the admin for the bucket set-up, the MLflow
    server's artifact proxy, and one per client identity, each limited to its prefixes."""
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    bucket, secrets = stack.cfg.bucket, stack.secrets

    def creds(who: str) -> list[dict[str, str]]:
        access, secret = secrets.s3_keys(who)
        return [{"accessKey": access, "secretKey": secret}]

    identities = [
        {"name": "admin", "credentials": creds("admin"), "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    ]
    for who, grants in S3_GRANTS.items():
        actions = [f"{action}:{bucket}/{prefix}*" for action, prefixes in grants.items() for prefix in prefixes]
        identities.append({"name": who, "credentials": creds(who), "actions": [*actions, f"List:{bucket}"]})
    return {"identities": identities}


def _s3_start(stack: Stack) -> None:
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        weed = Path(shutil.which("weed") or "weed")
    data = stack.path("seaweedfs")
    data.mkdir(parents=True, exist_ok=True)
    keys = stack.path("seaweedfs", "s3.json")
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(s3_identities(stack), fh)
    pid = _spawn(
        stack,
        "s3",
        [
            str(weed),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={keys}",
            *_weed_ports(stack.cfg.s3_port),
        ],
        # SeaweedFS reads security.toml's keys from WEED_* variables too: the volume servers then
        # take only writes and reads with a JWT the master signed, the filer's HTTP port only those
        # with one the S3 gateway signed.
        env={
            "WEED_JWT_SIGNING_KEY": stack.secrets["DRIFTLOOP_S3_JWT_VOLUME_KEY"],
            "WEED_JWT_SIGNING_READ_KEY": stack.secrets["DRIFTLOOP_S3_JWT_VOLUME_KEY"],
            "WEED_JWT_FILER_SIGNING_KEY": stack.secrets["DRIFTLOOP_S3_JWT_FILER_KEY"],
            "WEED_JWT_FILER_SIGNING_READ_KEY": stack.secrets["DRIFTLOOP_S3_JWT_FILER_KEY"],
        },
    )
    _wait(lambda: _s3_ready(stack), "SeaweedFS S3", stack.cfg.start_timeout_s, stack.path("logs", "s3.log"), pid)
    s3.ensure_bucket(_s3_client(stack), stack.cfg.bucket)


# ---------------------------------------------------------------- MLflow, Prefect, worker, Prometheus


# What each MLflow user may do (roles over every experiment and registered model, "*"): training
# registers versions and moves aliases; the monitor logs its runs, undoes a regressed promotion
# (moves `champion` back) and publishes its verdict as a registered-model tag, so it edits models
# too (MLflow has no finer grant; it can point aliases only at versions that exist, and only
# versions signed by training's key load: docs/security.md); serving reads. Users without a grant
# get nothing (default_permission); the admin only sets this up.
MLFLOW_GRANTS: dict[str, dict[str, str]] = {
    "training": {"experiment": "EDIT", "registered_model": "EDIT"},
    "monitor": {"experiment": "EDIT", "registered_model": "EDIT"},
    "serving": {"experiment": "READ", "registered_model": "READ"},
}


def mlflow_auth_config(stack: Stack) -> str:
    """The basic-auth app's basic_auth.ini (no secret in it: the admin's password comes from
    MLFLOW_AUTH_ADMIN_PASSWORD, read once, when the user store is created)."""
    return (
        "# Written by `driftloop stack up`.\n[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{stack.path('mlflow', 'basic_auth.db')}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def _mlflow_start(stack: Stack) -> None:
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    if importlib.util.find_spec("flask_wtf") is None:
        raise StackError("MLflow's basic-auth app needs Flask-WTF: install mlflow[auth] (driftloop's `stack` extra)")
    exe = Path(sys.executable).parent / "mlflow"
    folder = stack.path("mlflow")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # the user store
    config = folder / "basic_auth.ini"
    config.write_text(mlflow_auth_config(stack))
    access, secret = stack.secrets.s3_keys("mlflow")
    env = {
        # The URI holds the password: through the environment, not the command line (ps shows that).
        "MLFLOW_BACKEND_STORE_URI": stack.database_url("mlflow"),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{stack.cfg.bucket}/mlflow",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_url,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": stack.secrets.mlflow_password("admin"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": stack.secrets["DRIFTLOOP_MLFLOW_FLASK_SECRET"],
    }
    # a client's credentials in the caller's environment are not the server's
    env |= {k: "" for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if k in os.environ}
    pid = _spawn(
        stack,
        "mlflow",
        [
            str(exe),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(stack.cfg.mlflow_port),
            "--workers",
            "1",
            "--serve-artifacts",
        ],
        env=env,
    )
    _wait(
        lambda: _http_ok(f"{stack.mlflow_url}/health"),
        "MLflow server",
        stack.cfg.start_timeout_s,
        stack.path("logs", "mlflow.log"),
        pid,
    )


def _mlflow_users(stack: Stack) -> None:
    """As the admin, through the auth REST API: a user per identity with its password from the
    secrets (set again at every `up`: how a rotated one takes effect), a role per identity with
    its grants (:data:`MLFLOW_GRANTS`) in the default workspace, assigned to it."""
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    api = f"{stack.mlflow_url}/api"
    with httpx.Client(auth=("admin", stack.secrets.mlflow_password("admin")), timeout=30) as http:

        def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            r = http.request(method, f"{api}/{path}", **kwargs)
            if r.status_code == 401:
                raise StackError(
                    "the MLflow admin's password (DRIFTLOOP_MLFLOW_ADMIN_PASSWORD) is not the one the server "
                    "has: change it on the server first (docs/stack.md, rotating credentials)"
                )
            return r

        for who in IDENTITIES:
            password = stack.secrets.mlflow_password(who)
            if call("GET", "2.0/mlflow/users/get", params={"username": who}).status_code == 200:
                r = call("PATCH", "2.0/mlflow/users/update-password", json={"username": who, "password": password})
            else:
                r = call("POST", "2.0/mlflow/users/create", json={"username": who, "password": password})
            _expect_ok(r, f"MLflow user {who!r}")
        roles = {
            ro["name"]: ro
            for ro in _expect_ok(
                call("GET", "3.0/mlflow/roles/list", params={"workspace": "default"}), "MLflow roles"
            ).get("roles", [])
        }
        for who, grants in MLFLOW_GRANTS.items():
            name = f"driftloop-{who}"
            role = roles.get(name)
            if role is None:
                role = _expect_ok(
                    call("POST", "3.0/mlflow/roles/create", json={"workspace": "default", "name": name}),
                    f"MLflow role {name}",
                )["role"]
            have = {
                (p["resource_type"], p["resource_pattern"]): p
                for p in _expect_ok(
                    call("GET", "3.0/mlflow/roles/permissions/list", params={"role_id": str(role["id"])}),
                    f"MLflow role {name}",
                ).get("role_permissions", [])
            }
            for resource, permission in grants.items():
                held = have.get((resource, "*"))
                if held is None:
                    body = {
                        "role_id": role["id"],
                        "resource_type": resource,
                        "resource_pattern": "*",
                        "permission": permission,
                    }
                    _expect_ok(call("POST", "3.0/mlflow/roles/permissions/add", json=body), f"MLflow role {name}")
                elif held["permission"] != permission:
                    body = {"role_permission_id": held["id"], "permission": permission}
                    _expect_ok(call("PATCH", "3.0/mlflow/roles/permissions/update", json=body), f"MLflow role {name}")
            assigned = _expect_ok(
                call("GET", "3.0/mlflow/users/roles/list", params={"username": who}), f"MLflow user {who}"
            )
            if not any(r["id"] == role["id"] for r in assigned.get("roles", [])):
                _expect_ok(
                    call("POST", "3.0/mlflow/roles/assign", json={"username": who, "role_id": role["id"]}),
                    f"MLflow user {who}",
                )


def _expect_ok(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 300:
        raise StackError(f"setting up {what} on the MLflow server: HTTP {response.status_code} {response.text[:300]}")
    return response.json() if response.content else {}


def prefect_env(stack: Stack) -> dict[str, str]:
    """A Prefect client's environment for this stack (the auth string included)."""
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    return {
        "PREFECT_HOME": str(stack.path("prefect")),
        "PREFECT_API_URL": stack.prefect_api_url,
        "PREFECT_API_AUTH_STRING": stack.secrets.prefect_auth_string,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        **CLIENT_RETRIES,
    }


def _prefect_start(stack: Stack) -> None:
    exe = Path(sys.executable).parent / "prefect"
    env = prefect_env(stack) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.database_url("prefect", "postgresql+asyncpg"),
        # Every API route but the health probes then asks for it (HTTP basic), the UI's included
        # (its login page asks for the string); PREFECT_API_AUTH_STRING is the clients' copy.
        "PREFECT_SERVER_API_AUTH_STRING": stack.secrets.prefect_auth_string,  # type: ignore[union-attr]
    }
    env.pop("PREFECT_API_URL")
    stack.path("prefect").mkdir(parents=True, exist_ok=True)
    pid = _spawn(
        stack,
        "prefect",
        [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(stack.cfg.prefect_port)],
        env=env,
    )
    _wait(
        lambda: _http_ok(f"{stack.prefect_api_url}/health"),
        "Prefect server",
        stack.cfg.start_timeout_s,
        stack.path("logs", "prefect.log"),
        pid,
    )


def _prefect_auth(stack: Stack) -> tuple[str, str]:
    """The auth string as HTTP basic credentials (what Prefect's client sends)."""
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    user, _, password = stack.secrets.prefect_auth_string.partition(":")
    return user, password


def _worker_ready(stack: Stack) -> bool:
    try:
        r = httpx.post(
            f"{stack.prefect_api_url}/work_pools/{stack.cfg.work_pool}/workers/filter",
            json={},
            timeout=2,
            auth=_prefect_auth(stack),
        )
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())
    except httpx.HTTPError:
        return False


def _worker_start(stack: Stack) -> None:
    exe = Path(sys.executable).parent / "prefect"
    env = (
        prefect_env(stack)
        # Flow runs train, register and promote: the worker holds training's credentials.
        | stack.client_env("training")
        | {
            # Flow runs started by the worker load configs/stack.yaml on top of base.yaml, with the
            # addresses of this stack (its ports may differ from the overlay's defaults).
            "DRIFTLOOP_CONFIG": os.environ.get("DRIFTLOOP_CONFIG", "stack"),
            "DRIFTLOOP__REGISTRY__TRACKING_URI": stack.mlflow_url,
            "DRIFTLOOP__REGISTRY__UI_URL": stack.mlflow_url,
            "DRIFTLOOP__PREFECT__API_URL": stack.prefect_api_url,
            "DRIFTLOOP__STORAGE__DVC_REMOTE": f"s3://{stack.cfg.bucket}/dvc",
            "DRIFTLOOP__STORAGE__S3_ENDPOINT_URL": stack.s3_url,
            "DRIFTLOOP__HISTORY__DSN": stack.history_dsn,
            "DRIFTLOOP_HOME": str(stack.project_root),
            "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "5"),
        }
    )
    pool = stack.cfg.work_pool
    r = httpx.get(f"{stack.prefect_api_url}/work_pools/{pool}", timeout=5, auth=_prefect_auth(stack))
    if r.status_code == 404:
        made = subprocess.run(
            [str(exe), "work-pool", "create", pool, "--type", "process"],
            env=os.environ | env,
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0 and "already exists" not in made.stdout + made.stderr:
            raise StackError(f"creating work pool {pool!r} failed: {made.stdout[-1000:]}{made.stderr[-1000:]}")
    pid = _spawn(
        stack,
        "worker",
        [
            str(exe),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            f"driftloop-{os.uname().nodename}",
        ],
        env=env,
    )
    _wait(
        lambda: _worker_ready(stack), "Prefect worker", stack.cfg.start_timeout_s, stack.path("logs", "worker.log"), pid
    )


def prometheus_config(stack: Stack) -> str:
    rules = stack.project_root / "infra" / "prometheus" / "alerts.yml"
    return (
        "# Written by `driftloop stack up`.\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        + (f"rule_files:\n  - {rules}\n" if rules.exists() else "")
        + "scrape_configs:\n"
        "  - job_name: driftloop-serving\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{stack.serving_port}']\n"
        "  - job_name: mlflow\n    metrics_path: /health\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{stack.cfg.mlflow_port}']\n"
    )


def _prometheus_start(stack: Stack) -> None:
    exe = shutil.which("prometheus") or "prometheus"
    folder = stack.path("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(prometheus_config(stack))
    pid = _spawn(
        stack,
        "prometheus",
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{stack.cfg.prometheus_port}",
        ],
    )
    _wait(
        lambda: _http_ok(f"{stack.prometheus_url}/-/ready"),
        "Prometheus",
        stack.cfg.start_timeout_s,
        stack.path("logs", "prometheus.log"),
        pid,
    )


def healthy(stack: Stack, name: str) -> bool:
    if name == "postgres":
        return _pg_ready(stack)
    if name == "s3":
        return _s3_ready(stack)
    if name == "mlflow":
        return _http_ok(f"{stack.mlflow_url}/health")
    if name == "prefect":
        return _http_ok(f"{stack.prefect_api_url}/health")
    if name == "worker":
        return _read_pid(stack, "worker") is not None and _worker_ready(stack)
    if name == "prometheus":
        return _http_ok(f"{stack.prometheus_url}/-/ready")
    raise StackError(f"unknown service {name!r}")


_START = {
    "postgres": _pg_start,
    "s3": _s3_start,
    "mlflow": _mlflow_start,
    "prefect": _prefect_start,
    "worker": _worker_start,
    "prometheus": _prometheus_start,
}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    started_s: float | None  # seconds this call took to start it; None: already running / not asked


def up(
    stack: Stack,
    services: Iterable[str] | None = None,
    install: bool = True,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[ServiceStatus]:
    """Start every configured service that is not already healthy, in dependency order."""
    wanted = [s for s in ORDER if s in set(services or stack.cfg.services)]
    missing = missing_system_packages(wanted)
    if missing and install:
        progress(f"installing Debian packages: {' '.join(missing)}")
        install_system_packages(missing)
    elif missing:
        raise StackError(f"missing Debian packages {missing}: run `make system-deps`")
    load_secrets(stack)
    stack.root.mkdir(parents=True, exist_ok=True)
    results: dict[str, ServiceStatus] = {}

    def bring_up(name: str) -> None:
        if healthy(stack, name):
            if name == "postgres":
                _ensure_databases(stack)  # a stack started by an older release lacks `driftloop`
            if name == "mlflow":
                _mlflow_users(stack)  # passwords rotated in secrets.env take effect
            results[name] = ServiceStatus(name, stack.urls()[name], True, None)
            progress(f"{name}: already running at {stack.urls()[name]}")
            return
        t0 = time.monotonic()
        _START[name](stack)
        if name == "mlflow":
            _mlflow_users(stack)
        took = time.monotonic() - t0
        stack.started.append(name)
        results[name] = ServiceStatus(name, stack.urls()[name], True, took)
        progress(f"{name}: started in {took:.1f} s at {stack.urls()[name]}")

    # Servers of one wave need only those of the waves before: a wave starts together (most of
    # a start is Python importing, so the MLflow and Prefect servers overlap well).
    for wave in WAVES:
        names = [n for n in wave if n in wanted]
        with ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
            for future in [pool.submit(bring_up, n) for n in names]:
                future.result()
    out = [results[n] for n in wanted]
    if stack.cfg.deploy and "worker" in wanted and (stack.project_root / "prefect.yaml").exists():
        t0 = time.monotonic()
        names = deploy(stack)
        progress(f"deployments: {', '.join(names)} ({time.monotonic() - t0:.1f} s)")
    return out


def deploy(stack: Stack) -> list[str]:
    """`prefect deploy --all` from the project's prefect.yaml against the stack's server; returns
    the deployment names the server then holds."""
    exe = Path(sys.executable).parent / "prefect"
    env = os.environ | prefect_env(stack) | {"DRIFTLOOP_HOME": str(stack.project_root)}
    result = subprocess.run(
        [str(exe), "--no-prompt", "deploy", "--all"],
        cwd=stack.project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    stack.path("logs").mkdir(parents=True, exist_ok=True)
    stack.path("logs", "deploy.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(
            f"prefect deploy --all failed (log {stack.path('logs', 'deploy.log')}):\n"
            f"{(result.stdout + result.stderr)[-2000:]}"
        )
    found = httpx.post(
        f"{stack.prefect_api_url}/deployments/filter", json={}, timeout=10, auth=_prefect_auth(stack)
    ).json()
    return sorted(d["name"] for d in found)


def stop(stack: Stack, name: str) -> bool:
    """Stop one service (what `down` does for each, and what the fault tests use). True if it ran."""
    if name == "postgres":
        running = (stack.path("postgres") / "postmaster.pid").exists()
        _pg_stop(stack)
        return running
    pid = _read_pid(stack, name)
    if pid is None:
        return False
    _kill_group(pid)
    _pidfile(stack, name).unlink(missing_ok=True)
    return True


def start(stack: Stack, name: str) -> None:
    """Start one service again (after :func:`stop`)."""
    if stack.secrets is None:
        load_secrets(stack, create=False)
    _START[name](stack)


def down(stack: Stack, progress: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Stop every service of the stack (whatever started it), in reverse order. Data is kept."""
    stopped = []
    for name in reversed(ORDER):
        if stop(stack, name):
            stopped.append(name)
            progress(f"{name}: stopped")
    return stopped


def status(stack: Stack) -> list[ServiceStatus]:
    if stack.secrets is None:
        try:
            load_secrets(stack, create=False)
        except StackError:
            return [ServiceStatus(n, stack.urls()[n], False, None) for n in ORDER if n in stack.cfg.services]
    return [ServiceStatus(n, stack.urls()[n], healthy(stack, n), None) for n in ORDER if n in stack.cfg.services]
