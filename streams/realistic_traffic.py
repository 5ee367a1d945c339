"""Realistic archives for `frwatch bench` and the replay tests: what provider logs look like.

Unlike `streams.synthetic.bench_traffic` (integer timestamps, a dozen accounts), these have
mixed RFC 3339 forms (offsets, fractions of 0-9 digits, `Z` and `z`) and integer epoch ms
as SPEC 2.1 allows, unicode in strings and in fields frwatch ignores, about 5% face
operations, redeliveries (the same event_id again, some with other fields), batches, some
malformed lines, and organisations whose accounts spread over many group-key shards.
Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

HOUR_MS = 3_600_000
DEFAULT_START_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
STEP_MS = 20  # mean event time between requests: 180k requests an hour

_SECTORS = ("commercial",) * 6 + ("education", "healthcare", "government", "nonprofit")
_COUNTRIES = ("US", "US", "US", "GB", "DE", "FR", "NL", "CA", "JP", "BR")
_OFFSETS = ("+01:00", "+02:00", "-05:00", "-08:00", "+05:30", "+09:00", "-03:00", "+00:00")
_UNICODE = ("Café", "東京", "Zürich", "Łódź", "São Paulo", "Αθήνα", "🚀", "naïve", "Ñandú")
_MODELS = ("gpt-large", "gpt-vision", "embed-small", "modèle-vision", "gpt-音声")
_REGIONS = ("eastus", "westeurope", "uksouth", "japaneast", "brazilsouth")
_MALFORMED = (
    b"{not json",
    b'{"event_id": "x", "account_id": "acct-0001", "operation": "chat.completions"}',
    b'{"event_id": "x", "ts": "2026-11-18 07:00:00", "account_id": "a", "operation": "o"}',
    b'{"event_id": "x", "ts": "2026-11-18T07:00:00", "account_id": "a", "operation": "o"}',
    b'{"event_id": "x", "ts": "2026-02-30T07:00:00Z", "account_id": "a", "operation": "o"}',
    b'{"event_id": "x", "ts": true, "account_id": "a", "operation": "o"}',
    b'{"event_id": 7, "ts": 1795000000000, "account_id": "a", "operation": "o"}',
    b'{"event_id": "x", "ts": 1795000000000, "account_id": "a", "operation": "o", "image_count": -1}',
    b'{"event_id": "x", "ts": 1795000000000, "account_id": "a", "operation": "o", "intent": {"score": 1.5}}',
    b"[1, 2, 3]",
)


def format_ts(ts_ms: int, rng: random.Random) -> str | int:
    """One of the forms SPEC 2.1 allows for `ts_ms`, chosen as provider logs mix them."""
    r = rng.random()
    if r < 0.15:
        return ts_ms
    if r < 0.55:  # an offset, and a fraction of 3 or 6 digits
        off = rng.choice(_OFFSETS)
        minutes = (-1 if off[0] == "-" else 1) * (int(off[1:3]) * 60 + int(off[4:6]))
        digits = rng.choice((3, 3, 6))
        return _civil(ts_ms + minutes * 60_000, digits, rng) + off
    digits = rng.choice((0, 3, 3, 3, 6, 7, 9))  # 7 digits: what Azure writes
    text = _civil(ts_ms, digits, rng) + "Z"
    if r > 0.97:
        text = text.replace("T", "t").replace("Z", "z")
    return text


def _civil(ts_ms: int, digits: int, rng: random.Random) -> str:
    import datetime as dt

    d = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms)
    text = d.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:  # digits beyond milliseconds are noise: SPEC 2.1 truncates them
        tail = "".join(rng.choice("0123456789") for _ in range(digits - 3))
        text += f".{ts_ms % 1000:03d}{tail}"
    return text


@dataclass(frozen=True)
class Fleet:
    """The accounts of a realistic archive (their records as JSON-able dicts)."""

    accounts: tuple[dict[str, Any], ...]
    #: account ids that send traffic but have no account record (unknown accounts)
    unknown: tuple[str, ...]


def make_fleet(rng: random.Random, n_orgs: int = 40, per_org: int = 6) -> Fleet:
    """Organisations of several accounts each; some law-enforcement, some contractors."""
    accounts: list[dict[str, Any]] = []
    for o in range(n_orgs):
        sector = "law_enforcement" if o % 8 == 0 else rng.choice(_SECTORS)
        country = "US" if o % 16 == 0 else rng.choice(_COUNTRIES)
        for a in range(per_org):
            rec: dict[str, Any] = {
                "account_id": f"acct-{o:03d}-{a}",
                "org_id": f"org-{o:03d}",
                "org_name": f"{rng.choice(_UNICODE)} Org {o}",
                "sector": sector,
                "country": country,
                "updated_at": "2026-11-01T00:00:00Z",
            }
            if o % 8 == 3:
                rec["acting_for"] = "law_enforcement"
            if o % 5 == 1:
                rec["approved_uses"] = ["identification"]
            accounts.append(rec)
    unknown = tuple(f"acct-unknown-{i}" for i in range(8))
    return Fleet(tuple(accounts), unknown)


@dataclass
class RealisticTraffic:
    """Generates the archive's lines (bytes, no line end) in roughly event-time order."""

    seed: int = 23
    start_ms: int = DEFAULT_START_MS
    #: fractions of records: face operations, redeliveries, malformed lines, batch lines
    face_share: float = 0.05
    redelivery_share: float = 0.02
    malformed_share: float = 0.004
    batch_share: float = 0.01
    rng: random.Random = field(init=False)
    fleet: Fleet = field(init=False)
    _n: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.fleet = make_fleet(self.rng)
        self._ids = [a["account_id"] for a in self.fleet.accounts]
        self._le = [
            a["account_id"] for a in self.fleet.accounts if a["sector"] == "law_enforcement"
        ]
        self._identifiers = [a["account_id"] for a in self.fleet.accounts if a["org_id"][-1] == "2"]

    def account_lines(self) -> list[bytes]:
        """The fleet's account records, one JSON line each."""
        return [orjson.dumps(a) for a in self.fleet.accounts]

    def _event(self, ts_ms: int) -> dict[str, Any]:
        rng = self.rng
        self._n += 1
        acct = rng.choice(self._ids) if rng.random() > 0.003 else rng.choice(self.fleet.unknown)
        ev: dict[str, Any] = {
            "event_id": f"req-{self.seed}-{self._n:09d}",
            "ts": format_ts(ts_ms, rng),
            "account_id": acct,
            "operation": "chat.completions",
            "api_key_id": f"key-{acct[-5:]}-{self._n % 4}",
            "region": rng.choice(_REGIONS),
            "client_ip": f"203.0.113.{self._n % 250 + 1}",
        }
        if rng.random() < 0.3:  # what gateways add and frwatch ignores
            ev["user_agent"] = f"sdk/1.{self._n % 9} ({rng.choice(_UNICODE)})"
            ev["meta"] = {"tags": [rng.choice(_UNICODE)], "latency_ms": rng.randrange(900)}
        r = rng.random()
        if r < self.face_share:
            self._face(ev, acct)
        elif r < 0.55:
            ev["model"] = rng.choice(_MODELS)
            label = rng.choice(("none", "none", "describe_scene", "identify_person"))
            ev["intent"] = {"label": label, "score": round(rng.random(), 3)}
            if rng.random() < 0.2:
                ev["image_count"] = 1
                ev["operation"] = rng.choice(("chat.completions", "responses", "vision.analyze"))
            elif rng.random() < 0.05:
                ev["audio_count"] = 1
                ev["operation"] = "audio.chat"
        elif r < 0.8:
            ev["operation"] = "embeddings"
            ev["model"] = "embed-small"
        else:
            ev["operation"] = rng.choice(("responses", "images.generate", "moderations"))
            ev["model"] = rng.choice(_MODELS)
        return ev

    def _face(self, ev: dict[str, Any], acct: str) -> None:
        rng = self.rng
        if self._le and rng.random() < 0.05:
            acct = ev["account_id"] = rng.choice(self._le)
        op = rng.choices(
            (
                "face.detect",
                "face.verify",
                "face.identify",
                "face.find_similar",
                "person_group.add_face",
                "face_list.add_face",
                "speaker.identify",
                "speaker.verify",
            ),
            (40, 20, 20, 4, 8, 2, 1, 1),
        )[0]
        if op.endswith("add_face") and rng.random() < 0.5:
            # a few accounts build galleries of people (FR-007's watch lists)
            acct = ev["account_id"] = self._ids[rng.randrange(0, len(self._ids), 37)]
        elif op == "face.identify" and self._identifiers and rng.random() < 0.6:
            # a few organisations identify people in bulk, from all their accounts (FR-006)
            acct = ev["account_id"] = rng.choice(self._identifiers)
        ev["operation"] = op
        if op.startswith("speaker."):
            ev["audio_count"] = 1
            return
        ev["image_count"] = rng.choice((1, 1, 2))
        ev["faces_detected"] = rng.randrange(4)
        if rng.random() < 0.5:
            ev["capture"] = {
                "device": rng.choices(
                    ("uploaded", "mobile", "cctv", "body_camera", "dash_camera", "other"),
                    (60, 15, 15, 3, 3, 4),
                )[0],
                "setting": rng.choice(("controlled", "in_the_wild", "other")),
            }
        if op != "face.detect":
            ev["gallery"] = {
                "id": f"pg-{acct[-5:]}-{rng.randrange(3)}",
                "kind": rng.choices(
                    ("customers", "employees", "other", "watchlist", "suspects", "mugshots"),
                    (40, 30, 15, 10, 3, 2),
                )[0],
            }
        if op in ("face.identify", "face.find_similar"):
            ev["subject_ids"] = [
                f"subj-{rng.randrange(400):04d}" for _ in range(rng.randrange(1, 3))
            ]

    def lines(self, n_records: int) -> Iterator[bytes]:
        """About `n_records` records (batches hold several), as archive lines."""
        rng = self.rng
        ts = self.start_ms
        recent: list[dict[str, Any]] = []
        produced = 0
        while produced < n_records:
            ts += rng.randrange(2 * STEP_MS)
            r = rng.random()
            if r < self.malformed_share:
                produced += 1
                yield rng.choice(_MALFORMED)
                continue
            if r < self.malformed_share + self.redelivery_share and recent:
                again = dict(rng.choice(recent))  # a redelivery: the same id, up to minutes later
                if rng.random() < 0.3:
                    again["region"] = rng.choice(_REGIONS)
                produced += 1
                yield orjson.dumps(again)
                continue
            # a few seconds of jitter: producers do not deliver in event-time order
            ev = self._event(max(ts - rng.randrange(5_000), 0))
            if len(recent) < 2_000:
                recent.append(ev)
            else:
                recent[rng.randrange(2_000)] = ev
            if rng.random() < self.batch_share:
                batch = [ev, *(self._event(ts) for _ in range(rng.randrange(1, 6)))]
                produced += len(batch)
                yield orjson.dumps({"records": batch})
                continue
            produced += 1
            yield orjson.dumps(ev)


def write_realistic_archive(
    path: str, accounts_path: str, n_records: int, seed: int = 23
) -> RealisticTraffic:
    """Write a realistic archive and its account records (JSON lines)."""
    traffic = RealisticTraffic(seed=seed)
    with open(accounts_path, "wb") as fh:
        fh.write(b"\n".join(traffic.account_lines()) + b"\n")
    with open(path, "wb") as fh:
        buf: list[bytes] = []
        for line in traffic.lines(n_records):
            buf.append(line)
            if len(buf) >= 10_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    return traffic
