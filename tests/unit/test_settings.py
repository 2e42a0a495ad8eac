import pytest
from pydantic import ValidationError

from driftloop.config.settings import load_settings


def test_base_config_loads(repo_root):
    s = load_settings()
    assert s.registry.model_name == "intent-router"
    assert len(s.data.new_labels) == 10
    assert s.tracking_uri.startswith("sqlite:///")


def test_env_overrides_yaml(monkeypatch):
    monkeypatch.setenv("DRIFTLOOP__MONITOR__WINDOW_SIZE", "321")
    assert load_settings().monitor.window_size == 321


def test_overlay_file_wins_over_base(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("monitor:\n  min_window: 42\n")
    s = load_settings([str(overlay)])
    assert s.monitor.min_window == 42 and s.monitor.window_size == 400


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"DRIFTLOOP__MONITOR__WINDW": "3"}, "monitor.windw"),
        ({"DRIFTLOOP__SERVING__PORT": "99999"}, "serving.port"),
        ({"DRIFTLOOP__PROMOTION__METRIC": "auc"}, "promotion.metric"),
    ],
)
def test_wrong_key_or_value_names_the_key(monkeypatch, env, field):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as err:
        load_settings()
    assert field in str(err.value)


def test_unknown_yaml_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("retrain:\n  cooldown: 5\n")
    with pytest.raises(ValidationError, match=r"retrain\.cooldown"):
        load_settings([str(bad)])


def test_missing_overlay_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_settings([str(tmp_path / "nope.yaml")])


def test_public_bind_refused(monkeypatch):
    monkeypatch.setenv("DRIFTLOOP__SERVING__HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match=r"serving\.host"):
        load_settings()


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError):
        s.monitor.window_size = 5


def test_config_hash_changes_with_config(monkeypatch):
    a = load_settings().config_hash()
    monkeypatch.setenv("DRIFTLOOP__MODEL__FAMILY", "other")
    assert load_settings().config_hash() != a


def test_history_defaults_to_files_and_the_stack_overlay_to_postgres():
    assert load_settings().history.backend == "file"
    stack = load_settings(["stack"]).history
    assert stack.backend == "postgres" and stack.dsn and stack.dsn.endswith("/driftloop")
    assert stack.password_env == "DRIFTLOOP_PG_PASSWORD"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://driftloop:s3cr3t-value@db:5432/driftloop",
        "postgresql://db:5432/driftloop?password=s3cr3t-value",
    ],
)
def test_a_history_dsn_with_a_password_is_refused(monkeypatch, dsn):
    """Secrets come from the environment's own variable, never inside a setting (the CLI's error
    line does not echo it: tests/unit/test_cli_output.py)."""
    monkeypatch.setenv("DRIFTLOOP__HISTORY__DSN", dsn)
    with pytest.raises(ValidationError, match=r"history\.dsn: holds a password.*DRIFTLOOP_PG_PASSWORD"):
        load_settings()


def test_the_postgres_history_needs_a_dsn(monkeypatch):
    monkeypatch.setenv("DRIFTLOOP__HISTORY__BACKEND", "postgres")
    with pytest.raises(ValidationError, match=r"history\.dsn: required"):
        load_settings()


def test_logs_on_s3_need_a_bucket_url_and_wire_a_remote_log(tmp_path, monkeypatch):
    from driftloop.adapters import wiring
    from driftloop.adapters.logremote import RemoteLog

    monkeypatch.setenv("DRIFTLOOP__LOGS__BACKEND", "s3")
    with pytest.raises(ValidationError, match=r"logs\.s3_url"):
        load_settings()
    monkeypatch.setenv("DRIFTLOOP__LOGS__S3_URL", "s3://bucket/some/logs")
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path))
    root = wiring.log_root(load_settings())
    assert isinstance(root, RemoteLog)
    assert (root.store.bucket, root.prefix, root.spool, root.cache) == (
        "bucket",
        "some/logs",
        tmp_path / "logs",
        tmp_path / "log-cache",
    )
    monkeypatch.delenv("DRIFTLOOP__LOGS__BACKEND")
    assert wiring.log_root(load_settings()) == tmp_path / "logs"
