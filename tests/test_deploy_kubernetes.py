"""deploy/kubernetes/ and deploy/Dockerfile: every manifest valid for Kubernetes 1.30 (kubernetes-validate,
strict), the ServiceMonitor against the fields of its CRD, and the objects agreeing with each other, with
the auditor's config they carry, with the README's secret commands and with the image the Dockerfile
builds. No cluster and no docker: what can be checked offline is."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from auditor.cli.host import HOST_ENV
from auditor.config import DEFAULT_EXPORTER_PORT, load_config
from tests.hostkit import daemon_env, daemon_process, free_port
from tests.test_host_install import SOURCES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
KUBERNETES = "1.30"
NAMESPACE = "gpu-auditor"
SERVICEMONITOR_SCHEMA = (
    Path(__file__).parent / "fixtures" / "kubernetes" / "servicemonitor-v1-subset.schema.json"
)
CONFIG_KEY = "auditor.toml"

Obj = dict[str, Any]


def _objects() -> list[tuple[Path, Obj]]:
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path, doc))
    return found


OBJECTS = _objects()


def _of_kind(*kinds: str) -> list[Obj]:
    return [obj for _, obj in OBJECTS if obj["kind"] in kinds]


def _named(kind: str, name: str) -> Obj:
    [obj] = [o for o in _of_kind(kind) if o["metadata"]["name"] == name]
    return obj


def _validate_servicemonitor(obj: Obj) -> None:
    jsonschema.validate(obj, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    # Its metadata is a plain ObjectMeta: check it as a built-in kind's.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBERNETES, strict=True
    )


def _validate_prometheusrule(obj: Obj) -> None:
    """The CRD's outer shape; its groups are checked by promtool, as the same groups in deploy/prometheus."""
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["apiVersion"] == "monitoring.coreos.com/v1" and set(obj["spec"]) == {"groups"}
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, KUBERNETES, strict=True
    )


def _validate(obj: Obj) -> None:
    if obj["kind"] == "ServiceMonitor":
        _validate_servicemonitor(obj)
    elif obj["kind"] == "PrometheusRule":
        _validate_prometheusrule(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


RULE_FILES = [DEPLOY / "prometheus" / "recording.yaml", DEPLOY / "prometheus" / "alerts.yaml"]
PROMETHEUS_RULE = MANIFESTS / "prometheusrule.yaml"


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def prometheus_rule() -> str:
    """deploy/kubernetes/prometheusrule.yaml: the rule files' groups as one PrometheusRule."""
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "gpu-auditor",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": "gpu-auditor"},
        },
        "spec": {"groups": groups},
    }

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _block_strings)
    head = (
        "# deploy/prometheus/recording.yaml and alerts.yaml as one PrometheusRule (Prometheus Operator).\n"
        "# Generated: python -m tests.test_deploy_kubernetes > deploy/kubernetes/prometheusrule.yaml\n"
        "# (tests/test_deploy_kubernetes.py fails when it differs from the rule files).\n"
    )
    return head + yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=110)


def test_the_prometheusrule_holds_the_rule_files_groups() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule()


def test_the_manifests_are_the_expected_objects() -> None:
    kinds = sorted((obj["kind"], obj["metadata"]["name"]) for _, obj in OBJECTS)
    assert ("DaemonSet", "gpu-auditor-host") in kinds
    assert ("Deployment", "gpu-auditor-fleet") in kinds
    assert ("Namespace", NAMESPACE) in kinds
    assert {k for k, _ in kinds} == {
        "Namespace",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for _, obj in OBJECTS:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize(
    "obj", [o for _, o in OBJECTS], ids=[f"{p.relative_to(MANIFESTS)}:{o['kind']}" for p, o in OBJECTS]
)
def test_each_manifest_is_valid(obj: Obj) -> None:
    _validate(obj)


def test_the_validation_catches_a_misspelt_or_misplaced_field() -> None:
    """The checks above can fail: strict schemas reject what the API server would silently drop."""
    daemonset = copy.deepcopy(_named("DaemonSet", "gpu-auditor-host"))
    daemonset["spec"]["template"]["spec"]["runtimeClass"] = "nvidia"  # runtimeClassName
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(daemonset)
    daemonset = copy.deepcopy(_named("DaemonSet", "gpu-auditor-host"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9478"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(daemonset)
    monitor = copy.deepcopy(_of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)
    monitor = copy.deepcopy(_of_kind("ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["basicauth"] = monitor["spec"]["endpoints"][0].pop("basicAuth")
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)
    monitor = copy.deepcopy(_of_kind("ServiceMonitor")[0])
    monitor["metadata"]["labels"] = {"app.kubernetes.io/name": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(monitor)


# -- the objects agree with each other ------------------------------------------------------------


def _workloads() -> list[Obj]:
    return _of_kind("DaemonSet", "Deployment")


def _auditor_container(workload: Obj) -> Obj:
    [container] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "auditor"]
    assert isinstance(container, dict)
    return container


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _config_of(workload: Obj, tmp_path: Path) -> tuple[Obj, Any]:
    """(the ConfigMap the workload mounts at /etc/auditor, the auditor config in it, fully checked)."""
    spec = workload["spec"]["template"]["spec"]
    [mount] = [m for m in _auditor_container(workload)["volumeMounts"] if m["mountPath"] == "/etc/auditor"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    config_map = _named("ConfigMap", volume["configMap"]["name"])
    args = _auditor_container(workload)["args"]
    assert args[args.index("--config") + 1] == f"/etc/auditor/{CONFIG_KEY}"
    path = tmp_path / CONFIG_KEY
    path.write_text(config_map["data"][CONFIG_KEY])
    return config_map, load_config(path, references=True)


@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_service_servicemonitor_pods_and_config_fit_together(kind: str, tmp_path: Path) -> None:
    [workload] = _of_kind(kind)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _matches(workload["spec"]["selector"]["matchLabels"], pod_labels)
    container = _auditor_container(workload)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    _, config = _config_of(workload, tmp_path)
    # The exporter listens where the pod says it does, on the pod's address.
    host, _, port = config.daemon.exporter_listen.rpartition(":")
    assert host == "0.0.0.0" and int(port) == ports["metrics"] == DEFAULT_EXPORTER_PORT  # noqa: S104
    [service] = [s for s in _of_kind("Service") if _matches(s["spec"]["selector"], pod_labels)]
    [service_port] = [p for p in service["spec"]["ports"] if p["targetPort"] == "metrics"]
    [monitor] = [
        m
        for m in _of_kind("ServiceMonitor")
        if _matches(m["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    # Basic auth: the daemon checks the password Prometheus sends, both from one Secret key.
    assert config.daemon.exporter_basic_auth_user is not None
    env = {e["name"]: e for e in container["env"]}
    reference = env[config.daemon.exporter_basic_auth_password_env]["valueFrom"]["secretKeyRef"]
    assert endpoint["basicAuth"]["password"] == {"name": reference["name"], "key": reference["key"]}
    assert endpoint["basicAuth"]["username"]["name"] == reference["name"]
    # The liveness probe cannot send credentials: it checks the port, never /metrics.
    assert "tcpSocket" in container["livenessProbe"]


def test_host_mode_sees_the_nodes_gpus_through_the_nvidia_runtime(tmp_path: Path) -> None:
    daemonset = _named("DaemonSet", "gpu-auditor-host")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    container = _auditor_container(daemonset)
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]["value"].split(",")  # NVML's capability
    # The host's name is the node's: what dcgm-exporter puts in Hostname (its NODE_NAME).
    assert env[HOST_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # No GPU taken from a workload.
    assert "nvidia.com/gpu" not in json.dumps(container.get("resources", {}))
    _, config = _config_of(daemonset, tmp_path)
    assert config.fleet is None and config.deployments
    assert all(selector.host for d in config.deployments for selector in d.gpus)
    # The SQLite store is on the mounted state volume.
    [state] = [m for m in container["volumeMounts"] if m["name"] == "state"]
    assert config.store.url == f"sqlite:///{state['mountPath']}/auditor.db"


def test_fleet_mode_reads_prometheus_and_keeps_its_state_in_postgresql(tmp_path: Path) -> None:
    deployment = _named("Deployment", "gpu-auditor-fleet")
    spec = deployment["spec"]
    # Replicas could share the store (roll-ups take an advisory lock), but one is enough; an update
    # replaces it rather than running two side by side.
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert "runtimeClassName" not in spec["template"]["spec"]  # no GPU, no NVIDIA runtime
    container = _auditor_container(deployment)
    _, config = _config_of(deployment, tmp_path)
    assert config.fleet is not None
    assert all(d.prometheus_matchers and d.gpu_count and not d.gpus for d in config.deployments)
    assert make_url(config.store.url).get_backend_name() == "postgresql"
    assert make_url(config.store.url).password is None
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]  # libpq's variable: never in the config


WHERE_AND_WHO = {
    "url",
    "basic_auth_user",
    "basic_auth_password_env",
    "basic_auth_password_file",
    "bearer_token_env",
    "bearer_token_file",
    "ca_file",
}
"""A fleet's Prometheus and its credentials: what a site (and the Kubernetes example) sets its own."""


def test_the_fleet_configmap_and_the_fleet_example_agree(tmp_path: Path) -> None:
    """Two examples of a fleet config exist: deploy/fleet.example.toml and the fleet Deployment's
    ConfigMap. Apart from where things are (URLs, credentials, the deployments' label matchers:
    under Kubernetes dcgm-exporter's pod labels arrive as exported_*), their roll-up behaves the same:
    a change to one that the other does not follow fails here."""
    _, mapped = _config_of(_named("Deployment", "gpu-auditor-fleet"), tmp_path)
    example = load_config(ROOT / "deploy" / "fleet.example.toml", references=True)
    assert mapped.fleet is not None and example.fleet is not None
    assert mapped.fleet.model_dump(exclude=WHERE_AND_WHO) == example.fleet.model_dump(exclude=WHERE_AND_WHO)
    assert mapped.store.model_dump(exclude={"url"}) == example.store.model_dump(exclude={"url"})
    assert mapped.timezone == example.timezone
    for config in (mapped, example):
        assert make_url(config.store.url).get_backend_name() == "postgresql"
        assert make_url(config.store.url).password is None  # PGPASSWORD, never the file
        assert all(d.prometheus_matchers and not d.gpus for d in config.deployments)


def _secret_references() -> Iterator[tuple[str, str]]:
    for workload in _workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    yield reference["name"], reference["key"]
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                for item in volume["secret"].get("items", [{"key": "*"}]):
                    yield volume["secret"]["secretName"], item["key"]
    for monitor in _of_kind("ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            for selector in endpoint.get("basicAuth", {}).values():
                yield selector["name"], selector["key"]


def _readme_secrets() -> dict[str, dict[str, str]]:
    """`kubectl create secret generic NAME --from-literal=KEY=VALUE …` in the README: NAME → KEY → VALUE
    (a value from the shell, `$VAR` or `$(…)`, as written)."""
    created: dict[str, dict[str, str]] = {}
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "kubectl" in line and "create secret generic" in line:
            words = shlex.split(line.split("#", 1)[0])
            name = words[words.index("generic") + 1]
            for word in words:
                if word.startswith(("--from-literal=", "--from-file=")):
                    key, _, value = word.split("=", 1)[1].partition("=")
                    created.setdefault(name, {})[key] = value
    return created


def test_every_secret_the_manifests_reference_is_created_in_the_readme() -> None:
    created = _readme_secrets()
    referenced = set(_secret_references())
    assert referenced
    missing = {(name, key) for name, key in referenced if key not in created.get(name, {})}
    assert not missing, f"README's Kubernetes section creates no {missing}"


def _pod_env(container: Obj, node: str, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet makes it on `node`: optional Secrets left out (the
    Slack token: no message may leave a test), a value the README takes from the shell made up."""
    env = {}
    for variable in container["env"]:
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[variable["name"]] = node
        elif "secretKeyRef" in source and not source["secretKeyRef"].get("optional"):
            reference = source["secretKeyRef"]
            value = secrets[reference["name"]][reference["key"]]
            env[variable["name"]] = _made_up_secret() if value.startswith("$") else value
    return env


def _made_up_secret() -> str:
    return base64.b32encode(os.urandom(15)).decode().lower()


def test_the_daemon_serves_the_servicemonitor_on_the_daemonsets_config_and_secrets(tmp_path: Path) -> None:
    """The real daemon, on the ConfigMap's config (its store and port moved into the test), with the
    environment the DaemonSet gives it on a node of the config (NVML faked at its boundary): it serves
    the GPUs labelled as dcgm-exporter labels them, to the ServiceMonitor's credentials only."""
    daemonset = _named("DaemonSet", "gpu-auditor-host")
    config_map, config = _config_of(daemonset, tmp_path)
    [node] = {selector.host for d in config.deployments for selector in d.gpus}
    port = free_port()
    text = config_map["data"][CONFIG_KEY]
    moved = text.replace(config.store.url, f"sqlite:///{tmp_path / 'auditor.db'}").replace(
        config.daemon.exporter_listen, f"127.0.0.1:{port}"
    )
    assert moved.count(str(tmp_path)) == 1 and f":{port}" in moved
    path = tmp_path / "moved.toml"
    path.write_text(moved)
    secrets = _readme_secrets()
    env = _pod_env(_auditor_container(daemonset), node, secrets)
    assert "SLACK_BOT_TOKEN" not in env
    gpus = {"gpus": [{"profile": "h100_load"}, {"profile": "h100_idle"}, {"profile": "h100_idle"}]}
    [monitor] = [m for m in _of_kind("ServiceMonitor") if m["metadata"]["name"] == "gpu-auditor-host"]
    auth = monitor["spec"]["endpoints"][0]["basicAuth"]
    user = secrets[auth["username"]["name"]][auth["username"]["key"]]
    password = env[config.daemon.exporter_basic_auth_password_env]
    assert user == config.daemon.exporter_basic_auth_user  # the README's Secret and the ConfigMap agree
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    url = f"http://127.0.0.1:{port}/metrics"
    with daemon_process(path, daemon_env(tmp_path, gpus, **env)) as process:
        body = ""
        deadline = time.monotonic() + 60
        while "auditor_gpu_info{" not in body and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr_text()
            try:
                request = urllib.request.Request(url, headers={"Authorization": f"Basic {credentials}"})
                with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310
                    body = reply.read().decode()
            except OSError:
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
    info = [
        sample.labels
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "auditor_gpu_info"
    ]
    # Indexes 0 and 1 are the deployment's; the third GPU of the node is sampled without one.
    assert {(i["Hostname"], i["gpu"], i.get("deployment", "")) for i in info} == {
        (node, "0", "llama-70b"),
        (node, "1", "llama-70b"),
        (node, "2", ""),
    }
    assert all(i["UUID"].startswith("GPU-") and i["modelName"] for i in info)


# -- the image ------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            steps.append((instruction.upper(), arguments.strip()))
    return steps


def test_the_dockerfile_copies_what_the_wheel_is_built_from_and_runs_the_console_script() -> None:
    steps = _dockerfile()
    copied = []
    for instruction, arguments in steps:
        if instruction == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            copied += [s.rstrip("/") for s in sources]
    for source in copied:
        assert (ROOT / source).exists(), source
    # Exactly the files tests/test_host_install.py builds and installs the wheel from.
    assert sorted(copied) == sorted(SOURCES)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [(script, target)] = pyproject["project"]["scripts"].items()
    assert target == "auditor.__main__:main"
    run = " ".join(a for i, a in steps if i == "RUN")
    venv = re.search(r"python -m venv (\S+)", run)
    assert venv, run
    assert f'{venv.group(1)}/bin/pip install --no-cache-dir ".[postgres]"' in run
    assert "postgres" in pyproject["project"]["optional-dependencies"]  # fleet mode's store
    [entrypoint] = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    assert entrypoint == [f"{venv.group(1)}/bin/{script}"]
    [cmd] = [json.loads(a) for i, a in steps if i == "CMD"]
    assert cmd == ["daemon", "--config", f"/etc/auditor/{CONFIG_KEY}"]
    [expose] = [a for i, a in steps if i == "EXPOSE"]
    assert int(expose) == DEFAULT_EXPORTER_PORT
    # The user the pods run as.
    [user] = [a for i, a in steps if i == "USER"]
    uid = int(user.split(":")[0])
    for workload in _workloads():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    # The state directory is where the default store URL goes (systemd's variable).
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "STATE_DIRECTORY=/var/lib/auditor" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=utility" in env


def test_the_dockerignore_keeps_out_nothing_the_image_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    copied = {
        a.split()[0].rstrip("/") for i, a in _dockerfile() if i == "COPY" and not a.startswith("--from")
    }
    copied |= set(SOURCES)
    for pattern in ignored:
        assert pattern.rstrip("/") not in copied, pattern


def test_the_workloads_run_the_image_the_readme_builds() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    readme = (ROOT / "README.md").read_text()
    image = f"gpu-auditor:{version}"
    assert f"docker build -f deploy/Dockerfile -t {image} ." in readme
    for workload in _workloads():
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == image, container["name"]


if __name__ == "__main__":
    print(prometheus_rule(), end="")
