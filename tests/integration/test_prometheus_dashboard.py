"""Every dashboard query against a real Prometheus (Debian's) scraping a real worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from scenarios import scenario_archive, write_jsonl
from worker_harness import (
    REPO,
    Worker,
    free_port,
    frwatch,
    frwatch_env,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "frwatch.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Grafana's variables, as a 2-minute dashboard over this test's run would expand them
GRAFANA_VARS = {"$__rate_interval": "2m", "$__interval": "15s", "$__range": "5m", "$job": "frwatch"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    doc = json.loads(DASHBOARD.read_text())
    return [
        (p.get("title", "?"), t["expr"])
        for p in walk(doc["panels"])
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def expand(expr: str) -> str:
    """Replace Grafana's variables by concrete values."""
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def prom_query(port: int, expr: str) -> dict[str, Any]:
    """One instant query through Prometheus's HTTP API."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read()))


def start_prometheus(
    port: int, config_path: Path, target: str, data: Path
) -> subprocess.Popen[bytes]:
    """Our deploy config with 1 s scrapes of this test's worker, its alert rules loaded."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [target]}]}
        for job in config["scrape_configs"]
        if job["job_name"] == "frwatch"
    ]
    config_path.write_text(yaml.safe_dump(config))
    log = open(data.parent / "prometheus.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_every_dashboard_query_returns_data(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    assert shutil.which("prometheus"), "Debian's prometheus is required (make test installs it)"
    port, config_path = free_port(), tmp_path / "prometheus.yml"
    env = frwatch_env(kafka_bootstrap, "frwatch-" + unique_name)
    accounts, events = scenario_archive(tmp_path, hours=2)
    lines = events.read_bytes().splitlines()
    frwatch(["topics", "create"], env)
    frwatch(["accounts", "load", str(accounts)], env)
    worker = Worker(env, tmp_path / "w").start()
    prom = start_prometheus(port, config_path, f"127.0.0.1:{worker.port}", tmp_path / "tsdb")
    try:
        wait_for(lambda: _up(port), 60, "prometheus scraping the worker", worker)
        # traffic in waves, so that rates over the dashboard's interval are not zero
        for i in range(3):
            chunk = write_jsonl(tmp_path / f"chunk{i}.jsonl", lines[i::3])
            frwatch(["publish", str(chunk)], env)
            time.sleep(2.0)
        wait_for(
            lambda: worker.records_counted() >= 1 and _settled(worker),
            60,
            "the worker to finish",
            worker,
        )
        time.sleep(3.0)  # a few more scrapes
        empty = []
        for title, expr in dashboard_queries():
            answer = prom_query(port, expand(expr))
            assert answer["status"] == "success", (title, expr, answer)
            if not answer["data"]["result"]:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        on_topic = [
            orjson.loads(v)
            for _, v in read_topic(kafka_bootstrap, env["FRWATCH_TOPIC_ALERTS"])
            if v
        ]
        opens = [a for a in on_topic if a["status"] == "open"]
        total = prom_query(port, 'sum(frwatch_alerts_total{job="frwatch"})')
        assert float(total["data"]["result"][0]["value"][1]) == len(opens) > 0
        revisions = prom_query(port, 'sum(frwatch_alert_revisions_total{job="frwatch"})')
        assert float(revisions["data"]["result"][0]["value"][1]) == len(on_topic)
        rules = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).read()
        )
        loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "FrwatchWorkerDown" in loaded
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        worker.stop()


def _up(port: int) -> bool:
    try:
        res = prom_query(port, 'up{job="frwatch"}')["data"]["result"]
    except OSError:
        return False
    return bool(res) and res[0]["value"][1] == "1"


_last: dict[int, float] = {}


def _settled(worker: Worker) -> bool:
    """True once the record count stopped moving for two polls."""
    n = worker.records_counted()
    prev = _last.get(worker.port)
    _last[worker.port] = n
    if prev == n:
        return True
    time.sleep(0.5)
    return False
