"""The Prometheus config and alerting rules in deploy/prometheus pass promtool's checks and unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"
RULES = "frwatch-alerts.rules.yml"
RULE_TESTS = "frwatch-alerts.test.yml"
CONFIG = "prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/prometheus (paths in the files are relative to it); fail if absent."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: the deploy tests need it "
            "(Debian/Ubuntu: apt-get install prometheus; `make test` installs it)",
            pytrace=False,
        )
    return subprocess.run(
        [exe, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with promtool's own output when it did not exit 0."""
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_rules_file_passes_promtool_check_rules() -> None:
    assert_ok(promtool("check", "rules", RULES))


def test_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", CONFIG)
    assert_ok(result)
    # check config also checks the rule files it points at: make sure it found ours
    assert RULES in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert_ok(promtool("test", "rules", RULE_TESTS))


def _alerting_rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS_DIR / RULES).read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_severity_and_annotations() -> None:
    rules = _alerting_rules()
    names = {r["alert"] for r in rules}
    assert {
        "FrwatchWorkerDown",
        "FrwatchConsumerLagGrowing",
        "FrwatchDeadLetterRateHigh",
        "FrwatchNoEventsProcessed",
        "FrwatchAlertLatencyHigh",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} has no `for:` and would fire on one bad sample"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / RULE_TESTS).read_text())
    assert config["rule_files"] == [RULES]
    firing: set[str] = set()
    silent: set[str] = set()
    for group in config["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in _alerting_rules()}
    assert names - firing == set(), "alerts without a firing test"
    assert names - silent == set(), "alerts without a not-firing test"


def test_worker_down_rule_selects_the_scrape_job_of_the_config() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / CONFIG).read_text())
    jobs = {sc["job_name"] for sc in config["scrape_configs"]}
    assert {"frwatch", "kafka"} <= jobs
    exprs = {r["alert"]: r["expr"] for r in _alerting_rules()}
    assert 'up{job="frwatch"}' in exprs["FrwatchWorkerDown"]
    assert config["rule_files"] == [RULES]


def test_every_runbook_hint_points_at_a_readme_section() -> None:
    readme = (PROMETHEUS_DIR.parent / "README.md").read_text()
    headings = {line[4:].strip() for line in readme.splitlines() if line.startswith("### ")}
    for rule in _alerting_rules():
        assert rule["annotations"]["runbook"].startswith(
            f"deploy/README.md#{rule['alert'].lower()}:"
        ), rule["alert"]
        assert rule["alert"] in headings, f"deploy/README.md has no section {rule['alert']}"
