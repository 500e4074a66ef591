"""``dock-scorer web``: the headquarters scorecard page (standard library only, server-rendered, no script needed).

- ``/login``: user name and password (``dock-scorer user add NAME``; PBKDF2-SHA256 hashes in a users file).
- ``/``: a CRID and period form; the six error rates beside their thresholds as a bar chart (inline SVG), the
  assessed amounts, and links to each rule's errors.
- ``/errors``: every error with its evidence (scan, eDoc row, Mail Direction File row).
- ``/docks``: the live ingest state of each dock (last seen, state, backlog from its retained status).
- ``/api/scorecard``: the same JSON as ``dock-scorer scorecard --json``.
- ``POST /tickets/resolve`` and ``POST /outage``: changes, each written to the ``audit`` table with the user.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from scorer import rules, scorecard
from scorer.db import ScorerDB

log = logging.getLogger(__name__)
ITERATIONS = 200_000
SESSION_S = 8 * 3600


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    return f"pbkdf2_sha256${ITERATIONS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _algo, iterations, salt, digest = stored.split("$")
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def add_user(users_file: Path, name: str, password: str) -> None:
    users = load_users(users_file)
    users[name] = hash_password(password)
    tmp = users_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{u}:{h}\n" for u, h in sorted(users.items())))
    os.chmod(tmp, 0o600)
    os.replace(tmp, users_file)


def load_users(users_file: Path) -> dict[str, str]:
    if not users_file.exists():
        return {}
    out = {}
    for line in users_file.read_text().splitlines():
        name, _, stored = line.partition(":")
        if name and stored:
            out[name] = stored
    return out


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; margin: 0; color: #111; background: #f6f6f4; }}
header {{ background: #1d3557; color: #fff; padding: 10px 16px; display: flex; gap: 18px; align-items: baseline; }}
header a {{ color: #fff; }} main {{ padding: 16px; }} table {{ border-collapse: collapse; background: #fff; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
.over {{ color: #b3141b; font-weight: 700; }} .flag {{ color: #8a5a00; }} form {{ margin: 10px 0; }}
input, button, select {{ font-size: 16px; padding: 4px 8px; }} pre {{ margin: 0; white-space: pre-wrap; }}
</style></head><body><header><b>eInduction scorecard</b><a href="/">Scorecard</a><a href="/docks">Docks</a>
<span style="margin-left:auto">{user}</span></header><main>{body}</main></body></html>"""


def chart(card: dict[str, Any]) -> str:
    """Each rule's rate beside its threshold, as horizontal bars (inline SVG, no script)."""
    rows = []
    top = max([card[r]["rate"] for r in rules.RULES] + [card[r]["threshold"] for r in rules.RULES] + [0.0001])
    width = 520
    for i, r in enumerate(rules.RULES):
        y = 10 + i * 44
        rate, thr = card[r]["rate"], card[r]["threshold"]
        colour = "#b3141b" if rate > thr else "#0a7d24"
        rows.append(
            f'<text x="0" y="{y + 16}" font-size="14">{r.replace("_", " ")}</text>'
            f'<rect x="190" y="{y}" width="{max(1, rate / top * width):.1f}" height="20" fill="{colour}">'
            f"<title>{rate * 100:.3f} %</title></rect>"
            f'<line x1="{190 + thr / top * width:.1f}" x2="{190 + thr / top * width:.1f}" y1="{y - 4}" '
            f'y2="{y + 26}" stroke="#111" stroke-width="2"><title>threshold {thr * 100:.2f} %</title></line>'
            f'<text x="{190 + width + 10}" y="{y + 16}" font-size="13">{rate * 100:.3f} % (threshold '
            f"{thr * 100:.2f} %)</text>")
    return (f'<svg role="img" aria-label="error rates against thresholds" width="980" height="{20 + 44 * 6}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(rows)}</svg>')


class ScorerWeb:
    """The scorecard site for one scorer database."""

    def __init__(self, db_url: str, users_file: Path, host: str = "127.0.0.1", port: int = 8091) -> None:
        self.db_url = db_url
        self.users_file = users_file
        self.sessions: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address

    def serve(self) -> None:
        log.info("scorecard site on http://%s:%d/", self.address[0], self.address[1])
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _db(self) -> ScorerDB:
        return ScorerDB.open(self.db_url)

    def _handler(self):  # type: ignore[no-untyped-def]
        site = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "dock-scorer"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

            def _user(self) -> str | None:
                cookie = self.headers.get("Cookie", "")
                sid = next((c.split("=", 1)[1] for c in cookie.split("; ") if c.startswith("scorer_session=")), "")
                with site.lock:
                    entry = site.sessions.get(sid)
                    if entry and entry[1] > time.monotonic():
                        return entry[0]
                return None

            def _send(self, status: int, body: str | bytes, ctype: str = "text/html; charset=utf-8",
                      headers: dict[str, str] | None = None) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Frame-Options", "DENY")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _page(self, title: str, body: str, user: str) -> None:
                self._send(200, PAGE.format(title=html.escape(title), body=body,
                                            user=f'{html.escape(user)} <a href="/logout">log out</a>'))

            def _redirect(self, to: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(303)
                self.send_header("Location", to)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _form(self) -> dict[str, str]:
                length = min(int(self.headers.get("Content-Length", "0")), 8192)
                return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

            def do_GET(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/login":
                    return self._send(200, PAGE.format(title="Log in", user="", body=(
                        '<form method="post" action="/login"><p><label>User <input name="user" autofocus></label></p>'
                        '<p><label>Password <input name="password" type="password"></label></p>'
                        '<button type="submit">Log in</button></form>'
                        + ('<p class="over">Wrong user name or password.</p>' if q.get("failed") else ""))))
                user = self._user()
                if user is None:
                    return self._redirect("/login")
                if url.path == "/logout":
                    return self._redirect("/login", {"Set-Cookie": "scorer_session=; Max-Age=0; Path=/"})
                if url.path == "/":
                    return self._scorecard(q, user)
                if url.path == "/errors":
                    return self._errors(q, user)
                if url.path == "/docks":
                    return self._docks(user)
                if url.path == "/api/scorecard":
                    card, _ = self._compute(q)
                    return self._send(200, json.dumps(card), "application/json")
                return self._send(404, "no such page", "text/plain")

            def do_POST(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                if url.path == "/login":
                    f = self._form()
                    users = load_users(site.users_file)
                    stored = users.get(f.get("user", ""))
                    if stored is None or not check_password(f.get("password", ""), stored):
                        time.sleep(0.5)
                        return self._redirect("/login?failed=1")
                    sid = secrets.token_urlsafe(32)
                    with site.lock:
                        site.sessions[sid] = (f["user"], time.monotonic() + SESSION_S)
                    self._audit(f["user"], "login", "")
                    return self._redirect("/", {"Set-Cookie": f"scorer_session={sid}; HttpOnly; SameSite=Strict; Path=/"})
                user = self._user()
                if user is None:
                    return self._redirect("/login")
                f = self._form()
                db = site._db()
                try:
                    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
                    if url.path == "/tickets/resolve" and f.get("ticket"):
                        db.resolve_ticket(f["ticket"], now, f"web:{user}")
                    elif url.path == "/outage" and f.get("action") == "start":
                        db.outage_start(f"national-{now}", now, f"web:{user}")
                    elif url.path == "/outage" and f.get("action") == "end":
                        db.outage_end(now, f"web:{user}")
                    else:
                        return self._send(400, "unknown change", "text/plain")
                finally:
                    db.close()
                return self._redirect("/docks")

            def _audit(self, user: str, action: str, detail: str) -> None:
                db = site._db()
                try:
                    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
                    db.backend.transaction([("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                                             [(now, f"web:{user}", action, detail)])])
                finally:
                    db.close()

            def _compute(self, q: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
                crid = q.get("crid", "")
                if q.get("month"):
                    start, end = scorecard.month_bounds(q["month"])
                else:
                    start = dt.date.fromisoformat(q.get("from") or dt.date.today().replace(day=1).isoformat())
                    end = dt.date.fromisoformat(q.get("to") or dt.date.today().isoformat())
                as_of = (dt.datetime.fromisoformat(q["as_of"].replace("Z", "+00:00")) if q.get("as_of")
                         else dt.datetime.now(dt.timezone.utc))
                db = site._db()
                try:
                    return scorecard.compute(db, crid, start, end, as_of=as_of, owner=q.get("owner") or None)
                finally:
                    db.close()

            def _scorecard(self, q: dict[str, str], user: str) -> None:
                form = ('<form method="get" action="/"><label>CRID <input name="crid" value="{crid}"></label> '
                        '<label>Month <input name="month" placeholder="YYYY-MM" value="{month}"></label> or '
                        '<label>from <input name="from" value="{frm}" size="10"></label> '
                        '<label>to <input name="to" value="{to}" size="10"></label> '
                        '<button type="submit">Show</button></form>').format(
                    crid=html.escape(q.get("crid", "")), month=html.escape(q.get("month", "")),
                    frm=html.escape(q.get("from", "")), to=html.escape(q.get("to", "")))
                if not q.get("crid"):
                    return self._page("Scorecard", form, user)
                try:
                    card, _ = self._compute(q)
                except ValueError as e:
                    return self._page("Scorecard", form + f'<p class="over">{html.escape(str(e))}</p>', user)
                rows = []
                for r in rules.RULES:
                    c = card[r]
                    link = "/errors?" + urlencode({**q, "rule": r})
                    over = ' class="over"' if c["rate"] > c["threshold"] else ""
                    flags = "".join(f'<div class="flag">{html.escape(x)}</div>' for x in c.get("flags", []))
                    rows.append(
                        f'<tr data-rule="{r}" data-errors="{c["errors"]}" data-rate="{c["rate"]!r}" '
                        f'data-threshold="{c["threshold"]!r}" data-assessed="{c["assessed"]}" '
                        f'data-assessment="{c["assessment_usd"]:.2f}"><td>{r.replace("_", " ")}</td>'
                        f'<td><a href="{html.escape(link)}">{c["errors"]}</a></td><td{over}>{c["rate"] * 100:.3f} %</td>'
                        f'<td>{c["threshold"] * 100:.2f} %</td><td>{c["assessed"]}</td>'
                        f'<td>${c["assessment_usd"]:,.2f}{flags}</td></tr>')
                body = (form + f'<h2 data-crid="{html.escape(card["crid"])}" data-containers="{card["containers"]}" '
                        f'data-pending="{card["pending"]}">CRID {html.escape(card["crid"])}, {card["from"]} to '
                        f'{card["to"]}: {card["containers"]} scanned eInduction containers ({card["pending"]} pending)'
                        f"</h2>{chart(card)}<table><tr><th>Error</th><th>Errors</th><th>Rate</th><th>Threshold</th>"
                        f"<th>Assessed</th><th>Assessment</th></tr>{''.join(rows)}<tr><td colspan=5><b>Total</b></td>"
                        f'<td data-total="{card["assessment_usd"]:.2f}"><b>${card["assessment_usd"]:,.2f}</b></td>'
                        "</tr></table>")
                self._page(f"Scorecard {card['crid']}", body, user)

            def _errors(self, q: dict[str, str], user: str) -> None:
                _, errors = self._compute(q)
                rule = q.get("rule")
                shown = [e for e in errors if rule is None or e["rule"] == rule]
                rows = []
                for e in shown:
                    evidence = json.dumps({"scan": e["scan"], "edoc": e["edoc"], "evidence": e["evidence"]}, indent=1)
                    rows.append(f'<tr data-imcb="{html.escape(e["imcb"])}"><td>{html.escape(e["rule"])}</td>'
                                f'<td>{html.escape(e["imcb"])}</td><td>{html.escape(e["site"])}</td>'
                                f'<td>{html.escape(e["local_date"])}</td>'
                                f'<td>{"$" + format(e["assessment_usd"], ",.2f") if e["assessed"] else "free"}</td>'
                                f"<td><pre>{html.escape(evidence)}</pre></td></tr>")
                back = "/?" + urlencode({k: v for k, v in q.items() if k != "rule"})
                self._page("Errors", f'<p><a href="{html.escape(back)}">back to the scorecard</a></p><table><tr>'
                           "<th>Rule</th><th>IMcb</th><th>Facility</th><th>Local date</th><th>Assessment</th>"
                           f"<th>Evidence</th></tr>{''.join(rows)}</table>", user)

            def _docks(self, user: str) -> None:
                db = site._db()
                try:
                    docks = db.docks()
                    outages = db.outages()
                finally:
                    db.close()
                rows = []
                for d in docks:
                    st = d.get("status") or {}
                    rows.append(f'<tr data-device="{html.escape(d["device_id"])}"><td>{html.escape(d["device_id"])}</td>'
                                f'<td>{html.escape(d["site"])}</td><td>{html.escape(str(d["state"]))}</td>'
                                f'<td>{html.escape(str(d["last_seen"]))}</td><td>{st.get("backlog", "?")}</td>'
                                f'<td>{html.escape(str(st.get("oldest_undelivered_age_s", "")))}</td>'
                                f'<td>{html.escape(str(st.get("health", "")))}</td></tr>')
                open_outage = next((o for o in outages if o[2] is None), None)
                body = ("<h2>Docks</h2><table><tr><th>Device</th><th>Facility</th><th>State</th><th>Last seen</th>"
                        f"<th>Backlog</th><th>Oldest unsent (s)</th><th>Health</th></tr>{''.join(rows)}</table>"
                        "<h2>Outages and tickets</h2>"
                        + (f"<p class=over>National outage {html.escape(open_outage[0])} since {open_outage[1]}</p>"
                           '<form method="post" action="/outage"><input type="hidden" name="action" value="end">'
                           "<button>Declare the all-clear</button></form>" if open_outage else
                           '<form method="post" action="/outage"><input type="hidden" name="action" value="start">'
                           "<button>Declare a national outage</button></form>")
                        + '<form method="post" action="/tickets/resolve"><label>Help Desk ticket <input name="ticket">'
                          "</label> <button>Mark resolved</button></form>")
                self._page("Docks", body, user)

        return Handler
