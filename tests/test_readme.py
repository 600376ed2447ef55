"""The README's walkthrough works pasted in order (issue 13, point 9).

The ```sh blocks of the README's "Using it" section are read at run time and run in order, in one
bash, against a live `postroom serve` (a real process, on a free port, with its own data dir, on
SQLite or on a scratch PostgreSQL database next to POSTROOM_TEST_DATABASE_URL). Only what a reader
would change is changed: the service's address, the admin password `make run` printed, and the
mail servers' hosts and ports, which point at a local STARTTLS sink (the server process trusts its
CA through SSL_CERT_FILE, and may connect to loopback only, so no README step can reach an outside
host).

`curl` is wrapped by a shell function that runs the real curl and fails the step on a 4xx or 5xx
answer (or on an answer that says `"ok": false`) unless a comment of that command says it
"answers NNN". A failure names the block, the command, and what curl got back.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import PG_URL
from tests.reliability import crash
from tests.smtpd import SmtpServer, StartServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ADMIN_PASSWORD = "readme-admin-password"
README_ADDRESS = "http://127.0.0.1:8000"
PRINTED_PASSWORD = "THE-PRINTED-PASSWORD"
OUTSIDE_SMTP_HOSTS = ("smtp.ethereal.email", "smtp.office365.com")
SMTP_HOST_PORT = re.compile(r'"host": "(?P<host>[^"]+)", "port": (?P<port>\d+)')
CREDENTIALS = re.compile(r'"user": "(?P<user>[^"]+)", "pass": "(?P<pass>[^"]+)"')
EXPECTED_STATUS = re.compile(r"#[^\n]*\banswers (\d{3})\b")
MARK = "@@readme"


@dataclass
class Command:
    """One command of a block: its source lines, the comment lines before it, and the status
    its comments say it answers (None: any 2xx or 3xx)."""

    text: str
    comments: list[str] = field(default_factory=list)

    @property
    def expect(self) -> str | None:
        found = EXPECTED_STATUS.search("\n".join([*self.comments, self.text]))
        return found.group(1) if found else None


def walkthrough(markdown: str) -> list[str]:
    """The ```sh blocks of the "## Using it" section (up to the next level-2 heading)."""
    start = re.search(r"^## Using it\b.*$", markdown, re.MULTILINE)
    assert start is not None, 'the README has no "## Using it" section'
    rest = markdown[start.end() :]
    end = re.search(r"^## ", rest, re.MULTILINE)
    section = rest[: end.start()] if end else rest
    return re.findall(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def commands(block: str) -> list[Command]:
    """Split a block into commands: a command goes on while a quote is open or a line ends with
    a backslash; whole-line comments belong to the command after them."""
    found: list[Command] = []
    pending: list[str] = []
    comments: list[str] = []
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            if line.strip():
                comments.append(line)
            continue
        pending.append(line)
        if _complete("\n".join(pending)):
            found.append(Command("\n".join(pending), comments))
            pending, comments = [], []
    assert not pending, f"a command is not finished at the end of its block: {pending}"
    return found


PREAMBLE = r"""
set -o errexit -o pipefail
__expect=
curl() {
  # The real curl; a 4xx/5xx answer (or "ok": false) fails the step unless it is the expected one.
  local out status
  out=$(command curl --max-time 60 -w '\n%{http_code}' "$@") || {
    local code=$?; echo "curl exited with $code: curl $*" >&2; return $code; }
  status=${out##*$'\n'}
  out=${out%$'\n'*}
  local ok=1
  if [[ -n $__expect ]]; then
    [[ $status == "$__expect" ]] || ok=0
  elif (( status >= 400 )) || [[ $out == '{"ok":false'* ]]; then
    ok=0
  fi
  if (( ok )); then printf '%s\n' "$out"; return 0; fi
  printf '%s\n' "$out" >&2
  echo "HTTP $status${__expect:+ (the README says $__expect)}: curl $*" >&2
  return 1
}
"""


def script(blocks: list[list[Command]]) -> str:
    parts = [PREAMBLE]
    for b, block in enumerate(blocks, 1):
        for c, command in enumerate(block, 1):
            parts.append(f"echo '{MARK} {b} {c}'; __expect={command.expect or ''}")
            parts.append(command.text)
    parts.append(f"echo '{MARK} done'")
    return "\n".join(parts) + "\n"


def prepare(blocks: list[str], service_url: str, sink: SmtpServer) -> list[str]:
    """What a reader types in: this service's address, the admin password it was given, and
    their own mail servers (here: each outside SMTP host and its port become the sink's)."""
    text = "\n@@block\n".join(blocks)
    for placeholder in (README_ADDRESS, PRINTED_PASSWORD):
        assert placeholder in text, f"the README no longer says {placeholder}"
    text = text.replace(README_ADDRESS, service_url).replace(PRINTED_PASSWORD, ADMIN_PASSWORD)
    replaced: list[str] = []

    def swap(match: re.Match[str]) -> str:
        replaced.append(match.group("host"))
        return f'"host": "{sink.host}", "port": {sink.port}'

    text = SMTP_HOST_PORT.sub(swap, text)
    assert sorted(set(replaced)) == sorted(OUTSIDE_SMTP_HOSTS), (
        f"the README's SMTP hosts changed ({replaced}): point each at the sink in this test"
    )
    for host in OUTSIDE_SMTP_HOSTS:
        assert host not in text, f"{host} is still in a command: only `host, port` pairs move"
    return text.split("\n@@block\n")


@dataclass
class Failure:
    block: int
    index: int
    command: Command
    output: str


def failure(output: str, blocks: list[list[Command]]) -> Failure | None:
    """The command the run stopped in, and what it printed; None when every command ran."""
    pieces = re.split(rf"^{MARK} (\d+ \d+|done)$", output, flags=re.MULTILINE)
    if pieces[-2:-1] == ["done"]:
        return None
    if len(pieces) < 3:
        return Failure(0, 0, Command("(the preamble)"), output)
    b, c = (int(n) for n in pieces[-2].split())
    return Failure(b, c, blocks[b - 1][c - 1], pieces[-1])


@pytest.fixture
def service(
    tmp_path: Path, smtp_ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> Iterator[crash.Service]:
    """`postroom serve` with its dispatcher, trusting the sink's CA, reaching loopback only."""
    ca_file = tmp_path / "ca.pem"
    smtp_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with crash.place_for("readme", tmp_path, PG_URL) as place:
        service = crash.Service(
            place,
            "readme",
            dispatcher=True,
            admin_password=ADMIN_PASSWORD,
            egress_allow="127.0.0.0/8",
            log_level="INFO",
        )
        try:
            service.start()
            yield service
        finally:
            service.stop()
            crash.cleanup()


def sink_for(markdown: str, factory: StartServer) -> SmtpServer:
    """A STARTTLS sink that takes the credentials the README gives its SMTP servers."""
    users = {m["user"]: m["pass"] for m in CREDENTIALS.finditer(markdown)}
    return factory(tls="starttls", users=users)


def run(text: str, home: Path) -> tuple[int, str]:
    """Run the script in a clean bash (no profile, no POSTROOM_ variables) in the repository, as
    a reader who ran `make run` there would (a step may name a file of the repo): (exit status,
    output with stderr in its place). A run past 5 minutes is stopped; its output so far is kept."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-s"],
            input=text,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        output = err.output.decode() if isinstance(err.output, bytes) else err.output or ""
        return -9, output + "\n(stopped after 300 s)"
    return done.returncode, done.stdout


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.mark.processes
def test_walkthrough_runs_pasted_in_order(
    service: crash.Service, smtp_server_factory: StartServer, tmp_path: Path
) -> None:
    for tool in ("bash", "curl", "python3"):
        if shutil.which(tool) is None:
            (pytest.fail if in_ci() else pytest.skip)(f"running the README needs {tool}")
    markdown = README.read_text()
    sink = sink_for(markdown, smtp_server_factory)
    found = walkthrough(markdown)
    assert len(found) >= 5, "the walkthrough lost its blocks"
    blocks = [commands(block) for block in prepare(found, service.url, sink)]
    status, output = run(script(blocks), tmp_path)
    broke = failure(output, blocks)
    if broke is not None or status != 0:
        where = broke or Failure(0, 0, Command("(after the last command)"), output)
        log = service.process.output()[-3000:] if service.process else ""
        pytest.fail(
            f'README walkthrough: block {where.block} (of the ```sh blocks under "Using it"), '
            f"command {where.index} failed, bash exited {status}:\n"
            f"{where.command.text}\n--- what it printed:\n{where.output.strip()[-4000:]}\n"
            f"--- the server's log:\n{log}",
            pytrace=False,
        )
    check_outcome(service, sink, output)


def check_outcome(service: crash.Service, sink: SmtpServer, output: str) -> None:
    """What the walkthrough did really happened: the test mail reached the sink over TLS with the
    README's credentials, and the messages it queued were delivered (by the built-in server), but
    the one to a suppressed address and the one it cancelled only."""
    [test_mail] = [t for t in sink.transactions if "me@example.com" in t.rcpt_tos]
    assert test_mail.tls_version is not None
    assert test_mail.authenticated_as is not None
    assert '"passSet":true' in output
    auth = ("admin", ADMIN_PASSWORD)
    with httpx.Client(base_url=service.url, auth=auth, timeout=10) as client:
        for _ in range(100):
            page = client.get("/api/v1/messages", params={"limit": 100}).json()
            statuses = {item["status"] for item in page["items"]}
            if statuses <= {"sent", "suppressed", "cancelled"}:
                break
            time.sleep(0.1)
    assert len(page["items"]) >= 4, page
    assert statuses - {"cancelled"} == {"sent", "suppressed"}, page  # the README suppresses one
    outbox = service.place.data_dir / "outbox"
    assert any(outbox.glob("*.eml")), "the built-in server wrote no mail"


def test_blocks_split_into_commands_as_bash_reads_them() -> None:
    """The splitter that names a failing command: quotes and backslashes continue a command,
    comment lines go with the command after them, and "answers NNN" sets what it must answer."""
    markdown = (
        "## Two commands\n```sh\nmake run\n```\n## Using it\n\n```sh\n"
        "# a comment\nA=$(curl -s x \\\n  -d '{\"a\":\n  \"it''s\"}' | field id)\n\n"
        "# this one answers 422 on purpose\ncurl -s y; curl -s z   # two in one line\n"
        "```\n```text\nnot shell\n```\n## Configuration\n```sh\nleft out\n```\n"
    )
    [block] = walkthrough(markdown)
    first, second = commands(block)
    assert first.text == "A=$(curl -s x \\\n  -d '{\"a\":\n  \"it''s\"}' | field id)"
    assert first.comments == ["# a comment"]
    assert first.expect is None
    assert second.text == "curl -s y; curl -s z   # two in one line"
    assert second.expect == "422"
