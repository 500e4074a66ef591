"""Scanner URIs for ``dock-agent run --scanner``: a technician tries a scanner without editing the config.

    serial:///dev/ttyACM0?baud=115200&good=06&bad=15&attention=07&terminator=0d&aim=1&name=door3
    evdev:///dev/input/by-id/usb-...-event-kbd?layout=de&terminator=enter,tab&timeout=0.2&name=door2
    evdev:?usb_id=0c2e:0b61      evdev:?device_name=Honeywell%20Imaging%20%26%20Mobility%201900
    camera:///dev/video0?fps=5&roi=x,y,w,h&holdoff=2&name=cam1    camera:///path/file.mp4?loop=1
    camera+rtsp://host:554/stream?fps=5
    replay:///path/to/file.txt?speed=0        replay:-  (standard input)
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import TypeAdapter, ValidationError

from agent.errors import ConfigError
from agent.settings import ScannerConfig, format_validation_error

_FEEDBACK_KEYS = ("good", "bad", "attention")
_INT_KEYS = {"baud", "bytesize", "max_frame_bytes", "max_scan_chars"}
_FLOAT_KEYS = {"speed", "inter_char_timeout_s", "stopbits", "inter_key_timeout_s"}
_BOOL_KEYS = {"aim", "grab"}
# evdev:// short names -> HidScanner fields
_HID_ALIASES = {"terminator": "terminators", "timeout": "inter_key_timeout_s", "max": "max_scan_chars"}


def parse_scanner_uri(uri: str, index: int = 0) -> ScannerConfig:
    """A scanner configuration from a URI.

    Raises:
        ConfigError: the URI's scheme, path or a parameter is wrong (the message names it).
    """
    if uri.split(":", 1)[0] in ("camera", "camera+rtsp", "camera+http", "camera+https"):
        from drivers.camera_scanner import parse_camera_uri  # loads no OpenCV

        try:
            data: dict[str, object] = parse_camera_uri(uri, index)
        except ValueError as e:
            raise ConfigError(f"--scanner {uri!r}: {e}") from None
    elif uri in ("replay:-", "replay://-"):
        data = {"type": "replay", "path": "-", "name": "stdin", "speed": 0}
    else:
        parts = urlsplit(uri)
        if parts.scheme not in ("serial", "replay", "evdev"):
            raise ConfigError(
                f"--scanner {uri!r}: unknown scheme {parts.scheme!r}; use serial://, evdev:// or replay://"
            )
        hid = parts.scheme == "evdev"
        path = unquote(parts.netloc + parts.path)
        if hid:
            data = {"type": "hid", "name": f"hid{index}"}
            if path:
                data["path"] = path
        else:
            if not path:
                raise ConfigError(f"--scanner {uri!r}: no device or file path")
            data = {"type": parts.scheme, "path" if parts.scheme == "replay" else "port": path}
            data["name"] = f"{parts.scheme}{index}" if parts.scheme == "serial" else "replay"
        feedback: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if hid:
                key = _HID_ALIASES.get(key, key)
            if hid and key == "terminators":
                data[key] = [t.strip() for t in value.split(",") if t.strip()]
            elif key in _FEEDBACK_KEYS and not hid:
                feedback[key] = value
            elif key in _INT_KEYS:
                data[key] = _number(uri, key, value, int)
            elif key in _FLOAT_KEYS:
                data[key] = _number(uri, key, value, float)
            elif key in _BOOL_KEYS:
                data[key] = value.lower() in ("1", "true", "yes", "on")
            else:
                data[key] = value
        if feedback:
            data["feedback"] = feedback
    try:
        return TypeAdapter(ScannerConfig).validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(f"--scanner {uri!r}", e)) from None


def _number(uri: str, key: str, value: str, kind: type) -> object:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"--scanner {uri!r}: {key} must be a number, got {value!r}") from None
