"""`streams.app.metrics.DetectorMetrics`: SPEC 7 names, types and labels, on a fresh registry."""

from __future__ import annotations

import itertools
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.app.detection import DetectStage
from streams.app.metrics import ALERT_LATENCY_BUCKETS, EVENT_LAG_BUCKETS, RESULTS, DetectorMetrics
from streams.app.routing import Routed, Router
from streams.core.rules import load_rules
from streams.synthetic import DEFAULT_START_MS
from topics.accounts import AccountDirectory, AccountRecord

RULES = load_rules()
RULE_IDS = [r.id for r in RULES.rules]
SEVERITIES = {r.id: r.severity for r in RULES.rules}
SEVERITY_VALUES = {"critical", "high", "medium", "low"}


def fresh() -> tuple[CollectorRegistry, DetectorMetrics]:
    registry = CollectorRegistry()
    return registry, DetectorMetrics(registry, RULE_IDS, SEVERITIES)


def scrape(registry: Any) -> str:
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, for every sample on the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_every_spec_metric_is_exposed_with_its_type() -> None:
    registry, _ = fresh()
    text = scrape(registry)
    assert types(text) == {
        "frwatch_alert_revisions": "counter",
        "frwatch_events": "counter",
        "frwatch_rule_matches": "counter",
        "frwatch_alerts": "counter",
        "frwatch_enrichment": "counter",
        "frwatch_event_lag_seconds": "histogram",
        "frwatch_alert_latency_seconds": "histogram",
        "frwatch_window_state_entries": "gauge",
        "frwatch_accounts_loaded": "gauge",
        "frwatch_watermark_lag_seconds": "gauge",
        "frwatch_rules_info": "gauge",
        "frwatch_rules_changes": "counter",
    }
    for line in (
        "# TYPE frwatch_events_total counter",
        "# TYPE frwatch_rule_matches_total counter",
        "# TYPE frwatch_alerts_total counter",
        "# TYPE frwatch_enrichment_total counter",
        "# TYPE frwatch_event_lag_seconds histogram",
        "# TYPE frwatch_alert_latency_seconds histogram",
        "# TYPE frwatch_window_state_entries gauge",
        "# TYPE frwatch_accounts_loaded gauge",
    ):
        assert line in text.splitlines()
    assert "_created" not in text


def test_zeros_are_pre_filled_with_the_spec_labels() -> None:
    registry, _ = fresh()
    got = samples(scrape(registry))
    assert RESULTS == ("processed", "malformed", "rejected", "duplicate", "error", "skipped")
    for result in RESULTS:
        assert got[("frwatch_events_total", (("result", result),))] == 0
    for result in ("hit", "miss"):
        assert got[("frwatch_enrichment_total", (("result", result),))] == 0
    for status in ("open", "update", "closed"):
        assert got[("frwatch_alert_revisions_total", (("status", status),))] == 0
    for rule_id in RULE_IDS:
        assert got[("frwatch_rule_matches_total", (("rule_id", rule_id),))] == 0
        key = ("frwatch_alerts_total", (("rule_id", rule_id), ("severity", SEVERITIES[rule_id])))
        assert got[key] == 0
        assert got[("frwatch_window_state_entries", (("rule_id", rule_id),))] == 0
    assert got[("frwatch_accounts_loaded", ())] == 0
    assert got[("frwatch_event_lag_seconds_count", ())] == 0
    assert got[("frwatch_alert_latency_seconds_count", ())] == 0
    assert len(RULE_IDS) == 10


def test_counters_add_up() -> None:
    registry, m = fresh()
    m.count_results({"processed": 3, "malformed": 1})
    m.count_results({"processed": 2, "rejected": 4, "duplicate": 5, "error": 6})
    m.count_routed(Routed(skipped=3, processed=1))
    m.count_enrichment(7, 2)
    m.count_enrichment(1, 0)
    m.rule_matches["FR-004"] += 9
    m.count_alert("FR-004", 0.2)
    m.count_alert("FR-004", 0.02)
    m.count_alert("FR-008", 7.0)
    text = scrape(registry)
    assert value(text, "frwatch_events_total", result="processed") == 6
    assert value(text, "frwatch_events_total", result="skipped") == 3
    assert value(text, "frwatch_events_total", result="malformed") == 1
    assert value(text, "frwatch_events_total", result="rejected") == 4
    assert value(text, "frwatch_events_total", result="duplicate") == 5
    assert value(text, "frwatch_events_total", result="error") == 6
    assert value(text, "frwatch_enrichment_total", result="hit") == 8
    assert value(text, "frwatch_enrichment_total", result="miss") == 2
    assert value(text, "frwatch_rule_matches_total", rule_id="FR-004") == 9
    assert value(text, "frwatch_alerts_total", rule_id="FR-004", severity="high") == 2
    assert value(text, "frwatch_alerts_total", rule_id="FR-008", severity="low") == 1
    assert value(text, "frwatch_alerts_total", rule_id="FR-001", severity="critical") == 0
    # alert latency: a real histogram with the SLO buckets
    assert value(text, "frwatch_alert_latency_seconds_count") == 3
    assert value(text, "frwatch_alert_latency_seconds_sum") == pytest.approx(7.22)
    assert value(text, "frwatch_alert_latency_seconds_bucket", le="0.025") == 1
    assert value(text, "frwatch_alert_latency_seconds_bucket", le="0.25") == 2
    assert value(text, "frwatch_alert_latency_seconds_bucket", le="5.0") == 2
    assert value(text, "frwatch_alert_latency_seconds_bucket", le="10.0") == 3
    assert value(text, "frwatch_alert_latency_seconds_bucket", le="+Inf") == 3
    assert 0.25 in ALERT_LATENCY_BUCKETS and 5.0 in ALERT_LATENCY_BUCKETS


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


NOW = DEFAULT_START_MS + 86_400_000
_BOUNDS_MS = [round(b * 1000) for b in EVENT_LAG_BUCKETS]


def _lag_buckets(text: str) -> list[float]:
    return [
        value(text, "frwatch_event_lag_seconds_bucket", le=_le(b))
        for b in (*EVENT_LAG_BUCKETS, math.inf)
    ]


def _plain_count(lags_ms: list[int]) -> list[int]:
    """Lags (0 when negative) at or below each bound, counted one by one (le: "<=")."""
    lags_s = [max(0, ms) / 1000 for ms in lags_ms]
    return [sum(1 for lag in lags_s if lag <= b) for b in (*EVENT_LAG_BUCKETS, math.inf)]


def test_event_lag_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    registry, m = fresh()
    # lags in ms: ahead of the clock, on and next to bounds, a day, ten days
    lags = [-4000, 0, 1, 5, 6, 300, 42_000, 3_600_000, 86_400_000, 86_400_500, 864_000_000]
    m.observe_lags([NOW - lag for lag in lags[:5]], NOW)
    m.observe_lags([], NOW)
    m.observe_lags([NOW + 7 - lag for lag in lags[5:]], NOW + 7)
    text = scrape(registry)
    got = _lag_buckets(text)
    assert got == _plain_count(lags)
    assert got == sorted(got), "buckets are cumulative"
    assert got[-1] == len(lags)
    assert value(text, "frwatch_event_lag_seconds_count") == len(lags)
    # an event ahead of the wall clock counts as lag 0
    assert value(text, "frwatch_event_lag_seconds_sum") == pytest.approx(
        sum(max(0, lag) for lag in lags) / 1000
    )
    # spans milliseconds (live) to a day (backlog, replayed archives)
    assert EVENT_LAG_BUCKETS[0] <= 0.005 and EVENT_LAG_BUCKETS[-1] >= 86400
    assert list(EVENT_LAG_BUCKETS) == sorted(EVENT_LAG_BUCKETS)


def test_lag_bounds_are_whole_milliseconds() -> None:
    """What lets the histogram compare integer lags in ms with the bounds."""
    assert all(ms == b * 1000 for ms, b in zip(_BOUNDS_MS, EVENT_LAG_BUCKETS, strict=True))


def test_a_routed_message_adds_its_records_lags() -> None:
    registry, m = fresh()
    m.count_routed(Routed(event_ts_ms=[NOW - 90_500, NOW + 60_000], now_ms=NOW))
    text = scrape(registry)
    assert value(text, "frwatch_event_lag_seconds_count") == 2
    assert value(text, "frwatch_event_lag_seconds_sum") == pytest.approx(90.5)
    assert value(text, "frwatch_event_lag_seconds_bucket", le="60.0") == 1
    assert value(text, "frwatch_event_lag_seconds_bucket", le="300.0") == 2


def test_window_state_entries_come_from_the_watched_source_at_scrape_time() -> None:
    registry, m = fresh()
    held = {"FR-001": 2}
    m.watch_window_states(lambda: dict(held))
    assert value(scrape(registry), "frwatch_window_state_entries", rule_id="FR-001") == 2
    held["FR-001"] = 5
    held["FR-007"] = 1
    text = scrape(registry)
    assert value(text, "frwatch_window_state_entries", rule_id="FR-001") == 5
    assert value(text, "frwatch_window_state_entries", rule_id="FR-007") == 1
    assert value(text, "frwatch_window_state_entries", rule_id="FR-003") == 0


def test_accounts_loaded_is_a_plain_gauge() -> None:
    registry, m = fresh()
    m.accounts_loaded.set(12)
    m.accounts_loaded.set(11)
    assert value(scrape(registry), "frwatch_accounts_loaded") == 11


def test_a_restricted_scrape_serves_only_the_asked_series() -> None:
    registry, m = fresh()
    m.count_results({"processed": 3, "malformed": 1})
    m.count_alert("FR-001", 0.2)
    text = scrape(registry.restricted_registry(["frwatch_events_total"]))
    assert set(types(text)) == {"frwatch_events"}
    assert value(text, "frwatch_events_total", result="processed") == 3
    assert value(text, "frwatch_events_total", result="malformed") == 1
    both = scrape(registry.restricted_registry(["frwatch_alerts_total", "frwatch_accounts_loaded"]))
    assert set(types(both)) == {"frwatch_alerts", "frwatch_accounts_loaded"}


def test_the_registry_knows_the_collected_names() -> None:
    registry, _ = fresh()
    # a second collector with a clashing name is refused, not silently doubled
    with pytest.raises(ValueError, match="frwatch_events_total"):
        Counter("frwatch_events", "a clash", registry=registry)


def test_two_registries_do_not_share_tallies() -> None:
    reg_a, m_a = fresh()
    reg_b, _ = fresh()
    m_a.count_results({"processed": 4})
    assert value(scrape(reg_a), "frwatch_events_total", result="processed") == 4
    assert value(scrape(reg_b), "frwatch_events_total", result="processed") == 0


# --- bounded cardinality, no customer data (SPEC 7) -----------------------------------------

N_ACCOUNTS = 300


def _many_accounts() -> tuple[AccountDirectory, list[str]]:
    d = AccountDirectory()
    ids = []
    for i in range(N_ACCOUNTS):
        acct, org = f"acct-cust-{i:04d}", f"org-cust-{i // 3:04d}"
        ids += [acct, org]
        if i % 4:  # a quarter stay unknown (FR-008)
            sector = "law_enforcement" if i % 5 == 0 else "commercial"
            d.apply(
                AccountRecord(acct, org_id=org, org_name=f"Org {i}", sector=sector, country="US")
            )
    return d, ids


def _traffic() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(N_ACCOUNTS):
        acct = f"acct-cust-{i:04d}"
        base = {"account_id": acct, "ts": DEFAULT_START_MS + i, "image_count": 1}
        out.append({**base, "event_id": f"{acct}-1", "operation": "face.verify"})
        out.append(
            {
                **base,
                "event_id": f"{acct}-2",
                "operation": "face.identify",
                "subject_ids": [f"subj-{acct}"],
                "gallery": {"id": f"pg-{acct}", "kind": "mugshots"},
            }
        )
        out.append({**base, "event_id": f"{acct}-3", "operation": "chat.completions"})
    out.append({**out[0]})  # a redelivery
    return out


def test_no_label_value_is_a_customer_value_after_many_accounts() -> None:
    registry, m = fresh()
    baseline = set(samples(scrape(registry)))
    directory, customer_ids = _many_accounts()
    router = Router(RULES, directory, 4)
    stage = DetectStage(RULES, {}, 4)
    m.watch_window_states(stage.store.entries_by_rule)
    m.accounts_loaded.set(len(directory))
    now = DEFAULT_START_MS + 60_000
    # fed the way the worker's agents feed them
    for off, rec in enumerate(_traffic()):
        routed = router.route(orjson.dumps(rec), "api.requests", 0, off, now, now)
        m.count_routed(routed)
        for part, items in routed.forwards.items():
            out = stage.observe(orjson.dumps({"items": items}), "detect", part, off)
            for a, kafka_ts in out.alerts:
                m.count_alert(a.rule_id, max(0.0, now / 1000 - kafka_ts / 1000))
            stage.store.flush()
            m.count_detected(out)
    text = scrape(registry)
    got = samples(text)
    # the tallies moved ...
    assert value(text, "frwatch_events_total", result="processed") == 3 * N_ACCOUNTS
    assert value(text, "frwatch_events_total", result="duplicate") == 1
    assert value(text, "frwatch_alerts_total", rule_id="FR-008", severity="low") > 0
    assert value(text, "frwatch_window_state_entries", rule_id="FR-004") == N_ACCOUNTS
    # ... but the series did not: no label per account, org or subject
    assert set(got) == baseline
    allowed = {
        "result": set(RESULTS) | {"hit", "miss", "applied", "refused"},
        "rule_id": set(RULE_IDS),
        "severity": SEVERITY_VALUES,
        "status": {"open", "update", "closed"},
        "le": {_le(b) for b in (*EVENT_LAG_BUCKETS, *ALERT_LATENCY_BUCKETS, math.inf)},
    }
    for _name, labels in got:
        for label, label_value in labels:
            assert label in allowed, label
            assert label_value in allowed[label], (label, label_value)
    for cid in customer_ids:
        assert cid not in text
    assert "subj-" not in text and "pg-" not in text


_NEAR_BOUNDS = [ms + d for ms in (0, *_BOUNDS_MS) for d in (-1, 0, 1)]


@given(
    st.lists(
        st.one_of(st.sampled_from(_NEAR_BOUNDS), st.integers(-600_000, 10 * 86_400_000)),
        max_size=60,
    ),
    st.lists(st.integers(0, 60), max_size=4),
)
def test_event_lag_buckets_match_a_plain_count_for_any_sequence(
    lags: list[int], cuts: list[int]
) -> None:
    """Bisecting the sorted times puts every lag in its bucket, in any order, in any split."""
    registry, m = fresh()
    edges = [0, *sorted(min(c, len(lags)) for c in cuts), len(lags)]
    for a, b in itertools.pairwise(edges):
        m.observe_lags([NOW - lag for lag in lags[a:b]], NOW)
    text = scrape(registry)
    assert _lag_buckets(text) == _plain_count(lags)
    assert value(text, "frwatch_event_lag_seconds_sum") == pytest.approx(
        sum(max(0, lag) for lag in lags) / 1000
    )


def test_watermark_lag_is_wall_clock_minus_the_retention_clock() -> None:
    registry, metrics = fresh()
    clock = {"ms": 0}
    metrics.watch_retention_clock(lambda: clock["ms"], lambda: 1_000_000)
    assert value(scrape(registry), "frwatch_watermark_lag_seconds") == 0.0  # nothing known
    clock["ms"] = 400_000
    assert value(scrape(registry), "frwatch_watermark_lag_seconds") == 600.0
    clock["ms"] = 2_000_000  # a clock ahead of the wall clock is no lag
    assert value(scrape(registry), "frwatch_watermark_lag_seconds") == 0.0


def test_rules_info_shows_the_version_in_force_and_changes_are_counted() -> None:
    registry, metrics = fresh()
    changes = {"applied": 0, "refused": 0}
    metrics.watch_rules_changes(lambda: dict(changes))
    metrics.set_rules(RULE_IDS, SEVERITIES, "a" * 64)
    text = scrape(registry)
    assert value(text, "frwatch_rules_info", rules_sha256="a" * 64) == 1
    assert value(text, "frwatch_rules_changes_total", result="refused") == 0
    metrics.count_alert("FR-001", 0.1)
    changes.update(applied=1, refused=2)
    metrics.set_rules([*RULE_IDS, "X-1"], {"X-1": "low"}, "b" * 64)
    text = scrape(registry)
    info = {k: v for k, v in samples(text).items() if k[0] == "frwatch_rules_info"}
    assert info == {("frwatch_rules_info", (("rules_sha256", "b" * 64),)): 1}
    assert value(text, "frwatch_rules_changes_total", result="applied") == 1
    assert value(text, "frwatch_rules_changes_total", result="refused") == 2
    # a new rule's series start at 0; earlier counts stay
    assert value(text, "frwatch_alerts_total", rule_id="X-1", severity="low") == 0
    assert value(text, "frwatch_alerts_total", rule_id="FR-001", severity="critical") == 1
