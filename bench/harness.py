"""Processes, ports and the two sinks: what every benchmark scenario stands on.

Every process the harness starts is registered and killed at exit (its own session, so its
children go too); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
SMTP_SINK = "/usr/sbin/smtp-sink"

_children: list[subprocess.Popen[bytes]] = []
_RECORD_END = re.compile(rb"[\r\n]")
_MESG = re.compile(rb"\bmesg=(\d+)")


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session, registered for cleanup at exit."""
    out: int | IO[bytes] | None = stdout
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop one process we started (its process group), politely first, then by force."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_children)):
        stop(proc, timeout=5.0)


atexit.register(stop_all)


def _on_signal(signum: int, _: object) -> None:
    stop_all()
    sys.exit(128 + signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    """Wait until something listens on 127.0.0.1:port (or fail if the process died)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise TimeoutError(f"nothing listens on port {port} after {within} s")


def rss_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time of processes (all their threads) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Counts:
    messages: int
    recipients: int | None
    """None when the sink cannot count recipients (smtp-sink without a dump file)."""


@dataclass(frozen=True, slots=True)
class Reached:
    """When a sink's counter crossed the targets, on this machine's monotonic clock."""

    first: float
    """The first message above the baseline."""
    last: float
    """The counter reached the target."""
    counts: Counts


class Sink(Protocol):
    name: str
    port: int

    async def counts(self) -> Counts: ...

    async def stop(self) -> None: ...


async def wait_for(
    sink: Sink,
    base: Counts,
    *,
    messages: int | Callable[[], int] | None = None,
    recipients: int | None = None,
    within: float,
    stall: float = 150.0,
    interval: float = 0.005,
    alive: Callable[[], subprocess.Popen[bytes] | None] | None = None,
) -> Reached:
    """Poll `sink` until it counted `messages` (or `recipients`) more than `base`.

    `messages` may be a function, asked on every poll (the target can shrink when some POSTs
    failed). Fails after `within` seconds, or `stall` seconds without a new message (more than
    Postroom's first retry delay), or when `alive` names a process that exited.
    """
    deadline = time.monotonic() + within
    first: float | None = None
    seen, progressed = (-1, -1), time.monotonic()
    while True:
        now = time.monotonic()
        counts = await sink.counts()
        got_m = counts.messages - base.messages
        got_r = (counts.recipients or 0) - (base.recipients or 0)
        if first is None and got_m > 0:
            first = now
        want = messages() if callable(messages) else messages
        if (want is None or got_m >= want) and (recipients is None or got_r >= recipients):
            return Reached(first if first is not None else now, now, counts)
        if (got_m, got_r) != seen:
            seen, progressed = (got_m, got_r), now
        if now > deadline or now - progressed > stall:
            why = f"after {within:.0f} s" if now > deadline else f"none for {stall:.0f} s"
            raise TimeoutError(
                f"{sink.name}: {got_m} messages / {got_r} recipients ({why}), "
                f"wanted {want} / {recipients}"
            )
        dead = alive() if alive is not None else None
        if dead is not None:
            raise RuntimeError(f"{dead.args!r} exited with {dead.returncode}")
        await asyncio.sleep(interval)


class AiosmtpdSink:
    """bench/sink.py in its own process; counters over its control port."""

    name = "aiosmtpd"

    def __init__(self, port: int, control_port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.control_port = control_port
        self.proc = proc
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    async def start(cls, *, uvloop: bool = True) -> AiosmtpdSink:
        port, control = free_port(), free_port()
        argv = [PYTHON, str(BENCH / "sink.py"), "--port", str(port), "--control-port", str(control)]
        if uvloop:
            argv.append("--uvloop")
        proc = spawn(argv, log=WORK / "logs" / "aiosmtpd-sink.log")
        await wait_port(control, proc)
        await wait_port(port, proc)
        return cls(port, control, proc)

    async def counts(self) -> Counts:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                "127.0.0.1", self.control_port
            )
        self._writer.write(b"STATS\n")
        line = await asyncio.wait_for(self._reader.readline(), 10)
        data: dict[str, Any] = json.loads(line)
        return Counts(int(data["messages"]), int(data["recipients"]))

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        stop(self.proc)


class PostfixSink:
    """postfix's smtp-sink: `-c` prints running counters (`... mesg=N`) as messages end.

    With `dump=True` every transaction is also appended to a file on /dev/shm, whose
    `X-Rcpt-Args:` lines count the recipients (slower: for the group scenario only).
    """

    name = "smtp-sink"

    def __init__(
        self, port: int, proc: subprocess.Popen[bytes], out: Path, dump: Path | None
    ) -> None:
        self.port = port
        self.proc = proc
        self._out = out
        self._offset = 0
        self._tail = b""
        self._messages = 0
        self._dump = dump
        self._dump_offset = 0
        self._dump_partial = b""
        self._recipients = 0

    @classmethod
    async def start(cls, *, dump: bool = False) -> PostfixSink:
        port = free_port()
        out = WORK / "logs" / f"smtp-sink-{port}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"")
        argv = [SMTP_SINK, "-c", "-m", "512"]
        dump_file: Path | None = None
        if dump:
            folder = Path("/dev/shm") / f"postroom-bench-{os.getpid()}-{port}"
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            dump_file = folder / "dump"
            argv += ["-D", str(dump_file)]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [f"127.0.0.1:{port}", "1024"]
        proc = spawn(argv, log=out)
        await wait_port(port, proc)
        return cls(port, proc, out, dump_file)

    async def counts(self) -> Counts:
        with self._out.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        if chunk:
            self._offset += len(chunk)
            *complete, self._tail = _RECORD_END.split(self._tail + chunk)
            for record in reversed(complete):
                found = _MESG.search(record)
                if found:
                    self._messages = int(found.group(1))
                    break
        return Counts(self._messages, self._count_recipients() if self._dump else None)

    def _count_recipients(self) -> int:
        assert self._dump is not None
        if not self._dump.exists():
            return 0
        with self._dump.open("rb") as file:
            file.seek(self._dump_offset)
            chunk = file.read()
        if chunk:
            self._dump_offset += len(chunk)
            data = self._dump_partial + chunk
            complete, _, self._dump_partial = data.rpartition(b"\n")
            self._recipients += (b"\n" + complete).count(b"\nX-Rcpt-Args:")
        return self._recipients

    async def stop(self) -> None:
        stop(self.proc)
        if self._dump is not None:
            with contextlib.suppress(OSError):
                self._dump.unlink()
                self._dump.parent.rmdir()


async def run_json(argv: Sequence[str], within: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run a reference client to completion and parse its one JSON line."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
