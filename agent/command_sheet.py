"""``dock-agent command-sheet``: a printable page of the operator command barcodes (Code 128), PNG or PDF.

Barcodes are drawn by zxing-cpp (the decoder the camera uses, so the sheet is checked by the same library that
reads it back in the tests) and the page is composed with OpenCV; both are imported only here, when a sheet is
made. The dock lead's PIN (DOCK:LEAD:...) is never on this sheet: it goes on the lead's badge.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

FIXED = [
    ("DOCK:CLOSE", "Close the load (prints what is missing)"),
    ("DOCK:ENDFORM", "Close the open PS 8125"),
    ("DOCK:PLACARD", "Next scan is a pulled placard"),
    ("DOCK:VOID", "Void my last scan"),
    ("DOCK:REJECT:MISSHIPPED", "Reject next container: misshipped"),
    ("DOCK:REJECT:UNPAID", "Reject next container: payment"),
    ("DOCK:REJECT:UNDOCUMENTED", "Reject next container: no eDoc"),
    ("DOCK:REJECT:DAMAGED", "Reject next container: damaged"),
    ("DOCK:OUTAGE:NATIONAL", "National outage (lead PIN first)"),
    ("DOCK:ALLCLEAR", "All clear (lead PIN first)"),
]

PAGE_W, PAGE_H = 1240, 1754  # A4 at 150 dpi
MARGIN = 60


def commands(load: str | None = None) -> list[tuple[str, str]]:
    out = list(FIXED)
    if load:
        out.insert(0, (f"DOCK:LOAD:{load}", f"Open the load of appointment {load}"))
    return out


def render(load: str | None = None) -> Any:
    """The sheet as a grayscale numpy image."""
    import cv2
    import numpy as np
    import zxingcpp

    items = commands(load)
    page = np.full((PAGE_H, PAGE_W), 255, dtype=np.uint8)
    cv2.putText(page, "dock-agent command sheet", (MARGIN, MARGIN + 20), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 0, 2,
                cv2.LINE_AA)
    cv2.putText(page, "Scan a command with the same scanner you use for the containers.", (MARGIN, MARGIN + 60),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, 0, 1, cv2.LINE_AA)
    cv2.putText(page, "FORM8125, TICKET and OPERATOR need their id: DOCK:FORM8125:<id>, DOCK:TICKET:<ticket>.",
                (MARGIN, MARGIN + 85), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 0, 1, cv2.LINE_AA)
    cols, top = 2, MARGIN + 120
    cell_w = (PAGE_W - 2 * MARGIN) // cols
    cell_h = (PAGE_H - top - MARGIN) // ((len(items) + cols - 1) // cols)
    for i, (code, words) in enumerate(items):
        x = MARGIN + (i % cols) * cell_w
        y = top + (i // cols) * cell_h
        symbol = np.array(zxingcpp.write_barcode_to_image(
            zxingcpp.create_barcode(code, zxingcpp.BarcodeFormat.Code128), scale=2))
        h, w = symbol.shape[:2]
        if w > cell_w - 20:  # keep every module at least 2 px; narrow only if it would not fit
            scale = (cell_w - 20) / w
            symbol = cv2.resize(symbol, (int(w * scale), h), interpolation=cv2.INTER_NEAREST)
            h, w = symbol.shape[:2]
        bh = min(h, cell_h - 80)
        symbol = cv2.resize(symbol, (w, bh), interpolation=cv2.INTER_NEAREST)
        page[y:y + bh, x:x + w] = symbol
        cv2.putText(page, words, (x, y + bh + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.62, 0, 1, cv2.LINE_AA)
        cv2.putText(page, code, (x, y + bh + 54), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 80, 1, cv2.LINE_AA)
    return page


def write(out: Path, load: str | None = None) -> Path:
    """Write the sheet as PNG or PDF (by the file's extension).

    Raises:
        ValueError: an extension other than .png or .pdf.
    """
    suffix = out.suffix.lower()
    if suffix not in (".png", ".pdf"):
        raise ValueError(f"{out}: the sheet is written as .png or .pdf")
    page = render(load)
    if suffix == ".png":
        import cv2

        if not cv2.imwrite(str(out), page):
            raise OSError(f"cannot write {out}")
    else:
        out.write_bytes(pdf_from_gray(page.tobytes(), page.shape[1], page.shape[0]))
    return out


def pdf_from_gray(pixels: bytes, width: int, height: int, dpi: int = 150) -> bytes:
    """A one-page PDF showing an 8-bit grayscale image (lossless Flate, so the bars stay sharp)."""
    w_pt, h_pt = width * 72 / dpi, height * 72 / dpi
    data = zlib.compress(pixels, 9)
    content = f"q {w_pt:.2f} 0 0 {h_pt:.2f} 0 0 cm /Im0 Do Q".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w_pt:.2f} {h_pt:.2f}] /Resources << /XObject "
        f"<< /Im0 4 0 R >> >> /Contents 5 0 R >>".encode(),
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceGray "
        f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(data)} >>\nstream\n".encode() + data
        + b"\nendstream",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
