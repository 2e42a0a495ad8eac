"""The real stack on one machine, without Docker: PostgreSQL, SeaweedFS (S3), an MLflow tracking
server on PostgreSQL with its artifacts in S3, a Prefect server on PostgreSQL, a Prefect process
worker, and Prometheus scraping the serving app. Every server binds to 127.0.0.1.

``up`` is safe to run twice: a healthy server is left alone, data folders (all under
``stack.dir``) are initialised once and kept. ``down`` stops what ``up`` started, in reverse.
Secrets come from the environment (``DRIFTLOOP_PG_PASSWORD``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``); missing ones are generated once into ``<dir>/secrets.env`` (mode 600,
outside git) so that a restart finds the same keys. This module manages processes only: it never
imports Prefect or MLflow, so the CLI can call it before either is configured.
"""

from __future__ import annotations

import contextlib
import glob
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


@dataclass(frozen=True)
class Secrets:
    pg_password: str
    s3_access_key: str
    s3_secret_key: str

    def env(self) -> dict[str, str]:
        return {
            "DRIFTLOOP_PG_PASSWORD": self.pg_password,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
        }


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

    def database_url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        assert self.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
        return f"{driver}://{self.cfg.postgres_user}:{self.secrets.pg_password}@127.0.0.1:{self.cfg.postgres_port}/{db}"

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

    def client_env(self) -> dict[str, str]:
        """What a driftloop process needs in its environment to use this stack: the S3 keys and
        the PostgreSQL password (the history's, with ``history.backend: postgres``)."""
        assert self.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
        return {
            "DRIFTLOOP_PG_PASSWORD": self.secrets.pg_password,
            "AWS_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
        }


def from_settings(settings: Settings, project_root: Path | None = None) -> Stack:
    return Stack(settings.stack, (project_root or Path.cwd()).resolve(), serving_port=settings.serving.port)


# ---------------------------------------------------------------- secrets


def load_secrets(stack: Stack, create: bool = True) -> Secrets:
    """The environment wins; else ``<dir>/secrets.env``; else (``create``) new random ones, saved."""
    path = stack.path("secrets.env")
    saved: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and value:
                saved[key.strip()] = value.strip()
    env = os.environ
    values = {  # "" where neither has it
        "DRIFTLOOP_PG_PASSWORD": env.get("DRIFTLOOP_PG_PASSWORD") or saved.get("DRIFTLOOP_PG_PASSWORD", ""),
        "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID") or saved.get("AWS_ACCESS_KEY_ID", ""),
        "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY") or saved.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    missing = [k for k, v in values.items() if not v]
    if missing and not create:
        raise StackError(f"no stack secrets: set {', '.join(missing)} or run `driftloop stack up` ({path})")
    if missing:
        values["DRIFTLOOP_PG_PASSWORD"] = values["DRIFTLOOP_PG_PASSWORD"] or _secrets.token_urlsafe(24)
        values["AWS_ACCESS_KEY_ID"] = values["AWS_ACCESS_KEY_ID"] or "dl" + _secrets.token_hex(8)
        values["AWS_SECRET_ACCESS_KEY"] = values["AWS_SECRET_ACCESS_KEY"] or _secrets.token_urlsafe(30)
        stack.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# Generated by `driftloop stack up`; never commit. The environment overrides these.\n")
            fh.writelines(f"{k}={v}\n" for k, v in values.items())
    stack.secrets = Secrets(
        values["DRIFTLOOP_PG_PASSWORD"], values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
    )
    return stack.secrets


def export_client_env(settings: Settings, project_root: Path | None = None) -> bool:
    """Put the local stack's secrets into this process's environment (the environment's own values
    win) where the configuration needs them and they are not set: the S3 keys for an ``s3://`` DVC
    remote, the PostgreSQL password for ``history.backend: postgres``. True when something was
    exported."""
    uses_s3 = (settings.storage.dvc_remote or "").startswith("s3://")
    needs_s3 = uses_s3 and not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))
    needs_pg = settings.history.backend == "postgres" and not os.environ.get(settings.history.password_env)
    if not (needs_s3 or needs_pg):
        return False
    stack = from_settings(settings, project_root)
    if not stack.path("secrets.env").exists():
        return False
    load_secrets(stack, create=False)
    env = stack.client_env()
    password = env.pop("DRIFTLOOP_PG_PASSWORD")
    exported = (env if needs_s3 else {}) | ({settings.history.password_env: password} if needs_pg else {})
    for key, value in exported.items():
        os.environ.setdefault(key, value)
    return True


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


def _pg_ready(stack: Stack) -> bool:
    import psycopg2

    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    try:
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=stack.cfg.postgres_port,
            user=stack.cfg.postgres_user,
            password=stack.secrets.pg_password,
            dbname="postgres",
            connect_timeout=2,
        )
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


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
        pwfile = data.parent / ".pgpass-init"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(stack.secrets.pg_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            subprocess.run(
                [
                    *_as_postgres_user(),
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    stack.cfg.postgres_user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
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
        finally:
            pwfile.unlink(missing_ok=True)
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
    import psycopg2

    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=stack.cfg.postgres_port,
        user=stack.cfg.postgres_user,
        password=stack.secrets.pg_password,
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in DATABASES:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
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


def _s3_start(stack: Stack) -> None:
    assert stack.secrets is not None  # noqa: S101  narrows the type: load_secrets() ran first
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        weed = Path(shutil.which("weed") or "weed")
    data = stack.path("seaweedfs")
    data.mkdir(parents=True, exist_ok=True)
    keys = stack.path("seaweedfs", "s3.json")
    identity = {
        "identities": [
            {
                "name": "driftloop",
                "credentials": [{"accessKey": stack.secrets.s3_access_key, "secretKey": stack.secrets.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identity, fh)
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
    )
    _wait(lambda: _s3_ready(stack), "SeaweedFS S3", stack.cfg.start_timeout_s, stack.path("logs", "s3.log"), pid)
    s3.ensure_bucket(_s3_client(stack), stack.cfg.bucket)


# ---------------------------------------------------------------- MLflow, Prefect, worker, Prometheus


def _mlflow_start(stack: Stack) -> None:
    exe = Path(sys.executable).parent / "mlflow"
    env = stack.client_env() | {
        # The URI holds the password: through the environment, not the command line (ps shows that).
        "MLFLOW_BACKEND_STORE_URI": stack.database_url("mlflow"),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{stack.cfg.bucket}/mlflow",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    pid = _spawn(
        stack,
        "mlflow",
        [
            str(exe),
            "server",
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


def prefect_env(stack: Stack) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(stack.path("prefect")),
        "PREFECT_API_URL": stack.prefect_api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        **CLIENT_RETRIES,
    }


def _prefect_start(stack: Stack) -> None:
    exe = Path(sys.executable).parent / "prefect"
    env = prefect_env(stack) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.database_url("prefect", "postgresql+asyncpg"),
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


def _worker_ready(stack: Stack) -> bool:
    try:
        r = httpx.post(f"{stack.prefect_api_url}/work_pools/{stack.cfg.work_pool}/workers/filter", json={}, timeout=2)
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())
    except httpx.HTTPError:
        return False


def _worker_start(stack: Stack) -> None:
    exe = Path(sys.executable).parent / "prefect"
    env = (
        prefect_env(stack)
        | stack.client_env()
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
    r = httpx.get(f"{stack.prefect_api_url}/work_pools/{pool}", timeout=5)
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
            results[name] = ServiceStatus(name, stack.urls()[name], True, None)
            progress(f"{name}: already running at {stack.urls()[name]}")
            return
        t0 = time.monotonic()
        _START[name](stack)
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
    found = httpx.post(f"{stack.prefect_api_url}/deployments/filter", json={}, timeout=10).json()
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
