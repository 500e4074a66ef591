"""What the dock tells the employee about a usable read.

Until a facility's reference slice is loaded (the scorer issue), a container cannot be checked against eDoc,
so every usable read is stored and signalled good with the verdict ``unverified``; headquarters judges it.
Operator command barcodes are recorded as ``command``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.barcode import Label
from drivers.base import Signal

NO_SLICE = "no reference slice loaded; stored for headquarters to check"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The disposition of one read and the feedback the scanner gets once it is stored."""

    verdict: str
    reason: str
    signal: Signal


_NOT_A_PLACARD = {
    "imtb": "tray/sack label",
    "impb": "package barcode",
    "imb": "mailpiece barcode",
}


def judge(label: Label) -> Verdict:
    """The verdict for a parsed label."""
    if label.kind == "command":
        return Verdict("command", f"operator command DOCK:{label.fields.get('command', '')} recorded", "good")
    if label.kind in _NOT_A_PLACARD:
        # Stored (nothing read is thrown away), but the employee probably meant to scan the container placard.
        what = _NOT_A_PLACARD[label.kind]
        return Verdict("unverified", f"{what}, not a container placard: stored; scan the placard too", "attention")
    return Verdict("unverified", NO_SLICE, "good")
