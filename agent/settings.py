"""Site configuration: a TOML file validated at load into typed models.

Unknown keys are rejected with their key path; every field is described and bounded; secrets are read from
files (systemd credentials), never written into the configuration itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/dock-agent/site.toml")
DEFAULT_STATE_DIR = Path("/var/lib/dock-agent")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_HEX = re.compile(r"^([0-9A-Fa-f]{2})*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hex_bytes(value: str, what: str) -> str:
    value = value.replace(" ", "")
    if not _HEX.match(value):
        raise ValueError(f"{what} must be hex byte pairs such as '06' or '1b5b41', got {value!r}")
    if len(value) > 64:
        raise ValueError(f"{what} is longer than 32 bytes")
    return value.lower()


class Feedback(_Model):
    """Byte sequences written back to a serial scanner after each read (hex; empty = none)."""

    good: str = Field("", description="Written after a scan was committed and is usable (e.g. '06', ACK).")
    bad: str = Field("", description="Written when a read could not be used or stored (e.g. '15', NAK).")
    attention: str = Field("", description="Written when the read needs the employee's attention (e.g. '07').")

    @field_validator("good", "bad", "attention")
    @classmethod
    def _is_hex(cls, v: str, info: object) -> str:
        return _hex_bytes(v, getattr(info, "field_name", "feedback"))


class SerialScanner(_Model):
    """A scanner on a serial port (RS-232, or USB in CDC/virtual-COM mode)."""

    type: Literal["serial"]
    name: str = Field(pattern=_NAME, description="Scanner id used in records, logs and status.")
    port: str = Field(min_length=1, description="Device path, e.g. /dev/ttyACM0 or /dev/serial/by-id/...")
    baud: int = Field(9600, ge=300, le=4_000_000, description="Line speed in bits per second.")
    bytesize: Literal[5, 6, 7, 8] = Field(8, description="Data bits.")
    parity: Literal["N", "E", "O", "M", "S"] = Field("N", description="Parity: None, Even, Odd, Mark, Space.")
    stopbits: Literal[1, 1.5, 2] = Field(1, description="Stop bits.")
    terminator: str = Field(
        "0d", description="Hex byte that ends a frame; with 0d or 0a, CR, LF and CRLF all end a frame."
    )
    aim: bool = Field(False, description="The scanner prefixes AIM symbology identifiers (]C1, ]Q1, ...).")
    inter_char_timeout_s: float = Field(
        0.5, gt=0, le=10, description="A frame with no byte for this long is dropped as partial."
    )
    max_frame_bytes: int = Field(4096, ge=64, le=1_048_576, description="Longer frames are dropped, counted.")
    feedback: Feedback = Field(default_factory=Feedback, description="Good/bad/attention bytes for the scanner.")

    @field_validator("terminator")
    @classmethod
    def _term_hex(cls, v: str) -> str:
        v = _hex_bytes(v, "terminator")
        if len(v) != 2 and v not in ("0d0a", "0a0d"):
            raise ValueError("terminator must be one byte (or 0d0a), e.g. '0d' for CR or '03' for ETX")
        return v


class ReplayScanner(_Model):
    """Scans read from a file or stdin ('-'), for demos, tests and benchmarks."""

    type: Literal["replay"]
    name: str = Field("replay", pattern=_NAME, description="Scanner id used in records, logs and status.")
    path: str = Field(min_length=1, description="File of scans, one per line, or '-' for standard input.")
    speed: float = Field(
        1.0, ge=0, le=1000, description="Replay speed for '+SECONDS' delays in the file; 0 = no delays."
    )


class HidScanner(_Model):
    """A USB scanner in keyboard-wedge (HID keyboard) mode, read through /dev/input (python-evdev)."""

    type: Literal["hid"]
    name: str = Field(pattern=_NAME, description="Scanner id used in records, logs and status.")
    path: str | None = Field(
        None, min_length=1, pattern=r"^/dev/input/",
        description="Event device, best /dev/input/by-id/...-event-kbd (stable) or by-path/... for twins.",
    )
    device_name: str | None = Field(None, min_length=1, max_length=256,
                                    description="Device name exactly as evtest prints it.")
    usb_id: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$",
                               description="USB vendor:product in hex, e.g. '0c2e:0b61'.")
    layout: Literal["us", "de", "de_nodeadkeys"] = Field(
        "us", description="Keyboard layout the scanner is programmed for (its country setting).")
    terminators: list[Literal["enter", "kp_enter", "tab"]] = Field(
        default_factory=lambda: ["enter", "kp_enter"], min_length=1, max_length=3,
        description="Keys that end a read: enter, kp_enter, tab.")
    inter_key_timeout_s: float = Field(0.5, gt=0, le=10,
                                       description="A read with no key event for this long is dropped as partial.")
    max_scan_chars: int = Field(4096, ge=64, le=65_536, description="Longer reads are dropped, counted.")
    grab: bool = Field(True, description="Take the device exclusively so reads never reach a console or desktop.")

    @field_validator("usb_id")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @model_validator(mode="after")
    def _one_selector(self) -> HidScanner:
        if not (self.path or self.device_name or self.usb_id):
            raise ValueError("give path, device_name or usb_id (each given must match the device)")
        return self


CameraSymbology = Literal["qr", "microqr", "datamatrix", "pdf417", "aztec", "code128", "gs1-128", "ean-upc",
                          "code39", "code93", "itf", "codabar", "gs1-databar"]


class CameraScanner(_Model):
    """A camera decoded in software: a V4L2 device, a video file or an RTSP/HTTP stream (OpenCV + zxing-cpp)."""

    type: Literal["camera"]
    name: str = Field(pattern=_NAME, description="Scanner id used in records, logs and status.")
    source: str = Field(min_length=1, description="/dev/video0, /dev/v4l/by-id/..., an index such as '0', a "
                        "video file, or rtsp:// / http(s)://")
    fps: float = Field(5.0, gt=0, le=60, description="Frames decoded per second at most.")
    roi: tuple[int, int, int, int] | None = Field(None, description="Region of interest x, y, width, height in px.")
    holdoff_s: float = Field(2.0, ge=0, le=3600, description="A code seen again within this many seconds of its "
                             "last sighting is not counted again (0 = every sighting).")
    watchdog_s: float = Field(5.0, gt=0, le=300, description="No frame for this long: reopen with backoff.")
    formats: list[CameraSymbology] = Field(default_factory=lambda: ["qr", "datamatrix", "pdf417", "code128"],
                                           min_length=1, description="Symbologies decoded.")
    width: int | None = Field(None, ge=160, le=7680, description="Capture width asked of the device.")
    height: int | None = Field(None, ge=120, le=4320, description="Capture height asked of the device.")
    fourcc: str | None = Field(None, pattern=r"^[A-Za-z0-9 ]{4}$", description="e.g. MJPG for 1080p on USB cameras.")
    loop: bool = Field(False, description="Video file: start again at the end.")
    realtime: bool | None = Field(None, description="Pace a video file at its frame rate.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, le=120, description="Give up opening the source after this long.")

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("roi is x, y, width, height with x, y >= 0 and width, height > 0")
        return v


ScannerConfig = Annotated[SerialScanner | ReplayScanner | HidScanner | CameraScanner, Field(discriminator="type")]


class SiteSection(_Model):
    """Who this box is."""

    device_id: str = Field(pattern=_NAME, description="Unique id of this box; travels with every scan.")
    facility: str = Field(pattern=_NAME, description="Facility id (the scorer's `site`), e.g. a locale key.")
    timezone: str = Field("America/New_York", min_length=1, description="IANA time zone of the dock.")


class StoreSection(_Model):
    """Bounds of the local scan store. Undelivered scans are never pruned."""

    max_delivered_rows: int = Field(
        1_000_000, ge=1_000, description="Delivered scans kept at most; the oldest are pruned first."
    )
    max_delivered_age_days: float = Field(90, gt=0, le=3650, description="Delivered scans older are pruned.")
    warn_free_mb: float = Field(
        512, ge=0, description="Free disk below this raises a warning (degraded); 0 = no warning."
    )
    floor_free_mb: float = Field(
        64, ge=0,
        description="Free disk at or below this: new scans are refused with a bad-read signal; 0 = no floor "
        "(only SQLite's own disk-full error refuses).",
    )
    ballast_mb: float = Field(
        8, ge=0, le=1024, description="Size of the ballast file released to recover a full disk (0 = none)."
    )
    max_rejections: int = Field(10_000, ge=100, description="Unusable reads kept for diagnosis (a ring).")

    @model_validator(mode="after")
    def _warn_above_floor(self) -> StoreSection:
        if self.warn_free_mb and self.warn_free_mb < self.floor_free_mb:
            raise ValueError(
                f"warn_free_mb ({self.warn_free_mb}) must be at least floor_free_mb ({self.floor_free_mb})"
            )
        return self


class LogSection(_Model):
    """Logging to standard error (journald on a box)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum level logged.")


class SyncSection(_Model):
    """Store-and-forward to headquarters over MQTT 5 (docs/protocol.md)."""

    enabled: bool = Field(False, description="Send scans to headquarters; off = the dock only buffers.")
    broker: str = Field(
        "mqtts://localhost:8883", pattern=r"^mqtts?://[^/]+$",
        description="mqtts://host:port (TLS). mqtt:// (plaintext) needs allow_plaintext = true.",
    )
    allow_plaintext: bool = Field(False, description="Permit mqtt:// without TLS (a lab broker on loopback only).")
    ca_file: str | None = Field(None, description="CA bundle that signs the broker's certificate (default: system).")
    client_cert_file: str | None = Field(None, description="This dock's client certificate (PEM) for mutual TLS.")
    client_key_file: str | None = Field(
        None, description="Its private key; default: the credential 'mqtt-client.key' when a cert is set."
    )
    username: str | None = Field(None, description="MQTT user name; default: the device_id when a password is set.")
    password_file: str | None = Field(
        None, description="File holding the MQTT password; default: the credential 'mqtt-password' if present."
    )
    keepalive_s: int = Field(30, ge=5, le=600, description="MQTT keepalive; a dead link is noticed within 1.5x.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect backoff (full jitter).")
    reconnect_max_s: float = Field(60, gt=0, le=3600, description="Reconnect backoff cap.")
    max_inflight: int = Field(8, ge=1, le=64, description="Backlog batches awaiting PUBACK at once.")
    batch_max_events: int = Field(500, ge=1, le=5000, description="Events per backlog batch at most.")
    backlog_batches_per_s: float = Field(20, gt=0, le=1000, description="Backlog drain rate limit.")
    ack_timeout_s: float = Field(30, gt=0, le=3600, description="Resend events not acknowledged within this.")
    puback_timeout_s: float = Field(20, gt=0, le=600, description="Reconnect when a PUBACK is this late.")
    max_refusals: int = Field(3, ge=1, le=100, description="Broker refusals of an event before it is dead-lettered.")
    status_interval_s: float = Field(60, ge=1, le=3600, description="How often the retained status is published.")

    @model_validator(mode="after")
    def check_plaintext_is_explicit(self) -> SyncSection:
        if self.broker.startswith("mqtt://") and not self.allow_plaintext:
            raise ValueError("broker is mqtt:// (no TLS); use mqtts:// or set allow_plaintext = true")
        if self.client_key_file and not self.client_cert_file:
            raise ValueError("client_key_file is set without client_cert_file")
        return self


class WorkflowSection(_Model):
    """The dock's workflow (loads, outages, verdicts): docs/operator-guide.md."""

    lead_pin_file: str | None = Field(
        None, description="File holding the dock lead's PIN (DOCK:LEAD:<pin>); default: the credential "
        "'lead-pin' if present. Without a PIN, outages can be declared only from the box's shell."
    )
    slice_max_age_h: float = Field(
        24, gt=0, le=24 * 30, description="A reference slice older than this gives 'unverified' verdicts."
    )
    post_outage_h: float = Field(
        48, ge=0, le=24 * 14, description="Contingency acceptance continues this long after an all-clear."
    )


class HttpSection(_Model):
    """The status screen, health and metrics served by the agent (docs/architecture.md, "What people see")."""

    enabled: bool = Field(True, description="Serve the status screen, /healthz, /readyz and /metrics.")
    listen: str = Field(
        "127.0.0.1:8090", pattern=r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$",
        description="HOST:PORT. Beyond 127.0.0.1 a token is required (the credential 'http-token' or token_file).",
    )
    token_file: str | None = Field(None, description="File holding the LAN access token (default: credential).")


class Settings(_Model):
    """The whole site configuration."""

    site: SiteSection
    store: StoreSection = Field(default_factory=StoreSection)
    log: LogSection = Field(default_factory=LogSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    workflow: WorkflowSection = Field(default_factory=WorkflowSection)
    http: HttpSection = Field(default_factory=HttpSection)
    scanners: list[ScannerConfig] = Field(default_factory=list, description="The dock's scanners.")

    @model_validator(mode="after")
    def check_unique_scanner_names(self) -> Settings:
        seen: set[str] = set()
        for s in self.scanners:
            if s.name in seen:
                raise ValueError(f"two scanners are named {s.name!r}; give each a unique name")
            seen.add(s.name)
        return self


def _key_path(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("serial", "replay", "hid", "camera") and (not out or out.endswith("]")):
            continue  # the discriminator tag pydantic inserts into union paths
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = _key_path(tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_settings(data: dict[str, object], source: str = "<config>") -> Settings:
    """Validate already-parsed TOML data.

    Raises:
        ConfigError: naming every wrong key path.
    """
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_settings(path: Path) -> Settings:
    """Read and validate a site TOML file.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not validate.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_settings(data, str(path))


def config_hash(settings: Settings) -> str:
    """A short stable hash of the effective configuration (reported in status and, later, the birth message)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def read_secret(name: str, *, explicit_path: str | None = None) -> str:
    """Read a secret from a file: an explicit path, else ``$CREDENTIALS_DIRECTORY/name`` (systemd LoadCredential).

    Raises:
        ConfigError: the secret file is missing or unreadable.
    """
    if explicit_path:
        p = Path(explicit_path)
    else:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(f"secret {name!r}: no file given and CREDENTIALS_DIRECTORY is not set")
        p = Path(cred_dir) / name
    try:
        return p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"secret {name!r}: cannot read {p}: {e.strerror}") from None
