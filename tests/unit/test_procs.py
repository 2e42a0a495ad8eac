"""Stopping a process group, on real processes: each started in its own session, as the stack,
the local Prefect server and the demo's serving process are."""

from __future__ import annotations

import signal
import subprocess
import sys

from driftloop.ops.procs import alive, group_alive, stop_group

# A Python child that says it is ready (so SIGTERM cannot arrive before it ignores it), then sleeps.
IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, text=True)


def test_a_process_that_stops_on_sigterm_is_stopped_and_reaped():
    proc = _start(["sleep", "60"])
    stop_group(proc, timeout_s=10)
    assert proc.returncode == -signal.SIGTERM
    assert not group_alive(proc.pid) and not alive(proc.pid)


def test_one_that_ignores_sigterm_is_killed_after_the_timeout():
    proc = _start([sys.executable, "-c", IGNORES_TERM])
    assert proc.stdout.readline().strip() == "ready"
    stop_group(proc, timeout_s=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert not group_alive(proc.pid)


def test_the_whole_group_stops_grandchild_included():
    # The shell stops on SIGTERM; its child ignores it and must be killed with the group.
    proc = _start(["sh", "-c", f'{sys.executable} -c "{IGNORES_TERM}" & echo $!; wait'])
    grandchild = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    assert alive(grandchild)
    stop_group(proc.pid, timeout_s=0.5)  # by pid, as for a server another process started
    assert not group_alive(proc.pid) and not alive(grandchild)
    assert proc.wait(timeout=10) == -signal.SIGTERM  # a bare pid is the caller's to reap


def test_a_group_that_is_gone_is_left_alone():
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    assert not group_alive(proc.pid) and not alive(proc.pid)
    stop_group(proc.pid, timeout_s=1)
    stop_group(proc, timeout_s=1)
    assert proc.returncode == 0


# SIGINT back to its default first: a job started in the background by a non-interactive shell
# (a CI runner's `cmd &`) inherits SIGINT ignored, and `sleep` would then outlive it.
DEFAULT_INT = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); print('ready', flush=True); time.sleep(60)"
)


def test_first_signal_is_the_callers_choice():
    proc = _start([sys.executable, "-c", DEFAULT_INT])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    stop_group(proc, timeout_s=10, first_signal=signal.SIGINT)
    assert proc.returncode == -signal.SIGINT
