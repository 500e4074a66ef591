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
                        "serial:///dev/ttyACM0?baud=115200&good=06&bad=15, replay:///path/file.txt, replay:-")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None,
                   help="override the configured log level")
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
        "status": cmd_status,
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

    return run(settings, args.state_dir, scanners, broker=args.broker)


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


if __name__ == "__main__":
    sys.exit(main())
