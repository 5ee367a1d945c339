"""Synthetic traffic: sample accounts, the eight policy scenarios, realistic background load.

Deterministic for a seed; used by `make demo`, `frwatch bench` and the tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from topics.accounts import AccountDirectory, AccountRecord, parse_account_record

HOUR_MS = 3_600_000
DEFAULT_START_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z, mid-hour on purpose

SAMPLE_ACCOUNTS: tuple[dict[str, Any], ...] = (
    {
        "account_id": "acct-metro-pd",
        "org_id": "org-metro",
        "org_name": "Metro City Police",
        "sector": "law_enforcement",
        "country": "US",
        "updated_at": "2026-11-01T00:00:00Z",
    },
    {
        "account_id": "acct-county-patrol",
        "org_id": "org-county",
        "org_name": "County Constabulary",
        "sector": "law_enforcement",
        "country": "GB",
    },
    {
        "account_id": "acct-fleetcam",
        "org_id": "org-fleetcam",
        "org_name": "FleetCam Ltd",
        "sector": "commercial",
        "country": "DE",
    },
    {
        "account_id": "acct-bailbonds",
        "org_id": "org-bail",
        "org_name": "QuickBail",
        "sector": "commercial",
        "country": "US",
    },
    {
        "account_id": "acct-visionapp",
        "org_id": "org-visionapp",
        "org_name": "VisionApp",
        "sector": "commercial",
        "country": "FR",
    },
    {
        "account_id": "acct-retail-east",
        "org_id": "org-retail",
        "org_name": "ShopWatch",
        "sector": "commercial",
        "country": "US",
    },
    {
        "account_id": "acct-retail-west",
        "org_id": "org-retail",
        "org_name": "ShopWatch",
        "sector": "commercial",
        "country": "US",
    },
    {
        "account_id": "acct-gallery",
        "org_id": "org-gallery",
        "org_name": "EventGallery",
        "sector": "commercial",
        "country": "NL",
    },
    {
        "account_id": "acct-bank-kyc",
        "org_id": "org-bank",
        "org_name": "First Bank",
        "sector": "commercial",
        "country": "US",
        "approved_uses": ["identification", "verification"],
    },
    {
        "account_id": "acct-uni",
        "org_id": "org-uni",
        "org_name": "State University",
        "sector": "education",
        "country": "US",
    },
    {
        "account_id": "acct-clinic",
        "org_id": "org-health",
        "org_name": "Clinic Group",
        "sector": "healthcare",
        "country": "CA",
    },
    {
        "account_id": "acct-gov-contractor",
        "org_id": "org-contractor",
        "org_name": "SecureGov",
        "sector": "commercial",
        "acting_for": "law_enforcement",
        "country": "US",
    },
)

# which account each scenario uses, and the rule it must fire
SCENARIO_RULES = {
    "FR-001": "acct-metro-pd",
    "FR-002": "acct-county-patrol",
    "FR-003": "acct-fleetcam",
    "FR-004": "acct-bailbonds",
    "FR-005": "acct-visionapp",
    "FR-006": "org-retail",
    "FR-007": "acct-gallery",
    "FR-008": "acct-unknown-7",
    "FR-009": "acct-metro-pd",
    "FR-010": "acct-visionapp",
}

BENIGN_ACCOUNTS = ("acct-uni", "acct-clinic", "acct-bank-kyc", "acct-visionapp", "acct-retail-east")


@dataclass
class TrafficMaker:
    """Builds request events with unique ids, deterministic for a seed."""

    seed: int = 7
    start_ms: int = DEFAULT_START_MS
    prefix: str = "ev"
    rng: random.Random = field(init=False)
    n: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def event(self, account_id: str, operation: str, ts_ms: int, **extra: Any) -> dict[str, Any]:
        """One request event with request metadata filled in."""
        self.n += 1
        ev: dict[str, Any] = {
            "event_id": f"{self.prefix}-{self.seed}-{self.n:08d}",
            "ts": ts_ms,
            "account_id": account_id,
            "operation": operation,
            "api_key_id": f"key-{account_id[-4:]}-{self.n % 3}",
            "region": self.rng.choice(("eastus", "westeurope", "uksouth")),
            "client_ip": f"198.51.100.{self.n % 250 + 1}",
        }
        ev.update(extra)
        return ev

    def background(self, ts_ms: int) -> dict[str, Any]:
        """Mostly chat and embeddings, a few percent face operations that break no rule."""
        r = self.rng.random()
        acct = self.rng.choice(BENIGN_ACCOUNTS)
        if r < 0.55:
            return self.event(
                acct,
                "chat.completions",
                ts_ms,
                model="gpt-large",
                intent={"label": "none", "score": 0.02},
            )
        if r < 0.80:
            return self.event(acct, "embeddings", ts_ms, model="embed-small")
        if r < 0.90:
            return self.event(
                acct,
                "responses",
                ts_ms,
                model="gpt-large",
                image_count=1,
                intent={"label": "describe_scene", "score": 0.91},
            )
        if r < 0.95:
            return self.event(acct, "vision.analyze", ts_ms, image_count=1)
        if r < 0.98:
            return self.event(acct, "face.detect", ts_ms, image_count=1, faces_detected=2)
        # verification of an uploaded selfie against a customer's own enrolment: allowed
        return self.event(
            "acct-bank-kyc",
            "face.verify",
            ts_ms,
            image_count=2,
            capture={"device": "uploaded", "setting": "controlled"},
            gallery={"id": "pg-kyc", "kind": "customers"},
        )


def scenario_events(maker: TrafficMaker, hour_start_ms: int) -> list[dict[str, Any]]:
    """One violation of each built-in rule (FR-001..FR-010) inside the hour at `hour_start_ms`."""
    t = hour_start_ms + 60_000
    ev = maker.event
    out = [
        ev(
            "acct-metro-pd",
            "face.identify",
            t,
            image_count=1,
            gallery={"id": "pg-metro-1", "kind": "watchlist"},
            capture={"device": "cctv", "setting": "controlled"},
        ),
        ev(
            "acct-county-patrol",
            "face.identify",
            t + 1000,
            image_count=1,
            capture={"device": "body_camera", "setting": "in_the_wild"},
        ),
        ev(
            "acct-fleetcam",
            "face.verify",
            t + 2000,
            image_count=2,
            capture={"device": "dash_camera", "setting": "in_the_wild"},
        ),
        ev(
            "acct-bailbonds",
            "face.find_similar",
            t + 3000,
            image_count=1,
            gallery={"id": "pg-bail", "kind": "mugshots"},
        ),
        ev("acct-unknown-7", "face.verify", t + 4000, image_count=2),
    ]
    for i in range(3):
        out.append(
            ev(
                "acct-visionapp",
                "chat.completions",
                t + 5000 + i * 1000,
                model="gpt-vision",
                image_count=1,
                intent={"label": "identify_person", "score": 0.93},
            )
        )
    for i in range(60):  # 60 distinct subjects across two accounts of one organisation
        acct = "acct-retail-east" if i % 2 else "acct-retail-west"
        out.append(
            ev(
                acct,
                "face.identify",
                t + 10_000 + i * 500,
                image_count=1,
                subject_ids=[f"subj-{i:03d}"],
                gallery={"id": "pg-shop", "kind": "other"},
            )
        )
    for i in range(20):
        out.append(
            ev(
                "acct-gallery",
                "person_group.add_face",
                t + 60_000 + i * 700,
                image_count=1,
                gallery={"id": "pg-guests", "kind": "other"},
            )
        )
    out.append(
        ev(
            "acct-gallery",
            "face.identify",
            t + 90_000,
            image_count=1,
            gallery={"id": "pg-guests", "kind": "other"},
        )
    )
    # a police department identifying a speaker by voice (FR-009)
    out.append(ev("acct-metro-pd", "speaker.identify", t + 95_000, audio_count=1))
    for i in range(3):  # identification from a voice clip through an audio model (FR-010)
        out.append(
            ev(
                "acct-visionapp",
                "audio.chat",
                t + 100_000 + i * 1000,
                model="gpt-audio",
                audio_count=1,
                intent={"label": "identify_person", "score": 0.9},
            )
        )
    return out


def demo_traffic(
    seed: int, start_ms: int, background_per_scenario: int = 200
) -> Iterator[dict[str, Any]]:
    """Scenarios shuffled into background load (the demo's and the tests' traffic)."""
    maker = TrafficMaker(seed=seed, start_ms=start_ms)
    hour = start_ms - start_ms % HOUR_MS
    violations = scenario_events(maker, hour)
    events = violations + [
        maker.background(hour + maker.rng.randrange(HOUR_MS))
        for _ in range(background_per_scenario * 8)
    ]
    maker.rng.shuffle(events)
    yield from events


def bench_traffic(
    n_events: int, seed: int = 11, start_ms: int = DEFAULT_START_MS
) -> Iterator[dict[str, Any]]:
    """`n_events` of realistic traffic in event-time order, with a handful of violations an hour."""
    maker = TrafficMaker(seed=seed, start_ms=start_ms, prefix="bench")
    step = 20  # ms of event time between requests: 180k requests an hour
    ts = start_ms
    hour = -1
    pending: list[dict[str, Any]] = []
    produced = 0
    while produced < n_events:
        if ts // HOUR_MS != hour:
            hour = ts // HOUR_MS
            pending = scenario_events(maker, hour * HOUR_MS)
            # scenario events get this hour's timestamps in order
            for i, e in enumerate(pending):
                e["ts"] = ts + i * step * 50
        if pending and maker.rng.random() < 0.01:
            e = pending.pop(0)
            e["ts"] = max(e["ts"], ts)
            if e["ts"] // HOUR_MS != hour:
                e["ts"] = ts
        else:
            e = maker.background(ts)
        yield e
        produced += 1
        ts += step


def sample_directory() -> AccountDirectory:
    """The sample accounts, applied: the directory the synthetic traffic expects."""
    directory = AccountDirectory()
    for row in SAMPLE_ACCOUNTS:
        record = parse_account_record(row)
        if not isinstance(record, AccountRecord):
            raise ValueError(f"sample account {row['account_id']} is invalid: {record}")
        directory.apply(record)
    return directory


def live_demo_events(seed: int, now_ms: int, background: int = 400) -> list[dict[str, Any]]:
    """Demo traffic stamped just before `now_ms`: scenarios in one hour, background around them."""
    maker = TrafficMaker(seed=seed, start_ms=now_ms, prefix=f"demo{now_ms}")
    hour = now_ms - now_ms % HOUR_MS
    # scenario events span about 150 s after `anchor - 60 s`; keep them inside this hour and
    # not more than a few seconds ahead of the wall clock
    anchor = max(hour, now_ms - 4 * 60_000)
    events = scenario_events(maker, anchor - 60_000 if anchor - 60_000 >= hour else hour - 60_000)
    for e in events:
        e["ts"] = max(min(e["ts"], now_ms), hour)
    events += [maker.background(now_ms - maker.rng.randrange(120_000)) for _ in range(background)]
    maker.rng.shuffle(events)
    return events


def growing_alert_events(maker: TrafficMaker, now_ms: int, n: int = 150) -> list[dict[str, Any]]:
    """An alert that grows and closes (SPEC 5), for the demo: `n` identifications by the
    police account in the hour two hours back (FR-001 opens at 1, updates at 10 and 100),
    then one current event from each of many accounts, so that every input partition moves
    the retention clock past that window's end + close_after: it closes."""
    hour = now_ms - now_ms % HOUR_MS - 2 * HOUR_MS
    events = [
        maker.event("acct-metro-pd", "face.verify", hour + i * (HOUR_MS // (n + 1)))
        for i in range(n)
    ]
    events += [maker.event(f"acct-demo-clock-{i}", "embeddings", now_ms - 1_000) for i in range(32)]
    return events


def _main(argv: list[str]) -> int:
    import sys
    import time

    import orjson

    if len(argv) != 2 or argv[0] not in ("accounts", "demo-events"):
        print("usage: python -m streams.synthetic accounts|demo-events FILE", file=sys.stderr)
        return 2
    kind, path = argv
    now_ms = int(time.time() * 1000)
    rows: list[dict[str, Any]] = list(SAMPLE_ACCOUNTS)
    if kind == "demo-events":
        # the growing alert's old events first: its partition reads them before the clock
        # events of the current hour
        growing = TrafficMaker(seed=now_ms, start_ms=now_ms, prefix=f"grow{now_ms}")
        rows = growing_alert_events(growing, now_ms) + live_demo_events(now_ms // 1000, now_ms)
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
