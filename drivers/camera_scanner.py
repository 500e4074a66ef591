"""Camera scanners: a V4L2 device, a video file or an RTSP/HTTP stream, decoded in software.

Built by ``drivers.build`` only when a camera is configured, so OpenCV, zxing-cpp and libzbar load only then.

Sources (``source``):

- a V4L2 device: ``/dev/video0``, ``/dev/v4l/by-id/...`` (stable across reboots) or an index such as ``0``;
  opened with OpenCV's V4L2 backend (the headless wheel has no GStreamer);
- a stream: ``rtsp://``, ``rtsps://``, ``http(s)://``, ``rtmp://``, ``udp://``, ``tcp://``; opened through FFmpeg with
  open/read time-outs (RTSP over TCP unless ``rtsp_transport = "udp"``);
- anything else is a video file (FFmpeg): the end of the file is the end of the source (``exhausted``, so the
  agent's runner stops it) unless ``loop`` is set.

Threads. A capture thread owns the ``cv2.VideoCapture`` and only grabs frames. :meth:`CameraDriver.read`, called
from :class:`drivers.runner.ScannerRunner`'s thread, takes a frame at most ``fps`` times per second, decodes it
(:mod:`drivers.camera_decode`), counts each code once while it stays in view (``holdoff_s``), and returns what a
scanner with AIM identifiers on would have sent: the identifier then the data (``]C1`` + ``99M...`` for an IMcb,
``]Q1`` + text for a QR code, ``]d1``/``]d2`` + bytes for a Data Matrix; a binary IBI payload passes as its raw bytes
after the identifier). agent.barcode.normalize() turns the identifier into the symbology name.

Live sources (devices, streams, and files with ``realtime``) keep only the newest frame, so a slow decoder never
works on stale images; a file read faster than real time hands over every frame in order, and its hold-off and
decode rate run on the video's own clock, so a test or a benchmark gets the same answer on any machine.

Watchdog. When the source delivers no frame for ``watchdog_s`` seconds (a camera unplugged, a stream that stops, a
capture call that hangs), ``read`` raises OSError; the runner closes the driver and reopens it with its backoff, so
the one retry/backoff/health loop applies to cameras too. A capture call that never returns is abandoned (its
thread releases the device if it ever wakes up).

Decoder failures never stop the driver: every decoder exception is a counted miss (``stats()["decode"]`` and the
runner's ``bad_frames`` through :meth:`take_frame_errors`).

``signal`` is a no-op: a camera has no beeper; the dock's status screen is the employee's feedback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from drivers.base import Signal

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "udp", "tcp", "srt")
_DEFAULT_FORMATS = ("qr", "datamatrix", "pdf417", "code128")


class CameraSettings(Protocol):
    """What the driver reads of its configuration (agent.settings' camera model, or :class:`CameraConfig`)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def fps(self) -> float: ...
    @property
    def roi(self) -> Sequence[int] | None: ...
    @property
    def holdoff_s(self) -> float: ...
    @property
    def watchdog_s(self) -> float: ...
    @property
    def formats(self) -> Sequence[str]: ...
    @property
    def loop(self) -> bool: ...
    @property
    def realtime(self) -> bool | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...


@dataclass(frozen=True)
class CameraConfig:
    """A camera's settings without pydantic (tests, benchmarks, ``camera:`` URIs); the site model mirrors it."""

    name: str = "camera"
    source: str = "/dev/video0"
    fps: float = 5.0  # frames decoded per second at most
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels
    holdoff_s: float = 2.0  # the same code again within this (seconds since last seen) is not counted again
    watchdog_s: float = 5.0  # no frame for this long: the source is reopened (runner backoff)
    formats: tuple[str, ...] = _DEFAULT_FORMATS
    loop: bool = False  # video file: start again at the end instead of finishing
    realtime: bool | None = None  # pace a video file at its frame rate (None: live sources yes, files no)
    width: int | None = None  # requested capture size (devices)
    height: int | None = None
    fourcc: str | None = None  # requested pixel format (devices), e.g. "MJPG" for 1080p at full rate on USB
    rtsp_transport: str = "tcp"
    open_timeout_s: float = 10.0


class CaptureLike(Protocol):
    """The part of cv2.VideoCapture the driver uses (tests pass a fake)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...


def source_kind(source: str) -> str:
    """"device", "stream" or "file" for a configured source."""
    s = source.strip()
    if s.isdigit() or s.startswith("/dev/"):
        return "device"
    scheme = urlsplit(s).scheme.lower()
    if scheme in _STREAM_SCHEMES:
        return "stream"
    return "file"


def open_capture(source: str, kind: str, cfg: CameraSettings) -> CaptureLike:
    """A cv2.VideoCapture for the source: V4L2 for devices, FFmpeg (with time-outs) for streams and files."""
    import os

    import cv2

    timeout_ms = int(1000 * float(getattr(cfg, "open_timeout_s", 10.0)))
    if kind == "device":
        cap = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
        if cap.isOpened():
            fourcc = getattr(cfg, "fourcc", None)
            if fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc[:4].ljust(4)))
            if cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            if cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one queued seconds ago
        return cap
    if kind == "stream" and source.lower().startswith(("rtsp://", "rtsps://")):
        transport = getattr(cfg, "rtsp_transport", "tcp")
        # FFmpeg options for OpenCV's backend; a value set by the operator in the environment wins.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{transport}")
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


@dataclass
class _Slot:
    """The hand-over between the capture thread and read(): one frame at a time."""

    frame: np.ndarray | None = None
    t: float = 0.0  # seconds: media time for paced-by-decoder files, monotonic otherwise
    seq: int = 0
    eof: bool = False
    error: str = ""
    reading_since: float | None = None  # monotonic time the current capture call started
    failing_since: float | None = None  # first failed capture call of the current streak
    last_frame_mono: float = 0.0
    media_t: float = 0.0  # last media position (files), to resume after a restart


@dataclass
class CameraStats:
    frames_captured: int = 0
    frames_decoded: int = 0
    frames_skipped: int = 0  # captured but not decoded (decode rate limit, or replaced by a newer frame)
    reads: int = 0  # codes decoded (before the hold-off)
    scans: int = 0  # codes handed to the agent
    suppressed: int = 0  # codes not handed over because of the hold-off
    pipeline_errors: int = 0  # decode() itself raised (never expected; counted, frame skipped)
    watchdog_restarts: int = 0
    opens: int = 0
    decode_ms_total: float = 0.0


class CameraDriver:
    """The Scanner protocol (drivers.base) for a camera; see the module docstring.

    ``close`` waits ``close_join_s`` for the capture thread; a capture call that hangs longer is abandoned.

    Args:
        cfg: The camera's settings.
        capture_factory: Opens the source (``open_capture`` by default; tests inject fakes).
        decoder: Decodes one frame into reads (a :class:`drivers.camera_decode.FrameDecoder` by default).
        clock: Monotonic seconds (injectable).
    """

    close_join_s = 2.0

    def __init__(self, cfg: CameraSettings, *, capture_factory: Callable[[str, str, CameraSettings], CaptureLike]
                 | None = None, decoder: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        from drivers import camera_decode as cd  # OpenCV + zxing-cpp: only when a camera is built

        self.cfg = cfg
        self.name = cfg.name
        self.kind = source_kind(str(cfg.source))
        self._source = str(cfg.source).strip()
        realtime = getattr(cfg, "realtime", None)
        self.live = self.kind != "file" or bool(realtime)
        self._pace = self.kind == "file" and bool(realtime)
        self._capture_factory = capture_factory or open_capture
        self._clock = clock
        self.decode_stats = cd.DecodeStats()
        self.decoder = decoder if decoder is not None else cd.FrameDecoder(
            tuple(cfg.formats) if cfg.formats else None, roi=cfg.roi, stats=self.decode_stats)
        if hasattr(self.decoder, "stats") and self.decoder.stats is not self.decode_stats:
            self.decode_stats = self.decoder.stats
        self.deduper = cd.Deduper(float(cfg.holdoff_s))
        self.stats_ = CameraStats()
        self._min_interval = 1.0 / float(cfg.fps) if cfg.fps and cfg.fps > 0 else 0.0
        self._cond = threading.Condition()
        self._slot = _Slot()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cap: CaptureLike | None = None
        self._last_seq = 0
        self._last_decode_t: float | None = None  # in the slot's time base
        self._last_decode_mono: float | None = None
        self._frames_captured = 0
        self._errors: list[str] = []
        self._errors_seen: dict[str, int] = {}
        self._exhausted = False
        self._resume_media_t = 0.0
        self._loop_offset = 0.0

    # -- Scanner protocol ------------------------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def open(self) -> None:
        if self._exhausted:
            return
        self.close()
        cap = self._capture_factory(self._source, self.kind, self.cfg)
        if cap is None or not cap.isOpened():
            if cap is not None:
                try:
                    cap.release()
                except Exception:
                    pass
            raise OSError(f"camera {self.name!r}: cannot open {self.kind} {self._source!r}")
        if self.kind == "file" and self._resume_media_t > 0:
            try:
                import cv2

                cap.set(cv2.CAP_PROP_POS_MSEC, self._resume_media_t * 1000)
            except Exception:
                pass
        self.stats_.opens += 1
        self._stop = threading.Event()
        with self._cond:
            self._slot = _Slot(last_frame_mono=self._clock(), media_t=self._resume_media_t)
        self._last_seq = 0
        self._cap = cap
        self._thread = threading.Thread(target=self._capture_loop, args=(cap, self._stop, self._slot),
                                        name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def read(self, timeout_s: float) -> list[bytes]:
        deadline = self._clock() + timeout_s
        while True:
            with self._cond:
                slot = self._slot
                while True:
                    if slot.error:
                        raise OSError(f"camera {self.name!r}: {slot.error}")
                    self._watchdog(slot)
                    now = self._clock()
                    if slot.seq > self._last_seq and slot.frame is not None:
                        ready_at = (self._last_decode_mono + self._min_interval
                                    if self.live and self._last_decode_mono is not None else now)
                        if now >= ready_at:
                            break
                        if now >= deadline:
                            return []
                        self._cond.wait(min(ready_at, deadline) - now)  # decode rate: then take the newest
                        continue
                    if slot.eof:
                        self._exhausted = True
                        return []
                    if now >= deadline:
                        return []
                    self._cond.wait(min(deadline - now, 0.05))
                frame, t, seq = slot.frame, slot.t, slot.seq
                self.stats_.frames_skipped += max(0, seq - self._last_seq - 1)
                self._last_seq = seq
                if not self.live:
                    slot.frame = None  # consumed: the capture thread may read the next frame
                    self._cond.notify_all()
            if (not self.live and self._last_decode_t is not None
                    and t - self._last_decode_t < self._min_interval - 1e-6):
                self.stats_.frames_skipped += 1  # decode rate, on the video's clock
                if self._clock() >= deadline:
                    return []
                continue
            return self._decode(frame, t)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        with self._cond:
            self._cond.notify_all()
            if self.kind == "file":
                self._resume_media_t = max(self._resume_media_t, self._slot.media_t)
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_join_s)
            if thread.is_alive():
                log.warning("camera %r: capture call did not return; abandoning it (it releases the source "
                            "if it ever returns)", self.name)
        self._cap = None

    def signal(self, kind: Signal) -> None:
        """No-op: a camera cannot beep; the status screen is the employee's feedback."""

    def take_frame_errors(self) -> list[str]:
        errors = []
        for decoder, n in self.decode_stats.errors.items():
            new = n - self._errors_seen.get(decoder, 0)
            if new > 0:
                errors += [f"decoder {decoder} raised (counted as a miss)"] * new
                self._errors_seen[decoder] = n
        errors, self._errors = self._errors + errors, []
        return errors

    # -- status ----------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for the status screen and tests."""
        s = self.stats_
        with self._cond:
            s.frames_captured = self._frames_captured
        return {
            "source": self._source, "kind": self.kind, "frames_captured": s.frames_captured,
            "frames_decoded": s.frames_decoded, "frames_skipped": s.frames_skipped, "reads": s.reads,
            "scans": s.scans, "suppressed_by_holdoff": s.suppressed, "watchdog_restarts": s.watchdog_restarts,
            "opens": s.opens, "pipeline_errors": s.pipeline_errors,
            "decode_ms_mean": round(s.decode_ms_total / s.frames_decoded, 2) if s.frames_decoded else None,
            "decode": self.decode_stats.as_dict(),
        }

    # -- internals -------------------------------------------------------------------------------------------------

    def _watchdog(self, slot: _Slot) -> None:
        """Raise OSError when the source has been silent for watchdog_s (called with the lock held)."""
        now = self._clock()
        limit = float(self.cfg.watchdog_s)
        stalled = None
        if slot.reading_since is not None and now - slot.reading_since > limit:
            stalled = now - slot.reading_since
        elif slot.failing_since is not None and now - slot.failing_since > limit:
            stalled = now - slot.failing_since
        elif self.live and not slot.eof and now - slot.last_frame_mono > limit:
            stalled = now - slot.last_frame_mono
        if stalled is not None:
            self.stats_.watchdog_restarts += 1
            slot.error = f"no frame for {stalled:.1f} s (watchdog {limit:g} s); reopening"
            raise OSError(f"camera {self.name!r}: {slot.error}")

    def _decode(self, frame: np.ndarray, t: float) -> list[bytes]:
        self._last_decode_t = t
        self._last_decode_mono = self._clock()
        t0 = time.perf_counter()
        try:
            reads = self.decoder.decode(frame)
        except Exception as e:  # the pipeline guards each decoder; this is the last line of defence
            self.stats_.pipeline_errors += 1
            self._errors.append(f"decode pipeline raised {type(e).__name__} (frame skipped)")
            if self.stats_.pipeline_errors in (1, 10, 100) or self.stats_.pipeline_errors % 1000 == 0:
                log.warning("camera %r: decoding a frame raised (%d so far): %s", self.name,
                            self.stats_.pipeline_errors, e, exc_info=self.stats_.pipeline_errors == 1)
            return []
        finally:
            self.stats_.decode_ms_total += (time.perf_counter() - t0) * 1000
            self.stats_.frames_decoded += 1
        self.stats_.reads += len(reads)
        admitted = self.deduper.admit(reads, t)
        self.stats_.suppressed += len(reads) - len(admitted)
        self.stats_.scans += len(admitted)
        return [r.frame() for r in admitted]

    def _capture_loop(self, cap: CaptureLike, stop: threading.Event, slot: _Slot) -> None:
        """Grab frames into the slot until stopped, the file ends, or the capture object fails."""
        import cv2

        cond = self._cond
        fps_file = 0.0
        if self.kind == "file":
            try:
                fps_file = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            except Exception:
                fps_file = 0.0
        if not (0 < fps_file < 1000):
            fps_file = 25.0
        pace_start: tuple[float, float] | None = None  # (monotonic, media t)
        index = 0
        try:
            while not stop.is_set():
                if not self.live:  # hand over every frame in order: wait until the last one is consumed
                    with cond:
                        while slot.frame is not None and not stop.is_set():
                            cond.wait(0.1)
                    if stop.is_set():
                        break
                with cond:
                    slot.reading_since = self._clock()
                try:
                    ok, frame = cap.read()
                except Exception as e:  # a backend that raises: treated like a failed grab
                    ok, frame = False, None
                    log.debug("camera %r: read raised %s", self.name, e)
                now = self._clock()
                if stop.is_set():
                    break
                if not ok or frame is None:
                    if self.kind == "file":
                        if self.cfg.loop and index > 0:
                            self._loop_offset = slot.media_t + 1.0 / fps_file
                            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                            index = 0
                            with cond:
                                slot.reading_since = None
                            continue
                        with cond:
                            slot.reading_since = None
                            slot.eof = True
                            cond.notify_all()
                        return
                    with cond:
                        slot.reading_since = None
                        if slot.failing_since is None:
                            slot.failing_since = now
                    stop.wait(0.02)
                    continue
                index += 1
                if self.kind == "file":
                    pos = 0.0
                    try:
                        pos = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
                    except Exception:
                        pos = 0.0
                    media_t = (pos if pos > 0 or index == 1 else (index - 1) / fps_file) + self._loop_offset
                else:
                    media_t = now
                if self._pace:
                    if pace_start is None:
                        pace_start = (now, media_t)
                    due = pace_start[0] + (media_t - pace_start[1])
                    if due > now:
                        stop.wait(due - now)
                        now = self._clock()
                with cond:
                    slot.reading_since = None
                    slot.failing_since = None
                    slot.frame = frame
                    slot.t = media_t if (self.kind == "file" and not self._pace) else now
                    slot.media_t = media_t if self.kind == "file" else 0.0
                    slot.seq += 1
                    self._frames_captured += 1
                    slot.last_frame_mono = now
                    cond.notify_all()
        except Exception as e:  # never expected; surfaces as OSError in read()
            with cond:
                slot.error = f"capture thread failed: {type(e).__name__}: {e}"
                cond.notify_all()
        finally:
            try:
                cap.release()
            except Exception:
                pass


# ---- camera: URIs (for drivers/uri.py) -----------------------------------------------------------------------------

_URI_FLOATS = {"fps": "fps", "holdoff": "holdoff_s", "holdoff_s": "holdoff_s", "watchdog": "watchdog_s",
               "watchdog_s": "watchdog_s"}
_URI_INTS = {"width": "width", "height": "height"}
_URI_BOOLS = {"loop": "loop", "realtime": "realtime"}
_URI_KEYS = set(_URI_FLOATS) | set(_URI_INTS) | set(_URI_BOOLS) | {"roi", "formats", "name", "rtsp_transport",
                                                                     "fourcc"}


def parse_camera_uri(uri: str, index: int = 0) -> dict[str, object]:
    """The camera scanner configuration (a dict for the site model) from a ``--scanner`` URI.

    Forms::

        camera:///dev/video0?fps=5&roi=100,80,800,600&holdoff=2&name=cam1
        camera:0?fps=10                              (device index)
        camera:///srv/clips/dock3.mp4?loop=1&realtime=1
        camera+rtsp://user:pw@10.0.0.7:554/stream1?fps=5&name=door3   (also camera+http(s)://)

    Parameters: name, fps, roi (x,y,w,h), holdoff (seconds), watchdog (seconds), formats (comma list: qr,
    datamatrix, pdf417, code128, ean-upc, ...), width, height, fourcc, loop, realtime, rtsp_transport (tcp|udp).
    For a stream, query keys that are not ours stay in the stream's own URL.

    Raises:
        ValueError: an unknown scheme, no source, or a value that is not a number (the message names the key).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "camera":
        source = unquote(parts.netloc + parts.path) if parts.netloc or parts.path else ""
        query = parts.query
        rest: list[tuple[str, str]] = []
    elif scheme.startswith("camera+") and scheme[7:] in _STREAM_SCHEMES:
        query = parts.query
        rest = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in _URI_KEYS]
        source = urlunsplit((scheme[7:], parts.netloc, parts.path, urlencode(rest), parts.fragment))
    else:
        raise ValueError(f"{uri!r}: not a camera URI (camera:///dev/video0, camera:///file.mp4, camera+rtsp://...)")
    if not source:
        raise ValueError(f"{uri!r}: no device, file or stream")
    data: dict[str, object] = {"type": "camera", "source": source, "name": f"camera{index}"}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _URI_FLOATS:
            data[_URI_FLOATS[key]] = _number(uri, key, value, float)
        elif key in _URI_INTS:
            data[_URI_INTS[key]] = _number(uri, key, value, int)
        elif key in _URI_BOOLS:
            data[_URI_BOOLS[key]] = value.lower() in ("1", "true", "yes", "on")
        elif key == "roi":
            data["roi"] = [_number(uri, key, v, int) for v in value.split(",")]
        elif key == "formats":
            data["formats"] = [v.strip() for v in value.split(",") if v.strip()]
        elif key in ("name", "rtsp_transport", "fourcc"):
            data[key] = value
        elif scheme == "camera":
            data[key] = value  # left for the model to reject as an unknown key
    return data


def _number(uri: str, key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{uri!r}: {key} must be a number, got {value!r}") from None
