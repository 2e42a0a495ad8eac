"""Every server of the stack asks who you are (issue 14, "trust boundaries"): a call without
credentials is refused by MLflow, SeaweedFS (its S3 port, its filer's and volume server's HTTP
ports), Prefect and PostgreSQL; a call with the right identity's goes through; a read-only
identity cannot write. The stack is the one test_stack.py uses, started by `driftloop.ops.stack`
once for the session (tests/integration/conftest.py); this module runs first."""

from __future__ import annotations

import base64
import os
import uuid

import httpx
import psycopg2
import pytest

from driftloop.ops import stack as stack_mod

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(real_stack):
    """The session's stack (tests/integration/conftest.py, shared with test_stack.py), every
    server up."""
    stack_mod.up(real_stack)
    return real_stack


def _weed_port(stack, name: str) -> int:
    return stack_mod._WEED_PORTS[name] + stack.cfg.s3_port - stack_mod._WEED_PORTS["s3.port"]


# ---------------------------------------------------------------- secrets


def test_the_secrets_are_private_and_each_component_gets_its_own(stack):
    assert (stack.path("secrets.env").stat().st_mode & 0o777) == 0o600
    assert (stack.path("seaweedfs", "s3.json").stat().st_mode & 0o777) == 0o600
    envs = {who: stack.client_env(who) for who in stack_mod.IDENTITIES}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        assert len({env[key] for env in envs.values()}) == len(envs), key
    assert stack.secrets.s3_access_key not in {env["AWS_ACCESS_KEY_ID"] for env in envs.values()}  # admin: set-up only
    assert "PREFECT_API_AUTH_STRING" not in envs["serving"]
    # no secret in the configuration files the servers read
    ini = stack.path("mlflow", "basic_auth.ini").read_text()
    assert all(value not in ini for value in stack.secrets.values.values())


# ---------------------------------------------------------------- MLflow


def _mlflow(stack, who: str | None, method: str, path: str, password: str | None = None, **kwargs) -> httpx.Response:
    auth = None if who is None else (who, password or stack.secrets.mlflow_password(who))
    return httpx.request(method, f"{stack.mlflow_url}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def model(stack) -> dict[str, str]:
    """A registered model with version 1 as champion, made by training (the identity that may)."""
    name = f"auth-{uuid.uuid4().hex[:8]}"
    experiment = _mlflow(stack, "training", "POST", "experiments/create", json={"name": name})
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    run = _mlflow(stack, "training", "POST", "runs/create", json={"experiment_id": experiment_id})
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]
    assert _mlflow(stack, "training", "POST", "registered-models/create", json={"name": name}).status_code == 200
    version = {"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id}
    assert _mlflow(stack, "training", "POST", "model-versions/create", json=version).status_code == 200
    alias = {"name": name, "alias": "champion", "version": "1"}
    assert _mlflow(stack, "training", "POST", "registered-models/alias", json=alias).status_code == 200
    return {"name": name, "experiment_id": experiment_id, "run_id": run_id}


def test_mlflow_refuses_a_call_without_credentials_or_with_a_wrong_password(stack, model):
    assert _mlflow(stack, None, "GET", "registered-models/search").status_code == 401
    assert _mlflow(stack, "serving", "GET", "registered-models/search", password="not-it").status_code == 401
    assert _mlflow(stack, "admin", "GET", "registered-models/search", password="not-it").status_code == 401
    # the health probe stays open (Prometheus and `stack status` use it)
    assert httpx.get(f"{stack.mlflow_url}/health", timeout=10).status_code == 200


def test_serving_reads_the_registry_but_cannot_change_it(stack, model):
    who = "serving"
    name = model["name"]
    got = _mlflow(stack, who, "GET", "registered-models/alias", params={"name": name, "alias": "champion"})
    assert got.status_code == 200 and got.json()["model_version"]["version"] == "1"
    version = {"name": name, "source": f"runs:/{model['run_id']}/model", "run_id": model["run_id"]}
    assert _mlflow(stack, who, "POST", "model-versions/create", json=version).status_code == 403
    alias = {"name": name, "alias": "champion", "version": "1"}
    assert _mlflow(stack, who, "POST", "registered-models/alias", json=alias).status_code == 403
    assert _mlflow(stack, who, "DELETE", "registered-models/alias", json=alias).status_code == 403
    tag = {"name": name, "version": "1", "key": "rollout.result", "value": "forged"}
    assert _mlflow(stack, who, "POST", "model-versions/set-tag", json=tag).status_code == 403
    # nor manage users
    user = {"username": f"x{uuid.uuid4().hex[:6]}", "password": uuid.uuid4().hex}
    assert _mlflow(stack, who, "POST", "users/create", json=user).status_code == 403
    # still the champion training set
    got = _mlflow(stack, "training", "GET", "registered-models/alias", params={"name": name, "alias": "champion"})
    assert got.json()["model_version"]["version"] == "1"


def test_the_monitor_publishes_its_verdict_and_can_roll_back_but_registers_nothing(stack, model):
    """It undoes a regressed promotion and tags the registered model with its verdict; a version
    it cannot sign would not load anyway (docs/security.md)."""
    name = model["name"]
    tag = {"name": name, "key": "driftloop.monitor_status", "value": "{}"}
    assert _mlflow(stack, "monitor", "POST", "registered-models/set-tag", json=tag).status_code == 200
    alias = {"name": name, "alias": "champion", "version": "1"}
    assert _mlflow(stack, "monitor", "POST", "registered-models/alias", json=alias).status_code == 200
    user = {"username": f"x{uuid.uuid4().hex[:6]}", "password": uuid.uuid4().hex}
    assert _mlflow(stack, "monitor", "POST", "users/create", json=user).status_code == 403


def test_the_monitor_logs_its_runs_and_serving_does_not(stack, model):
    run = {"experiment_id": model["experiment_id"], "run_name": "monitor"}
    assert _mlflow(stack, "monitor", "POST", "runs/create", json=run).status_code == 200
    assert _mlflow(stack, "serving", "POST", "runs/create", json=run).status_code == 403


def test_training_moves_the_alias(stack, model):
    name = model["name"]
    version = {"name": name, "source": f"runs:/{model['run_id']}/model", "run_id": model["run_id"]}
    made = _mlflow(stack, "training", "POST", "model-versions/create", json=version)
    assert made.status_code == 200
    new = made.json()["model_version"]["version"]
    alias = {"name": name, "alias": "challenger", "version": new}
    assert _mlflow(stack, "training", "POST", "registered-models/alias", json=alias).status_code == 200
    assert _mlflow(stack, "training", "DELETE", "registered-models/alias", json=alias).status_code == 200


def test_a_manual_move_is_made_as_the_authenticated_identity_and_refused_without_edit(stack, model, monkeypatch):
    """`driftloop rollback|rollout promote|abort` claim the move on the registered model first: as
    `serving` (READ) MoveRefused names the identity and nothing moves; as `training` the claim
    records `training`, authenticated, whatever --by says."""
    import json

    from driftloop.adapters.registry import Registry
    from driftloop.adapters.registry.aliases import MANUAL_MOVE_TAG
    from driftloop.core.actors import MoveRefused, resolve_actor

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    record = {"action": "rollback", "on_behalf_of": "alice"}
    for key, value in stack.client_env("serving").items():
        monkeypatch.setenv(key, value)
    registry = Registry(stack.mlflow_url, model["name"])
    actor = resolve_actor(registry.acting_user(), "alice")
    assert (actor.name, actor.authenticated) == ("serving", True)
    with pytest.raises(MoveRefused, match="'serving'"):
        registry.claim_manual_move({**record, "actor": actor.name})
    for key, value in stack.client_env("training").items():
        monkeypatch.setenv(key, value)
    registry = Registry(stack.mlflow_url, model["name"])
    actor = resolve_actor(registry.acting_user(), "alice")
    registry.claim_manual_move({**record, "actor": actor.name, "authenticated": actor.authenticated})
    tags = _mlflow(stack, "training", "GET", "registered-models/get", params={"name": model["name"]}).json()
    claimed = {t["key"]: t["value"] for t in tags["registered_model"]["tags"]}[MANUAL_MOVE_TAG]
    assert json.loads(claimed) == {**record, "actor": "training", "authenticated": True}
    assert actor.recorded() == "manual:training on behalf of alice"


def test_a_rotated_mlflow_password_takes_effect_at_the_next_up(stack, model, monkeypatch):
    """Rotation: a new value in the environment (or secrets.env) and `stack up`; the old one is refused."""
    old = stack.secrets.mlflow_password("serving")
    new = uuid.uuid4().hex
    monkeypatch.setenv("DRIFTLOOP_MLFLOW_SERVING_PASSWORD", new)
    try:
        stack_mod.up(stack, services=["mlflow"])
        assert _mlflow(stack, "serving", "GET", "registered-models/search", password=new).status_code == 200
        assert _mlflow(stack, "serving", "GET", "registered-models/search", password=old).status_code == 401
    finally:
        monkeypatch.delenv("DRIFTLOOP_MLFLOW_SERVING_PASSWORD")
        stack_mod.up(stack, services=["mlflow"])
    assert _mlflow(stack, "serving", "GET", "registered-models/search").status_code == 200


# ---------------------------------------------------------------- Prefect


def test_prefect_refuses_a_call_without_the_auth_string(stack):
    api = stack.prefect_api_url
    assert httpx.post(f"{api}/flows/filter", json={}, timeout=30).status_code == 401
    wrong = "Basic " + base64.b64encode(b"driftloop:not-it").decode()
    assert httpx.post(f"{api}/flows/filter", json={}, headers={"Authorization": wrong}, timeout=30).status_code == 401
    # the auth string (what PREFECT_API_AUTH_STRING makes the client send) goes through
    right = "Basic " + base64.b64encode(stack.secrets.prefect_auth_string.encode()).decode()
    assert httpx.post(f"{api}/flows/filter", json={}, headers={"Authorization": right}, timeout=30).status_code == 200
    # the health probe stays open
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200


# ---------------------------------------------------------------- PostgreSQL


def _pg_connect(stack, user: str, db: str, password: str | None):
    return psycopg2.connect(
        host="127.0.0.1", port=stack.cfg.postgres_port, user=user, dbname=db, password=password, connect_timeout=5
    )


def test_postgres_admits_each_database_s_own_role_only(stack, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    for db in stack_mod.DATABASES:
        user, password = stack.pg_login(db)
        _pg_connect(stack, user, db, password).close()  # its own role, its password: in
        with pytest.raises(psycopg2.OperationalError):
            _pg_connect(stack, user, db, None)  # no password
        with pytest.raises(psycopg2.OperationalError):
            _pg_connect(stack, user, db, password + "x")  # a wrong one
        for other in stack_mod.DATABASES:
            if other != db:
                other_user, other_password = stack.pg_login(other)
                with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):
                    _pg_connect(stack, other_user, db, other_password)  # another database's role
    # the superuser cannot log in over TCP at all, nor can any role reach the maintenance database
    with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):
        _pg_connect(stack, stack.cfg.postgres_superuser, "postgres", "")
    user, password = stack.pg_login("driftloop")
    with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba\.conf entry"):
        _pg_connect(stack, user, "postgres", password)


def test_the_database_roles_are_not_superusers(stack):
    conn = stack_mod.superuser_connection(stack)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = ANY(%s)",
                ([stack.pg_login(db)[0] for db in stack_mod.DATABASES],),
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    assert len(rows) == len(stack_mod.DATABASES)
    assert all(not (sup or createdb or createrole) for _name, sup, createdb, createrole in rows), rows


# ---------------------------------------------------------------- SeaweedFS


def _s3(stack, who: str | None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1}, **({"signature_version": UNSIGNED} if who is None else {}))
    keys = (
        {}
        if who is None
        else dict(zip(("aws_access_key_id", "aws_secret_access_key"), stack.secrets.s3_keys(who), strict=True))
    )
    return boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1", config=config, **keys)


def _s3_code(call) -> str:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "OK"


@pytest.fixture(scope="module")
def model_file(stack) -> str:
    key = f"mlflow/{uuid.uuid4().hex[:8]}/model.bin"
    _s3(stack, "admin").put_object(Bucket=stack.cfg.bucket, Key=key, Body=b"the champion" * 100_000)
    return key


def test_s3_refuses_a_call_without_keys(stack, model_file):
    bucket, anon = stack.cfg.bucket, _s3(stack, None)
    assert _s3_code(lambda: anon.get_object(Bucket=bucket, Key=model_file)) == "AccessDenied"
    assert _s3_code(lambda: anon.put_object(Bucket=bucket, Key=model_file, Body=b"swapped")) == "AccessDenied"
    assert _s3_code(lambda: anon.list_objects_v2(Bucket=bucket)) == "AccessDenied"


@pytest.mark.parametrize(
    ("who", "key", "read", "write"),
    [
        # serving: writes its logs, reads models, touches nothing else
        ("serving", "mlflow/", "OK", "AccessDenied"),
        ("serving", "logs/", "OK", "OK"),
        ("serving", "dvc/", "AccessDenied", "AccessDenied"),
        # training: writes data and the logs (compaction); models only through the MLflow server
        ("training", "dvc/", "OK", "OK"),
        ("training", "logs/", "OK", "OK"),
        ("training", "mlflow/", "OK", "AccessDenied"),
        # the monitor reads
        ("monitor", "logs/", "OK", "AccessDenied"),
        ("monitor", "dvc/", "OK", "AccessDenied"),
        ("monitor", "mlflow/", "OK", "AccessDenied"),
        # the MLflow server's artifact proxy: the model files only
        ("mlflow", "mlflow/", "OK", "OK"),
        ("mlflow", "logs/", "AccessDenied", "AccessDenied"),
    ],
)
def test_each_s3_identity_reaches_its_prefixes_only(stack, model_file, who, key, read, write):
    bucket, admin, client = stack.cfg.bucket, _s3(stack, "admin"), _s3(stack, who)
    existing = model_file if key == "mlflow/" else f"{key}{uuid.uuid4().hex[:8]}/part"
    if key != "mlflow/":
        admin.put_object(Bucket=bucket, Key=existing, Body=b"x")
    assert _s3_code(lambda: client.get_object(Bucket=bucket, Key=existing)) == read
    fresh = f"{key}{uuid.uuid4().hex[:8]}/by-{who}"
    assert _s3_code(lambda: client.put_object(Bucket=bucket, Key=fresh, Body=b"y")) == write
    if write != "OK":
        # nor overwrite or delete what is there
        assert _s3_code(lambda: client.put_object(Bucket=bucket, Key=existing, Body=b"swapped")) == "AccessDenied"
        assert _s3_code(lambda: client.delete_object(Bucket=bucket, Key=existing)) == "AccessDenied"
    assert admin.get_object(Bucket=bucket, Key=model_file)["Body"].read() == b"the champion" * 100_000
    assert _s3_code(lambda: client.create_bucket(Bucket=f"x{uuid.uuid4().hex[:8]}")) == "AccessDenied"


def test_a_wrong_secret_key_is_refused(stack, model_file):
    import boto3

    access, _ = stack.secrets.s3_keys("training")
    client = boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key="x" * 40,
    )
    assert _s3_code(lambda: client.get_object(Bucket=stack.cfg.bucket, Key=model_file)) == "SignatureDoesNotMatch"


def test_the_filer_and_volume_ports_refuse_calls_without_a_jwt(stack, model_file):
    """Past the S3 gateway: the filer's HTTP port and the volume server's take only requests with a
    JWT signed with the stack's keys (the S3 gateway and the master sign them)."""
    filer = f"http://127.0.0.1:{_weed_port(stack, 'filer.port')}/buckets/{stack.cfg.bucket}"
    assert httpx.get(f"{filer}/{model_file}", timeout=10).status_code == 401
    assert httpx.put(f"{filer}/{model_file}", content=b"swapped", timeout=10).status_code == 401
    assert httpx.post(f"{filer}/{model_file}", files={"file": ("m", b"swapped")}, timeout=10).status_code == 401
    assert httpx.delete(f"{filer}/{model_file}", timeout=10).status_code == 401
    assert httpx.get(f"{filer}/mlflow/", headers={"Accept": "application/json"}, timeout=10).status_code == 401
    # a file id the master hands out (its HTTP API asks nothing: see docs/stack.md) cannot be
    # written, read or deleted on the volume server without the JWT
    master = f"http://127.0.0.1:{_weed_port(stack, 'master.port')}"
    assigned = httpx.get(f"{master}/dir/assign", timeout=10).json()
    volume = f"http://{assigned['url']}/{assigned['fid']}"
    assert httpx.post(volume, files={"file": ("x", b"planted")}, timeout=10).status_code == 401
    assert httpx.get(volume, timeout=10).status_code == 401
    assert httpx.delete(volume, timeout=10).status_code == 401
    assert (
        _s3(stack, "admin")
        .get_object(Bucket=stack.cfg.bucket, Key=model_file)["Body"]
        .read()
        .startswith(b"the champion")
    )
