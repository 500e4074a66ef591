"""Every MQTT topic name, in one place. Topics are per site and device so broker ACLs can confine each dock.

    docks/{site}/{device}/events   dock -> HQ   batches of events (QoS 1)
    docks/{site}/{device}/birth    dock -> HQ   retained birth: boot, version, config hash, scanners
    docks/{site}/{device}/state    dock -> HQ   retained "online"; the Last Will sets "offline"
    docks/{site}/{device}/status   dock -> HQ   retained periodic status: backlog, oldest undelivered age
    docks/{site}/{device}/acks     HQ -> dock   acknowledgements, sent only after the scorer's commit
    hq/scorers/{instance}/state    HQ -> all    retained "online"/"offline" of each scorer instance
    hq/sites/{site}/...            HQ -> docks  facility topics (reference slices, outage declarations)
"""

from __future__ import annotations

from dataclasses import dataclass

SHARE_GROUP = "scorers"
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


def scorer_state(instance: str) -> str:
    return f"hq/scorers/{instance}/state"


def events_share_filter() -> str:
    """The scorer's shared subscription: instances in the group split the docks' batches between them."""
    return f"$share/{SHARE_GROUP}/docks/+/+/events"


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
