"""``dock-agent``: the command line. Heavy modules are imported inside each subcommand, so --help is instant."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/dock-agent/site.toml"
DEFAULT_STATE_DIR = "/var/lib/dock-agent"


def _default_config() -> str:
    return os.environ.get("DOCK_AGENT_CONFIG", DEFAULT_CONFIG)


def _default_state_dir() -> str:
    # systemd's StateDirectory= sets STATE_DIRECTORY; DOCK_AGENT_STATE_DIR wins for hand-run commands.
    return os.environ.get("DOCK_AGENT_STATE_DIR") or os.environ.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"site configuration (default: $DOCK_AGENT_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                   help=f"where the scan database lives (default: $DOCK_AGENT_STATE_DIR or {DEFAULT_STATE_DIR})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dock-agent",
        description="Capture container barcodes at a mail dock, store them durably, sync them to headquarters.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    _common(p)
    p.add_argument("--scanner", action="append", default=[], metavar="URI",
                   help="use this scanner instead of the configured ones (repeatable): "
                        "serial:///dev/ttyACM0?baud=115200&good=06&bad=15, "
                        "evdev:///dev/input/by-id/...-event-kbd?layout=us, replay:///path/file.txt, replay:-")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None,
                   help="override the configured log level")
    p.add_argument("--http", metavar="HOST:PORT", default=None,
                   help="serve the status screen here (default from [http]; 'off' disables it)")
    p.add_argument("--broker", metavar="URL", default=None,
                   help="sync to this broker (mqtts://host:port, or mqtt://host:port for a lab broker) instead "
                        "of the configured one; turns sync on")

    p = sub.add_parser("check-config", help="validate a site configuration and exit (0 = valid)")
    _common(p)

    p = sub.add_parser("parse", help="parse barcodes with the dock's grammar (stdin when no CODE is given)")
    _common(p)
    p.add_argument("codes", nargs="*", metavar="CODE")
    p.add_argument("--json", action="store_true", help="one JSON object per input")

    p = sub.add_parser("scans", help="list stored scans (works whether or not the agent runs)")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the newest N scans")
    p.add_argument("--undelivered", action="store_true", help="only scans headquarters has not acknowledged")

    p = sub.add_parser("status", help="mode, totals, oldest unsynchronised scan, scanner health")
    _common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    # Every operator command barcode, as a subcommand talking to the running agent (docs/operator-guide.md).
    def workflow_cmd(name: str, help_: str, arg: str | None = None, choices: list[str] | None = None):  # type: ignore[no-untyped-def]
        q = sub.add_parser(name, help=help_)
        _common(q)
        if arg:
            q.add_argument(arg, choices=choices)
        q.add_argument("--scanner", help="the scanner (door) it applies to (default: the only scanner)")
        q.add_argument("--json", action="store_true")
        return q

    workflow_cmd("load", "open or close a load (FAST appointment)", "action", ["open", "close"]).add_argument(
        "appointment", nargs="?", help="FAST appointment or scheduler id (open)")
    workflow_cmd("form", "open or close a PS 8125 for the containers that follow", "action", ["open", "close"]
                 ).add_argument("form_id", nargs="?", help="the form's id (open)")
    workflow_cmd("placard", "the next scan is a pulled placard")
    workflow_cmd("reject", "the next container is rejected", "reason")
    workflow_cmd("ticket", "the open load is under this mailer's Help Desk ticket", "ticket")
    workflow_cmd("operator", "who is scanning at this door", "operator_id")
    workflow_cmd("void", "void the scanner's last scan (kept, marked void)")
    workflow_cmd("outage", "declare a national outage or its all-clear on this box (no PIN: shell access "
                 "is the authority)", "kind", ["national", "allclear"])
    q = workflow_cmd("command", "send any command barcode text, e.g. DOCK:LOAD:1234567890", "code")
    del q

    p = sub.add_parser("mailing-log", help="USPS Record of Mailings log (seed 000 §3)")
    msub = p.add_subparsers(dest="log_action", metavar="ACTION", required=True)
    m = msub.add_parser("add", help="record a mailing presented during an outage")
    _common(m)
    m.add_argument("--permit-holder", required=True)
    m.add_argument("--pieces", type=int, required=True, help="total pieces")
    m.add_argument("--approx", action="store_true", help="the piece count is approximate")
    m.add_argument("--postage", required=True, help="total postage, USD")
    m.add_argument("--job", default="", help="mailer job ID")
    m.add_argument("--einduction", choices=["Y", "N"], required=True)
    m.add_argument("--arrival", help="when the mail arrived (RFC 3339; default now; never later than now)")
    m = msub.add_parser("complete", help="after restoration: items (21) (22) (23) and (25)")
    _common(m)
    m.add_argument("id", type=int)
    m.add_argument("--entry-date", required=True, help="(21) PostalOne! entry date YYYY-MM-DD")
    m.add_argument("--initials", required=True, help="(22) initials")
    m.add_argument("--transaction", required=True, help="(23) transaction number")
    m.add_argument("--finalized", action="store_true", help="(25) eDoc postage statement finalised")

    p = sub.add_parser("decode", help="decode barcodes in still images with the camera pipeline")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--roi", metavar="X,Y,W,H", help="only this region of each image")
    p.add_argument("--formats", metavar="LIST", help="comma-separated symbologies (default: all it knows)")

    p = sub.add_parser("sample", help="2D mobile barcode sample pieces (DMM 709 4.0)")
    ssub = p.add_subparsers(dest="sample_action", metavar="ACTION", required=True)
    v = ssub.add_parser("verify", help="judge a sample piece against a promotion, and record it")
    _common(v)
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("image", nargs="?", help="a photo or scan of the sample piece")
    src.add_argument("--camera", metavar="DEVICE", help="take one frame from this camera (e.g. /dev/video0)")
    v.add_argument("--promotion", required=True, help="promotion id (config/promotions/*.toml)")
    v.add_argument("--mailing-date", required=True, help="YYYY-MM-DD")
    v.add_argument("--mail-class", required=True, help="FCM, STD, ...")
    v.add_argument("--shape", required=True, help="card, letter, flat")
    v.add_argument("--statement", help="postage statement / mailing id")
    v.add_argument("--pvds", choices=["origin", "destination"], help="judge the PVDS window of that side")
    v.add_argument("--promotions-dir", type=Path, default=None, help="where promotion files are")
    v.add_argument("--json", action="store_true")

    p = sub.add_parser("command-sheet", help="print the operator command barcodes (PNG or PDF)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="sheet.png or sheet.pdf")
    p.add_argument("--load", metavar="APPOINTMENT", help="add a DOCK:LOAD barcode for this appointment")

    p = sub.add_parser("export", help="reconciliation and Record of Mailings exports (read-only)")
    _common(p)
    p.add_argument("what", choices=["reconciliation", "loads", "mailing-log"])
    p.add_argument("--outage", help="only what was scanned during this outage (its id or declaration time)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from agent import __version__

        print(f"dock-agent {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "state_dir") and args.state_dir is None:
        args.state_dir = Path(_default_state_dir())
    if hasattr(args, "config") and args.config is None:
        args.config = Path(_default_config())
    handler = {
        "run": cmd_run, "check-config": cmd_check_config, "parse": cmd_parse, "scans": cmd_scans,
        "status": cmd_status, "mailing-log": cmd_mailing_log, "export": cmd_export,
        "command-sheet": cmd_command_sheet, "decode": cmd_decode, "sample": cmd_sample,
        **dict.fromkeys(WORKFLOW_COMMANDS, cmd_workflow),
    }[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        # journald adds its own timestamp; a terminal user still wants one.
        format="%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load(path: Path):  # type: ignore[no-untyped-def]
    from agent.settings import load_settings

    return load_settings(path)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError

    try:
        settings = _load(args.config)
        scanners = list(settings.scanners)
        if args.scanner:
            from drivers.uri import parse_scanner_uri

            scanners = [parse_scanner_uri(u, i) for i, u in enumerate(args.scanner)]
    except ConfigError as e:
        print(f"dock-agent: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or settings.log.level)
    from agent.app import run

    return run(settings, args.state_dir, scanners, broker=args.broker, http=args.http)


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from agent.settings import config_hash

    try:
        settings = _load(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.config}: ok (device {settings.site.device_id}, facility {settings.site.facility}, "
          f"{len(settings.scanners)} scanner(s), config hash {config_hash(settings)})")
    return 0


def cmd_parse(args: argparse.Namespace) -> int:
    from agent.barcode import Rejection, parse

    codes = args.codes or [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    bad = 0
    for code in codes:
        result = parse(code)
        if isinstance(result, Rejection):
            bad += 1
            obj: dict[str, object] = {"input": code, "ok": False, "kind": result.kind, "reason": result.reason}
        else:
            obj = {"input": code, "ok": True, "kind": result.kind, "normalized": result.normalized,
                   "fields": dict(result.fields)}
            if result.symbology:
                obj["symbology"] = result.symbology
        if args.json:
            print(json.dumps(obj))
        elif obj["ok"]:
            fields = " ".join(f"{k}={v}" for k, v in result.fields.items())  # type: ignore[union-attr]
            print(f"ok       {obj['kind']:8} {obj['normalized']}  {fields}")
        else:
            print(f"invalid  {code!r}: {obj['reason']}")
    return 1 if bad else 0


def cmd_scans(args: argparse.Namespace) -> int:
    from agent.queries import ReadOnlyStore

    with ReadOnlyStore.open_or_report(args.state_dir) as ro:
        if ro is None:
            return 1
        for scan in ro.scans(limit=args.limit, undelivered=args.undelivered):
            if args.json:
                print(json.dumps(scan))
            else:
                print(f"{scan['scanned_at']:24} #{scan['seq']:<7} {scan['scanner']:10} {scan['barcode']:28} "
                      f"{scan['kind']:8} {scan['verdict']:11} {'delivered' if scan['delivered_at'] else ''}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.queries import gather_status, render_status

    status = gather_status(args.state_dir)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(render_status(status))
    return {"ok": 0, "degraded": 1, "not running": 3}.get(str(status["state"]), 1)


WORKFLOW_COMMANDS = ("load", "form", "placard", "reject", "ticket", "operator", "void", "outage", "command")


def _control_dir(state_dir: Path) -> Path:
    from agent.status import runtime_dir

    return runtime_dir(state_dir)


def _request(args: argparse.Namespace, body: dict[str, object]) -> int:
    from agent.control import call

    body["scanner"] = getattr(args, "scanner", None)
    try:
        reply = call(_control_dir(args.state_dir), body)
    except ConnectionError as e:
        print(f"dock-agent: {e}; start it with `dock-agent run` (or `systemctl start dock-agent`)", file=sys.stderr)
        return 3
    if getattr(args, "json", False):
        print(json.dumps(reply))
    elif reply.get("ok"):
        print(f"{reply.get('display', 'ok')}: {reply.get('reason', reply.get('entry', ''))}")
    else:
        print(f"dock-agent: {reply.get('display', '')} {reply.get('reason') or reply.get('error')}".strip(),
              file=sys.stderr)
    return 0 if reply.get("ok") else 1


def cmd_workflow(args: argparse.Namespace) -> int:
    c = args.command
    if c == "outage":
        import getpass

        return _request(args, {"op": "outage", "kind": "outage" if args.kind == "national" else "allclear",
                               "by": f"shell ({getpass.getuser()})"})
    if c == "command":
        code = args.code.removeprefix("DOCK:")
        name, _, arg = code.partition(":")
        return _request(args, {"op": "command", "command": name, "arg": arg})
    if c == "load":
        if args.action == "open" and not args.appointment:
            print("dock-agent: load open needs the appointment", file=sys.stderr)
            return 2
        return _request(args, {"op": "command", "command": "LOAD" if args.action == "open" else "CLOSE",
                               "arg": args.appointment if args.action == "open" else ""})
    if c == "form":
        if args.action == "open" and not args.form_id:
            print("dock-agent: form open needs the form's id", file=sys.stderr)
            return 2
        return _request(args, {"op": "command", "command": "FORM8125" if args.action == "open" else "ENDFORM",
                               "arg": args.form_id if args.action == "open" else ""})
    arg = {"reject": "reason", "ticket": "ticket", "operator": "operator_id"}.get(c)
    return _request(args, {"op": "command", "command": c.upper(), "arg": getattr(args, arg) if arg else ""})


def cmd_mailing_log(args: argparse.Namespace) -> int:
    if args.log_action == "add":
        body: dict[str, object] = {"op": "mailing_log_add", "permit_holder": args.permit_holder,
                                   "total_pieces": args.pieces, "approx": args.approx, "total_postage": args.postage,
                                   "mailer_job_id": args.job, "einduction": args.einduction}
        if args.arrival:
            body["arrival_at"] = args.arrival
    else:
        body = {"op": "mailing_log_complete", "id": args.id, "entry_date": args.entry_date,
                "initials": args.initials, "transaction": args.transaction, "finalized": args.finalized}
    return _request(args, body)


def cmd_decode(args: argparse.Namespace) -> int:
    from drivers.camera_decode import run_decode_cli

    return run_decode_cli(args.images, as_json=args.json, roi=args.roi, formats=args.formats)


def cmd_sample(args: argparse.Namespace) -> int:
    """Decode the sample's image, judge it (agent.samples), keep a copy of the image, ask the agent to record it.

    Exit status: 0 eligible or needing human confirmation, 1 ineligible, 2 bad input, 3 not recorded (the agent is
    not running; the verdict is still printed).
    """
    import datetime as dt
    import hashlib

    from agent.samples import PROMOTIONS_DIR, PromotionError, Read, find_promotion, verify

    try:
        promotion = find_promotion(args.promotion, args.promotions_dir or PROMOTIONS_DIR)
        mailing_date = dt.date.fromisoformat(args.mailing_date)
    except (PromotionError, ValueError) as e:
        print(f"dock-agent: {e}", file=sys.stderr)
        return 2
    import cv2

    from drivers.camera_decode import decode_frame

    if args.camera:
        cap = cv2.VideoCapture(int(args.camera) if args.camera.isdigit() else args.camera)
        ok, image = cap.read()
        cap.release()
        if not ok:
            print(f"dock-agent: no frame from {args.camera}", file=sys.stderr)
            return 2
    else:
        image = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if image is None:
            print(f"dock-agent: cannot read the image {args.image}", file=sys.stderr)
            return 2
    reads = [Read(r.symbology, r.raw) for r in decode_frame(image)]
    verdict = verify(reads, promotion, mailing_date=mailing_date, mail_class=args.mail_class, shape=args.shape,
                     pvds=args.pvds)
    result = verdict.as_dict()
    # Keep the evidence: a compressed copy of the image, named by its hash, beside the database.
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    digest = hashlib.sha256(jpeg.tobytes()).hexdigest() if ok else None
    path = None
    if ok:
        folder = args.state_dir / "samples"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{digest}.jpg"
            path.write_bytes(jpeg.tobytes())
        except OSError as e:
            print(f"dock-agent: sample image not kept: {e}", file=sys.stderr)
            path = None
    retain = promotion.sample_retention_until.isoformat() if promotion.sample_retention_until else None
    from agent.control import call

    recorded = True
    try:
        reply = call(_control_dir(args.state_dir), {
            "op": "sample_record", "promotion": promotion.id, "statement_id": args.statement,
            "mailing_date": args.mailing_date, "mail_class": args.mail_class, "shape": args.shape, "result": result,
            "image_path": str(path) if path else None, "image_sha256": digest, "retain_until": retain})
        recorded = bool(reply.get("ok"))
    except ConnectionError:
        recorded = False
    if args.json:
        print(json.dumps({**result, "recorded": recorded, "image_sha256": digest, "retain_until": retain}))
    else:
        print(f"{verdict.verdict.upper()}  {promotion.title}")
        for c in verdict.checks:
            print(f"  {c.result:6} {c.rule:12} {c.reason}")
        if retain:
            print(f"  keep the sample until {retain}")
    if not recorded:
        print("dock-agent: the sample was judged but NOT recorded: the agent is not running", file=sys.stderr)
        return 3
    return 1 if verdict.verdict == "ineligible" else 0


def cmd_command_sheet(args: argparse.Namespace) -> int:
    from agent.command_sheet import commands, write

    try:
        write(args.out, args.load)
    except (ValueError, OSError) as e:
        print(f"dock-agent: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(commands(args.load))} command barcodes")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from agent import exports
    from agent.store import DB_NAME, connect

    path = args.state_dir / DB_NAME
    if not path.exists():
        print(f"dock-agent: no scan database in {args.state_dir}", file=sys.stderr)
        return 1
    conn = connect(path, readonly=True)
    try:
        if args.what == "reconciliation":
            try:
                rows = exports.reconciliation(conn, args.outage)
            except ValueError as e:
                print(f"dock-agent: {e}", file=sys.stderr)
                return 1
            columns = exports.RECONCILIATION_COLUMNS
        elif args.what == "loads":
            rows, columns = exports.loads(conn), ()
        else:
            rows, columns = exports.mailing_log(conn), exports.MAILING_LOG_COLUMNS
    finally:
        conn.close()
    if args.format == "json" or not columns:
        print(json.dumps(rows, indent=1))
    else:
        sys.stdout.write(exports.to_csv(rows, columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
