"""2D mobile barcode sample verification against the 2011 promotion (seed 001), on generated sample images."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import zxingcpp

from agent.samples import PromotionError, Read, find_promotion, load_promotion, verify

FORMATS = {zxingcpp.BarcodeFormat.QRCode: "qr", zxingcpp.BarcodeFormat.DataMatrix: "datamatrix",
           zxingcpp.BarcodeFormat.Code128: "code128", zxingcpp.BarcodeFormat.PDF417: "pdf417"}
IN_WINDOW = dt.date(2011, 7, 15)


def image(content: str | bytes, fmt: zxingcpp.BarcodeFormat) -> np.ndarray:
    sym = np.array(zxingcpp.write_barcode_to_image(zxingcpp.create_barcode(content, fmt), scale=4))
    page = np.full((sym.shape[0] + 200, sym.shape[1] + 200), 255, dtype=np.uint8)  # a piece with margins
    page[100:100 + sym.shape[0], 100:100 + sym.shape[1]] = sym
    return page


def reads_of(img: np.ndarray) -> list[Read]:
    return [Read(FORMATS.get(r.format, str(r.format)), bytes(r.bytes)) for r in zxingcpp.read_barcodes(img)]


PROMO = find_promotion("mobile-barcode-2011")


@pytest.mark.parametrize(("name", "img", "date", "klass", "shape", "verdict", "expect"), [
    ("marketing URL", image("https://example.com/spring-sale", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW, "FCM",
     "letter", "needs_human", {"2d_barcode": "pass", "content": "pass", "date": "pass", "class_shape": "pass"}),
    ("bill-pay link", image("https://bank.example.com/billpay/enroll", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW,
     "FCM", "card", "ineligible", {"content": "fail"}),
    ("paperless enrolment", image("https://utility.example.com/paperless-statements", zxingcpp.BarcodeFormat.QRCode),
     IN_WINDOW, "STD", "flat", "ineligible", {"content": "fail"}),
    ("address text", image("John Doe, 123 Main Street, Springfield IL 62701", zxingcpp.BarcodeFormat.QRCode),
     IN_WINDOW, "FCM", "letter", "ineligible", {"content": "fail"}),
    ("bare serial", image("SN-99887766-AB", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW, "FCM", "letter",
     "ineligible", {"content": "fail"}),
    ("IBI-like binary", image(bytes([0x02, 0x00, 0xFF, 0x10, 0x41, 0x42, 0x07]), zxingcpp.BarcodeFormat.DataMatrix),
     IN_WINDOW, "FCM", "letter", "ineligible", {"content": "fail"}),
    ("a 1D code", image("99M123456000000123456", zxingcpp.BarcodeFormat.Code128), IN_WINDOW, "FCM", "letter",
     "ineligible", {"2d_barcode": "fail"}),
    ("unreadable", np.random.default_rng(7).integers(0, 256, (400, 400), dtype=np.uint8), IN_WINDOW, "FCM",
     "letter", "ineligible", {"2d_barcode": "fail"}),
    ("date outside the window", image("https://example.com/spring-sale", zxingcpp.BarcodeFormat.QRCode),
     dt.date(2011, 9, 1), "FCM", "letter", "ineligible", {"date": "fail", "content": "pass"}),
    ("ineligible class", image("https://example.com/spring-sale", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW, "PER",
     "flat", "ineligible", {"class_shape": "fail"}),
    ("ineligible shape", image("https://example.com/spring-sale", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW, "STD",
     "card", "ineligible", {"class_shape": "fail"}),
    ("unknown content", image("Hello from ACME", zxingcpp.BarcodeFormat.QRCode), IN_WINDOW, "FCM", "letter",
     "needs_human", {"content": "human"}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_sample_table(name: str, img: np.ndarray, date: dt.date, klass: str, shape: str, verdict: str,
                      expect: dict[str, str]) -> None:
    v = verify(reads_of(img), PROMO, mailing_date=date, mail_class=klass, shape=shape)
    assert v.verdict == verdict, v.as_dict()
    results = {c.rule: c.result for c in v.checks if c.rule != "human"}
    for rule, result in expect.items():
        assert results[rule] == result, (rule, v.as_dict())
    # What no machine can judge is always left to a person, with a reason per rule.
    assert any(c.result == "human" and "relevant" in c.reason for c in v.checks)
    assert all(c.reason for c in v.checks)


def test_pvds_windows() -> None:
    url = reads_of(image("https://example.com/x", zxingcpp.BarcodeFormat.QRCode))
    early = dt.date(2011, 6, 27)
    assert {c.rule: c.result for c in verify(url, PROMO, mailing_date=early, mail_class="FCM", shape="flat").checks
            }["date"] == "fail"
    assert {c.rule: c.result for c in verify(url, PROMO, mailing_date=early, mail_class="FCM", shape="flat",
                                              pvds="origin").checks}["date"] == "pass"
    late = dt.date(2011, 9, 14)
    assert {c.rule: c.result for c in verify(url, PROMO, mailing_date=late, mail_class="FCM", shape="flat",
                                              pvds="destination").checks}["date"] == "pass"


def test_a_later_year_is_a_new_file_not_new_code(tmp_path: Path) -> None:
    (tmp_path / "2012.toml").write_text('''
id = "mobile-commerce-2012"
discount_percent = 2.0
mailing_window = ["2012-07-01", "2012-08-31"]
smartphone_symbologies = ["qr", "datamatrix"]
forbidden = ["billpay_link"]
qualifying = ["purchase_url"]
human_checks = ["The page lets the recipient buy on the device."]
[[eligible]]
mail_class = "STD"
shapes = ["letter", "flat"]
[[classes]]
name = "billpay_link"
pattern = "(?i)billpay"
[[classes]]
name = "purchase_url"
pattern = "(?i)^https://shop\\\\."
''')
    p = find_promotion("mobile-commerce-2012", tmp_path)
    v = verify(reads_of(image("https://shop.example.com/cart", zxingcpp.BarcodeFormat.QRCode)), p,
               mailing_date=dt.date(2012, 7, 2), mail_class="STD", shape="letter")
    assert v.verdict == "needs_human" and {c.rule: c.result for c in v.checks}["content"] == "pass"
    with pytest.raises(PromotionError, match="known: mobile-commerce-2012"):
        find_promotion("nope", tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.toml").write_text('id = "x"\nmailing_window = ["2012-07-01"]\nbogus = 1\n')
    with pytest.raises(PromotionError, match="unknown keys"):
        load_promotion(bad / "bad.toml")


def test_sample_verify_cli_records_through_the_running_agent(tmp_path: Path) -> None:
    import cv2

    from tests.conftest import AgentProcess, run_cli

    img = tmp_path / "piece.png"
    cv2.imwrite(str(img), image("https://example.com/spring-sale", zxingcpp.BarcodeFormat.QRCode))
    state = tmp_path / "state"
    args = ["sample", "verify", str(img), "--promotion", "mobile-barcode-2011", "--mailing-date", "2011-07-15",
            "--mail-class", "FCM", "--shape", "letter", "--statement", "S-9", "--json", "--state-dir", str(state)]
    alone = run_cli(*args)
    assert alone.returncode == 3 and "NOT recorded" in alone.stderr  # judged, but nobody to record it
    assert json.loads(alone.stdout)["verdict"] == "needs_human"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/none?name=desk"])
    try:
        agent.wait_ready()
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr
        body = json.loads(res.stdout)
        assert body["recorded"] is True and body["retain_until"] == "2011-10-31"
        assert (state / "samples" / f"{body['image_sha256']}.jpg").exists()
        late = [a if a != "2011-07-15" else "2011-09-30" for a in args]
        bad = run_cli(*late)
        assert bad.returncode == 1 and json.loads(bad.stdout)["verdict"] == "ineligible"
    finally:
        assert agent.stop() == 0
    import sqlite3

    conn = sqlite3.connect(state / "scans.db")
    rows = conn.execute("SELECT verdict, statement_id, retain_until FROM samples ORDER BY id").fetchall()
    kinds = [r[0] for r in conn.execute("SELECT type FROM records WHERE type = 'sample'")]
    conn.close()
    assert rows == [("needs_human", "S-9", "2011-10-31"), ("ineligible", "S-9", "2011-10-31")]
    assert kinds == ["sample", "sample"]  # synced to headquarters like scans
