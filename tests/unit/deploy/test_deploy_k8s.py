"""The Kubernetes manifests in deploy/k8s: worker StatefulSet, settings ConfigMap, headless Service, topics Job."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.cli.main import build_parser
from streams.settings import SETTINGS, settings_from_env

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
SETTING_VARS = {env for _, env, _, _ in SETTINGS}
DATA_DIR = "/var/lib/frwatch"


def documents() -> list[dict]:
    """Every Kubernetes object in deploy/k8s (the kustomization excluded)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def settings_env() -> dict[str, str]:
    return {k: str(v) for k, v in one("ConfigMap", "frwatch-config")["data"].items()}


def worker() -> dict:
    return one("StatefulSet", "frwatch-worker")


def worker_container() -> dict:
    (container,) = worker()["spec"]["template"]["spec"]["containers"]
    return container


def container_env(container: dict) -> dict[str, str]:
    """Variables a container gets from envFrom (our ConfigMap) and env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "frwatch-config"
        env.update(settings_env())
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def all_containers() -> list[tuple[str, dict]]:
    out = []
    for doc in documents():
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            out.append((doc["metadata"]["name"], c))
    return out


def test_manifests_parse_have_no_namespace_and_are_all_in_the_kustomization() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["ConfigMap", "Job", "Service", "StatefulSet"]
    for doc in documents():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
        assert doc["apiVersion"] in {"v1", "apps/v1", "batch/v1"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_configmap_holds_only_valid_frwatch_settings() -> None:
    env = settings_env()
    assert set(env) <= SETTING_VARS, sorted(set(env) - SETTING_VARS)
    settings = settings_from_env(env)
    assert settings.web_bind == "0.0.0.0"
    assert settings.store == "rocksdb://"


def test_every_container_env_is_a_real_setting() -> None:
    for owner, container in all_containers():
        names = {i["name"] for i in container.get("env", [])}
        assert {n for n in names if n.startswith("FRWATCH_")} <= SETTING_VARS, owner
        assert names <= SETTING_VARS, f"{owner}: unexpected env {sorted(names - SETTING_VARS)}"
        settings_from_env(container_env(container))


def test_statefulset_runs_three_workers_with_rocksdb_on_a_claimed_volume() -> None:
    sts = worker()
    spec = sts["spec"]
    assert spec["replicas"] == 3
    container = worker_container()
    assert container["command"] == ["frwatch", "worker"]
    build_parser().parse_args(container["command"][1:])
    assert settings_from_env(container_env(container)).store == "rocksdb://"
    assert container["workingDir"] == DATA_DIR
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == DATA_DIR
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_headless_service_governs_the_statefulset() -> None:
    service = one("Service", "frwatch-worker")
    assert service["spec"]["clusterIP"] == "None"
    assert worker()["spec"]["serviceName"] == "frwatch-worker"
    pod_labels = worker()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_annotations_probes_and_ports_use_the_web_port() -> None:
    port = settings_from_env(settings_env()).web_port
    annotations = worker()["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    container = worker_container()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["metrics"] == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/metrics", probe
        assert named.get(get["port"], get["port"]) == port, probe
    service_ports = one("Service", "frwatch-worker")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service_ports] == [(port, "metrics")]


def test_pods_run_as_the_image_user_and_can_write_the_volume() -> None:
    pod = worker()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("kind", ["StatefulSet", "Job"])
def test_images_are_tagged(kind: str) -> None:
    for container in one(kind)["spec"]["template"]["spec"]["containers"]:
        image = container["image"]
        assert ":" in image and not image.endswith(":latest"), image


def test_topics_job_creates_the_topics_with_the_same_settings() -> None:
    job = one("Job", "frwatch-topics-create")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"OnFailure", "Never"}
    (container,) = pod["containers"]
    assert container["command"] == ["frwatch", "topics", "create"]
    build_parser().parse_args(container["command"][1:])
    assert container_env(container) == container_env(worker_container())
    assert container["image"] == worker_container()["image"]
