"""The printed command sheet: it renders, and every barcode on it decodes back to its command."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import zxingcpp

from agent.barcode import parse
from agent.command_sheet import FIXED, PAGE_H, PAGE_W
from tests.conftest import run_cli


def decoded(gray: np.ndarray) -> set[str]:
    return {r.text for r in zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.Code128)}


def test_png_sheet_decodes_back_to_the_same_commands(tmp_path: Path) -> None:
    import cv2

    out = tmp_path / "sheet.png"
    res = run_cli("command-sheet", "--out", str(out), "--load", "1234567890")
    assert res.returncode == 0, res.stderr
    page = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert page.shape == (PAGE_H, PAGE_W)
    expected = {code for code, _ in FIXED} | {"DOCK:LOAD:1234567890"}
    assert decoded(page) == expected
    for code in expected:
        assert parse(code).ok, code  # every printed command is one the grammar accepts
    assert not any("LEAD" in c for c in expected)  # the lead PIN is never on the public sheet


def test_pdf_sheet_holds_the_same_page(tmp_path: Path) -> None:
    out = tmp_path / "sheet.pdf"
    assert run_cli("command-sheet", "--out", str(out)).returncode == 0
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    m = re.search(rb"/Width (\d+) /Height (\d+).*?/Length (\d+) >>\nstream\n", pdf, re.S)
    assert m
    w, h, n = map(int, m.groups())
    start = m.end()
    page = np.frombuffer(zlib.decompress(pdf[start:start + n]), dtype=np.uint8).reshape(h, w)
    assert decoded(page) == {code for code, _ in FIXED}


def test_bad_extension_is_refused(tmp_path: Path) -> None:
    res = run_cli("command-sheet", "--out", str(tmp_path / "sheet.gif"))
    assert res.returncode == 1 and ".png or .pdf" in res.stderr
