"""Derived per-event facts of SPEC 2.2: fr_kind, fr_use, le_customer."""

from __future__ import annotations

from topics.accounts import AccountRecord
from topics.requests import RequestEvent

IDENTIFY = "identify"
VERIFY = "verify"
ENROLL = "enroll"
NONE = "none"
FR_KINDS = (IDENTIFY, VERIFY, ENROLL, NONE)

OPERATION_KIND = {
    "face.identify": IDENTIFY,
    "face.find_similar": IDENTIFY,
    "face.verify": VERIFY,
    "person_group.add_face": ENROLL,
    "face_list.add_face": ENROLL,
}
LLM_OPERATIONS = frozenset({"chat.completions", "responses", "vision.analyze"})
_INTENT_KIND = {"identify_person": IDENTIFY, "verify_identity": VERIFY}
IDENTITY_INTENTS = frozenset(_INTENT_KIND)  # the only labels whose intent gives a kind
INTENT_THRESHOLD = 0.8
LAW_ENFORCEMENT = "law_enforcement"


def fr_kind(event: RequestEvent) -> str:
    """What kind of facial recognition, if any, the request performs."""
    kind = OPERATION_KIND.get(event.operation)
    if kind is not None:
        return kind
    intent = event.intent
    if intent is None:
        return NONE
    return intent_kind(event.operation, event.image_count, intent.label, intent.score)


def intent_kind(operation: str, image_count: int, label: str | None, score: float | None) -> str:
    """fr_kind of a request whose operation is not a Face API one, from its intent."""
    if (
        image_count >= 1
        and operation in LLM_OPERATIONS
        and score is not None
        and score >= INTENT_THRESHOLD
    ):
        return _INTENT_KIND.get(label or "", NONE)
    return NONE


class EnrichedEvent:
    """A request event with its account (None when unknown) and derived facts."""

    __slots__ = ("account", "event", "fr_kind", "le_customer")

    def __init__(self, event: RequestEvent, account: AccountRecord | None) -> None:
        self.event = event
        self.account = account
        self.fr_kind = fr_kind(event)
        self.le_customer = account is not None and (
            account.sector == LAW_ENFORCEMENT or account.acting_for == LAW_ENFORCEMENT
        )

    @property
    def fr_use(self) -> bool:
        """Identification or verification (SPEC 2.2)."""
        return self.fr_kind == IDENTIFY or self.fr_kind == VERIFY

    @property
    def org_id(self) -> str | None:
        """The account's organisation, None when unknown."""
        return self.account.org_id if self.account is not None else None
