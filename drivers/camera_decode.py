"""Barcode decoding for camera frames and still images (the camera driver's decoder and ``dock-agent decode``).

Strategy, from the measurements in ../shared/DECODING.md and our own runs on its corpora:

1. **zxing-cpp on the whole frame** (or the region of interest) for every enabled symbology. It reads QR,
   Data Matrix, PDF417 and upright Code 128 well, reports the AIM symbology identifier (``]C1`` = GS1-128) and
   returns only symbols whose error correction / check characters verified. The same call returns the
   symbols it *found* but could not decode (``return_errors``): their corners feed step 3.
2. **1D codes it missed**: ``cv2.barcode.BarcodeDetector.detect()`` is used only as a localiser (it finds
   Code 128 at any angle; its own decoder handles EAN/UPC only and invents EAN/UPC values from Code 128, so its
   decode output is never used). Each box not already read is rotated upright, padded and upscaled 2x, then
   decoded with zxing-cpp (a couple of binarizer variants), then with zbar (through pyzbar's ctypes binding,
   which also gives zbar's GS1 modifier). A zbar read must be unambiguous (one payload on the crop) and seen on
   two scan lines.
3. **2D codes it missed**: candidate regions are the failed symbols of step 1 plus dense-texture blobs of a
   downscaled frame; each is cropped and retried with image variants (2x upscale for small modules, unsharp
   masking for blur, global/fixed thresholds for noise and low contrast) until one decodes.

Every decoder call is guarded: an exception (pyzbar raises ``ValueError`` on some images, for example) is
a counted miss in :class:`DecodeStats`, never a crash. Reads are de-duplicated per frame by (symbology, bytes);
:class:`Deduper` counts a code held in front of the camera once across frames.

Text versus bytes: :attr:`Read.raw` is the symbol's data as a scanner with AIM identifiers on would send it
after the identifier: GS1 element strings as ``99M...`` with GS (0x1D) between variable-length fields,
never zxing's human-readable ``(99)M...`` form. :attr:`Read.text` is that data as text, or None when the
payload is binary (an IBI Data Matrix): :meth:`Read.frame` is then the identifier plus the raw bytes.

This module is the only one that imports OpenCV, zxing-cpp and pyzbar (pyzbar lazily, on the first 1D
fallback); it is imported only when a camera is configured or an image is decoded.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import cv2
import numpy as np
import zxingcpp

log = logging.getLogger(__name__)

# Symbology names (the agent's, agent/barcode.py) -> zxing-cpp format names (valid in zxing-cpp 2.2 and 3.x).
SYMBOLOGY_FORMATS: dict[str, str] = {
    "qr": "QRCode",
    "microqr": "MicroQRCode",
    "datamatrix": "DataMatrix",
    "pdf417": "PDF417",
    "aztec": "Aztec",
    "code128": "Code128",
    "ean-upc": "EAN13,EAN8,UPCA,UPCE",
    "code39": "Code39",
    "code93": "Code93",
    "itf": "ITF",
    "codabar": "Codabar",
    "gs1-databar": "DataBar,DataBarExpanded",
}
ALIASES = {"gs1-128": "code128", "imcb": "code128", "data-matrix": "datamatrix", "dm": "datamatrix", "upc": "ean-upc",
           "ean": "ean-upc", "databar": "gs1-databar"}
DEFAULT_FORMATS: tuple[str, ...] = ("qr", "datamatrix", "pdf417", "code128")
_MATRIX = frozenset({"qr", "microqr", "datamatrix", "aztec"})  # found by their finder patterns
_LINEAR = frozenset({"code128", "ean-upc", "code39", "code93", "itf", "codabar", "gs1-databar"})
_STACKED = frozenset({"pdf417"})  # bar-like: both the full-frame pass and the 1D localiser find it
# zbar symbol type numbers (zbar.h) for the linear symbologies zbar reads.
_ZBAR_TYPES = {"code128": (128,), "ean-upc": (13, 8, 12, 9), "code39": (39,), "code93": (93,), "itf": (25,),
               "codabar": (38,), "gs1-databar": (34, 35)}
_ZBAR_AIM = {128: "]C0", 13: "]E0", 8: "]E4", 12: "]E0", 9: "]E0", 39: "]A0", 93: "]G0", 25: "]I0", 38: "]F0",
             34: "]e0", 35: "]e0"}
_AIM_NAMES = {"A": "code39", "C": "code128", "d": "datamatrix", "E": "ean-upc", "e": "gs1-databar", "F": "codabar",
              "G": "code93", "I": "itf", "L": "pdf417", "Q": "qr", "z": "aztec"}
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D, 0x1D, 0x1E, 0x04}


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """Symbology names from a comma-separated string or a list ("qr,datamatrix,code128"); aliases accepted.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if formats is None:
        return DEFAULT_FORMATS
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        name = ALIASES.get(item.strip().lower(), item.strip().lower())
        if not name:
            continue
        if name not in SYMBOLOGY_FORMATS:
            known = ", ".join(sorted(SYMBOLOGY_FORMATS))
            raise ValueError(f"unknown symbology {item.strip()!r}; known: {known} (and gs1-128 = code128)")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no symbology enabled")
    return tuple(out)


def parse_roi(roi: str | Sequence[int] | None) -> tuple[int, int, int, int] | None:
    """A region of interest ``x,y,w,h`` in pixels (string or 4 numbers), or None for the whole frame.

    Raises:
        ValueError: not four integers, a negative origin or an empty size.
    """
    if roi is None or roi == "":
        return None
    parts = roi.split(",") if isinstance(roi, str) else list(roi)
    try:
        x, y, w, h = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"roi must be x,y,w,h (four integers, pixels), got {roi!r}") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"roi must have x,y >= 0 and w,h > 0, got {roi!r}")
    return x, y, w, h


def symbology_from_aim(aim: str) -> str | None:
    """The agent's symbology name for an AIM identifier (``]C1`` -> gs1-128), as agent.barcode.normalize names it."""
    if len(aim) != 3 or aim[0] != "]":
        return None
    if aim[1] == "C" and aim[2] == "1":
        return "gs1-128"
    return _AIM_NAMES.get(aim[1], f"aim-{aim[1]}")


Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Read:
    """One decoded symbol.

    Attributes:
        raw: The symbol's data bytes (GS1: ``99M...`` with GS separators, no AI parentheses, no FNC1).
        text: ``raw`` as text, or None when the payload is binary (an IBI Data Matrix, for example).
        symbology: "qr", "datamatrix", "pdf417", "code128", "gs1-128", "ean-upc", ... (agent/barcode.py names).
        aim: The AIM symbology identifier, e.g. "]Q1", "]d2", "]C1", "]C0", "]L2".
        gs1: The symbol carries GS1 element strings (FNC1 in first position).
        position: Corners (top-left, top-right, bottom-right, bottom-left) in pixels of the whole frame.
        decoder: Which pass read it: "zxing", "zxing-2d-retry", "zxing-1d-crop" or "zbar-1d-crop".
    """

    raw: bytes
    text: str | None
    symbology: str
    aim: str
    gs1: bool
    position: tuple[Point, ...]
    decoder: str

    @property
    def binary(self) -> bool:
        return self.text is None

    @property
    def key(self) -> tuple[str, bytes]:
        """Identity of the code for de-duplication: (symbology, bytes)."""
        return self.symbology, self.raw

    def frame(self) -> bytes:
        """What a scanner with AIM identifiers on would transmit: the identifier, then the data bytes."""
        return self.aim.encode("ascii") + self.raw

    @property
    def center(self) -> Point:
        xs = [p[0] for p in self.position]
        ys = [p[1] for p in self.position]
        return (sum(xs) / len(xs), sum(ys) / len(ys)) if xs else (0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``dock-agent decode --json``)."""
        out: dict[str, Any] = {"symbology": self.symbology, "gs1": self.gs1, "aim": self.aim}
        if self.text is not None:
            out["text"] = self.text
        else:
            out["bytes_base64"] = base64.b64encode(self.raw).decode("ascii")
        out["bytes_hex"] = self.raw.hex()
        out["length"] = len(self.raw)
        out["position"] = [[round(x, 1), round(y, 1)] for x, y in self.position]
        out["decoder"] = self.decoder
        return out


@dataclass
class DecodeStats:
    """Counters of a decoder: frames, reads, decoder exceptions (counted misses) and rejected reads."""

    frames: int = 0
    reads: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def error(self, decoder: str, exc: BaseException) -> None:
        self.errors[decoder] = self.errors.get(decoder, 0) + 1
        self.last_error = f"{decoder}: {type(exc).__name__}: {exc}"[:300]
        if self.errors[decoder] in (1, 10, 100, 1000) or self.errors[decoder] % 10000 == 0:
            log.warning("decoder %s raised (%d so far; counted as a miss): %s", decoder, self.errors[decoder],
                        self.last_error)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "reads": self.reads, "errors": dict(self.errors),
                "rejected": dict(self.rejected), "last_error": self.last_error}


def _printable(data: bytes) -> bool:
    return all(b in _PRINTABLE for b in data)


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image if image.dtype == np.uint8 else cv2.convertScaleAbs(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"not an image: array of shape {image.shape}")


def _quad_of(position: Any) -> np.ndarray:
    return np.array([[position.top_left.x, position.top_left.y], [position.top_right.x, position.top_right.y],
                     [position.bottom_right.x, position.bottom_right.y],
                     [position.bottom_left.x, position.bottom_left.y]], np.float64)


def _inside(pt: Point, quad: np.ndarray, margin: float = 0.0) -> bool:
    q = np.asarray(quad, np.float32).reshape(-1, 1, 2)
    return cv2.pointPolygonTest(q, (float(pt[0]), float(pt[1])), margin > 0) >= -margin


def _bbox(quad: np.ndarray) -> tuple[float, float, float, float]:
    q = np.asarray(quad, np.float64).reshape(-1, 2)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


def _overlaps(quad: np.ndarray, reads: Sequence[Read]) -> bool:
    """True when the candidate's centre lies in (or its box mostly covers) a symbol already read."""
    q = np.asarray(quad, np.float64).reshape(-1, 2)
    c = (float(q[:, 0].mean()), float(q[:, 1].mean()))
    x0, y0, x1, y1 = _bbox(q)
    for r in reads:
        rq = np.array(r.position, np.float64)
        if len(rq) >= 3 and _inside(c, rq):
            return True
        rx0, ry0, rx1, ry1 = _bbox(rq)
        if len(rq) and rx0 <= c[0] <= rx1 and ry0 <= c[1] <= ry1:
            return True
        ix = max(0.0, min(x1, rx1) - max(x0, rx0))
        iy = max(0.0, min(y1, ry1) - max(y0, ry0))
        area = max(1.0, (x1 - x0) * (y1 - y0))
        if ix * iy > 0.5 * area:
            return True
    return False


def _back_affine(m: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Maps crop coordinates back to the frame through the inverse of the crop's 2x3 affine matrix."""
    mi = cv2.invertAffineTransform(m)
    return lambda q: np.asarray(q, np.float64) @ mi[:, :2].T + mi[:, 2]


def _unsharp(img: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    return cv2.addWeighted(img, 1 + amount, blur, -amount, 0)


def _smooth_bars(crop: np.ndarray, along: int = 21, sigma: float = 2.0, amount: float = 1.5) -> np.ndarray:
    """An upright 1D crop averaged along the bars (noise, print voids) then sharpened across them (blur).

    Averaging 21 rows of a 2x crop is what lets 1.0-1.3 px modules and noisy or blurred bars decode.
    """
    smooth = cv2.blur(crop, (1, along))
    across = cv2.GaussianBlur(smooth, (0, 0), sigmaX=sigma, sigmaY=0.1)
    return cv2.addWeighted(smooth, 1 + amount, across, -amount, 0)


_VARIANTS_1D: dict[str, Callable[[np.ndarray], tuple[np.ndarray, dict[str, Any]]]] = {
    "plain": lambda c: (c, {}),
    "global": lambda c: (c, {"binarizer": zxingcpp.Binarizer.GlobalHistogram}),
    "smooth": lambda c: (cv2.blur(c, (1, 21)), {}),
    "smooth_sharpen": lambda c: (_smooth_bars(c), {}),
}


def rectify(gray: np.ndarray, quad: np.ndarray, pad_long: float = 0.08, pad_short: float = 0.08,
            up: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a 1D candidate box upright (long side horizontal), pad it and upscale (cubic).

    Args:
        pad_long: Margin added at each end of the long side, as a fraction of its length (the localiser's box
            often stops short of the code's ends, especially when it works on a downsampled frame).
        pad_short: Margin added above and below, as a fraction of the short side.

    Returns:
        The crop and the 2x3 affine matrix that maps frame coordinates into it.
    """
    pts = np.asarray(quad, np.float32).reshape(4, 2)
    (cx, cy), (w, h), ang = cv2.minAreaRect(pts)
    if w < h:
        w, h, ang = h, w, ang + 90
    w, h = w * (1 + 2 * pad_long) + 8, h * (1 + 2 * pad_short) + 8
    up = max(0.25, min(up, 4096.0 / max(w, h)))  # a huge box (a close-up photo) is not blown up further
    m = cv2.getRotationMatrix2D((cx, cy), ang, up)
    m[:, 2] += [w * up / 2 - cx, h * up / 2 - cy]
    size = (max(8, int(w * up) + 1), max(8, int(h * up) + 1))
    crop = cv2.warpAffine(gray, m, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return crop, m


# ---- zbar through pyzbar's ctypes binding (adds the GS1 modifier pyzbar does not expose) ----------------------

class _Zbar:
    """zbar's image scanner via pyzbar.wrapper; loaded on first use. Raises ImportError when libzbar is absent."""

    def __init__(self) -> None:
        from pyzbar import wrapper as w  # lazy: libzbar loads only when a 1D fallback runs

        self.w = w
        self.get_modifiers = w.zbar_function("zbar_symbol_get_modifiers", ctypes.c_uint, ctypes.POINTER(w.zbar_symbol))
        self.get_type = w.zbar_function("zbar_symbol_get_type", ctypes.c_int, ctypes.POINTER(w.zbar_symbol))

    def decode(self, gray: np.ndarray, types: Sequence[int]) -> list[tuple[bytes, int, bool, int, list[Point]]]:
        """(data, zbar type, gs1, quality, points) for each symbol zbar finds."""
        w = self.w
        img = np.ascontiguousarray(gray, dtype=np.uint8)
        height, width = img.shape[:2]
        scanner = w.zbar_image_scanner_create()
        out: list[tuple[bytes, int, bool, int, list[Point]]] = []
        try:
            w.zbar_image_scanner_set_config(scanner, 0, w.ZBarConfig.CFG_ENABLE, 0)
            for t in types:
                w.zbar_image_scanner_set_config(scanner, t, w.ZBarConfig.CFG_ENABLE, 1)
            image = w.zbar_image_create()
            try:
                w.zbar_image_set_format(image, 0x30303859)  # fourcc 'Y800': 8-bit grey
                w.zbar_image_set_size(image, width, height)
                buf = img.tobytes()
                w.zbar_image_set_data(image, ctypes.cast(buf, ctypes.c_void_p), len(buf), None)
                if w.zbar_scan_image(scanner, image) < 0:
                    raise RuntimeError("zbar_scan_image failed")
                sym = w.zbar_image_first_symbol(image)
                while sym:
                    data = ctypes.string_at(w.zbar_symbol_get_data(sym), w.zbar_symbol_get_data_length(sym))
                    pts = [(float(w.zbar_symbol_get_loc_x(sym, i)), float(w.zbar_symbol_get_loc_y(sym, i)))
                           for i in range(w.zbar_symbol_get_loc_size(sym))]
                    out.append((data, int(self.get_type(sym)), bool(self.get_modifiers(sym) & 1),
                                int(w.zbar_symbol_get_quality(sym)), pts))
                    sym = w.zbar_symbol_next(sym)
            finally:
                w.zbar_image_destroy(image)
        finally:
            w.zbar_image_scanner_destroy(scanner)
        return out


_ZBAR_LOCK = threading.Lock()
_ZBAR: _Zbar | None = None
_ZBAR_FAILED = ""


def _zbar() -> _Zbar | None:
    global _ZBAR, _ZBAR_FAILED
    with _ZBAR_LOCK:
        if _ZBAR is None and not _ZBAR_FAILED:
            try:
                _ZBAR = _Zbar()
            except Exception as e:  # libzbar missing: the 1D fallback is off, zxing still reads
                _ZBAR_FAILED = f"{type(e).__name__}: {e}"
                log.warning("pyzbar/libzbar unavailable, no zbar fallback for 1D codes: %s", _ZBAR_FAILED)
        return _ZBAR


# ---- the decoder -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecodeOptions:
    """Knobs of :class:`FrameDecoder` (the defaults are the measured best; see bench/decode_latency.py)."""

    try_invert: bool = True  # light-on-dark 2D codes (3 real QR samples need it); ~+1 ms at 720p
    try_downscale: bool = True  # +1 noisy Data Matrix on the gen.py corpus; ~+0.6 ms at 720p
    try_rotate: bool = False  # 1D codes at any angle come from the cv2 localiser; 2D codes are rotation-free
    locate_1d: bool = True  # cv2.barcode localiser + crops for 1D/PDF417 codes not read on the full frame
    zbar_fallback: bool = True  # zbar on the 1D crops zxing could not decode
    zbar_min_quality: int = 2  # zbar must see the code on this many scan lines
    zbar_dominance: int = 8  # ... and this many times more often than any other payload on the same crop
    retry_2d: bool = True  # crops of failed / textured 2D candidates with image variants
    max_1d_candidates: int = 4
    max_2d_candidates: int = 3
    blobs_when_2d_read: bool = True  # look for more 2D codes in texture blobs even when one was read
    # cv2.barcode downsamples frames whose shorter side exceeds this before localising. OpenCV's default (512)
    # cost 10-20 ms per 720p frame here; 256 located as many 1D codes (283/288 on two gen.py corpora) in 3-5 ms.
    locator_downsample: int = 256
    pad_1d_long: float = 0.08  # margin at each end of a localised 1D box (fraction of its length)
    pad_1d_short: float = 0.2  # margin above and below it (fraction of its height)
    pad_1d_wide: float = 0.7  # second, longer crop when the first fails (the box may have stopped short)
    variants_1d: tuple[str, ...] = ("plain", "smooth_sharpen", "global")  # tried in order on each 1D crop


class FrameDecoder:
    """Decodes frames with the pipeline described in the module docstring. One instance per thread.

    Args:
        formats: Symbology names (see :data:`SYMBOLOGY_FORMATS`), default qr, datamatrix, pdf417, code128.
        roi: Region of interest (x, y, w, h) applied to every frame unless ``decode`` is given another.
        options: Pipeline knobs.
        stats: Counters to update (a fresh one by default).
    """

    def __init__(self, formats: str | Iterable[str] | None = None, *, roi: str | Sequence[int] | None = None,
                 options: DecodeOptions | None = None, stats: DecodeStats | None = None) -> None:
        self.formats = parse_formats(formats)
        self.roi = parse_roi(roi)
        self.options = options or DecodeOptions()
        self.stats = stats if stats is not None else DecodeStats()
        names = set(self.formats)
        self._has_2d = bool(names & _MATRIX)
        self._has_1d = bool(names & (_LINEAR | _STACKED))
        self._fmt_all = self._zx_formats(names)
        self._fmt_2d = self._zx_formats(names & _MATRIX) if self._has_2d else None
        self._fmt_1d = self._zx_formats(names & (_LINEAR | _STACKED)) if self._has_1d else None
        self._zbar_types = tuple(t for n in self.formats for t in _ZBAR_TYPES.get(n, ()))
        self._detector: Any = None
        # Injection points (tests): the library calls; every call goes through _zx / _zb / _pass_1d's guard.
        self.zxing_read: Callable[..., list[Any]] = zxingcpp.read_barcodes
        self.zbar_read: Callable[[np.ndarray, Sequence[int]], list[Any]] | None = None
        self.locate_1d: Callable[[np.ndarray], list[np.ndarray]] = self._locate_1d

    @staticmethod
    def _zx_formats(names: Iterable[str]) -> Any:
        return zxingcpp.barcode_formats_from_str(",".join(SYMBOLOGY_FORMATS[n] for n in sorted(names)))

    # -- guarded calls ---------------------------------------------------------------------------------------------

    def _zx(self, img: np.ndarray, formats: Any, what: str = "zxing", **kw: Any) -> list[Any]:
        try:
            return list(self.zxing_read(np.ascontiguousarray(img), formats=formats,
                                        text_mode=zxingcpp.TextMode.Plain, **kw))
        except Exception as e:
            self.stats.error(what, e)
            return []

    def _zb(self, img: np.ndarray) -> list[Any]:
        fn = self.zbar_read
        if fn is None:
            zb = _zbar()
            if zb is None:
                return []
            fn = zb.decode
        try:
            return list(fn(img, self._zbar_types))
        except Exception as e:
            self.stats.error("pyzbar", e)
            return []

    def _locate_1d(self, gray: np.ndarray) -> list[np.ndarray]:
        if self._detector is None:
            self._detector = cv2.barcode.BarcodeDetector()
            self._detector.setDownsamplingThreshold(float(self.options.locator_downsample))
        ok, pts = self._detector.detect(gray)
        if not ok or pts is None:
            return []
        return [np.asarray(p, np.float64).reshape(4, 2) for p in pts]

    # -- conversion --------------------------------------------------------------------------------------------------

    def _from_zxing(self, r: Any, to_frame: Callable[[np.ndarray], np.ndarray], decoder: str) -> Read | None:
        raw = bytes(r.bytes)
        aim = str(r.symbology_identifier or "")
        symbology = symbology_from_aim(aim)
        if symbology is None:
            self.stats.reject("no symbology identifier")
            return None
        gs1 = str(r.content_type).endswith("GS1") or aim in ("]C1", "]d2", "]Q3", "]e0")
        if symbology == "code128" and gs1:
            symbology = "gs1-128"
        text: str | None
        if _printable(raw):
            text = raw.decode("ascii")
        elif str(r.content_type).endswith(("Text", "GS1", "ISO15434", "Mixed")):
            text = str(r.text)  # decoded with the symbol's character set (ECI), control characters kept
        else:
            text = None  # binary (an IBI Data Matrix): raw bytes only
        quad = to_frame(_quad_of(r.position))
        return Read(raw, text, symbology, aim, gs1, tuple((float(x), float(y)) for x, y in quad), decoder)

    # -- the pipeline ------------------------------------------------------------------------------------------------

    def decode(self, image: np.ndarray, roi: str | Sequence[int] | None = None) -> list[Read]:
        """All symbols in one frame (BGR, BGRA or grey uint8), positions in frame pixels; never raises on a
        decoder failure (counted in :attr:`stats`)."""
        self.stats.frames += 1
        gray = _to_gray(np.asarray(image))
        region = parse_roi(roi) if roi is not None else self.roi
        ox = oy = 0
        if region is not None:
            x, y, w, h = region
            ih, iw = gray.shape[:2]
            x0, y0, x1, y1 = min(x, iw), min(y, ih), min(x + w, iw), min(y + h, ih)
            if x1 - x0 < 8 or y1 - y0 < 8:
                return []
            gray, ox, oy = gray[y0:y1, x0:x1], x0, y0
        reads = self._decode_gray(np.ascontiguousarray(gray))
        if ox or oy:
            reads = [Read(r.raw, r.text, r.symbology, r.aim, r.gs1,
                          tuple((px + ox, py + oy) for px, py in r.position), r.decoder) for r in reads]
        self.stats.reads += len(reads)
        return reads

    def _decode_gray(self, gray: np.ndarray) -> list[Read]:
        opt = self.options
        reads: list[Read] = []
        seen: set[tuple[str, bytes]] = set()

        def add(read: Read | None) -> bool:
            if read is None or read.symbology.replace("gs1-128", "code128") not in self.formats:
                return False
            if read.key in seen:
                return True
            seen.add(read.key)
            reads.append(read)
            return True

        def ident(q: np.ndarray) -> np.ndarray:
            return q

        failed_2d: list[np.ndarray] = []
        kw = {"try_rotate": opt.try_rotate, "try_invert": opt.try_invert, "try_downscale": opt.try_downscale}
        for r in self._zx(gray, self._fmt_all, return_errors=True, **kw):
            if r.valid:
                add(self._from_zxing(r, ident, "zxing"))
            elif opt.retry_2d and symbology_from_aim(str(r.symbology_identifier or "")) in _MATRIX | {None}:
                failed_2d.append(_quad_of(r.position))
        if self._has_1d and opt.locate_1d:
            self._pass_1d(gray, reads, add)
        if self._has_2d and opt.retry_2d:
            self._pass_2d(gray, reads, add, failed_2d)
        return reads

    def _pass_1d(self, gray: np.ndarray, reads: list[Read], add: Callable[[Read | None], bool]) -> None:
        opt = self.options
        try:
            cands = self.locate_1d(gray)
        except Exception as e:
            self.stats.error("cv2-barcode-detect", e)
            return
        cands.sort(key=lambda q: -cv2.contourArea(np.asarray(q, np.float32)))
        tried = 0
        for quad in cands:
            if tried >= opt.max_1d_candidates:
                break
            if _overlaps(quad, reads):
                continue
            tried += 1
            crops = [rectify(gray, quad, opt.pad_1d_long, opt.pad_1d_short)]
            if self._read_1d_crops(crops, add):
                continue
            if opt.pad_1d_wide > opt.pad_1d_long:
                crops.append(rectify(gray, quad, opt.pad_1d_wide, opt.pad_1d_short))
                if self._read_1d_crops(crops[1:], add):
                    continue
            if opt.zbar_fallback and self._zbar_types:
                for crop, m in crops:
                    if any(add(self._zbar_crop(v, _back_affine(m))) for v in (crop, _smooth_bars(crop))):
                        break

    def _read_1d_crops(self, crops: list[tuple[np.ndarray, np.ndarray]], add: Callable[[Read | None], bool]) -> bool:
        for crop, m in crops:
            for name in self.options.variants_1d:
                variant, kw = _VARIANTS_1D[name](crop)
                rs = [r for r in self._zx(variant, self._fmt_1d, "zxing-1d", try_rotate=True, try_invert=False,
                                          try_downscale=False, **kw) if r.valid]
                if rs:
                    back = _back_affine(m)
                    added = [add(self._from_zxing(r, back, "zxing-1d-crop")) for r in rs]  # every one
                    return any(added)
        return False

    def _zbar_crop(self, crop: np.ndarray, back: Callable[[np.ndarray], np.ndarray]) -> Read | None:
        found = self._zb(crop)
        if not found:
            return None
        # zbar votes per scan line (quality). A payload seen on one line beside another seen on ninety is noise
        # (a blurred IMcb gave exactly that); two payloads with comparable support are ambiguous: no read.
        best: dict[tuple[bytes, int], tuple[int, bool, list[Point]]] = {}
        for d, t, g, q, pts in found:
            prev = best.get((d, t))
            if prev is None or q > prev[0]:
                best[(d, t)] = (q, g, pts)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])
        (data, ztype), (quality, gs1, pts) = ranked[0]
        if quality < self.options.zbar_min_quality:
            self.stats.reject("zbar-low-quality")
            return None
        if len(ranked) > 1 and ranked[1][1][0] * self.options.zbar_dominance > quality:
            self.stats.reject("zbar-ambiguous")
            return None
        aim = "]C1" if (ztype == 128 and gs1) else _ZBAR_AIM.get(ztype, "]X0")
        symbology = symbology_from_aim(aim) or "unknown"
        if len(pts) >= 2:
            p = np.array(pts, np.float64)
            x0, _, x1, _ = _bbox(p)
            h = crop.shape[0]
            quad = np.array([[x0, 0], [x1, 0], [x1, h - 1], [x0, h - 1]], np.float64)
        else:
            quad = np.array([[0, 0], [crop.shape[1], 0], [crop.shape[1], crop.shape[0]], [0, crop.shape[0]]],
                            np.float64)
        text = data.decode("ascii") if _printable(data) else None
        return Read(data, text, symbology, aim, gs1 and ztype == 128,
                    tuple((float(x), float(y)) for x, y in back(quad)), "zbar-1d-crop")

    def _pass_2d(self, gray: np.ndarray, reads: list[Read], add: Callable[[Read | None], bool],
                 failed: list[np.ndarray]) -> None:
        opt = self.options
        have_2d = any(r.symbology in _MATRIX for r in reads)
        cands = failed + (self._locate_2d(gray) if opt.blobs_when_2d_read or not have_2d else [])
        tried = 0
        done: list[tuple[float, float, float, float]] = []
        for quad in cands:
            if tried >= opt.max_2d_candidates:
                break
            if _overlaps(quad, reads):
                continue
            x0, y0, x1, y1 = _bbox(quad)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if any(a <= cx <= c and b <= cy <= d for a, b, c, d in done):
                continue
            w, h = x1 - x0, y1 - y0
            mx, my = max(0.3 * w, 12), max(0.3 * h, 12)
            ih, iw = gray.shape[:2]
            cx0, cy0 = int(max(0, x0 - mx)), int(max(0, y0 - my))
            cx1, cy1 = int(min(iw, x1 + mx)), int(min(ih, y1 + my))
            if cx1 - cx0 < 12 or cy1 - cy0 < 12:
                continue
            tried += 1
            done.append((cx0, cy0, cx1, cy1))
            crop = gray[cy0:cy1, cx0:cx1]
            for scale, variant, kw in self._variants_2d(crop):
                rs = [r for r in self._zx(variant, self._fmt_2d, "zxing-2d", try_rotate=False, try_invert=False,
                                          try_downscale=False, **kw) if r.valid]
                if rs:
                    def back(q: np.ndarray, s: float = scale, ox: int = cx0, oy: int = cy0) -> np.ndarray:
                        return q / s + (ox, oy)
                    for r in rs:
                        add(self._from_zxing(r, back, "zxing-2d-retry"))
                    break

    @staticmethod
    def _variants_2d(crop: np.ndarray) -> Iterable[tuple[float, np.ndarray, dict[str, Any]]]:
        """Image variants of a 2D candidate crop, in the order that paid off on the gen.py corpus: 2x upscale
        (small modules), unsharp mask (blur), GlobalHistogram binarizer (noise, low contrast, glare)."""
        up = min(2.0, 1200.0 / max(crop.shape[:2]))
        if up >= 1.25:
            yield up, cv2.resize(crop, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC), {}
        yield 1.0, _unsharp(crop, 2.0, 1.5), {}
        yield 1.0, crop, {"binarizer": zxingcpp.Binarizer.GlobalHistogram}

    def _locate_2d(self, gray: np.ndarray) -> list[np.ndarray]:
        """Dense-texture blobs of a downscaled frame: where a 2D code may be (also text blocks; ranked)."""
        try:
            return _texture_blobs(gray)
        except Exception as e:
            self.stats.error("locate-2d", e)
            return []


def _texture_blobs(gray: np.ndarray, max_side: int = 640, opens: Sequence[int] = (5, 15)) -> list[np.ndarray]:
    """Candidate 2D-code regions: blobs where most pixels of a downscaled, lightly smoothed frame sit on an edge.

    The edge threshold adapts to the frame (3x its median gradient, at least 14 grey levels), so low-contrast
    codes are found and sensor noise is not. Blobs are cut apart by two openings, a small one and a large one,
    because a line of text touching a code otherwise joins it into a shape no code has. Ranked by size and
    squareness; text lines (long and thin) and thin edges are dropped.
    """
    h, w = gray.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else gray
    small = cv2.GaussianBlur(small, (3, 3), 0)
    grad = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    hist = cv2.calcHist([grad], [0], None, [256], [0, 256]).ravel().cumsum()
    median = float(np.searchsorted(hist, hist[-1] / 2))
    _, edges = cv2.threshold(grad, max(14.0, 3.0 * median), 255, cv2.THRESH_BINARY)
    _, dense = cv2.threshold(cv2.blur(edges, (9, 9)), 127, 1, cv2.THRESH_BINARY)  # over half the pixels on edges
    found: list[tuple[float, np.ndarray]] = []
    for k in opens:
        bw = cv2.morphologyEx(dense, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
        contours, _ = cv2.findContours(bw, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            area = cv2.contourArea(c)
            if area < 120:
                continue
            (cx, cy), (rw, rh), ang = cv2.minAreaRect(c)
            if min(rw, rh) < 9:
                continue
            aspect = max(rw, rh) / max(1e-6, min(rw, rh))
            fill = area / max(1e-6, rw * rh)
            if aspect > 4 or fill < 0.5:
                continue
            box = cv2.boxPoints(((cx, cy), (rw, rh), ang)).astype(np.float64) / s
            centre = box.mean(0)
            if any(np.abs(other.mean(0) - centre).max() < 10 / s for _, other in found):
                continue
            found.append((fill * math.sqrt(area) / aspect, box))
    found.sort(key=lambda t: -t[0])
    return [b for _, b in found]


# ---- convenience API -----------------------------------------------------------------------------------------------

_LOCAL = threading.local()


def _decoder_for(formats: tuple[str, ...]) -> FrameDecoder:
    cache: dict[tuple[str, ...], FrameDecoder] = getattr(_LOCAL, "decoders", None) or {}
    _LOCAL.decoders = cache
    if formats not in cache:
        cache[formats] = FrameDecoder(formats)
    return cache[formats]


def decode_frame(image: np.ndarray, *, roi: str | Sequence[int] | None = None,
                 formats: str | Iterable[str] | None = DEFAULT_FORMATS) -> list[Read]:
    """All codes in one frame (a numpy image, BGR or grey), with a per-thread cached :class:`FrameDecoder`."""
    return _decoder_for(parse_formats(formats)).decode(image, roi=roi)


def load_image(path: str) -> np.ndarray:
    """A still image as grey uint8 (PNG, JPEG, WebP, TIFF, BMP, PGM, ...). Raises OSError if unreadable."""
    data = np.fromfile(path, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if img is None:
        raise OSError(f"{path}: not an image OpenCV can read")
    return img


def decode_file(path: str, *, roi: str | Sequence[int] | None = None,
                formats: str | Iterable[str] | None = DEFAULT_FORMATS) -> list[Read]:
    """All codes in a still image file. Raises OSError when the file is missing or not an image."""
    return decode_frame(load_image(path), roi=roi, formats=formats)


class Deduper:
    """Counts a code once while it stays in view: a read whose key was last seen less than ``holdoff_s`` ago is
    suppressed (and refreshes the time), so a code held under the camera for a minute is one scan, and the same
    code shown again after ``holdoff_s`` without it is a new scan. ``holdoff_s = 0`` passes every read.

    Times are seconds on any monotonic clock (the camera driver uses the video's own timestamps for files).
    """

    def __init__(self, holdoff_s: float = 2.0, max_keys: int = 4096) -> None:
        self.holdoff_s = holdoff_s
        self.max_keys = max_keys
        self._last: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self.suppressed = 0

    def admit(self, reads: Iterable[Read], now: float) -> list[Read]:
        """The reads to count at time ``now`` (seconds); the others were seen within the hold-off."""
        out = []
        for r in reads:
            last = self._last.pop(r.key, None)
            if self.holdoff_s > 0:
                self._last[r.key] = now  # most recently seen last
            if last is not None and now - last < self.holdoff_s:
                self.suppressed += 1
                continue
            out.append(r)
        # Forget codes not seen for longer than the hold-off (their next sighting is new anyway); bound the size.
        while self._last:
            oldest = next(iter(self._last.values()))
            if now - oldest < self.holdoff_s and len(self._last) <= self.max_keys:
                break
            self._last.popitem(last=False)
        return out


# ---- dock-agent decode IMAGE... [--json] ---------------------------------------------------------------------------

def run_decode_cli(images: Sequence[str], *, as_json: bool = False, roi: str | None = None,
                   formats: str | None = None, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """``dock-agent decode IMAGE... [--json] [--roi x,y,w,h] [--formats qr,datamatrix,...]``.

    Prints one line per image: with ``--json`` one JSON object (see :func:`decode_image_report`), otherwise
    ``IMAGE: symbology text`` for each code. Exit status: 0 when every image yielded at least one code, 1 when
    some image had none, 2 when an image could not be read or an argument is wrong.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        fmts = parse_formats(formats)
        region = parse_roi(roi)
    except ValueError as e:
        print(f"dock-agent decode: {e}", file=err)
        return 2
    decoder = FrameDecoder(fmts, roi=region)
    status = 0
    for path in images:
        report = decode_image_report(path, decoder)
        if "error" in report:
            status = 2
        elif not report["codes"]:
            status = max(status, 1)
        if as_json:
            print(json.dumps(report, ensure_ascii=False), file=out)
        elif "error" in report:
            print(f"{path}: error: {report['error']}", file=out)
        elif not report["codes"]:
            print(f"{path}: no code found", file=out)
        else:
            for c in report["codes"]:
                shown = c["text"] if "text" in c else f"<{c['length']} bytes> {c['bytes_hex']}"
                shown = shown.replace("\x1d", "<GS>")
                flag = " gs1" if c["gs1"] and c["symbology"] != "gs1-128" else ""
                x, y = (sum(p[i] for p in c["position"]) / 4 for i in (0, 1))
                print(f"{path}: {c['symbology']}{flag} {shown}  @({x:.0f},{y:.0f})", file=out)
        out.flush()
    return status


def decode_image_report(path: str, decoder: FrameDecoder | None = None) -> dict[str, Any]:
    """The JSON object ``dock-agent decode --json`` prints for one image::

        {"image": PATH, "width": W, "height": H, "ms": 12.3,
         "codes": [{"symbology": "gs1-128", "gs1": true, "aim": "]C1", "text": "99M...",
                    "bytes_hex": "39394d...", "length": 21,
                    "position": [[x, y] x 4 (tl, tr, br, bl)], "decoder": "zxing",
                    "label": {"ok": true, "kind": "imcb", "normalized": "99M..."}}, ...],
         "decoder_errors": {}}

    Binary payloads carry ``bytes_base64`` instead of ``text``. ``label`` is agent.barcode.parse's verdict on
    what the camera driver would hand the agent. An unreadable file gives ``{"image": PATH, "error": "..."}``.
    """
    from agent.barcode import parse  # pure; no hardware

    decoder = decoder or FrameDecoder()
    try:
        img = load_image(path)
    except OSError as e:
        return {"image": path, "error": str(e)}
    before = dict(decoder.stats.errors)
    t0 = time.perf_counter()
    reads = decoder.decode(img)
    ms = (time.perf_counter() - t0) * 1000
    codes = []
    for r in reads:
        d = r.as_dict()
        verdict = parse(r.frame())
        d["label"] = ({"ok": True, "kind": verdict.kind, "normalized": verdict.normalized} if verdict.ok
                      else {"ok": False, "reason": verdict.reason})
        codes.append(d)
    errors = {k: v - before.get(k, 0) for k, v in decoder.stats.errors.items() if v - before.get(k, 0)}
    return {"image": path, "width": int(img.shape[1]), "height": int(img.shape[0]), "ms": round(ms, 1),
            "codes": codes, "decoder_errors": errors}
