"""The Grafana dashboard and the alerting rules query only metrics that frwatch exposes.

Allowed names: SPEC 7's metrics (histograms with _bucket/_sum/_count), and the Faust
sensor metrics under the fixed prefix `frwatch_faust_`, taken from the installed
faust's own `FaustMetrics.create` so that a renamed Faust metric fails here.
`dashboard_queries()` is the one place that lists the dashboard's PromQL, for tests
that run the queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "frwatch.json"
RULES = DEPLOY / "prometheus" / "frwatch-alerts.rules.yml"
DATASOURCE_UID = "prometheus"
FAUST_PREFIX = "frwatch_faust"

# SPEC 7: name -> (type, labels). Part of the contract: change only with the SPEC.
SPEC7: dict[str, tuple[str, frozenset[str]]] = {
    "frwatch_events_total": ("counter", frozenset({"result"})),
    "frwatch_rule_matches_total": ("counter", frozenset({"rule_id"})),
    "frwatch_alerts_total": ("counter", frozenset({"rule_id", "severity"})),
    "frwatch_alert_revisions_total": ("counter", frozenset({"status"})),
    "frwatch_enrichment_total": ("counter", frozenset({"result"})),
    "frwatch_event_lag_seconds": ("histogram", frozenset()),
    "frwatch_alert_latency_seconds": ("histogram", frozenset()),
    "frwatch_window_state_entries": ("gauge", frozenset({"rule_id"})),
    "frwatch_accounts_loaded": ("gauge", frozenset()),
    "frwatch_watermark_lag_seconds": ("gauge", frozenset()),
    "frwatch_delivery_failures_total": ("counter", frozenset({"topic"})),
}

# The Faust series the dashboard and rules rely on (see deploy/README.md).
FAUST_USED = {
    "frwatch_faust_messages_received_total",
    "frwatch_faust_producer_send_latency_bucket",
    "frwatch_faust_topic_partition_end_offset",
    "frwatch_faust_topic_partition_offset_commited",
    "frwatch_faust_total_rebalances",
    "frwatch_faust_assignment_operations_total",
}

# Labels every scraped series has (target labels), and `le` on histogram buckets.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})

# Grafana variables, replaced by values any Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".+"}


def _series_names(name: str, kind: str) -> dict[str, str]:
    if kind == "histogram":
        return {f"{name}_bucket": name, f"{name}_sum": name, f"{name}_count": name}
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total": name}
    return {name: name}


def spec7_series() -> dict[str, frozenset[str]]:
    """Series name -> labels for SPEC 7's metrics (histogram buckets add `le`)."""
    out: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in SPEC7.items():
        for series in _series_names(name, kind):
            out[series] = labels | ({"le"} if series.endswith("_bucket") else set())
    return out


def faust_series() -> dict[str, frozenset[str]]:
    """Series name -> labels of Faust's PrometheusMonitor with the frwatch_faust prefix."""
    from faust.sensors.prometheus import FaustMetrics
    from prometheus_client import CollectorRegistry

    metrics = FaustMetrics.create(CollectorRegistry(), FAUST_PREFIX)
    out: dict[str, frozenset[str]] = {}
    for metric in metrics:
        labels = frozenset(metric._labelnames)
        for family in metric.describe():
            for series in _series_names(family.name, family.type):
                out[series] = labels | ({"le"} if series.endswith("_bucket") else set())
    return out


def load_dashboard() -> dict:
    """The dashboard JSON."""
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel, rows included (rows are panels of type "row"; collapsed rows nest theirs)."""
    out = []
    for panel in load_dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(substitute: bool = True) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every panel target; Grafana variables replaced if asked."""
    out = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            if substitute:
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
            out.append((panel["title"], target["refId"], expr))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = set(
    ["and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "group_left", "group_right"]
)


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, keywords excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _GROUPING.sub("", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring clauses."""
    text = _STRING.sub('""', expr)
    labels = set()
    for block in _MATCHERS.findall(text):
        labels |= {m.group(1) for m in re.finditer(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block)}
    for block in _GROUPING.findall(text):
        labels |= {p.strip() for p in block.split(",") if p.strip()}
    return labels


def _rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job", x="y z"}[5m])))'
        " / on (job) group_left sum without (instance) (b) > bool 1e3 and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert label_names(expr) == {"le", "job", "x", "instance"}


def test_faust_metric_names_are_the_installed_fausts() -> None:
    faust = faust_series()
    assert set(faust) >= FAUST_USED, sorted(FAUST_USED - set(faust))
    # the lag pair and the counters the brief names, with their exposition suffixes
    assert faust["frwatch_faust_topic_partition_end_offset"] == {"topic", "partition"}
    assert faust["frwatch_faust_topic_partition_offset_commited"] == {"topic", "partition"}
    assert faust["frwatch_faust_assignment_operations_total"] == {"operation"}


def test_dashboard_queries_use_only_existing_metrics_and_labels() -> None:
    known = {**spec7_series(), **faust_series()}
    used: set[str] = set()
    queries = dashboard_queries(substitute=False)
    assert queries, "no panel targets found"
    for title, ref, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}/{ref}: no metric in {expr!r}"
        unknown = names - set(known)
        assert not unknown, f"{title}/{ref}: unknown metrics {sorted(unknown)} in {expr!r}"
        allowed_labels = TARGET_LABELS.union(*(known[n] for n in names))
        extra = label_names(expr) - allowed_labels
        assert not extra, f"{title}/{ref}: labels {sorted(extra)} not on {sorted(names)}"
        used |= names
    faust_used = {n for n in used if n.startswith(FAUST_PREFIX + "_")}
    assert faust_used <= FAUST_USED, sorted(faust_used - FAUST_USED)


def test_dashboard_covers_every_spec7_metric() -> None:
    used = set().union(*(metric_names(e) for _, _, e in dashboard_queries(substitute=False)))
    for name, (kind, _) in SPEC7.items():
        assert set(_series_names(name, kind)) & used, f"{name} is on no panel"


def test_legends_use_only_grouped_labels() -> None:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            grouped = label_names(target["expr"])
            assert legend_labels <= grouped, f"{panel['title']}: legend {legend_labels}"


def test_rules_use_only_existing_metrics() -> None:
    known = {**spec7_series(), **faust_series(), "up": frozenset()}
    for name, expr in _rule_exprs():
        names = metric_names(expr)
        unknown = names - set(known)
        assert not unknown, f"{name}: unknown metrics {sorted(unknown)}"
        extra = label_names(expr) - TARGET_LABELS.union(*(known[n] for n in names))
        assert not extra, f"{name}: labels {sorted(extra)} not on {sorted(names)}"
        faust_used = {n for n in metric_names(expr) if n.startswith(FAUST_PREFIX + "_")}
        assert faust_used <= FAUST_USED, f"{name}: {sorted(faust_used - FAUST_USED)}"


def test_every_panel_and_variable_uses_the_prometheus_datasource_uid() -> None:
    dashboard = load_dashboard()
    ids = []
    for panel in dashboard_panels():
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID, var["name"]
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        metric = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert metric, query
        assert metric.group(1) in faust_series() or metric.group(1) in spec7_series()


def test_dashboard_rows() -> None:
    rows = [p["title"] for p in load_dashboard()["panels"] if p["type"] == "row"]
    assert rows == [
        "Throughput and results",
        "Alerts",
        "Rule matches",
        "Enrichment",
        "Latency",
        "Kafka consumer lag",
        "Window state",
        "Delivery",
    ]


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [DATASOURCE_UID]
    providers = yaml.safe_load((prov / "dashboards" / "frwatch.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    assert load_dashboard()["uid"] == "frwatch"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses PromQL only inside rule files: check each query as a recording rule."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed (Debian/Ubuntu: apt-get install prometheus; "
            "`make test` installs it)",
            pytrace=False,
        )
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, _, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
