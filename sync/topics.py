"""Every MQTT topic name, in one place. Topics are per site and device so broker ACLs can confine each dock.

    docks/{site}/{device}/events   dock -> HQ   batches of events (QoS 1)
    docks/{site}/{device}/birth    dock -> HQ   retained birth: boot, version, config hash, scanners
    docks/{site}/{device}/state    dock -> HQ   retained "online"; the Last Will sets "offline"
    docks/{site}/{device}/status   dock -> HQ   retained periodic status: backlog, oldest undelivered age
    docks/{site}/{device}/acks     HQ -> dock   acknowledgements, sent only after the scorer's commit
    docks/{site}/{device}/query    dock -> HQ   questions about containers the reference slice does not know
    docks/{site}/{device}/answers  HQ -> dock   the answers (dock-answer/1)
    hq/scorers/{instance}/state    HQ -> all    retained "online"/"offline" of each scorer instance
    hq/sites/{site}/...            HQ -> docks  facility topics (reference slices, answers)
    hq/national/outage             HQ -> docks  retained: the latest national-outage declaration or all-clear
    hq/sites/{site}/slice/manifest             retained manifest of the facility's current reference slice
    hq/sites/{site}/slice/{version}/{index}    retained chunks of that slice
"""

from __future__ import annotations

from dataclasses import dataclass

SHARE_GROUP = "scorers"
NATIONAL_OUTAGE = "hq/national/outage"  # retained: the latest national-outage declaration or all-clear
SCORER_STATE_FILTER = "hq/scorers/+/state"


@dataclass(frozen=True, slots=True)
class DockTopics:
    """The topics of one dock."""

    site: str
    device: str

    @property
    def base(self) -> str:
        return f"docks/{self.site}/{self.device}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def birth(self) -> str:
        return f"{self.base}/birth"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def acks(self) -> str:
        return f"{self.base}/acks"

    @property
    def hq_site(self) -> str:
        return f"hq/sites/{self.site}/#"

    @property
    def query(self) -> str:
        return f"{self.base}/query"

    @property
    def answers(self) -> str:
        return f"{self.base}/answers"


def scorer_state(instance: str) -> str:
    return f"hq/scorers/{instance}/state"


def events_share_filter() -> str:
    """The scorer's shared subscription: instances in the group split the docks' batches between them."""
    return f"$share/{SHARE_GROUP}/docks/+/+/events"


def queries_share_filter() -> str:
    """The scorer's shared subscription to the docks' questions: one instance answers each."""
    return f"$share/{SHARE_GROUP}/docks/+/+/query"


def slice_manifest_topic(site: str) -> str:
    return f"hq/sites/{site}/slice/manifest"


def slice_chunk_topic(site: str, version: int, index: int) -> str:
    return f"hq/sites/{site}/slice/{version}/{index}"


def parse_slice_topic(topic: str) -> tuple[str, int | None, int | None] | None:
    """(site, None, None) for a slice manifest topic, (site, version, index) for a chunk topic, else None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:2] == ["hq", "sites"] and parts[2] and parts[3:] == ["slice", "manifest"]:
        return parts[2], None, None
    if (len(parts) == 6 and parts[:2] == ["hq", "sites"] and parts[2] and parts[3] == "slice"
            and all(x.isascii() and x.isdigit() for x in parts[4:]) and len(parts[4]) <= 18 and len(parts[5]) <= 9):
        return parts[2], int(parts[4]), int(parts[5])
    return None


def parse_dock_topic(topic: str) -> tuple[str, str, str] | None:
    """(site, device, leaf) of a docks/... topic, or None."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "docks" or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def parse_scorer_state_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "hq" and parts[1] == "scorers" and parts[3] == "state" and parts[2]:
        return parts[2]
    return None
