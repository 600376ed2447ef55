"""The dashboard: the queue, the loops and the profiles as /metrics reads them, and the last
24 hours of sent, failed and bounced per profile as a server-rendered SVG chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console.deps import PartsDep
from app.console.web import PREFIX, ConsoleRoute, ConsoleUser, render
from app.db import utcnow
from app.delivery import liveness
from app.events import service as events
from app.messages import bounds
from app.servers import service as servers

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

CHART_TYPES = ("sent", "failed", "bounced")
BAR_HEIGHT, BAR_GAP, LABEL_WIDTH, CHART_WIDTH = 14, 10, 140, 640


@dataclass(frozen=True, slots=True)
class Bar:
    type: str
    x: float
    width: float
    count: int


@dataclass(frozen=True, slots=True)
class Row:
    profile: str
    y: int
    bars: list[Bar]


def chart(counts: dict[str, dict[str, int]]) -> tuple[list[Row], int]:
    """Stacked horizontal bars, one row per profile, scaled to the busiest: (rows, height)."""
    top = max((sum(c.values()) for c in counts.values()), default=0) or 1
    scale = (CHART_WIDTH - LABEL_WIDTH - 60) / top
    rows = []
    for i, profile in enumerate(sorted(counts)):
        x = float(LABEL_WIDTH)
        bars = []
        for type_ in CHART_TYPES:
            count = counts[profile].get(type_, 0)
            if count:
                bars.append(Bar(type_, x, count * scale, count))
                x += count * scale
        rows.append(Row(profile, 20 + i * (BAR_HEIGHT + BAR_GAP), bars))
    return rows, 30 + len(rows) * (BAR_HEIGHT + BAR_GAP)


@router.get("/")
async def dashboard(request: Request, user: ConsoleUser, parts: PartsDep) -> Response:
    async with parts.sessions() as session:
        profiles = await servers.list_profiles(session, parts.profiles.box)
        if not user.is_admin:
            found = bounds.bounds_of(user)
            return render(
                request,
                "dashboard_sender.html",
                section="dashboard",
                bounds=found,
                profiles=[p for p in profiles.items if found.may_use(p.name, p.is_default)],
            )
        snapshot = await liveness.snapshot(session)
        counts = await events.counts_by_profile(
            session, utcnow() - timedelta(hours=24), CHART_TYPES
        )
    rows, height = chart({p: dict(c) for p, c in counts.items()})
    return render(
        request,
        "dashboard.html",
        section="dashboard",
        snapshot=snapshot,
        failing=[p for p in profiles.items if p.health.status == "failing"],
        rows=rows,
        height=height,
        width=CHART_WIDTH,
        label_width=LABEL_WIDTH,
        counts=counts,
        types=CHART_TYPES,
    )
