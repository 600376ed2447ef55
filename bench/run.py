"""Postroom's benchmarks: references (raw aiosmtplib, nodemailer), Postroom end to end and drain,
the API's latency and peak rate, a 10,000-recipient group, memory, and py-spy profiles.

Run it through `bench/run.sh`, which installs what it needs first; `--quick` is the CI smoke.
Every scenario runs `--reps` times, interleaved (the order rotates each round), and the report
gives medians. Results go to bench/RESULTS.md (quick: bench/.work/RESULTS-quick.md) and, raw,
to bench/.work/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import harness
import report
from harness import (
    BENCH,
    PYTHON,
    WORK,
    AiosmtpdSink,
    PostfixSink,
    Sink,
    run_json,
    wait_for,
)
from postroom import (
    PG_SERVER,
    PG_TEMPLATE,
    RUNS,
    Database,
    Load,
    Postroom,
    group_body,
    message_body,
    message_record,
    percentiles,
    pg_admin,
    pg_available,
    pg_keep_as,
    post_closed,
    post_open,
)
from profiling import Spy, summarize
from sizing import DatabaseCost, PostgresCpu

CONCURRENCY = 32
BATCH_SIZE = 100
BATCH_CLIENTS = 8
SUPPRESSED = 100_000
"""Addresses on the suppression list in the `suppress` family's second scenario."""
Metrics = dict[str, Any]


@dataclass
class Config:
    quick: bool
    n: int
    ks: list[int]
    k_main: int
    postroom_ks: list[int]
    reps: int
    api_rate: float
    api_duration: float
    peak_n: int
    batch_n: int
    group_size: int
    memory_n: int
    memory_window: float
    memory_clients: int
    families: set[str]
    output: Path
    results: Path
    merge: bool
    append: bool
    render_only: bool
    notes: list[str]
    log_level: str
    pg: bool = False
    timeout: float = 600.0


FAMILIES = ("refs", "e2e", "drain", "api", "group", "memory", "profile", "suppress", "sizing")


@dataclass
class Scenario:
    key: str
    family: str
    params: dict[str, Any]
    run: Callable[[], Awaitable[Metrics]]
    max_reps: int | None = None


@dataclass
class Bench:
    config: Config
    sinks: dict[str, Sink] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    once: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    templates: dict[str, Postroom] = field(default_factory=dict)

    # -- references ------------------------------------------------------------------------

    async def reference(self, tool: str, sink_name: str, k: int) -> Metrics:
        n, sink = self.config.n, self.sinks[sink_name]
        if tool == "nodemailer":
            argv = ["node", str(BENCH / "nodemailer_bench.js"), "--port", str(sink.port)]
            argv += ["--n", str(n), "--k", str(k)]
        else:
            argv = [PYTHON, str(BENCH / "smtp_ref.py"), "--port", str(sink.port), "--n", str(n)]
            argv += ["-k", str(k), "--mode", tool]
        base = await sink.counts()
        out = await run_json(argv, within=self.config.timeout)
        reached = await wait_for(sink, base, messages=n, within=30)
        if out.get("error"):
            raise RuntimeError(out["error"])
        return {
            "elapsed": out["elapsed"],
            "rate": n / out["elapsed"],
            "client_cpu": out.get("cpu"),
            "sink_messages": reached.counts.messages - base.messages,
        }

    # -- Postroom end to end ---------------------------------------------------------------

    async def _deployment(
        self, name: str, database: Database, *, dispatcher: bool, sink: Sink, k: int
    ) -> Postroom:
        postroom = Postroom(name, database, log_level=self.config.log_level)
        await postroom.prepare()
        await postroom.start_api(dispatcher=dispatcher)
        await postroom.configure(sink_port=sink.port, connections=k)
        return postroom

    async def _warm_up(self, postroom: Postroom, sink: Sink, *, deliver: bool) -> None:
        """One message first: the sender's password is verified once (argon2, then cached) and,
        when `deliver`, the SMTP pool's first connection is open before the clock starts."""
        async with postroom.sender(1) as client:
            base = await sink.counts()
            answer = await client.post("/api/v1/messages", content=message_body(999_999_999))
            if answer.status_code != 202:
                raise RuntimeError(f"warm-up POST answered {answer.status_code}: {answer.text}")
            if deliver:
                await wait_for(sink, base, messages=1, within=30, alive=postroom.alive)

    async def end_to_end(
        self,
        database: Database,
        workers: int,
        sink_name: str,
        k: int,
        suppressed: int = 0,
        *,
        sizing: bool = False,
    ) -> Metrics:
        """N messages posted by CONCURRENCY clients, timed until the sink has them all; with
        `suppressed`, that many other addresses are on the suppression list first (the cost of
        the per-recipient check: intake's lookup and the dispatcher's, per batch); with
        `sizing`, what PostgreSQL paid per message (bench/sizing.py)."""
        n, sink = self.config.n, self.sinks[sink_name]
        name = f"e2e-{database}-{workers}w-{sink_name}-k{k}" + (
            f"-suppressed{suppressed}" if suppressed else ""
        )
        postroom = await self._deployment(
            name, database, dispatcher=database == "sqlite" and not workers, sink=sink, k=k
        )
        try:
            imported = await postroom.suppress(suppressed) if suppressed else None
            postroom.start_workers(workers)
            await self._warm_up(postroom, sink, deliver=True)
            bodies = [message_body(i) for i in range(n)]
            cost = await DatabaseCost.start() if sizing else None
            pg = cost.cpu if cost else await PostgresCpu.start() if database == "pg" else None
            async with postroom.sender(CONCURRENCY) as client:
                base = await sink.counts()
                cpu = postroom.cpu()
                posting = asyncio.create_task(post_closed(client, bodies, CONCURRENCY))

                def accepted() -> int:  # every POST, or those answered 202 once all answered
                    return posting.result().ok if posting.done() else n

                try:
                    reached = await wait_for(
                        sink,
                        base,
                        messages=accepted,
                        within=self.config.timeout,
                        alive=postroom.alive,
                    )
                except TimeoutError as err:
                    raise await _explained(err, postroom, posting) from err
                load = await posting
                cpu = postroom.cpu() - cpu
            await asyncio.sleep(0.3)
            delivered = (await sink.counts()).messages - base.messages
            elapsed = reached.last - load.started
            pg_cpu = pg.so_far() if pg is not None else None
            result: Metrics = {
                "elapsed": elapsed,
                "rate": load.ok / elapsed,
                "post_errors": load.errors,
                "post": load.summary(),
                "post_rate": load.ok / load.elapsed,
                "sink_messages": delivered,
                "service_cpu_ms_per_message": 1000 * cpu / n,
                "service_cpu_utilization": cpu / elapsed,
                **({"pg_cpu_ms_per_message": 1000 * pg_cpu / n} if pg_cpu is not None else {}),
                "api_rss_kib": postroom.peak_rss_kib(),
                **({"suppressed": suppressed, "import_s": imported} if suppressed else {}),
            }
        finally:
            postroom.stop()
        if cost is not None and pg_cpu is not None:
            result["database"] = await cost.per_message(n, pg_cpu)
        return result

    async def _queue_template(self, database: Database) -> Postroom:
        """A stopped deployment whose queue holds N (+1 warm-up) messages, filled once per
        database with the dispatcher off; each drain run starts from a copy of it."""
        template = self.templates.get(database)
        if template is not None:
            return template
        n, sink, k = self.config.n, self.sinks["smtp-sink"], self.config.k_main
        template = await self._deployment(
            f"queue-{database}", database, dispatcher=False, sink=sink, k=k
        )
        try:
            await self._warm_up(template, sink, deliver=False)
            bodies = [message_body(i) for i in range(n)]
            async with template.sender(CONCURRENCY) as client:
                fill = await post_closed(client, bodies, CONCURRENCY)
            if fill.errors:
                raise RuntimeError(f"pre-fill: {fill.errors} errors, first {fill.first_error}")
            self.once.setdefault("queue_fill", {})[database] = {
                "n": n,
                "rate": fill.ok / fill.elapsed,
                **fill.summary(),
            }
        finally:
            template.stop(keep_data=True)
        if database == "pg":
            await pg_keep_as(PG_TEMPLATE)
        self.templates[database] = template
        return template

    async def drain(self, database: Database, workers: int, sink_name: str, k: int) -> Metrics:
        """A queue of N (a copy of the pre-filled one), then the dispatcher starts (embedded:
        `serve` with its dispatcher; PostgreSQL: `workers` x `postroom worker`); timed until the
        sink has them all."""
        n, sink = self.config.n, self.sinks[sink_name]
        template = await self._queue_template(database)
        postroom = Postroom(
            f"drain-{database}-{workers}w", database, log_level=self.config.log_level
        )
        try:
            await postroom.prepare(template)
            base = await sink.counts()
            spawned = time.monotonic()
            if database == "sqlite":
                await postroom.start_api(dispatcher=True)
            else:
                postroom.start_workers(workers)
            first = await wait_for(sink, base, messages=1, within=120, alive=postroom.alive)
            cpu = postroom.cpu()
            try:
                reached = await wait_for(
                    sink, base, messages=n + 1, within=self.config.timeout, alive=postroom.alive
                )
            except TimeoutError as err:
                raise await _explained(err, postroom, None) from err
            cpu = postroom.cpu() - cpu
            steady = reached.last - first.last
            return {
                "service_cpu_ms_per_message": 1000 * cpu / n,
                "service_cpu_utilization": cpu / steady if steady > 0 else None,
                "elapsed": reached.last - spawned,
                "rate": (n + 1) / (reached.last - spawned),
                "steady_elapsed": steady,
                "steady_rate": n / steady if steady > 0 else None,
                "sink_messages": reached.counts.messages - base.messages,
            }
        finally:
            postroom.stop()

    # -- API -------------------------------------------------------------------------------

    async def api_fixed_rate(self, dispatcher: bool) -> Metrics:
        sink = self.sinks["smtp-sink"]
        name = f"api-rate-sqlite-{'dispatcher' if dispatcher else 'nodispatcher'}"
        postroom = await self._deployment(
            name, "sqlite", dispatcher=dispatcher, sink=sink, k=self.config.k_main
        )
        try:
            await self._warm_up(postroom, sink, deliver=dispatcher)
            async with postroom.sender(256) as client:
                load = await post_open(
                    client, self.config.api_rate, self.config.api_duration, message_body
                )
            return {
                "rate_target": self.config.api_rate,
                "accepted_rate": load.ok / load.elapsed,
                **load.summary(),
            }
        finally:
            postroom.stop()

    async def api_peak(self, database: Database) -> Metrics:
        sink = self.sinks["smtp-sink"]
        postroom = await self._deployment(
            f"api-peak-{database}", database, dispatcher=False, sink=sink, k=self.config.k_main
        )
        try:
            await self._warm_up(postroom, sink, deliver=False)
            bodies = [message_body(i) for i in range(self.config.peak_n)]
            async with postroom.sender(CONCURRENCY) as client:
                cpu = postroom.cpu()
                load = await post_closed(client, bodies, CONCURRENCY)
                cpu = postroom.cpu() - cpu
            return {
                "rate": load.ok / load.elapsed,
                "service_cpu_ms_per_message": 1000 * cpu / max(1, load.ok),
                "service_cpu_utilization": cpu / load.elapsed,
                **load.summary(),
            }
        finally:
            postroom.stop()

    async def api_batch(self, database: Database) -> Metrics:
        """POST /api/v1/messages/batch, when the service has it: `batch_n` messages in batches of
        BATCH_SIZE from BATCH_CLIENTS clients, dispatcher off; accepted messages per second (N
        would be 50 requests, a second: too short a run to tell the rate from the warm-up)."""
        sink, n = self.sinks["smtp-sink"], self.config.batch_n
        postroom = await self._deployment(
            f"api-batch-{database}", database, dispatcher=False, sink=sink, k=self.config.k_main
        )
        try:
            await self._warm_up(postroom, sink, deliver=False)
            async with postroom.sender(BATCH_CLIENTS) as client:
                spec = (await client.get("/openapi.json")).json()
                if "/api/v1/messages/batch" not in spec.get("paths", {}):
                    return {"skipped": "the service has no POST /api/v1/messages/batch"}
                batches = [
                    b'{"messages": ['
                    + b",".join(message_body(i) for i in range(start, min(n, start + BATCH_SIZE)))
                    + b"]}"
                    for start in range(0, n, BATCH_SIZE)
                ]
                todo = iter(batches)
                accepted = rejected = failed = 0
                latencies: list[float] = []
                cpu = postroom.cpu()

                async def one_client() -> None:
                    nonlocal accepted, rejected, failed
                    for body in todo:
                        began = time.monotonic()
                        answer = await client.post("/api/v1/messages/batch", content=body)
                        latencies.append(time.monotonic() - began)
                        if answer.status_code != 200:
                            failed += 1
                            continue
                        data = answer.json()
                        accepted += int(data["accepted"])
                        rejected += int(data["rejected"])

                started = time.monotonic()
                await asyncio.gather(*(one_client() for _ in range(BATCH_CLIENTS)))
                elapsed = time.monotonic() - started
                cpu = postroom.cpu() - cpu
            return {
                "rate": accepted / elapsed,
                "accepted": accepted,
                "rejected": rejected,
                "failed_requests": failed,
                "batch_size": BATCH_SIZE,
                "clients": BATCH_CLIENTS,
                "service_cpu_ms_per_message": 1000 * cpu / max(1, accepted),
                "service_cpu_utilization": cpu / elapsed,
                **{f"request_{k}": v for k, v in percentiles(latencies).items()},
            }
        finally:
            postroom.stop()

    # -- group -----------------------------------------------------------------------------

    async def group(self, sink_name: str) -> Metrics:
        size = self.config.group_size
        dedicated: PostfixSink | None = None
        if sink_name == "smtp-sink":
            dedicated = await PostfixSink.start(dump=True)
            sink: Sink = dedicated
        else:
            sink = self.sinks[sink_name]
        postroom = await self._deployment(
            f"group-{sink_name}", "sqlite", dispatcher=True, sink=sink, k=self.config.k_main
        )
        try:
            await self._warm_up(postroom, sink, deliver=True)
            body = group_body(size)
            async with postroom.sender(2) as client:
                base = await sink.counts()
                started = time.monotonic()
                answer = await client.post("/api/v1/messages", content=body)
                posted = time.monotonic() - started
                if answer.status_code != 202:
                    raise RuntimeError(f"group POST answered {answer.status_code}: {answer.text}")
                reached = await wait_for(
                    sink,
                    base,
                    recipients=size,
                    within=self.config.timeout,
                    interval=0.02,
                    alive=postroom.alive,
                )
                elapsed = reached.last - started
                await asyncio.sleep(0.5)
                after = await sink.counts()
                record = await self._final_record(client, answer.json()["id"])
            return {
                "elapsed": elapsed,
                "post_latency": posted,
                "recipients_per_s": size / elapsed,
                "transactions": after.messages - base.messages,
                "sink_recipients": (after.recipients or 0) - (base.recipients or 0),
                "postroom_status": record.get("status"),
                "postroom_attempts": len(record.get("attemptLog", [])),
            }
        finally:
            postroom.stop()
            if dedicated is not None:
                await dedicated.stop()

    async def _final_record(self, client: Any, message_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = await message_record(client, message_id)
            if record.get("status") not in ("queued", "sending"):
                break
            await asyncio.sleep(0.2)
        return record

    # -- memory ----------------------------------------------------------------------------

    async def memory(self) -> Metrics:
        """Peak RSS of the API after queuing `memory_n` messages with the dispatcher off; then of
        the embedded service delivering from that backlog for `memory_window` seconds."""
        sink, n = self.sinks["smtp-sink"], self.config.memory_n
        postroom = await self._deployment(
            "memory", "sqlite", dispatcher=False, sink=sink, k=self.config.k_main
        )
        try:
            await self._warm_up(postroom, sink, deliver=False)
            started_rss = postroom.peak_rss_kib()
            clients = self.config.memory_clients
            async with postroom.sender(clients) as client:
                load = await post_closed(client, (message_body(i) for i in range(n)), clients)
            queued_rss = postroom.peak_rss_kib()
            database = postroom.workdir / "data" / "postroom.db"
            db_bytes = sum(
                p.stat().st_size for p in database.parent.glob("postroom.db*") if p.is_file()
            )
            postroom.stop_api()
            base = await sink.counts()
            await postroom.start_api(dispatcher=True)
            assert postroom.api is not None
            peak = 0
            deadline = time.monotonic() + self.config.memory_window
            while time.monotonic() < deadline:
                peak = max(peak, harness.rss_kib(postroom.api.pid).get("VmHWM", 0))
                await asyncio.sleep(0.5)
            delivered = (await sink.counts()).messages - base.messages
            peak = max(peak, harness.rss_kib(postroom.api.pid).get("VmHWM", 0))
            return {
                "clients": clients,
                "queued": load.ok,
                "errors": load.errors,
                "fill_rate": load.ok / load.elapsed,
                "rss_start_kib": started_rss.get("VmRSS"),
                "peak_rss_queued_kib": queued_rss.get("VmHWM"),
                "rss_queued_kib": queued_rss.get("VmRSS"),
                "db_bytes": db_bytes,
                "dispatching_window_s": self.config.memory_window,
                "peak_rss_dispatching_kib": peak,
                "delivered_in_window": delivered,
            }
        finally:
            postroom.stop()

    # -- profiles --------------------------------------------------------------------------

    async def profiles(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        folder = WORK / "profiles"
        sink, k = self.sinks["smtp-sink"], self.config.k_main
        n = min(self.config.n, 1000)

        # 1. end to end, embedded (SQLite, dispatcher in the API process)
        postroom = await self._deployment("profile-e2e", "sqlite", dispatcher=True, sink=sink, k=k)
        try:
            await self._warm_up(postroom, sink, deliver=True)
            assert postroom.api is not None
            spy = Spy(postroom.api.pid, folder / "e2e-sqlite.txt")
            await asyncio.sleep(1.0)
            async with postroom.sender(CONCURRENCY) as client:
                base = await sink.counts()
                posting = asyncio.create_task(
                    post_closed(client, [message_body(i) for i in range(n)], CONCURRENCY)
                )
                reached = await wait_for(sink, base, messages=n, within=self.config.timeout)
                load = await posting
            spy.stop()
            out["e2e-sqlite"] = {
                "what": f"embedded serve (SQLite), {n} messages posted by 32 clients and "
                f"delivered to smtp-sink, K={k}; py-spy on the API process",
                "rate_under_profiler": n / (reached.last - load.started),
                "raw": str(spy.out.relative_to(BENCH)),
                **summarize(spy.out),
            }
        finally:
            postroom.stop()

        # 2. the POST path alone (dispatcher off)
        postroom = await self._deployment(
            "profile-post", "sqlite", dispatcher=False, sink=sink, k=k
        )
        try:
            await self._warm_up(postroom, sink, deliver=False)
            assert postroom.api is not None
            spy = Spy(postroom.api.pid, folder / "post-sqlite.txt")
            await asyncio.sleep(1.0)
            async with postroom.sender(CONCURRENCY) as client:
                load = await post_closed(client, [message_body(i) for i in range(n)], CONCURRENCY)
            spy.stop()
            out["post-sqlite"] = {
                "what": f"serve --no-dispatcher (SQLite), {n} POSTs by 32 "
                "clients; py-spy on the API process",
                "rate_under_profiler": load.ok / load.elapsed,
                "raw": str(spy.out.relative_to(BENCH)),
                **summarize(spy.out),
            }
        finally:
            postroom.stop()

        # 3. one PostgreSQL worker draining a pre-filled queue
        if self.config.pg:
            postroom = await self._deployment(
                "profile-worker", "pg", dispatcher=False, sink=sink, k=k
            )
            try:
                await self._warm_up(postroom, sink, deliver=False)
                async with postroom.sender(CONCURRENCY) as client:
                    await post_closed(client, [message_body(i) for i in range(n)], CONCURRENCY)
                base = await sink.counts()
                (worker,) = postroom.start_workers(1)
                await wait_for(sink, base, messages=1, within=60, alive=postroom.alive)
                spy = Spy(worker.pid, folder / "worker-pg.txt")
                reached = await wait_for(
                    sink, base, messages=n + 1, within=self.config.timeout, alive=postroom.alive
                )
                spy.stop()
                out["worker-pg"] = {
                    "what": f"one `postroom worker` (PostgreSQL) draining {n} queued messages "
                    f"to smtp-sink, K={k}; py-spy on the worker",
                    "rate_under_profiler": n / (reached.last - reached.first),
                    "raw": str(spy.out.relative_to(BENCH)),
                    **summarize(spy.out),
                }
            finally:
                postroom.stop()
        return out

    # -- the plan --------------------------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        c, found = self.config, list[Scenario]()
        sinks = list(self.sinks)

        def add(
            key: str,
            family: str,
            params: dict[str, Any],
            run: Callable[[], Awaitable[Metrics]],
            max_reps: int | None = None,
        ) -> None:
            if family in c.families:
                found.append(Scenario(key, family, params, run, max_reps))

        for sink in sinks:
            for k in c.ks:
                for tool in ("naive", "prebuilt", "nodemailer"):
                    params: dict[str, Any] = {"tool": tool, "sink": sink, "k": k, "n": c.n}
                    add(
                        f"ref/{tool}/{sink}/k{k}",
                        "refs",
                        params,
                        partial(self.reference, tool, sink, k),
                    )
        e2e: list[tuple[Database, int, str, int]] = [
            ("sqlite", 0, "smtp-sink", k) for k in c.postroom_ks
        ]
        e2e.append(("sqlite", 0, "aiosmtpd", c.k_main))
        e2e.append(("sqlite", 1, "smtp-sink", c.k_main))  # the dispatcher in a process of its own
        if c.pg:
            e2e += [("pg", 1, "smtp-sink", c.k_main), ("pg", 2, "smtp-sink", c.k_main)]
        for db, workers, sink, k in e2e:
            params = {"database": db, "workers": workers, "sink": sink, "k": k, "n": c.n}
            add(
                f"e2e/{db}/{workers}w/{sink}/k{k}",
                "e2e",
                params,
                partial(self.end_to_end, db, workers, sink, k),
                1 if sink == "aiosmtpd" else None,
            )
        if c.pg:
            params = {"database": "pg", "workers": 1, "sink": "smtp-sink", "k": c.k_main, "n": c.n}
            add(
                f"sizing/pg/1w/smtp-sink/k{c.k_main}",
                "sizing",
                params,
                partial(self.end_to_end, "pg", 1, "smtp-sink", c.k_main, sizing=True),
            )
        for suppressed in (0, SUPPRESSED):
            params = {"database": "sqlite", "sink": "smtp-sink", "k": c.k_main, "n": c.n}
            add(
                f"suppress/sqlite/{suppressed}",
                "suppress",
                params | {"suppressed": suppressed},
                partial(self.end_to_end, "sqlite", 0, "smtp-sink", c.k_main, suppressed),
            )
        drains: list[tuple[Database, int]] = [("sqlite", 0)]
        if c.pg:
            drains += [("pg", 1), ("pg", 2)]
        for db, workers in drains:
            params = {"database": db, "workers": workers, "sink": "smtp-sink", "k": c.k_main}
            add(
                f"drain/{db}/{workers}w/smtp-sink/k{c.k_main}",
                "drain",
                params | {"n": c.n},
                partial(self.drain, db, workers, "smtp-sink", c.k_main),
            )
        for dispatcher in (False, True):
            params = {"rate": c.api_rate, "duration": c.api_duration, "dispatcher": dispatcher}
            add(
                f"api/rate/sqlite/{'dispatcher' if dispatcher else 'no-dispatcher'}",
                "api",
                params,
                partial(self.api_fixed_rate, dispatcher),
            )
        peaks: tuple[Database, ...] = ("sqlite", "pg") if c.pg else ("sqlite",)
        for db in peaks:
            add(
                f"api/peak/{db}",
                "api",
                {"database": db, "n": c.peak_n, "concurrency": CONCURRENCY},
                partial(self.api_peak, db),
            )
        add(
            "api/batch/sqlite",
            "api",
            {"database": "sqlite", "n": c.batch_n, "batch": BATCH_SIZE, "clients": BATCH_CLIENTS},
            partial(self.api_batch, "sqlite"),
        )
        for sink in ("smtp-sink", "aiosmtpd"):
            add(
                f"group/{sink}",
                "group",
                {"sink": sink, "recipients": c.group_size, "chunk": 50},
                partial(self.group, sink),
            )
        return found

    async def run(self) -> None:
        plan = self.scenarios()
        for rep in range(self.config.reps):
            shift = (rep * max(1, len(plan) // self.config.reps)) % max(1, len(plan))
            for scenario in plan[shift:] + plan[:shift]:
                entry = self.results.setdefault(
                    scenario.key,
                    {"family": scenario.family, "params": scenario.params, "runs": []},
                )
                if scenario.max_reps is not None and len(entry["runs"]) >= scenario.max_reps:
                    continue
                if _saturated(entry):
                    _say(f"{scenario.key}: not repeated, the service could not keep the rate")
                    continue
                began = time.monotonic()
                try:
                    metrics = await scenario.run()
                except Exception as err:
                    traceback.print_exc()
                    metrics = {"error": f"{type(err).__name__}: {err}"}
                took = time.monotonic() - began
                metrics["loadavg"] = os.getloadavg()[0]
                entry["runs"].append(metrics)
                shown = metrics.get("rate", metrics.get("p99_ms", metrics.get("error")))
                _say(f"[{rep + 1}/{self.config.reps}] {scenario.key}: {_fmt(shown)} ({took:.1f} s)")
                self.save()
        await self.cleanup_templates()
        if "profile" in self.config.families:
            _say("profiles ...")
            self.once["profiles"] = await _guard(self.profiles())
            self.save()
        if "memory" in self.config.families:
            _say("memory ...")
            self.once["memory"] = await _guard(self.memory())
            _say(f"memory: {self.once['memory']}")
            self.save()

    def load_earlier(self) -> None:
        """Keep what an earlier run measured for the families this run leaves out."""
        earlier = json.loads(self.config.results.read_text())
        for key, entry in earlier.get("results", {}).items():
            if (
                self.config.append
                or self.config.render_only
                or entry["family"] not in self.config.families
            ):
                self.results[key] = entry
        for key, value in earlier.get("once", {}).items():
            family = {"memory": "memory", "profiles": "profile", "notes": "", "run": ""}.get(
                key, "drain"
            )
            if family not in self.config.families or self.config.render_only:
                self.once[key] = value

    async def cleanup_templates(self) -> None:
        for template in self.templates.values():
            shutil.rmtree(template.workdir, ignore_errors=True)
        if "pg" in self.templates:
            await pg_admin(f"DROP DATABASE IF EXISTS {PG_TEMPLATE} WITH (FORCE)")
        self.templates.clear()

    def save(self) -> None:
        """results.json, and the report so far (a run cut short still leaves its figures)."""
        if not self.config.render_only:
            self.once["run"] = {
                "at": time.strftime("%Y-%m-%d %H:%M %Z"),
                "minutes": (time.monotonic() - self.started) / 60,
            }
        data = {
            "config": _jsonable(asdict(self.config)),
            "results": self.results,
            "once": self.once,
        }
        self.config.results.write_text(json.dumps(data, indent=1, default=str))
        self.config.output.parent.mkdir(parents=True, exist_ok=True)
        self.config.output.write_text(self.render())

    def render(self) -> str:
        return report.render(
            config=_jsonable(asdict(self.config)),
            results=self.results,
            once=self.once,
            machine=self.machine,
        )


def _saturated(entry: dict[str, Any]) -> bool:
    """A fixed-rate run whose service accepted less than half the rate: repeating it only
    measures the same backlog again, for minutes."""
    target = entry["params"].get("rate") if entry["family"] == "api" else None
    if not isinstance(target, int | float):
        return False
    runs = [r for r in entry["runs"] if "accepted_rate" in r]
    return bool(runs) and all(r["accepted_rate"] < 0.5 * target for r in runs)


async def _explained(
    err: TimeoutError, postroom: Postroom, posting: asyncio.Task[Load] | None
) -> RuntimeError:
    """A run that did not finish: what the POSTs answered and what the queue holds."""
    posts = "still posting"
    if posting is not None and posting.done():
        load = posting.result()
        posts = f"{load.ok} accepted, {load.errors} refused ({load.first_error})"
    try:
        queue = await postroom.queue_state()
    except Exception as state_err:
        queue = {"error": repr(state_err)}
    return RuntimeError(f"{err}; POSTs: {posts}; queue: {json.dumps(queue, default=str)}")


async def _guard(work: Awaitable[Any]) -> Any:
    try:
        return await work
    except Exception as err:
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)  # noqa: T201


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round, small N: a CI smoke")
    parser.add_argument("--n", type=int, help="messages per throughput run (5000; quick 200)")
    parser.add_argument("--ks", help="connections for the references, e.g. 1,4,8")
    parser.add_argument("--postroom-ks", help="connections for Postroom embedded e2e runs")
    parser.add_argument("--reps", type=int, help="rounds (3; quick 1)")
    parser.add_argument("--only", help=f"comma-separated families of {', '.join(FAMILIES)}")
    parser.add_argument("--skip", help="comma-separated families to leave out")
    parser.add_argument("--memory-n", type=int, help="messages queued for the memory figure")
    parser.add_argument(
        "--memory-clients", type=int, default=CONCURRENCY, help="clients filling the queue"
    )
    parser.add_argument("--group-size", type=int, help="recipients of the group message")
    parser.add_argument("--api-rate", type=float, help="fixed POST rate (300/s)")
    parser.add_argument("--api-duration", type=float, help="seconds at the fixed rate")
    parser.add_argument("--output", type=Path, help="where RESULTS.md goes")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: write RESULTS.md again from results.json",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a sentence for the report's notes on this run (repeatable; kept in results.json)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run's rounds to the earlier results.json (more rounds for the medians)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the earlier results of the families not run now (results.json)",
    )
    parser.add_argument("--log-level", default="WARNING", help="POSTROOM_LOG_LEVEL of the service")
    args = parser.parse_args()
    quick = bool(args.quick)
    families = set(args.only.split(",")) if args.only else set(FAMILIES)
    if quick and not args.only:
        families.discard("profile")
    if args.skip:
        families -= set(args.skip.split(","))
    unknown = families - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    ks = [int(k) for k in (args.ks or ("4" if quick else "1,4,8")).split(",")]
    return Config(
        quick=quick,
        n=args.n or (100 if quick else 5000),
        ks=ks,
        k_main=4 if 4 in ks else ks[0],
        postroom_ks=[int(k) for k in args.postroom_ks.split(",")] if args.postroom_ks else ks,
        reps=args.reps or (1 if quick else 3),
        api_rate=args.api_rate or (50.0 if quick else 300.0),
        api_duration=args.api_duration or (2.0 if quick else 10.0),
        peak_n=200 if quick else 5000,
        batch_n=200 if quick else 20_000,
        group_size=args.group_size or (500 if quick else 10_000),
        memory_n=args.memory_n or (1000 if quick else 100_000),
        memory_window=5.0 if quick else 20.0,
        memory_clients=args.memory_clients,
        families=families,
        output=args.output or (WORK / "RESULTS-quick.md" if quick else BENCH / "RESULTS.md"),
        results=WORK / ("results-quick.json" if quick else "results.json"),
        merge=bool(args.merge),
        append=bool(args.append),
        render_only=bool(args.render_only),
        notes=list(args.note),
        log_level=args.log_level,
    )


async def main() -> None:
    config = parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RUNS[0] = WORK / ("runs-quick" if config.quick else "runs")
    harness.install_signal_handlers()
    config.pg = await pg_available()
    if not config.pg:
        _say(f"PostgreSQL is not reachable at {PG_SERVER}: its scenarios are not measured")
    bench = Bench(config, machine=await report.machine(config.pg))
    if (config.merge or config.append or config.render_only) and config.results.exists():
        bench.load_earlier()
    if config.notes:
        bench.once["notes"] = [*bench.once.get("notes", []), *config.notes]
    if config.render_only:
        bench.save()
        _say(f"wrote {config.output} from {config.results}")
        return
    started = bench.started
    try:
        bench.sinks["smtp-sink"] = await PostfixSink.start()
        bench.sinks["aiosmtpd"] = await AiosmtpdSink.start()
        await bench.run()
    finally:
        for sink in bench.sinks.values():
            with contextlib.suppress(Exception):
                await sink.stop()
        harness.stop_all()
    bench.save()
    _say(f"wrote {config.output} in {time.monotonic() - started:.0f} s")
    errors = [
        key
        for key, entry in bench.results.items()
        if entry["family"] in config.families and any("error" in r for r in entry["runs"])
    ]
    if errors:
        _say(f"scenarios with errors: {', '.join(errors)}")
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
