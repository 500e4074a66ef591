"""Camera driver and decoder: a generated video read end to end through the real ScannerRunner, a source that
stops (watchdog, reopen with backoff), decoders that raise, still images, the decode CLI and camera: URIs.

No camera exists on these machines: every source is a video file written here with cv2.VideoWriter, or a fake
capture object. Codes are drawn with zxing-cpp (QR, Data Matrix) and with the small Code 128 encoder below (zxing-cpp
cannot write a GS1-128 FNC1, and the IMcb is a GS1-128 symbol).
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")
zxingcpp = pytest.importorskip("zxingcpp")

from agent.barcode import normalize, parse  # noqa: E402
from drivers import camera_decode as cd  # noqa: E402
from drivers.base import RawScan, ScannerDone  # noqa: E402
from drivers.camera_scanner import CameraConfig, CameraDriver, parse_camera_uri, source_kind  # noqa: E402
from drivers.runner import ScannerRunner  # noqa: E402
from tests.test_layering import loaded_modules  # noqa: E402

IMCB = "99M123456000000123456"
QR_TEXT = "https://usps.example/m/CAM-TEST-1"
DM_TEXT = "IBI-TEST-0042 postage 2026"
DM_BINARY = bytes(np.random.default_rng(7).integers(0, 256, 60, dtype=np.uint8).tolist())

# ---- drawing codes -------------------------------------------------------------------------------------------

# ISO/IEC 15417 Code 128 symbol patterns (bar, space, ... widths); 106 is the stop pattern.
_C128 = ("212222 222122 222221 121223 121322 131222 122213 122312 132212 221213 221312 231212 112232 122132 122231 "
         "113222 123122 123221 223211 221132 221231 213212 223112 312131 311222 321122 321221 312212 322112 322211 "
         "212123 212321 232121 111323 131123 131321 112313 132113 132311 211313 231113 231311 112133 112331 132131 "
         "113123 113321 133121 313121 211331 231131 213113 213311 213131 311123 311321 331121 312113 312311 332111 "
         "314111 221411 431111 111224 111422 121124 121421 141122 141221 112214 112412 122114 122411 142112 142211 "
         "241211 221114 413111 241112 134111 111242 121142 121241 114212 124112 124211 411212 421112 421211 212141 "
         "214121 412121 111143 111341 131141 114113 114311 411113 411311 113141 114131 311141 411131 211412 211214 "
         "211232 2331112").split()


def code128_bits(values: list[int]) -> np.ndarray:
    """Modules (1 = bar) of a Code 128 symbol from its code values (start first), check and stop added."""
    check = (values[0] + sum(i * v for i, v in enumerate(values[1:], 1))) % 103
    bits: list[int] = []
    for v in [*values, check, 106]:
        for k, w in enumerate(_C128[v]):
            bits += [1 - k % 2] * int(w)
    return np.array(bits, np.uint8)


def imcb_values(data: str) -> list[int]:
    """GS1-128 for "99M" + an even number of digits: Start C, FNC1, 99, Code B, M, Code C, digit pairs."""
    assert data[:3] == "99M" and data[3:].isdigit() and len(data[3:]) % 2 == 0
    return [105, 102, 99, 100, ord("M") - 32, 99] + [int(data[i:i + 2]) for i in range(3, len(data), 2)]


def code_b_values(text: str) -> list[int]:
    return [104] + [ord(c) - 32 for c in text]


def linear_image(bits: np.ndarray, module: int = 2, height: int = 70, quiet: int = 12) -> np.ndarray:
    row = np.concatenate([np.zeros(quiet, np.uint8), bits, np.zeros(quiet, np.uint8)])
    return np.repeat(np.repeat(255 - 255 * row[None, :], height, 0), module, 1).astype(np.uint8)


def matrix_image(content: str | bytes, fmt: str, scale: int) -> np.ndarray:
    symbol = zxingcpp.create_barcode(content, getattr(zxingcpp.BarcodeFormat, fmt))
    img = np.asarray(zxingcpp.write_barcode_to_image(symbol, scale=scale), np.uint8)
    return cv2.copyMakeBorder(img, 8, 8, 8, 8, cv2.BORDER_CONSTANT, value=255)


def qr_image(text: str = QR_TEXT, scale: int = 4) -> np.ndarray:
    return matrix_image(text, "QRCode", scale)


def dm_image(content: str | bytes = DM_TEXT, scale: int = 5) -> np.ndarray:
    return matrix_image(content, "DataMatrix", scale)


def imcb_image(data: str = IMCB, module: int = 2) -> np.ndarray:
    return linear_image(code128_bits(imcb_values(data)), module)


def scene(codes: list[tuple[np.ndarray, int, int]], size: tuple[int, int] = (640, 480), seed: int = 0,
          angle: float = 0.0) -> np.ndarray:
    """A grey mailpiece-like frame (textured background, paper) with the code images pasted at (x, y), BGR."""
    w, h = size
    rng = np.random.default_rng(seed)
    frame = np.full((h, w), 120, np.float32) + rng.normal(0, 6, (h, w)).astype(np.float32)
    cv2.rectangle(frame, (20, 20), (w - 20, h - 20), 225, -1)
    for img, x, y in codes:
        frame[y:y + img.shape[0], x:x + img.shape[1]] = img.astype(np.float32) * 0.82 + 30
    if angle:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        frame = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=120)
    frame += rng.normal(0, 2, (h, w)).astype(np.float32)
    gray = np.clip(frame, 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def timeline() -> tuple[list[np.ndarray], list[bytes]]:
    """64 frames at 10 fps and the scans a reader must report, in order.

    QR (frames 0-7, drifting), nothing, the IMcb (12-21, gone for one frame at 16: within the hold-off),
    nothing, a text Data Matrix (26-35), a binary Data Matrix (36-43), nothing for 1.2 s (beyond the hold-off), the
    same QR again (56-63): five scans.
    """
    qr, imcb, dm, dmb = qr_image(), imcb_image(), dm_image(), dm_image(DM_BINARY)
    frames = []
    for i in range(64):
        codes: list[tuple[np.ndarray, int, int]] = []
        if i <= 7 or 56 <= i:
            codes.append((qr, 120 + 4 * (i % 8), 140))
        elif 12 <= i <= 21 and i != 16:
            codes.append((imcb, 90 + 3 * (i - 12), 200))
        elif 26 <= i <= 35:
            codes.append((dm, 300 - 2 * (i - 26), 150))
        elif 36 <= i <= 43:
            codes.append((dmb, 250, 160))
        frames.append(scene(codes, seed=i))
    expected = [b"]Q1" + QR_TEXT.encode(), b"]C1" + IMCB.encode(), DM_TEXT.encode(), DM_BINARY,
                b"]Q1" + QR_TEXT.encode()]
    return frames, expected


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    frames, expected = timeline()
    return write_video(tmp_path_factory.mktemp("video") / "dock.avi", frames), expected


def run_to_completion(driver: CameraDriver, timeout_s: float = 90.0, *, until: int | None = None,
                      cap_s: float = 0.3) -> tuple[list[bytes], ScannerRunner]:
    """Run the driver inside a real ScannerRunner until ScannerDone (or ``until`` scans); returns the scans."""
    out: queue.Queue[object] = queue.Queue()
    runner = ScannerRunner(driver, "camera", out, cap_s=cap_s)
    runner.start()
    scans: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, ScannerDone):
                break
            assert isinstance(item, RawScan) and item.scanner == driver.name
            scans.append(item.data)
            if until is not None and len(scans) >= until:
                break
        else:
            pytest.fail(f"runner did not finish in {timeout_s} s; scans so far: {scans}")
    finally:
        runner.stop(5.0)
    return scans, runner


def dm_matches(frame: bytes, payload: bytes) -> bool:
    return frame[:2] == b"]d" and frame[3:] == payload


def assert_scans(scans: list[bytes], expected: list[bytes]) -> None:
    assert len(scans) == len(expected), scans
    for got, want in zip(scans, expected, strict=True):
        if want.startswith(b"]"):
            assert got == want
        else:
            assert dm_matches(got, want), (got, want)


# ---- the driver end to end -----------------------------------------------------------------------------------------

def test_video_file_end_to_end_counts_each_code_once(video: tuple[Path, list[bytes]]) -> None:
    path, expected = video
    driver = CameraDriver(CameraConfig(name="cam1", source=str(path), fps=10, holdoff_s=1.0, watchdog_s=10))
    scans, runner = run_to_completion(driver)
    assert_scans(scans, expected)
    assert runner.health.state == "exhausted" and runner.health.opens == 1
    assert runner.health.frames == len(expected)
    stats = driver.stats()
    assert stats["frames_captured"] == 64 and stats["frames_decoded"] == 64
    assert stats["suppressed_by_holdoff"] == 43 - 5  # 43 frames show a code: every sighting read, 5 counted
    assert stats["decode"]["errors"] == {} and stats["pipeline_errors"] == 0

    # What the agent makes of them: the AIM identifier names the symbology; the IMcb is a label.
    label = parse(scans[1])
    assert label.ok and label.kind == "imcb" and label.normalized == IMCB and label.symbology == "gs1-128"
    assert normalize(scans[0]) == (QR_TEXT, "qr")
    assert normalize(scans[2])[1] == "datamatrix"
    assert not parse(scans[3]).ok  # binary IBI payload: passed through, judged unusable by the grammar


def test_decode_rate_and_mp4(tmp_path: Path) -> None:
    """fps=5 on a 10 fps file decodes every other frame (on the video's clock); an MPEG-4 file reads too."""
    frames, expected = timeline()
    path = write_video(tmp_path / "dock.mp4", frames, fourcc="mp4v")
    driver = CameraDriver(CameraConfig(name="cam2", source=str(path), fps=5, holdoff_s=1.0))
    scans, _ = run_to_completion(driver)
    assert_scans(scans, expected)
    stats = driver.stats()
    assert stats["frames_decoded"] == 32 and stats["frames_skipped"] == 32


def test_holdoff_zero_reports_every_sighting(video: tuple[Path, list[bytes]]) -> None:
    path, _ = video
    driver = CameraDriver(CameraConfig(name="cam3", source=str(path), fps=10, holdoff_s=0))
    scans, _ = run_to_completion(driver)
    assert len(scans) == 43  # each frame with a code is a scan


def test_roi_limits_the_search(video: tuple[Path, list[bytes]]) -> None:
    path, _ = video
    # Only the top-left quarter: the QR (x 120-270) is partly there, nothing else is.
    driver = CameraDriver(CameraConfig(name="cam4", source=str(path), fps=10, holdoff_s=1.0, roi=(0, 0, 100, 100)))
    scans, _ = run_to_completion(driver)
    assert scans == []


def test_looping_file_restarts_and_holdoff_runs_on_media_time(tmp_path: Path) -> None:
    frames = [scene([(qr_image(), 100, 100)], seed=i) if i < 3 else scene([], seed=i) for i in range(20)]
    path = write_video(tmp_path / "loop.avi", frames)
    driver = CameraDriver(CameraConfig(name="cam5", source=str(path), fps=10, holdoff_s=1.0, loop=True))
    scans, runner = run_to_completion(driver, until=3)
    assert scans == [b"]Q1" + QR_TEXT.encode()] * 3  # once per pass: 1.7 s of video without it between
    assert runner.health.state in ("ok", "stopped") and not driver.exhausted


def test_realtime_file_is_paced_like_a_camera(tmp_path: Path) -> None:
    """realtime=true plays a file at its frame rate (a stand-in for a live camera in demos and benchmarks)."""
    frames = [scene([(dm_image(), 200, 150)] if 5 <= i < 15 else [], seed=i) for i in range(20)]
    path = write_video(tmp_path / "paced.avi", frames, fps=20)
    driver = CameraDriver(CameraConfig(name="cam11", source=str(path), fps=10, holdoff_s=1.0, realtime=True))
    t0 = time.monotonic()
    scans, _ = run_to_completion(driver)
    assert time.monotonic() - t0 >= 0.9  # 20 frames at 20 fps
    assert len(scans) == 1 and dm_matches(scans[0], DM_TEXT.encode())
    assert driver.stats()["frames_decoded"] <= 12  # at most fps=10 per second of video


class FakeCapture:
    """A capture that yields the given frames, then hangs (``then="hang"``) or fails every read (``"fail"``)."""

    def __init__(self, frames: list[np.ndarray], then: str = "hang", delay_s: float = 0.02) -> None:
        self.frames = list(frames)
        self.then = then
        self.delay_s = delay_s
        self.unblock = threading.Event()
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (cv2's name)
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.frames:
            time.sleep(self.delay_s)
            return True, self.frames.pop(0)
        if self.then == "hang":
            self.unblock.wait(60)
        else:
            time.sleep(0.01)
        return False, None

    def get(self, prop: int) -> float:
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        return True

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize("then", ["hang", "fail"])
def test_watchdog_reopens_a_source_that_stops(then: str, caplog: pytest.LogCaptureFixture) -> None:
    first = FakeCapture([scene([(qr_image("FIRST-SESSION"), 100, 100)], seed=i) for i in range(5)], then)
    second = FakeCapture([scene([(imcb_image(), 60, 200)], seed=i) for i in range(5)], then)
    captures = [first, second]
    opened: list[float] = []

    def factory(source: str, kind: str, cfg: object) -> FakeCapture:
        assert kind == "device"
        opened.append(time.monotonic())
        if not captures:
            raise OSError("no more fake cameras")
        return captures.pop(0)

    CameraDriver.close_join_s = 0.2
    try:
        driver = CameraDriver(CameraConfig(name="cam6", source="/dev/video-fake", fps=50, holdoff_s=1.0,
                                           watchdog_s=0.5), capture_factory=factory)
        scans, runner = run_to_completion(driver, timeout_s=30, until=2, cap_s=0.2)
    finally:
        CameraDriver.close_join_s = 2.0
        first.unblock.set()
        second.unblock.set()
    assert scans == [b"]Q1FIRST-SESSION", b"]C1" + IMCB.encode()]
    assert driver.stats()["watchdog_restarts"] >= 1
    assert runner.health.opens >= 2
    assert len(opened) >= 2 and opened[1] - opened[0] >= 0.5  # waited for the watchdog, then the backoff
    assert any("no frame for" in r.getMessage() and "watchdog 0.5 s" in r.getMessage() for r in caplog.records)
    assert first.released or then == "hang"  # a hung capture is abandoned, not released under its feet


def test_live_source_decodes_the_newest_frame_at_most_fps_times_a_second() -> None:
    """A device delivering up to 100 frames/s with fps=4: 4 frames decoded per second, the rest skipped."""
    frames = [scene([(qr_image("LIVE-RATE"), 100, 100)], seed=i % 5) for i in range(80)]
    cap = FakeCapture(frames, then="fail", delay_s=0.01)
    driver = CameraDriver(CameraConfig(name="cam10", source="0", fps=4, holdoff_s=5.0, watchdog_s=30),
                          capture_factory=lambda source, kind, cfg: cap)
    driver.open()
    try:
        got: list[bytes] = []
        t0 = time.monotonic()
        while cap.frames and time.monotonic() - t0 < 20:
            got += driver.read(0.2)
        elapsed = time.monotonic() - t0
    finally:
        driver.close()
    stats = driver.stats()
    assert got == [b"]Q1LIVE-RATE"]
    assert stats["frames_decoded"] <= 4 * elapsed + 2, (stats, elapsed)
    assert stats["frames_captured"] == 80 and stats["frames_decoded"] >= 2
    assert stats["frames_decoded"] + stats["frames_skipped"] <= 80 and stats["frames_skipped"] >= 40
    assert stats["suppressed_by_holdoff"] == stats["frames_decoded"] - 1


def test_unopenable_source_is_absent_and_retried(tmp_path: Path) -> None:
    driver = CameraDriver(CameraConfig(name="cam7", source=str(tmp_path / "missing.avi")))
    out: queue.Queue[object] = queue.Queue()
    runner = ScannerRunner(driver, "camera", out, cap_s=0.1)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while runner.health.state != "absent" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.health.state == "absent" and "cannot open" in runner.health.last_error
    finally:
        runner.stop()


def test_a_decoder_that_raises_is_a_counted_miss(video: tuple[Path, list[bytes]]) -> None:
    """zxing raising on every 4th call and zbar on every call: the thread survives, misses are counted, and the
    codes are still read on the frames where zxing did not raise."""
    path, expected = video
    decoder = cd.FrameDecoder()
    real = decoder.zxing_read
    calls = {"n": 0}

    def flaky_zxing(*args: object, **kwargs: object) -> list[object]:
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise ValueError("4294967295 is not a valid ZBarOrientation")
        return real(*args, **kwargs)

    def broken_zbar(img: object, types: object) -> list[object]:
        raise RuntimeError("libzbar exploded")

    decoder.zxing_read = flaky_zxing
    decoder.zbar_read = broken_zbar
    driver = CameraDriver(CameraConfig(name="cam8", source=str(path), fps=10, holdoff_s=1.0), decoder=decoder)
    scans, runner = run_to_completion(driver)
    assert_scans(scans, expected)
    errors = driver.stats()["decode"]["errors"]
    assert errors.get("zxing", 0) + errors.get("zxing-1d", 0) + errors.get("zxing-2d", 0) >= 10
    assert runner.health.state == "exhausted"
    assert any(reason.startswith("decoder zxing") for reason in runner.health.bad_frames), runner.health.bad_frames


def test_a_pipeline_that_raises_skips_the_frame_only(video: tuple[Path, list[bytes]]) -> None:
    path, expected = video
    inner = cd.FrameDecoder()
    state = {"n": 0}

    class Exploding:
        stats = inner.stats

        def decode(self, frame: np.ndarray) -> list[cd.Read]:
            state["n"] += 1
            if state["n"] in (1, 2, 30):
                raise MemoryError("simulated")
            return inner.decode(frame)

    driver = CameraDriver(CameraConfig(name="cam9", source=str(path), fps=10, holdoff_s=1.0), decoder=Exploding())
    scans, runner = run_to_completion(driver)
    assert_scans(scans, expected)  # the QR is in view for 8 frames, the DM for 10
    assert driver.stats()["pipeline_errors"] == 3
    assert runner.health.bad_frames.get("decode pipeline raised MemoryError (frame skipped)") == 3


def test_camera_import_is_lazy() -> None:
    """URI parsing (drivers/uri.py) needs no OpenCV; building a camera driver loads it."""
    mods = loaded_modules("from drivers.camera_scanner import parse_camera_uri\n"
                          "parse_camera_uri('camera:///dev/video0?fps=5')")
    assert not mods & {"cv2", "zxingcpp", "pyzbar", "numpy"}
    mods = loaded_modules("from drivers.camera_scanner import CameraDriver, CameraConfig\n"
                          "CameraDriver(CameraConfig(source='/dev/video0'))")
    assert {"cv2", "zxingcpp"} <= mods and "pyzbar" not in mods  # libzbar only on the first 1D fallback


# ---- still images ---------------------------------------------------------------------------------------------------

def write_png(path: Path, img: np.ndarray) -> str:
    assert cv2.imwrite(str(path), img)
    return str(path)


def test_decode_file_reports_symbology_gs1_bytes_and_position(tmp_path: Path) -> None:
    img = scene([(qr_image(), 40, 40), (imcb_image(), 60, 330), (dm_image(), 420, 60)], size=(640, 480))
    reads = {r.symbology: r for r in cd.decode_file(write_png(tmp_path / "three.png", img))}
    assert set(reads) == {"qr", "gs1-128", "datamatrix"}
    qr, imcb, dm = reads["qr"], reads["gs1-128"], reads["datamatrix"]
    assert (qr.text, qr.aim, qr.gs1, qr.frame()) == (QR_TEXT, "]Q1", False, b"]Q1" + QR_TEXT.encode())
    assert (imcb.raw, imcb.text, imcb.aim, imcb.gs1) == (IMCB.encode(), IMCB, "]C1", True)  # not "(99)M..."
    assert dm.text == DM_TEXT and dm.aim.startswith("]d") and not dm.gs1
    for read, (x0, y0, w, h) in ((qr, (40, 40, 150, 150)), (imcb, (60, 330, 500, 70)), (dm, (420, 60, 130, 130))):
        cx, cy = read.center
        assert x0 <= cx <= x0 + w and y0 <= cy <= y0 + h, (read.symbology, read.position)
        assert len(read.position) == 4


def test_binary_data_matrix_passes_raw_bytes(tmp_path: Path) -> None:
    reads = cd.decode_file(write_png(tmp_path / "ibi.png", scene([(dm_image(DM_BINARY), 200, 150)])))
    assert len(reads) == 1
    r = reads[0]
    assert r.binary and r.text is None and r.raw == DM_BINARY and r.symbology == "datamatrix"
    assert r.frame() == r.aim.encode() + DM_BINARY
    assert r.as_dict()["bytes_base64"] and "text" not in r.as_dict()


def test_plain_code128_and_rotated_1d_via_the_localiser(tmp_path: Path) -> None:
    plain = linear_image(code128_bits(code_b_values("DOCK:CLOSE")), module=2)
    reads = cd.decode_file(write_png(tmp_path / "c128.png", scene([(plain, 150, 200)])))
    assert [(r.symbology, r.text, r.aim, r.gs1) for r in reads] == [("code128", "DOCK:CLOSE", "]C0", False)]
    rotated = scene([(imcb_image(module=3), 60, 200)], size=(800, 600), angle=30)
    reads = cd.decode_file(write_png(tmp_path / "rot.png", rotated))
    assert [(r.symbology, r.text) for r in reads] == [("gs1-128", IMCB)]
    assert reads[0].decoder in ("zxing-1d-crop", "zbar-1d-crop")  # upright crop from the cv2 localiser


def test_zbar_fallback_keeps_gs1(tmp_path: Path) -> None:
    """With zxing unable to read the crop (forced), zbar reads it and its GS1 modifier gives ]C1."""
    rotated = scene([(imcb_image(module=3), 60, 200)], size=(800, 600), angle=30)
    decoder = cd.FrameDecoder()
    real = decoder.zxing_read

    def no_1d(img: object, formats: object, **kw: object) -> list[object]:
        return [] if formats == decoder._fmt_1d else real(img, formats=formats, **kw)

    decoder.zxing_read = no_1d
    reads = decoder.decode(rotated)
    assert [(r.symbology, r.text, r.aim, r.gs1, r.decoder) for r in reads] == [
        ("gs1-128", IMCB, "]C1", True, "zbar-1d-crop")]


def test_formats_roi_and_empty_frames(tmp_path: Path) -> None:
    img = scene([(qr_image(), 40, 40), (dm_image(), 420, 60)])
    assert [r.symbology for r in cd.decode_frame(img, formats="datamatrix")] == ["datamatrix"]
    assert [r.symbology for r in cd.decode_frame(img, roi=(0, 0, 300, 300))] == ["qr"]
    moved = cd.decode_frame(img, roi="400,40,200,200")
    assert [r.symbology for r in moved] == ["datamatrix"] and moved[0].center[0] > 400  # frame coordinates
    assert cd.decode_frame(scene([])) == []
    assert cd.decode_frame(np.zeros((4, 4), np.uint8)) == []
    same_twice = scene([(qr_image(), 40, 40), (qr_image(), 350, 200)])
    assert len(cd.decode_frame(same_twice)) == 1  # de-duplicated by (symbology, bytes)
    with pytest.raises(ValueError, match="unknown symbology"):
        cd.parse_formats("qr,maxicode")
    with pytest.raises(ValueError, match="roi"):
        cd.parse_roi("1,2,3")


def test_deduper_holdoff() -> None:
    read = cd.Read(b"X", "X", "qr", "]Q1", False, ((0, 0),) * 4, "zxing")
    other = cd.Read(b"Y", "Y", "qr", "]Q1", False, ((0, 0),) * 4, "zxing")
    d = cd.Deduper(holdoff_s=2.0)
    assert d.admit([read], 0.0) == [read]
    assert d.admit([read], 1.5) == []  # still in view
    assert d.admit([read, other], 3.0) == [other]  # seen 1.5 s ago: same piece
    assert d.admit([read], 5.5) == [read]  # gone for 2.5 s: a new scan
    assert cd.Deduper(0).admit([read, read], 0) == [read, read]


def test_decode_cli_json_and_text(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png", scene([(imcb_image(), 60, 200), (qr_image(), 400, 40)]))
    empty = write_png(tmp_path / "empty.png", scene([]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = io.StringIO()
    status = cd.run_decode_cli([good, empty, str(broken)], as_json=True, out=out, err=io.StringIO())
    assert status == 2
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert {c["symbology"] for c in first["codes"]} == {"gs1-128", "qr"}
    imcb = next(c for c in first["codes"] if c["symbology"] == "gs1-128")
    assert imcb["text"] == IMCB and imcb["gs1"] and imcb["aim"] == "]C1" and len(imcb["position"]) == 4
    assert imcb["label"] == {"ok": True, "kind": "imcb", "normalized": IMCB}
    assert first["width"] == 640 and first["height"] == 480 and first["ms"] >= 0
    assert second["codes"] == [] and "error" in third
    out = io.StringIO()
    assert cd.run_decode_cli([good], out=out) == 0
    assert f"gs1-128 {IMCB}" in out.getvalue()
    assert cd.run_decode_cli([empty], out=io.StringIO()) == 1
    assert cd.run_decode_cli([good], formats="nope", out=io.StringIO(), err=io.StringIO()) == 2


# ---- URIs -----------------------------------------------------------------------------------------------------------

def test_camera_uris() -> None:
    assert parse_camera_uri("camera:///dev/video0?fps=5&roi=10,20,300,200&holdoff=2&name=cam1") == {
        "type": "camera", "source": "/dev/video0", "name": "cam1", "fps": 5.0, "roi": [10, 20, 300, 200],
        "holdoff_s": 2.0}
    assert parse_camera_uri("camera:0", 3) == {"type": "camera", "source": "0", "name": "camera3"}
    assert parse_camera_uri("camera:///srv/clip.mp4?loop=1&realtime=yes&formats=qr,code128") == {
        "type": "camera", "source": "/srv/clip.mp4", "name": "camera0", "loop": True, "realtime": True,
        "formats": ["qr", "code128"]}
    rtsp = parse_camera_uri("camera+rtsp://u:p@10.0.0.7:554/s1?channel=2&fps=4&watchdog=8")
    assert rtsp["source"] == "rtsp://u:p@10.0.0.7:554/s1?channel=2" and rtsp["fps"] == 4.0
    assert rtsp["watchdog_s"] == 8.0
    with pytest.raises(ValueError, match="fps must be a number"):
        parse_camera_uri("camera:///dev/video0?fps=fast")
    with pytest.raises(ValueError, match="not a camera URI"):
        parse_camera_uri("serial:///dev/ttyS0")
    assert [source_kind(s) for s in ("0", "/dev/video2", "rtsp://h/s", "https://h/m.mjpg", "/srv/a.mp4")] == [
        "device", "device", "stream", "stream", "file"]
