"""Several serving processes on one port: a supervisor that forks the workers, restarts a dead
one and stops them all (``driftloop serve --workers N``).

The supervisor binds the listening socket and forks N workers after everything is imported;
each worker builds its own app (its own model source, routing poller, prediction-log part and
metrics) and accepts connections on the shared socket, so the kernel hands each connection to a
worker that is waiting for one. Forking after the imports shares their pages between the workers
(copy-on-write, kept clean by ``gc.freeze``), and a restarted worker is back in milliseconds, on
the same socket, without a refused connection.

SIGINT and SIGTERM stop every worker gracefully (SIGTERM, then SIGKILL after
:data:`STOP_TIMEOUT_S`); a worker that exits on its own is logged with its status and restarted;
one that keeps dying within :data:`MIN_UPTIME_S` of its start (:data:`MAX_FAST_FAILURES` times
in a row) stops the server with exit status 1 rather than loop. Each worker asks the kernel for
SIGTERM should the supervisor itself die (``PR_SET_PDEATHSIG``), so no orphan keeps the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
MIN_UPTIME_S = 10.0
MAX_FAST_FAILURES = 5
_PR_SET_PDEATHSIG = 1


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker accepts on (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    # Linux only; elsewhere an orphaned worker is stopped by hand.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def describe_status(status: int) -> str:
    """A waitpid status in words: "exit status 3", "killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


@dataclass
class Supervisor:
    """Runs ``work(index)`` in ``count`` forked processes until told to stop.

    ``work`` runs in the child and returns when the worker is done (a graceful stop); the child
    then exits 0, or 1 when ``work`` raised. ``on_exit(pid)`` runs in the supervisor after each
    worker is reaped (e.g. keep its metrics as a dead worker's).
    """

    count: int
    work: Callable[[int], None]
    on_exit: Callable[[int], None] = lambda pid: None
    workers: dict[int, _Worker] = field(default_factory=dict)
    restarts: int = 0
    _stopping: bool = False
    _fast_failures: int = 0

    def run(self) -> int:
        """Start the workers and supervise them; the exit status once they are all stopped."""
        # Everything allocated so far is shared with the workers, untouched: a collection in a
        # worker neither walks it (no pause over the imported world) nor dirties its pages.
        gc.collect()
        gc.freeze()
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            for index in range(self.count):
                self._spawn(index)
            status = self._supervise()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                _die_with_parent()
                self.work(index)
                code = 0
            except BaseException:
                log.exception("serving worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = _Worker(index, pid, time.monotonic())
        log.info("serving worker %d started (pid %d)", index, pid)

    def _supervise(self) -> int:
        while not self._stopping:
            reaped = self._reap()
            for worker, status in reaped:
                uptime = time.monotonic() - worker.started
                log.error(
                    "serving worker %d (pid %d) stopped after %.1fs: %s; starting it again",
                    worker.index,
                    worker.pid,
                    uptime,
                    describe_status(status),
                )
                self._fast_failures = self._fast_failures + 1 if uptime < MIN_UPTIME_S else 0
                if self._fast_failures >= MAX_FAST_FAILURES:
                    log.error("workers keep failing at start (%d in a row): stopping", self._fast_failures)
                    return 1
                self.restarts += 1
                self._spawn(worker.index)
            if not reaped:
                time.sleep(0.2)  # a signal wakes it; PEP 475 resumes the sleep, the loop then stops
        return 0

    def _reap(self) -> list[tuple[_Worker, int]]:
        reaped = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self.on_exit(pid)
                reaped.append((worker, status))
        return reaped

    def _stop_all(self) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.workers and time.monotonic() < deadline:
            if not self._reap():
                time.sleep(0.05)
        for pid in list(self.workers):
            log.warning("serving worker pid %d did not stop in %.0fs: killing it", pid, STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.on_exit(pid)
            self.workers.pop(pid, None)
