"""deploy/docker-compose.yml and deploy/Dockerfile agree with the settings, the CLI and the Prometheus config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from streams.cli.main import build_parser
from streams.settings import SETTINGS, settings_from_env

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = DEPLOY.parent / "pyproject.toml"
SETTING_VARS = {env for _, env, _, _ in SETTINGS}
DEFAULTS = {env: default for _, env, default, _ in SETTINGS}


def compose() -> dict:
    """The compose file, anchors and merge keys resolved by PyYAML."""
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict (compose accepts a mapping or a KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume, short or long syntax."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            out.append((vol["source"], vol["target"]))
        else:
            src, target = vol.split(":")[:2]
            out.append((src, target))
    return out


def frwatch_services() -> dict[str, dict]:
    """Services running the frwatch image (built from deploy/Dockerfile)."""
    return {
        name: svc
        for name, svc in services().items()
        if isinstance(svc.get("build"), dict)
        and svc["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def scrape_targets(job: str) -> list[str]:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (scrape,) = [sc for sc in config["scrape_configs"] if sc["job_name"] == job]
    return [t for sc in scrape["static_configs"] for t in sc["targets"]]


def test_every_host_path_mounted_exists() -> None:
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        for src, target in volume_mounts(svc):
            if src.startswith((".", "/", "~")):
                assert not src.startswith(("/", "~")), f"{name}: absolute host path {src}"
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist under deploy/"
            else:
                assert src in declared, f"{name}: named volume {src} is not declared"
            assert target.startswith("/"), f"{name}: {target}"


def test_build_context_and_dockerfile_exist() -> None:
    built = frwatch_services()
    assert {"frwatch", "topics"} <= set(built)
    for name, svc in built.items():
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert (context / "pyproject.toml").is_file(), name
        assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve(), name


def test_frwatch_variables_are_real_settings_and_valid() -> None:
    seen = False
    for name, svc in services().items():
        env = environment(svc)
        frwatch_vars = {k for k in env if k.startswith("FRWATCH_")}
        assert frwatch_vars <= SETTING_VARS, (
            f"{name}: unknown {sorted(frwatch_vars - SETTING_VARS)}"
        )
        if frwatch_vars:
            seen = True
            settings_from_env(env)  # raises SettingsError on an invalid value
    assert seen


def test_worker_binds_all_interfaces_on_the_scraped_port() -> None:
    worker = services()["frwatch"]
    settings = settings_from_env(environment(worker))
    assert settings.web_bind == "0.0.0.0"
    targets = scrape_targets("frwatch")
    assert targets == [f"frwatch:{settings.web_port}"]
    published = [str(p).rsplit(":", 1)[-1] for p in worker.get("ports", [])]
    assert str(settings.web_port) in published


def test_worker_uses_a_volume_for_the_rocksdb_store() -> None:
    worker = services()["frwatch"]
    settings = settings_from_env(environment(worker))
    if settings.store.startswith("rocksdb"):
        assert "/var/lib/frwatch" in {t for _, t in volume_mounts(worker)}
        # the image installs frwatch, which depends on faust-streaming[rocksdict]
        assert re.search(r"^RUN pip install \. ", DOCKERFILE.read_text(), re.M)
        assert "faust-streaming[rocksdict]" in PYPROJECT.read_text()


def test_worker_and_topics_reach_kafka_inside_the_compose_network() -> None:
    svcs = services()
    listeners = environment(svcs["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("frwatch", "topics"):
        broker = settings_from_env(environment(svcs[name])).bootstrap_servers
        assert broker == ["kafka:19092"], name
        assert "PLAINTEXT://kafka:19092" in listeners
    assert svcs["frwatch"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize(
    ("service", "argv"), [("frwatch", ["worker"]), ("topics", ["topics", "create"])]
)
def test_commands_are_frwatch_subcommands(service: str, argv: list[str]) -> None:
    assert services()[service]["command"] == argv
    build_parser().parse_args(argv)  # exits 2 on an unknown command


def test_kafka_jmx_exporter_port_and_rules_match_the_scrape_job() -> None:
    kafka = services()["kafka"]
    opts = environment(kafka)["KAFKA_OPTS"]
    agent = re.search(r"-javaagent:(\S+?)=(\d+):(\S+)", opts)
    assert agent, opts
    jar, port, rules = agent.groups()
    assert scrape_targets("kafka") == [f"kafka:{port}"]
    targets = {t: s for s, t in volume_mounts(kafka)}
    assert targets.get(rules) == "./prometheus/jmx/kafka.yml"
    assert str(Path(jar).parent) in targets  # the volume the jmx-agent service fills
    assert kafka["depends_on"]["jmx-agent"]["condition"] == "service_completed_successfully"


def test_images_are_pinned() -> None:
    for name, svc in services().items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
    assert services()["kafka"]["image"] == "apache/kafka:4.1.1"


def test_prometheus_and_grafana_mount_their_config() -> None:
    svcs = services()
    prom = dict((t, s) for s, t in volume_mounts(svcs["prometheus"]))
    assert prom["/etc/prometheus"] == "./prometheus"
    graf = dict((t, s) for s, t in volume_mounts(svcs["grafana"]))
    assert graf["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert graf["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"pip install \.", text)
    assert re.search(r"FRWATCH_WEB_BIND=0\.0\.0\.0", text)
    assert re.search(rf"^EXPOSE {DEFAULTS['FRWATCH_WEB_PORT']}$", text, re.M)
    assert re.search(rf"FRWATCH_WEB_PORT={DEFAULTS['FRWATCH_WEB_PORT']}\b", text)
    assert re.search(r'^ENTRYPOINT \["frwatch"\]$', text, re.M)
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    workdirs = re.findall(r"^WORKDIR (\S+)$", text, re.M)
    assert workdirs[-1] == "/var/lib/frwatch"
    env_vars = set(re.findall(r"\b(FRWATCH_[A-Z_]+)=", text))
    assert env_vars <= SETTING_VARS
