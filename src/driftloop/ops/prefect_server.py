"""Start, reuse and stop the embedded local Prefect server (127.0.0.1, SQLite under the state dir).

Against a local server a flow costs about a second of overhead, against Prefect's ephemeral mode
5–8 s per process; the server also gives the user the UI. This module only manages the process
(it never imports Prefect), so the CLI can set ``PREFECT_API_URL`` before Prefect is imported.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from driftloop.core.errors import ServerUnreachable
from driftloop.ops import procs

log = logging.getLogger(__name__)

# Servers this process started, so stop_server can reap them (a zombie still answers killpg).
_STARTED: dict[int, subprocess.Popen] = {}


class PrefectServerError(ServerUnreachable, RuntimeError):
    """The local Prefect server did not start (its log, named in the message, says why)."""


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    pid: int | None  # None when an already-running server was reused
    log_path: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


# The client retries 429/502/503 and lost connections by itself; a server whose database is
# briefly away answers 500, which is worth retrying too (with back-off, about a minute in all).
# Prefect's client paces those retries itself (PREFECT_CLIENT_MAX_RETRIES), not driftloop.core.retry.
CLIENT_RETRIES = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": os.environ.get("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")}


def prefect_env(home: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        **CLIENT_RETRIES,
    }


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_server(home: Path, port: int, host: str = "127.0.0.1", timeout_s: float = 90) -> PrefectServer:
    """Reuse a healthy server on ``host:port`` or start one in its own process group."""
    api_url = f"http://{host}:{port}/api"
    if healthy(api_url):
        return PrefectServer(api_url, None)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    exe = Path(sys.executable).parent / "prefect"
    cmd = [str(exe), "server", "start", "--host", host, "--port", str(port)]
    env = os.environ | prefect_env(home)
    env.pop("PREFECT_API_URL", None)
    # The UI's pages call the API at this URL; Prefect derives it from its default port, not --port.
    env["PREFECT_UI_API_URL"] = api_url
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    # A readiness wait with its own timeout, not a retry of a call (driftloop.core.retry).
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrefectServerError(
                f"the local Prefect server on {host}:{port} exited with {proc.returncode} "
                f"(prefect.port taken?); see {log_path}",
                url=api_url,
            )
        if healthy(api_url):
            (home / "server.pid").write_text(str(proc.pid))
            _STARTED[proc.pid] = proc
            return PrefectServer(api_url, proc.pid, log_path)
        time.sleep(0.3)
    _STARTED[proc.pid] = proc
    stop_server(PrefectServer(api_url, proc.pid), flush=False)  # it never answered: nothing to send
    raise PrefectServerError(
        f"the local Prefect server on {host}:{port} was not healthy after {timeout_s:.0f}s; see {log_path}", url=api_url
    )


def flush_client(timeout_s: float = 30) -> None:
    """Send what this process still has queued for the Prefect API (flow-run logs, events).

    Prefect ships them from background workers, at the latest when the interpreter exits; a
    server stopped before that leaves them retrying against a closed port (about a minute of
    retries, then "Error logging to API") and the logs are lost.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_s, at_exit=False)
        except Exception:  # flushing is best effort; stopping the server must go on
            log.warning("flushing %s before stopping the Prefect server failed", worker.__name__, exc_info=True)


def stop_server(server: PrefectServer, timeout_s: float = 15, flush: bool = True) -> None:
    """Stop a server this process started (a server it only reused is left running), after
    flushing this process's queued logs and events to it."""
    if server.pid is None:
        return
    if flush:
        flush_client()
    # One this process started is stopped through its Popen, which reaps it; a recorded pid (a
    # server another process started) is stopped by pid and reaped by its parent.
    proc = _STARTED.pop(server.pid, None)
    procs.stop_group(proc if proc is not None else server.pid, timeout_s)


def use_server(server: PrefectServer, home: Path) -> None:
    """Point this process's Prefect client at ``server``; call before importing prefect."""
    os.environ.update(prefect_env(home))
    os.environ["PREFECT_API_URL"] = server.api_url


def stop_recorded(home: Path) -> bool:
    """Stop the server whose pid ``ensure_server`` recorded under ``home``; False if none runs."""
    pid_file = home / "server.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
        os.killpg(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        pid_file.unlink(missing_ok=True)
        return False
    stop_server(PrefectServer("", pid))
    pid_file.unlink(missing_ok=True)
    return True
