"""The bench's yardstick: the catalog (SPEC 2, 4.1, 4.2) written plainly with json + datetime.

Deliberately independent of frwatch (it imports nothing from streams.core or topics), so
that `frwatch bench` compares frwatch's replay with what a careful first implementation
would do, on the same data in the same run; tests check both give the same alert ids.
It knows SPEC 2.2's canonical operation names only (not the catalog's Face REST ids).

    python -m streams.cli.bench_yardstick ACCOUNTS ARCHIVE...   prints alert ids, one a line
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import re
import sys
from typing import Any

_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_MS = 253_402_300_799_999
HOUR, DAY = 3_600_000, 86_400_000
OPS = {
    "face.identify": ("identify", "face"),
    "face.find_similar": ("identify", "face"),
    "face.verify": ("verify", "face"),
    "person_group.add_face": ("enroll", "face"),
    "face_list.add_face": ("enroll", "face"),
    "speaker.identify": ("identify", "voice"),
    "speaker.verify": ("verify", "voice"),
    "speaker.enroll": ("enroll", "voice"),
}
MODEL_OPS = {"chat.completions", "responses", "vision.analyze", "audio.chat"}
INTENTS = {"identify_person": "identify", "verify_identity": "verify"}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_ts(v: Any) -> int | None:
    """Epoch ms of a valid ts (SPEC 2.1), None when malformed."""
    if type(v) is int:
        return v if 0 <= v <= MAX_MS else None
    m = _TS.match(v) if type(v) is str else None
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        tz = dt.UTC
        if m.group(9):
            off = dt.timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
            if int(m.group(10)) > 23 or int(m.group(11)) > 59:
                return None
            tz = dt.timezone(off if m.group(9) == "+" else -off)
        t = dt.datetime(y, mo, d, h, mi, min(s, 59), tzinfo=tz)  # a leap second folds forward
    except ValueError:
        return None
    ms = (t - EPOCH) // dt.timedelta(milliseconds=1) + (1000 if s == 60 else 0)
    ms += int((m.group(7) or "0").ljust(3, "0")[:3])
    return ms if 0 <= ms <= MAX_MS else None


def _str_ok(v: Any, limit: int = 1024) -> bool:
    return v is None or (type(v) is str and len(v) <= limit)


def _count_ok(v: Any) -> bool:
    return v is None or (type(v) is int and v >= 0)


def valid(r: Any) -> int | None:
    """The record's event time when every field is as SPEC 2.1 says, else None."""
    if type(r) is not dict:
        return None
    for name, limit in (("event_id", 128), ("account_id", 1024), ("operation", 1024)):
        if type(r.get(name)) is not str or not 1 <= len(r[name]) <= limit:
            return None
    if not all(_str_ok(r.get(k)) for k in ("api_key_id", "model", "region", "client_ip")):
        return None
    if not all(_count_ok(r.get(k)) for k in ("image_count", "audio_count", "faces_detected")):
        return None
    s = r.get("subject_ids")
    if s is not None and (type(s) is not list or len(s) > 1000 or not all(type(x) is str and len(x) <= 1024 for x in s)):  # fmt: skip
        return None
    for name, keys in (("gallery", ("id", "kind")), ("capture", ("device", "setting")), ("intent", ("label",))):  # fmt: skip
        o = r.get(name)
        if o is not None and (type(o) is not dict or not all(_str_ok(o.get(k)) for k in keys)):
            return None
    sc = (r.get("intent") or {}).get("score")
    if sc is not None and (type(sc) not in (int, float) or not 0 <= sc <= 1):
        return None
    return parse_ts(r.get("ts"))


def facts(r: dict[str, Any], acct: dict[str, Any] | None) -> dict[str, Any]:
    """SPEC 2.2's derived fields, and what the rules read."""
    intent = r.get("intent") or {}
    images, audio = r.get("image_count") or 0, r.get("audio_count") or 0
    kind, trait, by = "none", "none", None
    if r["operation"] in OPS:
        (kind, trait), by = OPS[r["operation"]], "operation"
    elif r["operation"] in MODEL_OPS and intent.get("label") in INTENTS:
        score = intent.get("score")
        if score is not None and score >= 0.8 and (images or audio):
            kind, trait, by = INTENTS[intent["label"]], "face" if images else "voice", "intent"
    a = acct or {}
    return {
        "kind": kind, "trait": trait, "by": by, "images": images, "audio": audio,
        "fr": kind if trait == "face" else "none", "op": r["operation"], "acct": a,
        "le": "law_enforcement" in (a.get("sector"), a.get("acting_for")),
        "device": (r.get("capture") or {}).get("device"),
        "setting": (r.get("capture") or {}).get("setting"),
        "gallery": (r.get("gallery") or {}).get("kind"),
        "label": intent.get("label"), "score": intent.get("score"),
        "subjects": r.get("subject_ids") or [],
    }  # fmt: skip


def _intent_ok(f: dict[str, Any]) -> bool:
    return f["label"] in INTENTS and f["score"] is not None and f["score"] >= 0.8


def _fr_use(f: dict[str, Any]) -> bool:
    return f["fr"] in ("identify", "verify")


# (id, group_by, window, match, requirements: (kind, at_least, sub-condition or None))
RULES: list[tuple[str, str, int, Any, list[tuple[str, int, Any]]]] = [
    ("FR-001", "account_id", HOUR, lambda f: _fr_use(f) and f["le"] and f["acct"].get("country") == "US", [("count", 1, None)]),
    ("FR-002", "account_id", HOUR, lambda f: _fr_use(f) and f["le"] and (f["device"] in ("mobile", "body_camera", "dash_camera") or f["setting"] == "in_the_wild"), [("count", 1, None)]),
    ("FR-003", "account_id", HOUR, lambda f: _fr_use(f) and f["device"] in ("body_camera", "dash_camera") and not f["le"], [("count", 1, None)]),
    ("FR-004", "account_id", HOUR, lambda f: f["fr"] == "identify" and f["gallery"] in ("suspects", "inmates", "mugshots"), [("count", 1, None)]),
    ("FR-005", "account_id", HOUR, lambda f: f["op"] in ("chat.completions", "responses", "vision.analyze") and f["images"] >= 1 and _intent_ok(f), [("count", 3, None)]),
    ("FR-006", "org_id", HOUR, lambda f: f["fr"] == "identify" and "identification" not in (f["acct"].get("approved_uses") or []), [("distinct", 50, None)]),
    ("FR-007", "account_id", DAY, lambda f: f["fr"] in ("enroll", "identify"), [("count", 20, lambda f: f["fr"] == "enroll"), ("count", 1, lambda f: f["fr"] == "identify")]),
    ("FR-008", "account_id", HOUR, lambda f: _fr_use(f) and not f["acct"], [("count", 1, None)]),
    ("FR-009", "account_id", HOUR, lambda f: f["kind"] in ("identify", "verify") and f["trait"] in ("voice", "other") and f["by"] == "operation", [("count", 1, None)]),
    ("FR-010", "account_id", HOUR, lambda f: f["op"] in MODEL_OPS and f["audio"] >= 1 and f["images"] == 0 and _intent_ok(f), [("count", 3, None)]),
]  # fmt: skip


def run(accounts_path: str | None, archives: list[str]) -> tuple[list[str], dict[str, int]]:
    """Alert ids in firing order, and the summary counts (events, malformed, duplicates)."""
    accounts: dict[str, dict[str, Any]] = {}
    if accounts_path:
        with open(accounts_path, encoding="utf-8") as fh:
            for line in filter(str.strip, fh):
                a = json.loads(line)
                accounts.pop(a["account_id"], None) if a.get("deleted") else accounts.__setitem__(a["account_id"], a)  # fmt: skip
    windows: dict[tuple[str, str, int], dict[str, Any]] = {}
    ends: list[tuple[int, tuple[str, str, int]]] = []
    clock, alerts = 0, []
    summary = {"events": 0, "malformed": 0, "duplicates": 0}
    for path in archives:
        with open(path, encoding="utf-8", newline="") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line, parse_constant=_no_constant)
                except ValueError:
                    msg = None
                records: list[Any]
                if type(msg) is dict and "records" in msg and "event_id" not in msg:
                    records = msg["records"] if type(msg["records"]) is list else [None]
                else:
                    records = [msg]
                for r in records:
                    summary["events"] += 1
                    ts = valid(r)
                    if ts is None:
                        summary["malformed"] += 1
                        continue
                    if ts > clock:
                        clock = ts
                        while ends and clock - ends[0][0] > DAY:  # retention: 24h past the end
                            windows.pop(heapq.heappop(ends)[1], None)
                    f = facts(r, accounts.get(r["account_id"]))
                    matched = []
                    for rid, scope, size, match, reqs in RULES:
                        gk = r["account_id"] if scope == "account_id" else f["acct"].get("org_id")
                        if gk is not None and match(f):
                            matched.append((rid, scope, size, reqs, gk))
                    # the first scope with a match decides whether the record was a redelivery
                    primary = (
                        "account_id" if any(m[1] == "account_id" for m in matched) else "org_id"
                    )
                    duplicate = False
                    for rid, scope, size, reqs, gk in matched:
                        start = ts - ts % size
                        key = (rid, gk, start)
                        w = windows.get(key)
                        if w is None:
                            w = windows[key] = {"ids": set(), "n": [0] * len(reqs), "d": set(), "fired": False}  # fmt: skip
                            heapq.heappush(ends, (start + size, key))
                        if r["event_id"] in w["ids"]:
                            duplicate = duplicate or scope == primary
                            continue
                        w["ids"].add(r["event_id"])
                        if w["fired"]:
                            continue
                        ok = True
                        for i, (kind, at_least, where) in enumerate(reqs):
                            if where is None or where(f):
                                w["n"][i] += 1
                                if kind == "distinct":
                                    w["d"].update(f["subjects"])
                            ok = (
                                ok
                                and (len(w["d"]) if kind == "distinct" else w["n"][i]) >= at_least
                            )
                        if ok:
                            w["fired"] = True
                            alerts.append(hashlib.sha256(f"{rid}|{gk}|{start}".encode()).hexdigest()[:32])  # fmt: skip
                    summary["duplicates"] += duplicate
    return alerts, summary


if __name__ == "__main__":
    ids, counts = run(sys.argv[1], sys.argv[2:])
    print("\n".join(ids))
    print(json.dumps(counts), file=sys.stderr)
