"""The order in which a campaign offers its cases.

Both orders take this annotator's cases in progress first (to resume them), then the unreviewed ones, then
skipped, flagged and accepted ones. Within each group, "attention" (needs attention first) puts the lowest batch
confidence first (cases without a known confidence after those with one), ties by id; "id" goes by case id.

    >>> from .sources import CampaignCase
    >>> from .state import CaseState
    >>> cases = [CampaignCase(n, f"{n}.nii.gz", confidence=c) for n, c in (("a", None), ("b", 0.9), ("c", 0.6))]
    >>> [c.id for c in ordered(cases, {"a": CaseState("a", "accepted")}, "ann")]
    ['c', 'b', 'a']
"""

from __future__ import annotations

from collections.abc import Sequence

from .sources import CampaignCase
from .state import ACCEPTED, FLAGGED, IN_PROGRESS, NEW, SKIPPED, CaseState

ORDERS = ("attention", "id")
_RANK = {NEW: 1, SKIPPED: 2, FLAGGED: 3, ACCEPTED: 4}


def _key(case: CampaignCase, state: CaseState, annotator: str, order: str):
    if state.status == IN_PROGRESS:
        rank = 0 if state.annotator == annotator else 1  # someone else's: among the new ones
    else:
        rank = _RANK[state.status]
    if order == "id":
        return rank, case.id
    return rank, case.confidence is None, case.confidence or 0.0, case.id


def ordered(
    cases: Sequence[CampaignCase], states: dict[str, CaseState], annotator: str, order: str = "attention"
) -> list[CampaignCase]:
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is none of {ORDERS}")
    return sorted(cases, key=lambda c: _key(c, states.get(c.id, CaseState(c.id)), annotator, order))


def is_open(state: CaseState) -> bool:
    """Whether Next case may give this case (if no one has it open): new, in progress or skipped."""
    return state.status in (NEW, IN_PROGRESS, SKIPPED)
