"""Broker set-up and dock provisioning, so that nobody edits broker files by hand.

``dock-scorer broker init --dir DIR`` creates the site CA, the broker's server certificate, the scorer's
identity, the ACL and the Mosquitto configuration from ``config/mosquitto/mosquitto.conf.template``.
``dock-scorer provision DEVICE --site FACILITY --dir DIR`` issues a dock's client certificate and/or password,
appends its ACL block, and writes a configuration snippet for the dock. Certificates are made with the
``openssl`` command; passwords are hashed with ``mosquitto_passwd``. A running broker picks up the new ACL and
password files on SIGHUP (``dock-scorer provision --reload-pid PID``).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "config" / "mosquitto"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProvisionError(Exception):
    """A provisioning step failed; the message says which."""


@dataclass(frozen=True)
class BrokerLayout:
    """Where everything of one broker lives."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.root / "acl"

    @property
    def acl_d(self) -> Path:
        return self.root / "acl.d"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def clients(self) -> Path:
        return self.root / "clients"


def _run(*cmd: str, env: dict[str, str] | None = None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise ProvisionError(f"{cmd[0]} failed: {res.stderr.strip()[-500:]}")


def make_ca(pki: Path, days: int = 3650, name: str = "dock-agent site CA") -> None:
    pki.mkdir(parents=True, exist_ok=True)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", f"/CN={name}",
         "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    os.chmod(pki / "ca.key", 0o600)


def issue_cert(pki: Path, out_key: Path, out_crt: Path, cn: str, *, days: int = 825, san: str | None = None,
               ca_key: Path | None = None, ca_crt: Path | None = None, faketime: str | None = None) -> None:
    """A key and certificate with common name ``cn``, signed by the site CA (or the given one).

    ``faketime`` (tests only) signs under libfaketime with that offset, e.g. ``"-10d"``.
    """
    out_key.parent.mkdir(parents=True, exist_ok=True)
    csr = out_crt.with_suffix(".csr")
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(out_key),
         "-out", str(csr))
    os.chmod(out_key, 0o600)
    cmd = ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt or pki / "ca.crt"),
           "-CAkey", str(ca_key or pki / "ca.key"), "-CAcreateserial", "-days", str(days), "-out", str(out_crt)]
    ext = None
    if san:
        ext = out_crt.with_suffix(".ext")
        ext.write_text(f"subjectAltName={san}\n")
        cmd += ["-extfile", str(ext)]
    if faketime:  # tests: a certificate that is already expired, e.g. faketime="-10d", days=1
        cmd = ["faketime", "-f", faketime, *cmd]  # -f: a libfaketime offset ("-10d"), not a `date -d` string
    _run(*cmd)
    csr.unlink(missing_ok=True)
    if ext:
        ext.unlink(missing_ok=True)


def add_password(passwd: Path, user: str, password: str) -> None:
    if not passwd.exists():
        passwd.touch(mode=0o600)
    _run("mosquitto_passwd", "-b", str(passwd), user, password)


def dock_acl(device: str, site: str) -> str:
    """The ACL block that confines one dock to its own topics."""
    base = f"docks/{site}/{device}"
    return "\n".join([
        f"# dock {device} at {site}",
        f"user {device}",
        f"topic write {base}/events",
        f"topic write {base}/birth",
        f"topic write {base}/state",
        f"topic write {base}/status",
        f"topic write {base}/query",
        f"topic read {base}/acks",
        f"topic read {base}/answers",
        "topic read hq/scorers/+/state",
        "topic read hq/national/#",
        f"topic read hq/sites/{site}/#",
        "",
    ])


def write_acl(layout: BrokerLayout) -> None:
    parts = [(TEMPLATE / "acl.scorer").read_text()]
    for f in sorted(layout.acl_d.glob("*.acl")):
        parts.append(f.read_text())
    tmp = layout.acl.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, layout.acl)


def _give_to_broker_user(layout: BrokerLayout) -> None:
    """Mosquitto started as root drops to user 'mosquitto': it must be able to read its files."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in [layout.root, layout.pki, layout.data, layout.acl, layout.passwd, layout.conf,
                 layout.pki / "server.key", layout.pki / "server.crt", layout.pki / "ca.crt"]:
        if path.exists():
            os.chown(path, pw.pw_uid, pw.pw_gid)


def init_broker(root: Path, *, host: str = "127.0.0.1", mtls_port: int = 8883, password_port: int = 8884,
                max_packet: int = 262144, scorer_password: str | None = None) -> BrokerLayout:
    """Create the CA, the broker's certificate, the scorer identity, the ACL and mosquitto.conf."""
    layout = BrokerLayout(root)
    for d in (layout.root, layout.data, layout.acl_d, layout.clients):
        d.mkdir(parents=True, exist_ok=True)
    if not (layout.pki / "ca.crt").exists():
        make_ca(layout.pki)
    san = f"IP:{host}" if re.match(r"^[\d.]+$", host) else f"DNS:{host}"
    issue_cert(layout.pki, layout.pki / "server.key", layout.pki / "server.crt", host,
               san=f"{san},DNS:localhost,IP:127.0.0.1")
    scorer_dir = layout.clients / "scorer"
    issue_cert(layout.pki, scorer_dir / "client.key", scorer_dir / "client.crt", "scorer")
    password = scorer_password or secrets.token_urlsafe(24)
    add_password(layout.passwd, "scorer", password)
    (scorer_dir / "mqtt-password").write_text(password + "\n")
    os.chmod(scorer_dir / "mqtt-password", 0o600)
    shutil.copy(layout.pki / "ca.crt", scorer_dir / "ca.crt")
    write_acl(layout)
    conf = (TEMPLATE / "mosquitto.conf.template").read_text().format(
        host=host, mtls_port=mtls_port, password_port=password_port, pki=layout.pki, data=layout.data,
        acl=layout.acl, passwd=layout.passwd, max_packet=max_packet,
    )
    layout.conf.write_text(conf)
    _give_to_broker_user(layout)
    return layout


@dataclass(frozen=True)
class Provisioned:
    device: str
    directory: Path
    password: str | None
    snippet: str


def provision(root: Path, device: str, site: str, *, password: bool = True, certificate: bool = True,
              broker_url: str = "mqtts://BROKER:8883", days: int = 825) -> Provisioned:
    """Everything a new dock needs: identity, ACL block and a configuration snippet.

    Raises:
        ProvisionError: bad ids, no broker initialised in ``root``, or a failed openssl/mosquitto_passwd.
    """
    if not _ID.match(device) or not _ID.match(site):
        raise ProvisionError("device and site ids: letters, digits, '.', '_', '-' (at most 64)")
    if device == "scorer":
        raise ProvisionError("'scorer' is reserved for the headquarters identity")
    layout = BrokerLayout(root)
    if not (layout.pki / "ca.crt").exists():
        raise ProvisionError(f"no broker in {root}: run `dock-scorer broker init --dir {root}` first")
    out = layout.clients / device
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(layout.pki / "ca.crt", out / "ca.crt")
    if certificate:
        issue_cert(layout.pki, out / "mqtt-client.key", out / "client.crt", device, days=days)
    secret = None
    if password:
        secret = secrets.token_urlsafe(24)
        add_password(layout.passwd, device, secret)
        (out / "mqtt-password").write_text(secret + "\n")
        os.chmod(out / "mqtt-password", 0o600)
    (layout.acl_d / f"{device}.acl").write_text(dock_acl(device, site))
    write_acl(layout)
    _give_to_broker_user(layout)
    lines = [
        "# Add to /etc/dock-agent/site.toml; copy the files named below to /etc/dock-agent/ and",
        "# /etc/dock-agent/credentials/ (the private key and password are credentials: LoadCredential=).",
        "[site]",
        f'device_id = "{device}"',
        f'facility = "{site}"',
        "",
        "[sync]",
        "enabled = true",
        f'broker = "{broker_url}"',
        'ca_file = "/etc/dock-agent/ca.crt"',
    ]
    if certificate:
        lines.append('client_cert_file = "/etc/dock-agent/client.crt"   # key: credential mqtt-client.key')
    if password:
        lines.append(f'username = "{device}"                              # password: credential mqtt-password')
    snippet = "\n".join(lines) + "\n"
    (out / "site-sync.toml").write_text(snippet)
    return Provisioned(device, out, secret, snippet)
