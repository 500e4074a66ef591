"""The dock's MQTT link: the only module that imports paho. MQTT 5 only, TLS by default.

A supervisor thread owns the connection: connect, hand the socket to paho's network thread, and when the
connection ends reconnect with exponential backoff and full jitter, retrying at once when a network interface
comes up (netlink). Each connection uses a fresh paho client with a clean start, so nothing stale survives a
reconnect: the SQLite outbox, not paho, is the queue. paho callbacks only post LinkUp / LinkDown / Published /
Inbound values to the agent's queue; the main loop decides everything.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkUp:
    """CONNACK accepted; ``max_packet`` is the broker's Maximum Packet Size (None: no limit stated)."""

    max_packet: int | None


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


@dataclass(frozen=True, slots=True)
class Published:
    """The PUBACK for ``mid`` with its MQTT 5 reason code (>= 0x80 is a refusal)."""

    mid: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True)
class BrokerURL:
    tls: bool
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """``mqtts://host:port`` (TLS) or ``mqtt://host:port`` (plaintext).

        Raises:
            ValueError: any other scheme (MQTT over websockets, or a typo), or no host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtts:// (TLS) or mqtt://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r}: no host")
        tls = parts.scheme == "mqtts"
        return cls(tls, parts.hostname, parts.port or (8883 if tls else 1883))


@dataclass(frozen=True)
class LinkConfig:
    """Everything needed to connect; secrets already read from their files."""

    url: BrokerURL
    client_id: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    max_inbound_bytes: int = 512 * 1024
    connect_timeout_s: float = 10.0


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (so a fleet does not reconnect in step)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


class NetlinkWatch:
    """Wakes the reconnect wait when a network interface or address comes up (RTNLGRP_LINK, IPv4/6 addr)."""

    GROUPS = 0x1 | 0x10 | 0x100  # RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, self.GROUPS))
            s.setblocking(False)
            self.sock = s
        except (OSError, AttributeError) as e:
            log.debug("sync: no netlink watch (%s); reconnects rely on backoff alone", e)

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """Sleep up to ``timeout_s``; True if a network change cut it short."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.sock is None:
                stop.wait(min(left, 0.5))
                continue
            ready, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if ready:
                try:
                    while self.sock.recv(65536):
                        pass
                except BlockingIOError:
                    pass
                return True
        return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class MqttLink:
    """One MQTT 5 connection to the broker, kept up for as long as the agent runs."""

    def __init__(
        self,
        cfg: LinkConfig,
        *,
        will: tuple[str, bytes],
        subscriptions: list[str],
        post: Callable[[object], None],
    ) -> None:
        self.cfg = cfg
        self.will = will
        self.subscriptions = subscriptions
        self.post = post
        self.state = "stopped"  # stopped | connecting | connected | backoff
        self.last_error = ""
        self.reconnects = 0
        self.connected_since_mono: float | None = None
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._force = threading.Event()
        self._session_over = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="mqtt-link", daemon=True)
        self._netlink = NetlinkWatch()

    # -- API for the main loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly, after publishing ``final`` (e.g. a retained 'offline' state) if connected."""
        with self._lock:
            client = self._client if self.state == "connected" else None
        if client is not None and final is not None:
            info = client.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._session_over.set()
        self._thread.join(timeout_s)
        self._netlink.close()

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        """Queue a QoS 1 publish; the mid, or None when not connected (the row simply stays in the outbox)."""
        with self._lock:
            if self.state != "connected" or self._client is None:
                return None
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def force_reconnect(self, reason: str) -> None:
        """Drop the connection (e.g. PUBACKs stopped coming) so the supervisor makes a new one."""
        log.warning("sync: forcing a reconnect: %s", reason)
        self.last_error = reason
        self._force.set()
        self._session_over.set()

    # -- the supervisor thread ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self.state = "connecting"
            ok = self._session()
            if self._stop.is_set():
                break
            if ok:
                attempt = 0
            self.state = "backoff"
            delay = backoff_s(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
            attempt += 1
            if self._netlink.wait(delay, self._stop):
                log.info("sync: network change seen; reconnecting now")
        self.state = "stopped"

    def _session(self) -> bool:
        """One connection from connect to loss; True if CONNACK was accepted."""
        client = self._make_client()
        accepted = threading.Event()
        self._session_over.clear()
        self._force.clear()

        def on_connect(c, _userdata, _flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
            if reason_code.is_failure:
                self.last_error = describe_connack_refusal(str(reason_code), int(reason_code.value), self.cfg)
                log.error("sync: %s", self.last_error)
                self._session_over.set()
                return
            max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
            for topic in self.subscriptions:
                c.subscribe(topic, qos=1)
            with self._lock:
                self.state = "connected"
            self.connected_since_mono = time.monotonic()
            self.last_error = ""
            accepted.set()
            log.info("sync: connected to %s:%d", self.cfg.url.host, self.cfg.url.port)
            self.post(LinkUp(max_packet))

        def on_disconnect(_c, _userdata, _flags, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
            if accepted.is_set() and not self._stop.is_set():
                self.last_error = self.last_error or f"connection lost: {reason_code}"
            self._session_over.set()

        def on_publish(_c, _userdata, mid, reason_code, _properties) -> None:  # type: ignore[no-untyped-def]
            self.post(Published(mid, int(reason_code.value), str(reason_code)))

        def on_message(_c, _userdata, msg) -> None:  # type: ignore[no-untyped-def]
            self.post(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain)))

        early_errors: list[str] = []

        def on_log(_c, _userdata, level, buf) -> None:  # type: ignore[no-untyped-def]
            # A TLS 1.3 alert (no or rejected client certificate) only shows up here, on the first read. Keep
            # the first error of the attempt: the ones after it ("Client is not connected...") say nothing.
            if level == mqtt.MQTT_LOG_ERR and not accepted.is_set() and not early_errors:
                early_errors.append(buf)
                self.last_error = describe_early_failure(buf, self.cfg)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_log = on_log
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = self.cfg.max_inbound_bytes  # the broker must not send us more
        props.SessionExpiryInterval = 0
        try:
            client.connect(self.cfg.url.host, self.cfg.url.port, keepalive=self.cfg.keepalive_s,
                           clean_start=True, properties=props)
        except (OSError, ssl.SSLError, ValueError) as e:
            self.last_error = describe_connect_error(e, self.cfg)
            log.warning("sync: cannot connect to %s:%d: %s", self.cfg.url.host, self.cfg.url.port, self.last_error)
            return False
        with self._lock:
            self._client = client
        client.loop_start()
        self._session_over.wait(self.cfg.connect_timeout_s)
        if not accepted.is_set() and not self._session_over.is_set():
            self.last_error = f"no CONNACK within {self.cfg.connect_timeout_s:g} s"
            log.warning("sync: %s", self.last_error)
        else:
            self._session_over.wait()
        with self._lock:
            was_connected = self.state == "connected"
            self.state = "connecting"
            self._client = None
        if self._force.is_set():
            # The link was declared dead: abort it. A polite DISCONNECT would wait behind everything paho
            # still has queued, i.e. for the stalled TCP connection to drain (seen: 7-30 s on a lossy link).
            sock = client.socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        elif self._stop.is_set() or not accepted.is_set():
            client.disconnect()
        client.loop_stop()
        if was_connected:
            self.reconnects += 1
            self.connected_since_mono = None
            self.post(LinkDown(self.last_error or "disconnected"))
            if not self._stop.is_set():
                log.warning("sync: link down: %s", self.last_error or "disconnected")
        return accepted.is_set()

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(64)
        client.max_queued_messages_set(256)
        client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        if cfg.url.tls:
            client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        return client


# TLS alerts the broker sends when it rejects this dock's certificate (in paho's error log line), in words.
_TLS_ALERTS = (
    ("CERTIFICATE_REQUIRED", "the broker requires a client certificate and this dock sent none"),
    ("UNKNOWN_CA", "the broker does not trust this dock's client certificate (issued by another CA)"),
    ("CERTIFICATE_EXPIRED", "the broker refused this dock's client certificate: it has expired"),
    ("CERTIFICATE_REVOKED", "the broker refused this dock's client certificate: it has been revoked"),
    ("DECRYPT_ERROR",
     "the broker refused this dock's client certificate (bad signature: issued by another CA?)"),
    ("BAD_CERTIFICATE",
     "the broker refused this dock's client certificate (expired, revoked, or issued by another CA?)"),
    ("UNSUPPORTED_CERTIFICATE", "the broker refused this dock's client certificate (unsupported type)"),
)


def describe_connack_refusal(reason: str, code: int, cfg: LinkConfig) -> str:
    """A technician-readable reason for a CONNACK with a failure reason code."""
    why = f"broker refused the connection: {reason}"
    if code in (0x86, 0x87):  # Bad user name or password / Not authorized
        if cfg.password is not None:
            why += (f" (wrong user name or password? user {cfg.username!r}: check the password file, and that"
                    " this dock is provisioned on this broker)")
        elif cfg.cert_file:
            why += " (this dock's certificate identity is not allowed on this broker)"
        else:
            why += " (this dock has neither a password nor a client certificate configured)"
    return why


def describe_early_failure(buf: str, cfg: LinkConfig) -> str:
    """Why a connection ended before CONNACK, from paho's first error line of the attempt.

    With TLS 1.3 the broker checks the client certificate after the client's handshake is done, so a rejected
    certificate shows up as an alert, or (when the broker's reset wins the race) as a bare EOF, on the first
    read. Either way the dock's own certificate is what to look at; whether it has expired is told here.
    """
    cert = client_cert_validity(cfg.cert_file)
    for alert, words in _TLS_ALERTS:
        if alert in buf:
            return f"TLS: {words}{cert}"
    lost = ("EOF occurred", "reset by peer", "Connection reset", "UNEXPECTED_EOF")
    if cfg.url.tls and any(s in buf for s in lost):
        if not cfg.cert_file:
            return ("TLS: the broker closed the connection during set-up: this dock sends no client"
                    " certificate (sync.client_cert_file is not set) and this broker port requires one")
        return ("TLS: the broker closed the connection during set-up: it did not accept this dock's client"
                f" certificate (expired, revoked, or issued by another CA?){cert}")
    return f"connection failed before CONNACK: {buf}"


def client_cert_validity(cert_file: str | None) -> str:
    """'' or, read locally, why this dock's own certificate is not valid now (expired or not yet valid)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)  # CPython's only PEM cert reader
    if not cert_file or decode is None:
        return ""
    try:
        info = decode(cert_file)
        not_before = ssl.cert_time_to_seconds(info["notBefore"])
        not_after = ssl.cert_time_to_seconds(info["notAfter"])
    except (OSError, ValueError, KeyError, TypeError, ssl.SSLError):
        return ""
    now = time.time()
    if now >= not_after:
        return f"; {cert_file} expired on {info['notAfter']}"
    if now < not_before:
        return f"; {cert_file} is not valid before {info['notBefore']} (or this dock's clock is wrong)"
    return ""


def describe_connect_error(e: BaseException, cfg: LinkConfig | None = None) -> str:
    """A technician-readable reason for a failed connection attempt."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was not accepted ({e.verify_message})"
    if isinstance(e, ssl.SSLError) and cfg is not None and any(a in str(e) for a, _ in _TLS_ALERTS):
        return describe_early_failure(str(e), cfg)  # TLS 1.2: the broker's alert comes during the handshake
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is the broker running on that port?)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the broker's name: {e.strerror}"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out connecting"
    if isinstance(e, OSError):
        return f"{e.strerror or e} (errno {e.errno})" if e.errno else str(e)
    return str(e)
