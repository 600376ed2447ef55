"""py-spy, attached to a running Postroom process, and a summary of where its samples went.

The raw profile (collapsed stacks, one `frame;frame;... count` line per distinct stack) is kept
under bench/.work/profiles/; `speedscope` or `flamegraph.pl` open it. The summary counts, over
every sample of every thread: the leaf frame (self time), the Postroom functions on the stack
(inclusive time), and the leaf's component (SQLAlchemy, the email package, ...).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import REPO, VENV_BIN, spawn, stop

PY_SPY = VENV_BIN / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

COMPONENTS: list[tuple[str, str]] = [
    ("/app/", "postroom app/"),
    ("/sqlalchemy/", "SQLAlchemy"),
    ("/aiosqlite/", "aiosqlite + sqlite3"),
    ("/sqlite3/", "aiosqlite + sqlite3"),
    ("/asyncpg/", "asyncpg"),
    ("/email/", "email package (MIME)"),
    ("/aiosmtplib/", "aiosmtplib"),
    ("/pydantic", "pydantic"),
    ("/fastapi/", "FastAPI + Starlette"),
    ("/starlette/", "FastAPI + Starlette"),
    ("/uvicorn/", "uvicorn + httptools"),
    ("/httptools/", "uvicorn + httptools"),
    ("/h11/", "uvicorn + httptools"),
    ("/anyio/", "anyio"),
    ("/asyncio/", "asyncio"),
    ("/uvloop/", "asyncio"),
    ("/selectors.py", "asyncio"),
    ("/passlib/", "argon2 (passlib)"),
    ("/argon2/", "argon2 (passlib)"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/threading.py", "threads (queue, locks)"),
    ("/queue.py", "threads (queue, locks)"),
    ("/concurrent/", "threads (queue, locks)"),
    ("/uuid.py", "uuid"),
    ("/typing.py", "typing"),
    ("/enum.py", "enum"),
    ("/contextlib.py", "contextlib"),
    ("/dataclasses.py", "dataclasses"),
]


def component(file: str) -> str:
    for marker, name in COMPONENTS:
        if marker in file:
            return name
    return "other"


def short(file: str) -> str:
    """A path from the package on: app/delivery/compose.py, sqlalchemy/orm/session.py."""
    repo = str(REPO) + "/"
    if file.startswith(repo):
        return file[len(repo) :]
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


@dataclass(frozen=True, slots=True)
class Frame:
    func: str
    file: str
    line: int

    @property
    def label(self) -> str:
        return f"{self.func} ({short(self.file)}:{self.line})"


def parse_frame(text: str) -> Frame:
    found = _FRAME.match(text.strip())
    if found is None:
        return Frame(text.strip(), "", 0)
    return Frame(found["func"], found["file"], int(found["line"] or 0))


class Spy:
    """`py-spy record` on one process until stopped (SIGINT makes it write the profile).

    Every thread, idle samples included, native frames too: the leaf then says whether a thread
    computes, waits for work, sleeps in SQLite's busy handler or waits for fsync.
    """

    def __init__(self, pid: int, out: Path, *, rate: int = 50) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        argv += ["--threads", "--idle", "--native", "--full-filenames", "--output", str(out)]
        self.proc: subprocess.Popen[bytes] = spawn(argv, log=out.with_suffix(".log"))

    def stop(self) -> None:
        stop(self.proc, sig=signal.SIGINT, timeout=120.0)


STATES: list[tuple[str, tuple[str, ...]]] = [
    ("sleeping in SQLite's busy handler (lock wait)", ("usleep", "nanosleep")),
    ("fsync / fdatasync", ("fdatasync", "fsync")),
    (
        "idle: waiting for work or I/O",
        (
            "epoll_wait",
            "epoll_pwait",
            "select",
            "poll",
            "_queue_SimpleQueue_get",
            "Condition.wait",
            "pthread_cond_timedwait",
            "pthread_cond_wait",
            "PyThread_acquire_lock_timed",
            "sem_wait",
            "sem_timedwait",
            "futex",
            "accept",
        ),
    ),
]


def _is_python(frame: Frame) -> bool:
    return frame.file.endswith(".py") or "/bin/" in frame.file


def _state(frames: list[Frame]) -> str:
    """What the thread was doing, from its innermost frames (native ones included)."""
    for frame in reversed(frames[-8:]):
        for state, names in STATES:
            if any(name == frame.func or frame.func.endswith(name) for name in names):
                return state
        if _is_python(frame):
            break
    return "running (Python or C)"


def _thread_kind(header: str, frames: list[Frame]) -> str:
    files = " ".join(f.file for f in frames)
    if "aiosqlite/" in files:
        return "aiosqlite connection threads"
    if "MainThread" in header or "/app/cli.py" in files:
        return "main thread (event loop)"
    if "anyio/" in files:
        return "anyio worker threads (sync FastAPI dependencies)"
    if "concurrent/futures/thread.py" in files:
        return "executor threads (to_thread, DNS)"
    return "other threads"


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Per thread kind: what share of samples were running, idle, sleeping on a SQLite lock or in
    fsync. For the main thread's running samples: self time of the innermost Python frame, its
    component, and the Postroom functions on the stack (inclusive)."""
    threads: dict[str, Counter[str]] = {}
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    busy = 0
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        header, _, rest = stack.partition(";")
        frames = [parse_frame(part) for part in rest.split(";") if part]
        kind = _thread_kind(header, frames)
        state = _state(frames)
        threads.setdefault(kind, Counter())[state] += count
        if kind != "main thread (event loop)" or state != "running (Python or C)":
            continue
        python = [f for f in frames if _is_python(f)]
        if not python:
            continue
        busy += count
        last = python[-1]
        leaf[last.label] += count
        components[component(last.file)] += count
        names = {
            f"{f.func} ({short(f.file)})" for f in python if f.file.startswith(str(REPO) + "/app/")
        }
        for name in names:
            inclusive[name] += count

    def table(counter: Counter[str], limit: int, total: int) -> list[tuple[str, int, float]]:
        return [(k, v, 100.0 * v / total) for k, v in counter.most_common(limit)] if total else []

    return {
        "samples": sum(sum(c.values()) for c in threads.values()),
        "threads": {
            kind: table(states, 10, sum(states.values())) for kind, states in threads.items()
        },
        "main_busy_samples": busy,
        "self": table(leaf, top, busy),
        "inclusive_app": table(inclusive, top, busy),
        "components": table(components, 30, busy),
    }
