"""``dock-scorer``: the central service at headquarters (ingest, acknowledgements, provisioning)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

DEFAULT_DB = "/var/lib/dock-scorer/scorer.db"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("DOCK_SCORER_DB", DEFAULT_DB), metavar="PATH|URL",
                   help="scorer database: a SQLite file (PATH or sqlite:///PATH) or PostgreSQL "
                        f"(postgresql://[USER@]HOST[:PORT]/DBNAME) (default: $DOCK_SCORER_DB or {DEFAULT_DB})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dock-scorer", description="Headquarters: ingest dock scans, acknowledge "
                                     "them after commit, provision docks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="ingest from the broker (shared subscription) until SIGTERM")
    _db_arg(p)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtts://host:port (or mqtt:// for a lab broker)")
    p.add_argument("--instance", default=os.uname().nodename.split(".")[0], help="this instance's id")
    p.add_argument("--ca-file", help="CA that signs the broker's certificate")
    p.add_argument("--cert-file", help="client certificate (CN scorer) for mutual TLS")
    p.add_argument("--key-file", help="its private key")
    p.add_argument("--username", help="MQTT user name (default with a password: scorer)")
    p.add_argument("--password-file", help="file holding the MQTT password")

    p = sub.add_parser("ingest", help="ingest events or batches from a JSON-lines file (same checks and dedup)")
    _db_arg(p)
    p.add_argument("file", help="JSON-lines file, '-' for stdin")

    p = sub.add_parser("scans", help="list what was stored")
    _db_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--device", help="only this dock")
    p.add_argument("--limit", type=int, default=0)

    p = sub.add_parser("docks", help="each dock's presence: state, boot, last status (backlog)")
    _db_arg(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("import", help="import reference data (CSV): edoc, mailers, facilities, mdf, zones")
    _db_arg(p)
    p.add_argument("kind", choices=["edoc", "mailers", "facilities", "mdf", "zones"])
    p.add_argument("file", help="CSV file with a header row")
    p.add_argument("--replace", action="store_true", help="replace the whole table instead of upserting rows")

    for name, text in (("scorecard", "the Table B-3 scorecard of a CRID for a period"),
                       ("errors", "each error of a CRID for a period, with evidence and assessment")):
        p = sub.add_parser(name, help=text)
        _db_arg(p)
        p.add_argument("--crid", required=True)
        p.add_argument("--owner", help="only containers whose eDoc names this mail owner CRID")
        p.add_argument("--month", help="YYYY-MM (instead of --from/--to)")
        p.add_argument("--from", dest="start", help="first local date YYYY-MM-DD (inclusive)")
        p.add_argument("--to", dest="end", help="last local date YYYY-MM-DD (inclusive)")
        p.add_argument("--as-of", help="evaluate pending rules as of this RFC 3339 time (default: now)")
        p.add_argument("--grace-days", type=float, default=10.0, help="continuous-MID grace (default 10)")
        p.add_argument("--continuation-hours", type=float, default=48.0,
                       help="contingency continuation after an all-clear (default 48)")
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true")
        fmt.add_argument("--csv", action="store_true")

    p = sub.add_parser("outage", help="declare a national outage or its all-clear (recorded, and published to "
                                      "the docks when --broker is given)")
    _db_arg(p)
    p.add_argument("action", choices=["start", "end"])
    p.add_argument("--id", help="outage id (default: national-<time>)")
    p.add_argument("--at", help="RFC 3339 time (default: now)")
    p.add_argument("--by", default=os.environ.get("USER", "cli"), help="who declares it (audit)")

    p = sub.add_parser("ticket", help="Help Desk tickets of local outages")
    _db_arg(p)
    p.add_argument("action", choices=["resolve"])
    p.add_argument("ticket")
    p.add_argument("--at", help="RFC 3339 time (default: now)")
    p.add_argument("--by", default=os.environ.get("USER", "cli"))

    p = sub.add_parser("slice", help="reference slices for docks: build to files, or publish (retained) to the broker")
    ssub = p.add_subparsers(dest="slice_command", metavar="ACTION", required=True)
    for name, text in (("publish", ("build each facility's slice and publish it as retained messages, then clear "
                                    "the older versions' chunks")),
                       ("build", "build each facility's slice as files (the messages, for tests or manual transfer)")):
        s = ssub.add_parser(name, help=text)
        _db_arg(s)
        s.add_argument("--site", required=True, action="append", metavar="FACILITY",
                       help="facility id (repeat for several; the database is read once)")
        s.add_argument("--as-of", help="select as of this RFC 3339 time (default: now)")
        s.add_argument("--max-packet", type=int, metavar="BYTES",
                       help="largest chunk packet (default: the broker's Maximum Packet Size, else 262144; never "
                            "above the docks' 524288)")
        if name == "build":
            s.add_argument("--out", required=True, type=Path, help="directory (one subdirectory per facility)")
        else:
            s.add_argument("--broker", required=True, metavar="URL", help="mqtts://host:port")
            s.add_argument("--ca-file", help="CA that signs the broker's certificate")
            s.add_argument("--cert-file", help="client certificate (CN scorer) for mutual TLS")
            s.add_argument("--key-file", help="its private key")
            s.add_argument("--username", help="MQTT user name (default with a password: scorer)")
            s.add_argument("--password-file", help="file holding the MQTT password")

    p = sub.add_parser("web", help="serve the scorecard site (login required)")
    _db_arg(p)
    p.add_argument("--listen", default="127.0.0.1:8091", metavar="HOST:PORT")
    p.add_argument("--users", type=Path, default=Path(os.environ.get("DOCK_SCORER_USERS", "/etc/dock-scorer/users")),
                   help="users file (dock-scorer user add)")

    p = sub.add_parser("user", help="scorecard site users")
    p.add_argument("action", choices=["add"])
    p.add_argument("name")
    p.add_argument("--users", type=Path, default=Path(os.environ.get("DOCK_SCORER_USERS", "/etc/dock-scorer/users")))
    p.add_argument("--password-file", type=Path, help="read the password from this file (default: stdin)")

    p = sub.add_parser("broker", help="broker set-up")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    b = bsub.add_parser("init", help="CA, server certificate, scorer identity, ACL, mosquitto.conf")
    b.add_argument("--dir", required=True, type=Path)
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--mtls-port", type=int, default=8883)
    b.add_argument("--password-port", type=int, default=8884)
    b.add_argument("--max-packet", type=int, default=262144)

    p = sub.add_parser("provision", help="identity, ACL and configuration snippet for a new dock")
    p.add_argument("device", metavar="DEVICE_ID")
    p.add_argument("--site", required=True, metavar="FACILITY")
    p.add_argument("--dir", required=True, type=Path, help="the broker directory of `broker init`")
    p.add_argument("--broker-url", default="mqtts://BROKER:8883", help="URL written into the snippet")
    p.add_argument("--no-password", action="store_true", help="certificate only")
    p.add_argument("--no-certificate", action="store_true", help="password only")
    p.add_argument("--reload-pid", type=int, help="send SIGHUP to this mosquitto so it reloads ACL and passwords")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"run": cmd_run, "ingest": cmd_ingest, "scans": cmd_scans, "docks": cmd_docks, "broker": cmd_broker,
            "provision": cmd_provision, "import": cmd_import, "scorecard": cmd_scorecard, "errors": cmd_scorecard,
            "outage": cmd_outage, "ticket": cmd_ticket, "slice": cmd_slice, "web": cmd_web,
            "user": cmd_user}[args.command](args)


def _now() -> str:
    import time

    from agent.clock import rfc3339

    return rfc3339(time.time_ns())


def _time_arg(text: str | None, what: str) -> str:
    from agent.clock import parse_rfc3339

    if text is None:
        return _now()
    try:
        return parse_rfc3339(text, what).isoformat().replace("+00:00", "Z")
    except ValueError as e:
        raise SystemExit(f"dock-scorer: {e}") from None


def cmd_web(args: argparse.Namespace) -> int:
    from scorer.web import ScorerWeb, load_users

    if not load_users(args.users):
        print(f"dock-scorer: no users in {args.users}: add one with `dock-scorer user add NAME --users {args.users}`",
              file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")
    site = ScorerWeb(args.db, args.users, host.strip("[]"), int(port))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=site.stop).start())
    try:
        site.serve()
    except KeyboardInterrupt:
        site.stop()
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from scorer.web import add_user

    password = (args.password_file.read_text() if args.password_file else sys.stdin.readline()).strip()
    if len(password) < 8:
        print("dock-scorer: a password needs at least 8 characters", file=sys.stderr)
        return 1
    args.users.parent.mkdir(parents=True, exist_ok=True)
    add_user(args.users, args.name, password)
    print(f"user {args.name} saved in {args.users}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB
    from scorer.reference import ImportError_, read_csv

    try:
        parsed = read_csv(args.kind, args.file)
    except ImportError_ as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"dock-scorer: {args.file}: nothing imported ({len(e.problems)} problem(s))", file=sys.stderr)
        return 1
    db = ScorerDB.open(args.db)
    try:
        n = db.import_reference(args.kind, parsed.rows, replace=args.replace, actor=os.environ.get("USER", "cli"))
    except ValueError as e:
        print(f"dock-scorer: {args.file}: nothing imported: {e}", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(f"imported {n} {args.kind} rows from {args.file}")
    return 0


def cmd_scorecard(args: argparse.Namespace) -> int:
    import datetime as dt

    from scorer import scorecard
    from scorer.db import ScorerDB

    if args.month:
        start, end = scorecard.month_bounds(args.month)
    elif args.start and args.end:
        start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    else:
        print("dock-scorer: give --month YYYY-MM or both --from and --to", file=sys.stderr)
        return 2
    as_of = dt.datetime.fromisoformat(_time_arg(args.as_of, "--as-of").replace("Z", "+00:00"))
    settings = scorecard.Settings(grace=dt.timedelta(days=args.grace_days),
                                  continuation=dt.timedelta(hours=args.continuation_hours))
    db = ScorerDB.open(args.db)
    try:
        card, errors = scorecard.compute(db, args.crid, start, end, as_of=as_of, owner=args.owner,
                                         settings=settings)
    finally:
        db.close()
    if args.command == "errors":
        if args.csv:
            sys.stdout.write(scorecard.errors_csv(errors))
        elif args.json:
            for e in errors:
                print(json.dumps(e))
        else:
            for e in errors:
                print(f"{e['rule']:22} {e['imcb']} {e['site']:10} {e['local_date']} "
                      f"{'assessed $' + format(e['assessment_usd'], '.2f') if e['assessed'] else 'free'}")
        return 0
    if args.json:
        print(json.dumps(card, indent=1))
    elif args.csv:
        sys.stdout.write(scorecard.scorecard_csv(card))
    else:
        print(f"CRID {card['crid']}  {card['from']} .. {card['to']}  {card['containers']} containers"
              f" ({card['pending']} pending)")
        for rule in ("undocumented", "payment", "duplicate", "misshipped", "entry_point_discount", "zone"):
            r = card[rule]
            print(f"  {rule:22} {r['errors']:6} errors  {r['rate'] * 100:8.3f} %  (threshold {r['threshold'] * 100:.2f} %)"
                  f"  {r['assessed']:6} assessed  ${r['assessment_usd']:,.2f}")
        print(f"  {'total':22} ${card['assessment_usd']:,.2f}")
    return 0


def cmd_outage(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB

    at = _time_arg(args.at, "--at")
    db = ScorerDB.open(args.db)
    try:
        if args.action == "start":
            oid = args.id or f"national-{at.replace(':', '').replace('-', '')[:15]}"
            db.outage_start(oid, at, args.by)
            print(f"national outage {oid} declared at {at}")
        else:
            oid = db.outage_end(at, args.by)
            if oid is None:
                print("dock-scorer: no national outage is open", file=sys.stderr)
                return 1
            print(f"all-clear for {oid} at {at}; contingency acceptance continues 48 hours")
    finally:
        db.close()
    return 0


def cmd_ticket(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB

    db = ScorerDB.open(args.db)
    try:
        db.resolve_ticket(args.ticket, _time_arg(args.at, "--at"), args.by)
    finally:
        db.close()
    print(f"ticket {args.ticket} resolved")
    return 0


def cmd_slice(args: argparse.Namespace) -> int:
    import datetime as dt

    from scorer import slices
    from scorer.db import ScorerDB

    as_of = dt.datetime.fromisoformat(_time_arg(args.as_of, "--as-of").replace("Z", "+00:00"))
    pub = None
    if args.slice_command == "publish":
        from sync.mqtt_link import BrokerURL

        try:
            url = BrokerURL.parse(args.broker)
        except ValueError as e:
            print(f"dock-scorer: {e}", file=sys.stderr)
            return 2
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        pub = slices.Publisher(slices.Target(
            url=url, client_id=f"scorer-slices-{os.getpid()}", ca_file=args.ca_file, cert_file=args.cert_file,
            key_file=args.key_file, username=args.username or ("scorer" if password else None), password=password))
    db = ScorerDB.open(args.db)
    try:
        if pub is not None:
            pub.connect()
        sel = slices.selector(db, as_of)
        for site in args.site:
            if pub is None:
                b = slices.build(db, sel, site, max_packet=args.max_packet or slices.wire.DEFAULT_MAX_PACKET,
                                 state="file")
                out = args.out / site if len(args.site) > 1 else args.out
                slices.write_files(b, out)
                print(f"{slices._summary(b)}; written to {out}")
            else:
                r = slices.publish(db, sel, site, pub, max_packet=args.max_packet)
                print(f"{slices._summary(r.built)}; published (chunks <= {r.max_packet} bytes), "
                      f"{r.cleared_chunks} old chunk(s) cleared")
    except (slices.SliceBuildError, slices.PublishError) as e:
        print(f"dock-scorer: slice {args.slice_command}: {e}", file=sys.stderr)
        return 1
    finally:
        if pub is not None:
            pub.close()
        db.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB
    from scorer.service import ScorerService
    from sync.mqtt_link import LinkConfig
    from sync.mqtt_link import BrokerURL

    try:
        url = BrokerURL.parse(args.broker)
    except ValueError as e:
        print(f"dock-scorer: {e}", file=sys.stderr)
        return 2
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    link = LinkConfig(url=url, client_id=f"scorer-{args.instance}", ca_file=args.ca_file, cert_file=args.cert_file,
                      key_file=args.key_file, username=args.username or ("scorer" if password else None),
                      password=password)
    db = ScorerDB.open(args.db)
    service = ScorerService(db, link, args.instance)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.start()
    try:
        stop.wait()
    finally:
        service.stop()
        st = service.ingestor.stats
        logging.getLogger("scorer").info("stopped: %d messages, %d new events, %d duplicates, rejected %s",
                                         st.messages, st.events_new, st.events_duplicate, dict(st.rejected))
        db.close()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB
    from scorer.ingest import Ingestor

    db = ScorerDB.open(args.db)
    ingestor = Ingestor(db, __import__("time").time_ns)
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with stream:
        lines, bad = ingestor.ingest_lines(stream, args.file)
    st = ingestor.stats
    print(f"{lines} lines: {st.events_new} new events, {st.events_duplicate} duplicates, {bad} rejected"
          + (f" ({dict(st.rejected)})" if bad else ""))
    db.close()
    return 1 if bad else 0


def cmd_scans(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB

    db = ScorerDB.open(args.db)
    for ev in db.events(args.device, args.limit):
        if args.json:
            print(json.dumps(ev))
        else:
            print(f"{ev['device_id']:16} #{ev['seq']:<8} {ev['scanned_at']:24} {ev.get('barcode', ev.get('command')):28} "
                  f"{ev.get('disposition', '')}")
    db.close()
    return 0


def cmd_docks(args: argparse.Namespace) -> int:
    from scorer.db import ScorerDB

    db = ScorerDB.open(args.db)
    for d in db.docks():
        if args.json:
            print(json.dumps(d))
        else:
            status = d.get("status") or {}
            print(f"{d['device_id']:16} {d['site']:12} {d['state'] or '?':8} boot {d['boot']}  last seen "
                  f"{d['last_seen']}  backlog {status.get('backlog', '?')}")
    db.close()
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from scorer.provision import ProvisionError, init_broker

    try:
        layout = init_broker(args.dir, host=args.host, mtls_port=args.mtls_port, password_port=args.password_port,
                             max_packet=args.max_packet)
    except ProvisionError as e:
        print(f"dock-scorer: {e}", file=sys.stderr)
        return 1
    print(f"broker ready in {layout.root}: start it with `mosquitto -c {layout.conf}`; "
          f"scorer identity in {layout.clients / 'scorer'}")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from scorer.provision import ProvisionError, provision

    try:
        result = provision(args.dir, args.device, args.site, password=not args.no_password,
                           certificate=not args.no_certificate, broker_url=args.broker_url)
    except ProvisionError as e:
        print(f"dock-scorer: {e}", file=sys.stderr)
        return 1
    if args.reload_pid:
        os.kill(args.reload_pid, signal.SIGHUP)
    print(f"provisioned {result.device}: files in {result.directory}")
    print(result.snippet, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
