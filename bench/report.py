"""bench/RESULTS.md from the results: machine, versions, every figure (medians), ratios, targets,
and the profiles' findings."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import BENCH, VENV_BIN
from postroom import pg_version

Results = dict[str, dict[str, Any]]


def _command(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _meminfo() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


async def machine(pg: bool) -> dict[str, str]:
    nodemailer = BENCH / "node_modules" / "nodemailer" / "package.json"
    postgres = "not measured (unreachable)"
    if pg:
        with contextlib.suppress(Exception):
            postgres = await pg_version()
    return {
        "cores": str(os.cpu_count()),
        "memory": _meminfo(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "aiosmtplib": _package("aiosmtplib"),
        "aiosmtpd": _package("aiosmtpd"),
        "fastapi": _package("fastapi"),
        "uvicorn": _package("uvicorn"),
        "uvloop": _package("uvloop"),
        "sqlalchemy": _package("sqlalchemy"),
        "aiosqlite": _package("aiosqlite"),
        "asyncpg": _package("asyncpg"),
        "pydantic": _package("pydantic"),
        "httpx": _package("httpx"),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres,
        "node": _command(["node", "--version"]),
        "nodemailer": json.loads(nodemailer.read_text())["version"]
        if nodemailer.exists()
        else "not installed",
        "postfix (smtp-sink)": _command(["dpkg-query", "-W", "-f", "${Version}", "postfix"]),
        "py-spy": _command([str(VENV_BIN / "py-spy"), "--version"]),
    }


# -- helpers -------------------------------------------------------------------------------


def _ok_runs(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [r for r in entry["runs"] if "error" not in r] if entry else []


def median(results: Results, key: str, metric: Callable[[dict[str, Any]], Any]) -> float | None:
    values = [v for v in (metric(r) for r in _ok_runs(results.get(key))) if v is not None]
    return float(statistics.median(values)) if values else None


def _spread(results: Results, key: str, metric: Callable[[dict[str, Any]], Any]) -> str:
    values = [v for v in (metric(r) for r in _ok_runs(results.get(key))) if v is not None]
    if len(values) < 2:
        return ""
    return f"{min(values):,.0f} to {max(values):,.0f}"


def _runs(results: Results, key: str) -> str:
    entry = results.get(key)
    if not entry:
        return "0"
    ok = len(_ok_runs(entry))
    failed = len(entry["runs"]) - ok
    return f"{ok}" + (f" (+{failed} failed)" if failed else "")


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "not measured"
    return f"{a / b:.2f}x"


def _status(value: float | None, ok: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if ok else "**not met**"


def mib(kib: Any) -> str:
    return num(kib / 1024, 1) if isinstance(kib, int | float) else "?"


def _get(metric: str) -> Callable[[dict[str, Any]], Any]:
    return lambda run: run.get(metric)


def _cpu(results: Results, key: str) -> str:
    """Service CPU per message and CPU / wall time (1.0 = one core busy), when measured."""
    per = median(results, key, _get("service_cpu_ms_per_message"))
    if per is None:
        return "not measured"
    util = median(results, key, _get("service_cpu_utilization"))
    return f"{per:.2f} ({util:.2f})" if util is not None else f"{per:.2f}"


def _rate(r: dict[str, Any]) -> Any:
    return r.get("rate")


def _glance(prof: dict[str, Any]) -> list[str]:
    def state(kind: str, prefix: str) -> str:
        for label, _, pct in prof["threads"].get(kind, []):
            if label.startswith(prefix):
                return f"{pct:.0f}%"
        return "0%" if kind in prof["threads"] else "-"

    def part(*names: str) -> str:
        return f"{sum(p for label, _, p in prof['components'] if label in names):.0f}%"

    return [
        state("main thread (event loop)", "running"),
        state("aiosqlite connection threads", "sleeping"),
        state("aiosqlite connection threads", "fsync"),
        part("SQLAlchemy"),
        part("email package (MIME)"),
        part("FastAPI + Starlette", "uvicorn + httptools"),
        part("asyncio"),
        part("postroom app/"),
    ]


# -- the document --------------------------------------------------------------------------


def _total_cpu(results: Results, key: str) -> float | None:
    """Service plus PostgreSQL CPU per message of an end-to-end run (SQLite: the service's)."""
    service = median(results, key, _get("service_cpu_ms_per_message"))
    database = median(results, key, _get("pg_cpu_ms_per_message"))
    if service is None or (key.startswith("e2e/pg/") and database is None):
        return None
    return service + (database or 0.0)


def _targets(results: Results, once: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """The target table's rows: issue 16's targets, then issue 6's that it did not raise."""
    k = c["k_main"]
    e2e_sqlite = median(results, f"e2e/sqlite/0w/smtp-sink/k{k}", _rate)
    e2e_pg1 = median(results, f"e2e/pg/1w/smtp-sink/k{k}", _rate)
    naive = median(results, f"ref/naive/smtp-sink/k{k}", _rate)
    nodemailer = median(results, f"ref/nodemailer/smtp-sink/k{k}", _rate)
    naive_cpu = median(results, f"ref/naive/smtp-sink/k{k}", _client_cpu(c["n"]))
    peak = median(results, "api/peak/sqlite", _rate)
    p99 = median(results, "api/rate/sqlite/dispatcher", lambda r: r.get("p99_ms"))
    batch = median(results, "api/batch/sqlite", _rate)
    drain1 = median(results, f"drain/pg/1w/smtp-sink/k{k}", lambda r: r.get("steady_rate"))
    drain2 = median(results, f"drain/pg/2w/smtp-sink/k{k}", lambda r: r.get("steady_rate"))
    transactions = median(results, "group/smtp-sink", lambda r: r.get("transactions"))
    rss = (once.get("memory") or {}).get("peak_rss_queued_kib")
    rss_mb = rss / 1024 if isinstance(rss, int | float) else None
    rows = []
    for label, figure, reference, factor in (
        (f"embedded end to end >= 1.5x naive aiosmtplib, K={k}", e2e_sqlite, naive, 1.5),
        (f"PostgreSQL + 1 worker end to end >= 1.5x naive aiosmtplib, K={k}", e2e_pg1, naive, 1.5),
        (f"PostgreSQL + 1 worker end to end >= 0.6x nodemailer, K={k}", e2e_pg1, nodemailer, 0.6),
    ):
        met = _at_least(figure, reference, factor)
        rows.append(
            f"| {label} (smtp-sink) | {num(figure)} vs {num(reference)} = "
            f"{ratio(figure, reference)} | {_status(figure if reference else None, met)} |"
        )
    for name, key in (
        ("embedded", f"e2e/sqlite/0w/smtp-sink/k{k}"),
        ("PostgreSQL + 1 worker", f"e2e/pg/1w/smtp-sink/k{k}"),
    ):
        total = _total_cpu(results, key)
        rows.append(
            f"| CPU per delivered message <= 0.6 ms, {name} (naive client: "
            f"{num(naive_cpu, 2)} ms) | {num(total, 2)} ms | "
            f"{_status(total, total is not None and total <= 0.6)} |"
        )
    rows += [
        f"| POST /messages >= 3,000 accepted/s, 32 clients, SQLite synchronous=FULL | "
        f"{num(peak)}/s | {_status(peak, bool(peak and peak >= 3000))} |",
        f"| p99 < 50 ms at {c['api_rate']:.0f}/s, dispatcher in the same process (SQLite) | "
        f"{num(p99, 1)} ms | {_status(p99, p99 is not None and p99 < 50)} |",
        f"| batch POST >= 12,000 messages/s accepted (SQLite) | {num(batch)}/s | "
        f"{_status(batch, bool(batch and batch >= 12_000))} |",
        f"| RSS < 200 MB with 1,000,000 messages queued ({c['memory_n']:,} in this run) | "
        f"{num(rss_mb, 1)} MiB | "
        f"{_status(rss_mb if c['memory_n'] >= 1_000_000 else None, bool(rss_mb and rss_mb < 200))}"
        " |",
    ]
    expected = -(-c["group_size"] // 50)
    rows += [
        f"| {c['group_size']:,}-recipient group takes {expected} transactions | "
        f"{num(transactions)} | "
        f"{_status(transactions, transactions is not None and transactions == expected)} |",
        f"| embedded end to end >= 0.6x nodemailer pool, K={k} (smtp-sink) | "
        f"{num(e2e_sqlite)} vs {num(nodemailer)} = {ratio(e2e_sqlite, nodemailer)} | "
        f"{_status(e2e_sqlite if nodemailer else None, _at_least(e2e_sqlite, nodemailer, 0.6))} |",
        f"| 2 workers drain >= 1.5x one (PostgreSQL) | {num(drain2)} vs {num(drain1)} = "
        f"{ratio(drain2, drain1)} | "
        f"{_status(drain1 and drain2, bool(drain1 and drain2 and drain2 >= 1.5 * drain1))} |",
    ]
    return rows


def _at_least(figure: float | None, reference: float | None, factor: float) -> bool:
    return figure is not None and reference is not None and figure >= factor * reference


def _client_cpu(n: int) -> Callable[[dict[str, Any]], float | None]:
    """A reference client's CPU per message (ms), from its run's CPU seconds for `n`."""

    def per_message(run: dict[str, Any]) -> float | None:
        seconds = run.get("client_cpu")
        return 1000 * seconds / n if isinstance(seconds, int | float) else None

    return per_message


def render(
    *,
    config: dict[str, Any],
    results: Results,
    once: dict[str, Any],
    machine: dict[str, str],
) -> str:
    c = config
    run = once.get("run", {"at": "(no run on record)", "minutes": 0.0})
    k = c["k_main"]
    rounds = max((len(e["runs"]) for e in results.values()), default=0)
    lines: list[str] = []
    add = lines.append
    mode = "quick smoke (1 round, small N: not meaningful figures)" if c["quick"] else "full"
    add("# Postroom benchmark results\n")
    add(
        f"Written by `bench/run.sh{' --quick' if c['quick'] else ''}` on "
        f"{run['at']} (that invocation took {run['minutes']:.1f} min). Mode: {mode}. "
        f"N = {c['n']:,} small messages per throughput run, K (connections) "
        f"= {', '.join(map(str, c['ks']))}, up to {rounds} interleaved round(s) (the runs column "
        "says how many each figure has: a saturated or one-off scenario is not repeated); every "
        "figure is the "
        "median of the rounds (the range follows when there are several). Everything runs on "
        "this machine over loopback; the figures are messages per second unless said.\n"
    )
    loads = [r["loadavg"] for e in results.values() for r in e["runs"] if "loadavg" in r]
    if loads:
        add(
            f"1-minute load average at the end of each run: median {statistics.median(loads):.1f}, "
            f"max {max(loads):.1f} (the bench itself keeps about 1 to 2 cores busy; more means "
            "something else was running on this machine meanwhile, and the figures are lower "
            "for it).\n"
        )
    notes = once.get("notes") or []
    if notes:
        add("**Notes on this run:**\n")
        for note in notes:
            add(f"- {note}")
        add("")
    add("## Machine and versions\n")
    add("| | |\n|---|---|")
    for key, value in machine.items():
        add(f"| {key} | {value} |")
    add("")

    drain1 = median(results, f"drain/pg/1w/smtp-sink/k{k}", lambda r: r.get("steady_rate"))
    drain2 = median(results, f"drain/pg/2w/smtp-sink/k{k}", lambda r: r.get("steady_rate"))
    memory = once.get("memory") or {}

    # targets
    add("## Targets (issue 16; the last two rows are issue 6's, not raised)\n")
    add(
        "CPU per delivered message is the service's processes' (API and workers) plus, on "
        "PostgreSQL, the PostgreSQL server's processes', from /proc; the naive client's is its "
        "own process's. Every figure is a median of the rounds of this file.\n"
    )
    add("| target | figure | status |\n|---|---|---|")
    for row in _targets(results, once, c):
        add(row)
    add("")

    # references
    add("## References: N messages over K reused connections\n")
    add(
        "`naive`: raw aiosmtplib composing an `email.message.EmailMessage` per message "
        "(`send_message`); `prebuilt`: raw aiosmtplib sending bytes built before the clock starts "
        "(`sendmail`); `nodemailer`: `pool: true, maxConnections: K`, every message composed by "
        "nodemailer. Both clients keep each connection for the whole run (nodemailer "
        "`maxMessages` 100,000). Time: the client's, from the first connect to the last reply; "
        "the sink's count is checked.\n"
    )
    add(
        "| client | sink | K | msgs/s | range | client CPU ms/msg | runs |\n"
        "|---|---|---|---|---|---|---|"
    )
    for key, entry in results.items():
        if entry["family"] != "refs":
            continue
        p = entry["params"]
        add(
            f"| {p['tool']} | {p['sink']} | {p['k']} | {num(median(results, key, _rate))} | "
            f"{_spread(results, key, _rate)} | "
            f"{num(median(results, key, _client_cpu(c['n'])), 2)} | "
            f"{_runs(results, key)} |"
        )
    add("")

    # postroom e2e
    add("## Postroom end to end: POST → outbox → dispatcher → SMTP\n")
    add(
        "A fresh service per run (`postroom serve`, SQLite in a new data dir with the dispatcher "
        "in-process, or with W > 0 `serve --no-dispatcher` plus W `postroom worker` on the same "
        "file; or PostgreSQL: `serve --no-dispatcher` plus W `postroom worker`), a default "
        "smtp profile to the sink with `pool: true, maxConnections: K, maxMessages: 100000, "
        "ignoreTLS: true`, a sender user, one warm-up message; then N POSTs from 32 concurrent "
        "keep-alive clients (bench/rawhttp.py), timed from the first POST until the sink has "
        "counted all N. `POST phase` is the rate at which the 202s came back meanwhile; "
        "`client CPU` is the load generator's.\n"
    )
    add(
        "| database | workers | sink | K | msgs/s | range | POST phase/s | POST p50 / p99 ms | "
        "service CPU ms/msg (util.) | PostgreSQL CPU ms/msg | client CPU s | / naive | "
        "/ prebuilt | / nodemailer | runs |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        if entry["family"] != "e2e":
            continue
        p = entry["params"]
        rate = median(results, key, _rate)
        ref = f"{p['sink']}/k{p['k']}"
        workers = str(p["workers"]) if p["workers"] else "in-process"
        add(
            f"| {p['database']} | {workers} | {p['sink']} | {p['k']} | {num(rate)} | "
            f"{_spread(results, key, _rate)} | "
            f"{num(median(results, key, lambda r: r.get('post_rate')))} | "
            f"{num(median(results, key, lambda r: r['post'].get('p50_ms')), 1)} / "
            f"{num(median(results, key, lambda r: r['post'].get('p99_ms')), 1)} | "
            f"{_cpu(results, key)} | "
            f"{num(median(results, key, _get('pg_cpu_ms_per_message')), 2)} | "
            f"{num(median(results, key, lambda r: r['post'].get('client_cpu')), 1)} | "
            f"{ratio(rate, median(results, f'ref/naive/{ref}', _rate))} | "
            f"{ratio(rate, median(results, f'ref/prebuilt/{ref}', _rate))} | "
            f"{ratio(rate, median(results, f'ref/nodemailer/{ref}', _rate))} | "
            f"{_runs(results, key)} |"
        )
    add("")

    # the suppression check
    checks = {k: e for k, e in results.items() if e["family"] == "suppress"}
    if checks:
        add("## The suppression check: end to end with an empty and a full suppression list\n")
        add(
            "Embedded end to end as above (SQLite, smtp-sink, K), in the same sitting and rounds; "
            "the second scenario first imports 100,000 other addresses into the suppression list "
            "(none a bench message goes to), so each batch pays the whole check: intake's lookup "
            "and the dispatcher's, and nothing is skipped.\n"
        )
        add("| suppressed | msgs/s | range | service CPU ms/msg (util.) | cost | runs |")
        add("|---|---|---|---|---|---|")
        empty = median(results, "suppress/sqlite/0", _rate)
        for key, entry in checks.items():
            rate = median(results, key, _rate)
            full = entry["params"]["suppressed"]
            cost = f"{(empty - rate) / empty:+.1%}" if full and rate and empty else "-"
            spread = _spread(results, key, _rate)
            add(
                f"| {full:,} | {num(rate)} | {spread} | {_cpu(results, key)} | {cost} | "
                f"{_runs(results, key)} |"
            )
        add("")

    # drain
    add("## Drain only: a pre-filled queue of N\n")
    add(
        "N messages are queued with the dispatcher off; then the embedded service is restarted "
        "with its dispatcher (SQLite) or W workers start (PostgreSQL). `from start` counts from "
        "the process start (includes Python's start-up); `steady` from the first message the "
        "sink received to the last, which is what the 2-workers ratio uses.\n"
    )
    add(
        "| database | workers | K | from start msgs/s | steady msgs/s | range (steady) | "
        "service CPU ms/msg (util.) | runs |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        if entry["family"] != "drain":
            continue
        p = entry["params"]
        workers = str(p["workers"]) if p["workers"] else "in-process"
        steady: Callable[[dict[str, Any]], Any] = lambda r: r.get("steady_rate")  # noqa: E731
        add(
            f"| {p['database']} | {workers} | {p['k']} | {num(median(results, key, _rate))} | "
            f"{num(median(results, key, steady))} | {_spread(results, key, steady)} | "
            f"{_cpu(results, key)} | {_runs(results, key)} |"
        )
    add(f"\n2 workers / 1 worker (steady): {ratio(drain2, drain1)}\n")
    for database, fill in (once.get("queue_fill") or {}).items():
        add(
            f"Filling the {database} queue ({fill['n']:,} POSTs, 32 clients, dispatcher off): "
            f"{num(fill['rate'])}/s, p50 {num(fill.get('p50_ms'), 1)} ms, "
            f"p99 {num(fill.get('p99_ms'), 1)} ms.\n"
        )

    # API
    add("## API: POST /api/v1/messages\n")
    add(
        f"Fixed rate: {c['api_rate']:.0f} requests/s for {c['api_duration']:.0f} s, open loop "
        "(each request sent when due whatever the others do; latency counted from when it was "
        f"due). Peak: 32 clients closed loop, dispatcher off, {c['peak_n']:,} POSTs. Batch: "
        f"{c.get('batch_n', c['n']):,} messages. SQLite runs with synchronous=FULL, PostgreSQL "
        "with synchronous_commit=on.\n"
    )
    add(
        "| run | accepted/s | p50 ms | p95 ms | p99 ms | max ms | errors | "
        "service CPU ms/msg (util.) | runs |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        if entry["family"] != "api":
            continue
        p = entry["params"]
        if "batch" in p:
            label = (
                f"batch endpoint, {p['batch']} messages per request, {p['clients']} clients, "
                f"{p['database']}, dispatcher off (latencies: per request)"
            )
            accepted = median(results, key, _rate)
            add(
                f"| {label} | {num(accepted)} | "
                + " | ".join(
                    num(median(results, key, _get(f"request_{m}")), 1)
                    for m in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
                )
                + f" | {num(median(results, key, _get('failed_requests')))} | "
                + f"{_cpu(results, key)} | {_runs(results, key)} |"
            )
            continue
        if "rate" in p:
            state = "on" if p["dispatcher"] else "off"
            label = f"{p['rate']:.0f}/s fixed, SQLite, dispatcher {state}"
            accepted = median(results, key, lambda r: r.get("accepted_rate"))
        else:
            label = f"peak, 32 clients, {p['database']}, dispatcher off"
            accepted = median(results, key, _rate)
        add(
            f"| {label} | {num(accepted)} | "
            + " | ".join(
                num(median(results, key, _get(m)), 1)
                for m in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
            )
            + f" | {num(median(results, key, _get('errors')))} | {_cpu(results, key)} | "
            + f"{_runs(results, key)} |"
        )
    for entry in (results.get("api/batch/sqlite") or {}).get("runs", [])[-1:]:
        if "skipped" in entry:
            add(f"\nBatch form: not measured ({entry['skipped']}).\n")

    # group
    add(f"## A {c['group_size']:,}-recipient group message\n")
    add(
        "One POST with `recipients` of that many addresses through the default profile "
        "(maxRecipientsPerMessage 50, K connections, embedded SQLite), timed from the POST until "
        "the sink has counted every recipient. smtp-sink counts recipients from its dump file "
        "(`-D` on /dev/shm), aiosmtpd in memory.\n"
    )
    add(
        "| sink | seconds | recipients/s | POST latency s | SMTP transactions | recipients at sink "
        "| Postroom status / attempts | runs |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for key, entry in results.items():
        if entry["family"] != "group":
            continue
        runs = _ok_runs(entry)
        last = runs[-1] if runs else {}
        add(
            f"| {entry['params']['sink']} | "
            f"{num(median(results, key, lambda r: r.get('elapsed')), 2)} | "
            f"{num(median(results, key, lambda r: r.get('recipients_per_s')))} | "
            f"{num(median(results, key, lambda r: r.get('post_latency')), 2)} | "
            f"{num(median(results, key, lambda r: r.get('transactions')))} | "
            f"{num(median(results, key, lambda r: r.get('sink_recipients')))} | "
            f"{last.get('postroom_status', '?')} / {last.get('postroom_attempts', '?')} | "
            f"{_runs(results, key)} |"
        )
    add("")

    # memory
    add("## Memory\n")
    if not memory:
        add("not measured\n")
    elif "error" in memory:
        add(f"failed: {memory['error']}\n")
    else:
        add("| | |\n|---|---|")
        clients = memory.get("clients", 32)
        add(f"| messages queued (dispatcher off, {clients} clients) | {memory['queued']:,} |")
        add(f"| POST rate while filling | {num(memory['fill_rate'])}/s |")
        add(f"| API RSS after start-up | {mib(memory['rss_start_kib'])} MiB |")
        add(f"| API peak RSS (VmHWM) with them queued | {mib(memory['peak_rss_queued_kib'])} MiB |")
        add(f"| API RSS (VmRSS) at the end | {mib(memory['rss_queued_kib'])} MiB |")
        add(f"| SQLite files | {memory['db_bytes'] / 1024 / 1024:,.1f} MiB |")
        add(
            f"| peak RSS of `serve` with the dispatcher on, first "
            f"{memory['dispatching_window_s']:.0f} s over that backlog | "
            f"{mib(memory['peak_rss_dispatching_kib'])} MiB "
            f"({memory['delivered_in_window']:,} delivered meanwhile) |"
        )
        add("")

    # profiles
    add("## Where the time goes (py-spy)\n")
    profiles = once.get("profiles") or {}
    if not profiles:
        add("not measured (run without `--quick`, or `--only profile`)\n")
    elif "error" in profiles:
        add(f"failed: {profiles['error']}\n")
    glance = [
        (name, prof)
        for name, prof in profiles.items()
        if isinstance(prof, dict) and "threads" in prof
    ]
    if glance:
        add("At a glance (% of the samples of that thread kind; components: % of the main thread's")
        add("running samples):\n")
        add(
            "| profile | main thread running | DB threads: SQLite lock sleep | DB threads: fsync "
            "| SQLAlchemy | email (MIME) | FastAPI/Starlette/uvicorn | asyncio/uvloop | app/ |"
        )
        add("|---|---|---|---|---|---|---|---|---|")
        for name, prof in glance:
            add(f"| {name} | " + " | ".join(_glance(prof)) + " |")
        add(
            "\n(SQLAlchemy runs the ORM's sync code in greenlets, whose stacks py-spy shows "
            "without their async callers: the inclusive Postroom figures below leave those out.)\n"
        )
    for name, prof in profiles.items():
        if not isinstance(prof, dict) or "samples" not in prof:
            continue
        add(f"### {name}\n")
        add(
            f"{prof['what']}. {prof['samples']:,} samples at 50/s per thread, idle ones and native "
            f"frames included (py-spy --threads --idle --native); rate under "
            f"the profiler {num(prof['rate_under_profiler'])}/s; raw collapsed stacks: "
            f"`bench/{prof['raw']}`.\n"
        )
        add("What each kind of thread was doing (% of that thread kind's samples):\n")
        add("| threads | state | % |\n|---|---|---|")
        for kind, states in prof["threads"].items():
            for state, _, pct in states:
                add(f"| {kind} | {state} | {pct:.1f} |")
        add(
            f"\nThe main thread's running samples ({prof['main_busy_samples']:,}), by the "
            "component of the innermost Python frame:\n"
        )
        add("| component | % |\n|---|---|")
        for label, _, pct in prof["components"]:
            add(f"| {label} | {pct:.1f} |")
        add("\nTop functions (innermost Python frame, main thread running):\n")
        add("| function | % |\n|---|---|")
        for label, _, pct in prof["self"]:
            add(f"| `{label}` | {pct:.1f} |")
        add("\nPostroom functions on the main thread's stack (inclusive):\n")
        add("| function | % |\n|---|---|")
        for label, _, pct in prof["inclusive_app"]:
            add(f"| `{label}` | {pct:.1f} |")
        add("")

    errors = [
        (key, r["error"]) for key, entry in results.items() for r in entry["runs"] if "error" in r
    ]
    if errors:
        add("## Errors\n")
        for key, message in errors:
            add(f"- `{key}`: {message}")
        add("")
    add("## Reproduce\n")
    add(
        "`bench/run.sh` (about 12 min with 3 rounds, 15 with `--reps 5`, mostly Postroom's own "
        "scenarios and the 100,000-message memory fill; `--quick` is a 2-minute smoke; "
        "`--only e2e,refs`, `--n`, `--ks`, `--reps` narrow it, `--append` adds rounds, "
        "`--merge` re-measures families). "
        "Raw results: `bench/.work/results.json`; service logs: `bench/.work/runs/*/`; profiles: "
        "`bench/.work/profiles/`.\n"
    )
    return "\n".join(lines)
