import subprocess
import threading

from driftloop.ops.prefect_server import stop_recorded


def test_stop_recorded_stops_the_recorded_process_group(tmp_path):
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it, as init would for the CLI
    (tmp_path / "server.pid").write_text(str(proc.pid))
    assert stop_recorded(tmp_path)
    assert proc.wait(timeout=10) != 0
    assert not (tmp_path / "server.pid").exists()
    assert not stop_recorded(tmp_path)


def test_stale_pid_file_is_cleared(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    (tmp_path / "server.pid").write_text(str(proc.pid))
    assert not stop_recorded(tmp_path)
    assert not (tmp_path / "server.pid").exists()
