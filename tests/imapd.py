"""A real IMAP server for tests: Debian's dovecot-imapd, started in a temporary directory with a
config of its own (no system service), a passwd-file user, mail stored as an unprivileged user.

Installed when missing and running as root (CI is a fresh Debian); skipped otherwise."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOVECOT = "/usr/sbin/dovecot"


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    log: Path


def _install() -> None:
    if Path(DOVECOT).exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("dovecot-imapd is not installed (apt-get install dovecot-imapd)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "dovecot-imapd"],
        env=env,
        check=True,
        capture_output=True,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(root: Path, port: int, mail_user: pwd.struct_passwd, me: str) -> str:
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {me}
default_internal_group = {grp.getgrgid(pwd.getpwnam(me).pw_gid).gr_name}
default_login_user = {me}
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 50
}}
"""


@pytest.fixture
def imap_server() -> Iterator[ImapServer]:
    _install()
    root = Path(tempfile.mkdtemp(prefix="postroom-dovecot-"))
    root.chmod(0o755)
    # As root, mail belongs to an unprivileged user (dovecot refuses uid 0); otherwise it is ours.
    mail_user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    me = "dovenull" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    (root / "home").mkdir()
    os.chown(root / "home", mail_user.pw_uid, mail_user.pw_gid)
    for sub in ("run", "state"):
        (root / sub).mkdir()
    (root / "passwd").write_text("bounces:{PLAIN}bounce-box-secret::::::\n")
    port = _free_port()
    (root / "dovecot.conf").write_text(_config(root, port, mail_user, me))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ImapServer("127.0.0.1", port, "bounces", "bounce-box-secret", root / "dovecot.log")
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = server.log.read_text() if server.log.exists() else ""
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"dovecot did not start: {err}\n{log}") from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
        shutil.rmtree(root, ignore_errors=True)
