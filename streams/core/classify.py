"""Derived per-event facts of SPEC 2.2: bio_kind, trait, bio_by, fr_kind, le_customer.

How operations classify is data (the rules file's `classification` section, parsed by
`streams.core.classification`); this module only applies a `Classification` to an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from topics.accounts import AccountRecord
from topics.requests import RequestEvent

IDENTIFY = "identify"
VERIFY = "verify"
ENROLL = "enroll"
NONE = "none"
BIO_KINDS = (IDENTIFY, VERIFY, ENROLL, NONE)
FR_KINDS = BIO_KINDS
FACE = "face"
VOICE = "voice"
OTHER = "other"
TRAITS = (FACE, VOICE, OTHER, NONE)
BY_OPERATION = "operation"
BY_INTENT = "intent"
LAW_ENFORCEMENT = "law_enforcement"

#: (bio_kind, trait, bio_by, fr_kind): what a classification gives an event
Verdict = tuple[str, str, str | None, str]
UNCLASSIFIED: Verdict = (NONE, NONE, None, NONE)


def verdict(bio_kind: str, trait: str, by: str) -> Verdict:
    """The verdict of a (bio_kind, trait) pair; none/none has no `bio_by` (SPEC 2.2)."""
    if bio_kind == NONE:
        return UNCLASSIFIED
    return (bio_kind, trait, by, bio_kind if trait == FACE else NONE)


@dataclass(frozen=True, slots=True)
class Classification:
    """The rules file's classification section, ready to apply (SPEC 2.2)."""

    #: operation -> its verdict (bio_by "operation")
    operations: Mapping[str, Verdict]
    #: model operations whose intent may classify a request
    model_operations: frozenset[str]
    #: intent label -> bio_kind (identify or verify)
    intents: Mapping[str, str]
    intent_threshold: float

    def of_intent(
        self,
        operation: str,
        image_count: int,
        audio_count: int,
        label: str | None,
        score: float | None,
    ) -> Verdict:
        """The verdict of a request that no operation entry classifies, from its intent."""
        if score is None or score < self.intent_threshold or operation not in self.model_operations:
            return UNCLASSIFIED
        kind = self.intents.get(label or "")
        if kind is None:
            return UNCLASSIFIED
        if image_count >= 1:
            return _INTENT_VERDICTS[(kind, FACE)]
        if audio_count >= 1:
            return _INTENT_VERDICTS[(kind, VOICE)]
        return UNCLASSIFIED

    def of_event(self, event: RequestEvent) -> Verdict:
        """The event's verdict: by its operation, else by its intent, else none/none."""
        found = self.operations.get(event.operation)
        if found is not None:
            return found
        intent = event.intent
        if intent is None:
            return UNCLASSIFIED
        return self.of_intent(
            event.operation, event.image_count, event.audio_count, intent.label, intent.score
        )

    def canonical(self) -> dict[str, object]:
        """A JSON-able form that changes exactly when the classification does (rule versions)."""
        return {
            "operations": {op: [v[0], v[1]] for op, v in sorted(self.operations.items())},
            "model_operations": sorted(self.model_operations),
            "intents": dict(sorted(self.intents.items())),
            "intent_threshold": self.intent_threshold,
        }


# shared tuples, so that classifying an event allocates nothing
_INTENT_VERDICTS = {
    (k, t): verdict(k, t, BY_INTENT) for k in (IDENTIFY, VERIFY, ENROLL) for t in (FACE, VOICE)
}


class EnrichedEvent:
    """A request event with its account (None when unknown) and derived facts."""

    __slots__ = ("account", "bio_by", "bio_kind", "event", "fr_kind", "le_customer", "trait")

    def __init__(
        self, event: RequestEvent, account: AccountRecord | None, classification: Classification
    ) -> None:
        self.event = event
        self.account = account
        # `Classification.of_event`, inlined: this runs for every record a replay reads
        found = classification.operations.get(event.operation)
        if found is None:
            intent = event.intent
            found = (
                UNCLASSIFIED
                if intent is None
                else classification.of_intent(
                    event.operation,
                    event.image_count,
                    event.audio_count,
                    intent.label,
                    intent.score,
                )
            )
        self.bio_kind, self.trait, self.bio_by, self.fr_kind = found
        self.le_customer = account is not None and (
            account.sector == LAW_ENFORCEMENT or account.acting_for == LAW_ENFORCEMENT
        )

    @property
    def fr_use(self) -> bool:
        """Facial identification or verification (SPEC 2.2)."""
        return self.fr_kind == IDENTIFY or self.fr_kind == VERIFY

    @property
    def bio_use(self) -> bool:
        """Biometric identification or verification, by any trait (SPEC 2.2)."""
        return self.bio_kind == IDENTIFY or self.bio_kind == VERIFY

    @property
    def org_id(self) -> str | None:
        """The account's organisation, None when unknown."""
        return self.account.org_id if self.account is not None else None
