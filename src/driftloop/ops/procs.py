"""Stop a process group: the one way the stack, the local Prefect server, the demo's serving
process and the tests end what they started in its own session (``start_new_session=True``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

_POLL_S = 0.1


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) != "Z"  # unreadable /proc: it answered the signal, so it runs


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` runs; zombies do not count (a zombie still answers
    killpg, so a group whose members all exited would otherwise look alive until reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():  # no way to tell zombies apart: the group answers, so it is there
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] == str(pgid) and stat[0] != "Z":
            return True
    return False


def stop_group(
    target: int | subprocess.Popen, timeout_s: float = 15.0, first_signal: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``first_signal`` to the process group led by ``target`` (a pid or this process's
    ``Popen``), wait up to ``timeout_s`` for the group to be gone, then SIGKILL it and wait as long
    again. A ``Popen`` leader is reaped (a bare pid is not: it may be another process's child, and
    the caller reaps its own); a group that is already gone is left as it is."""
    proc = target if isinstance(target, subprocess.Popen) else None
    pgid = target.pid if isinstance(target, subprocess.Popen) else target
    for sig in (first_signal, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(pgid, proc, timeout_s):
            break
    if proc is not None:
        proc.wait()  # the group is gone or SIGKILLed: the leader's exit status is there or on its way


def _wait_gone(pgid: int, proc: subprocess.Popen | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, …); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _state(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[0] if stat else None
