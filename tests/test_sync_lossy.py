"""Acceptance: a lossy link. The broker runs in a network namespace behind a veth pair; nftables drops 30 % of
the agent's packets at random, in both directions (netem is not built into this kernel). Every scan is
delivered and none is stored twice.

Topology (names and subnet derived from the test's pid, so concurrent runs do not clash)::

    host: scorer, agent, this test        netns dockt-PID: mosquitto (production template, TLS, ACL)
          10.77.X.1 on dkhPID  <== veth ==>  dkbPID 10.77.X.2

The dock logs in on the broker's password listener and the scorer on the mutual-TLS listener, so the random
drop rules (input: ``tcp dport`` password port; output: ``tcp sport`` password port) hit only the dock's
connection: the TLS handshake, its publishes, PUBACKs, subscriptions and the scorer's acknowledgements.
The loss is in place before the agent connects and is never lifted; segmentation offload is off on the
veth pair so that the rules drop wire-sized packets. The dock runs the shipped sync defaults (plus the
short reconnect/ack timeouts of ``dock_config``); ``DOCK_LOSSY_EXTRA_SYNC`` adds ``[sync]`` lines
(";"-separated, e.g. ``batch_max_events = 50``) and ``DOCK_LOSSY_SCANS`` changes the count (default 1,000).
Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GOOD, AgentProcess, PtyScanner, require_root, which_or_fail
from tests.mqtt_fixtures import (
    Broker,
    ScorerProcess,
    agent_undelivered,
    broker_dir,
    dock_config,
    status_json,
    wait_port,
    wait_until,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

N_SCANS = int(os.environ.get("DOCK_LOSSY_SCANS", "1000"))
LOSS_PCT = 30
DELIVERY_TIMEOUT_S = 180.0  # from the last scan; observed 2-125 s (TCP backoff at 30 % loss each way)
DEVICE, SITE = "dock-01", "NDC-X"


def sh(*cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@dataclass
class Namespace:
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def run(self, *cmd: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, input=input, check=check)


def free_subnet(pid: int) -> int:
    """A 10.77.X.0/24 no interface or route on this host uses yet, starting from one derived from ``pid``."""
    used = sh("ip", "-o", "-4", "addr", "show").stdout + sh("ip", "-4", "route", "show").stdout
    start = pid % 250
    for k in range(250):
        x = 1 + (start + k) % 250  # 10.77.0.x is the reliability lab's
        if f"10.77.{x}." not in used:
            return x
    raise RuntimeError("no free 10.77.X.0/24")


@pytest.fixture
def netns() -> Iterator[Namespace]:
    require_root()
    which_or_fail("ip")
    which_or_fail("nft")
    pid = os.getpid()
    x = free_subnet(pid)
    ns = Namespace(f"dockt-{pid}", f"dkh{pid}", f"dkb{pid}", f"10.77.{x}.1", f"10.77.{x}.2")
    try:
        sh("ip", "netns", "add", ns.name)
        sh("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        sh("ip", "link", "set", ns.ns_if, "netns", ns.name)
        # No segmentation offload: the drop rules must see (and drop) wire-sized packets, not 64 KB GSO
        # super-packets that a real link would carry as ~45 frames, each with its own chance of loss.
        sh("ip", "link", "set", ns.host_if, "gso_max_segs", "1")
        ns.run("ip", "link", "set", ns.ns_if, "gso_max_segs", "1")
        sh("ip", "addr", "add", f"{ns.host_ip}/24", "dev", ns.host_if)
        sh("ip", "link", "set", ns.host_if, "up")
        ns.run("ip", "addr", "add", f"{ns.ns_ip}/24", "dev", ns.ns_if)
        ns.run("ip", "link", "set", ns.ns_if, "up")
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        # Deleting the namespace destroys its end of the veth pair and with it the host end; the explicit
        # delete covers a failure half-way through the set-up. Processes in it are stopped by their fixtures.
        sh("ip", "netns", "del", ns.name, check=False)
        sh("ip", "link", "del", ns.host_if, check=False)


class NetnsBroker(Broker):
    """The production-template broker started inside ``netns`` (its certificate names the namespace's IP)."""

    def __init__(self, root: Path, docks: list[tuple[str, str]], netns: Namespace) -> None:
        self.netns = netns
        super().__init__(root, docks, host=netns.ns_ip)  # Broker.__init__ ends with self.start()

    def start(self, netns: str | None = None) -> None:
        super().start(netns=netns or self.netns.name)
        wait_port(self.host, self.mtls_port)  # from the host side, across the veth
        wait_port(self.host, self.password_port)


@pytest.fixture
def ns_broker(netns: Namespace) -> Iterator[NetnsBroker]:
    root = broker_dir()
    b: NetnsBroker | None = None
    try:
        b = NetnsBroker(root, [(DEVICE, SITE)], netns)
        yield b
    finally:
        if b is not None:
            b.stop()
        shutil.rmtree(root, ignore_errors=True)


def add_loss(ns: Namespace, port: int, pct: int) -> None:
    """Random drop of ``pct`` % of the packets to and from ``port`` inside the namespace (both directions)."""
    ns.run("nft", "-f", "-", input=f"""
table inet dockchaos {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {port} counter
        tcp dport {port} numgen random mod 100 < {pct} counter drop
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        tcp sport {port} counter
        tcp sport {port} numgen random mod 100 < {pct} counter drop
    }}
}}
""")


def loss_counters(ns: Namespace) -> dict[str, tuple[int, int, int]]:
    """{'input': (packets seen, dropped, bytes seen), 'output': (...)} from the rule counters."""
    out: dict[str, tuple[int, int, int]] = {}
    text = ns.run("nft", "list", "table", "inet", "dockchaos").stdout
    for chain in ("input", "output"):
        body = text.split(f"chain {chain} {{", 1)[1].split("}", 1)[0]
        (seen, seen_bytes), (dropped, _) = ((int(p), int(b)) for p, b in
                                            re.findall(r"counter packets (\d+) bytes (\d+)", body))
        out[chain] = (seen, dropped, seen_bytes)
    return out


def test_lossy_link_delivers_every_scan_exactly_once(tmp_path: Path, netns: Namespace,
                                                      ns_broker: NetnsBroker) -> None:
    scorer_db = tmp_path / "scorer.db"
    state = tmp_path / DEVICE
    config = dock_config(tmp_path, ns_broker, DEVICE, SITE, auth="password",
                         extra_sync=os.environ.get("DOCK_LOSSY_EXTRA_SYNC", "").replace(";", "\n") + "\n")
    codes = [f"99M123456{n:012d}" for n in range(N_SCANS)]
    scanner = PtyScanner(tmp_path)
    scorer: ScorerProcess | None = None
    agent: AgentProcess | None = None
    agent_rc = None
    try:
        scorer = ScorerProcess(tmp_path, ns_broker, scorer_db)  # mutual TLS listener: not lossy
        add_loss(netns, ns_broker.password_port, LOSS_PCT)
        t0 = time.monotonic()
        agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{scanner.path}?good=06&bad=15&name=door1"],
                             config=config)
        agent.wait_ready()
        for code in codes:
            scanner.write(code.encode() + b"\r")
            got = scanner.read_feedback(5.0)
            assert got == GOOD, f"{code}: feedback {got!r}"
        t_scanned = time.monotonic()
        delivered = wait_until(lambda: agent_undelivered(state) == 0, DELIVERY_TIMEOUT_S, 0.5)
        t_done = time.monotonic()
        sync = status_json(state).get("sync") or {}
        assert delivered, f"{agent_undelivered(state)} of {N_SCANS} scans undelivered after " \
                          f"{DELIVERY_TIMEOUT_S:.0f} s; sync: {sync}"
        counters = loss_counters(netns)
    finally:
        try:
            if agent is not None:
                agent_rc = agent.stop()
        finally:
            if scorer is not None:
                scorer.stop()
            scanner.close()
    assert agent_rc == 0

    conn = sqlite3.connect(state / "scans.db")
    dock = conn.execute("SELECT event_id, barcode FROM scans").fetchall()
    conn.close()
    conn = sqlite3.connect(scorer_db)
    hq = conn.execute("SELECT event_id, barcode FROM events WHERE device_id = ?", (DEVICE,)).fetchall()
    conn.close()
    assert len(dock) == N_SCANS and sorted(b for _e, b in dock) == sorted(codes)  # stored once at the dock
    assert len(hq) == N_SCANS, f"scorer stored {len(hq)} events for {N_SCANS} scans"
    assert len({e for e, _b in hq}) == N_SCANS and len({b for _e, b in hq}) == N_SCANS  # no duplicates
    assert set(hq) == set(dock)  # every scan, by event_id and barcode

    (in_seen, in_drop, in_bytes), (out_seen, out_drop, out_bytes) = counters["input"], counters["output"]
    assert in_drop > 0 and out_drop > 0, counters  # the harness bites
    assert max(in_bytes / in_seen, out_bytes / out_seen) <= 1600, counters  # wire-sized packets, no GSO
    dups = re.findall(rb"(\d+) duplicates", (tmp_path / "scorer-hq1.log").read_bytes())
    print(f"\nlossy link ({LOSS_PCT} % random drop each way): {N_SCANS} scans, committed in "
          f"{t_scanned - t0:.1f} s, all delivered {t_done - t_scanned:.1f} s after the last one "
          f"(total {t_done - t0:.1f} s); dropped {in_drop}/{in_seen} packets to the broker "
          f"({100 * in_drop / max(in_seen, 1):.0f} %), {out_drop}/{out_seen} from it "
          f"({100 * out_drop / max(out_seen, 1):.0f} %); agent reconnects {sync.get('reconnects')}, batches "
          f"{sync.get('batches_sent')}, events sent {sync.get('events_sent')}; duplicate deliveries at the "
          f"scorer {dups[-1].decode() if dups else '?'}")
