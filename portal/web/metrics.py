"""Prometheus metrics for the web process, exposed at ``/metrics``.

The metric objects live at module level because prometheus-client's default
registry refuses a second registration of the same name, and tests build
several apps in one process. Latency is labelled by route template, never by
the raw path, so image ids do not explode the number of series.
"""

from __future__ import annotations

import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from portal.store.models import Job, JobKind, JobState, Role
from portal.store.services import users

# Interactive latencies live between a few ms and tens of seconds (a first encode on a CPU).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUEST_SECONDS = Histogram(
    "medsam_http_request_duration_seconds",
    "HTTP request latency by route template",
    ("method", "route", "status"),
    buckets=_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "medsam_segment_decode_seconds",
    "Prompt encoder + mask decoder + post-processing time in the web process",
    buckets=_BUCKETS,
)
ENCODE_WAIT_SECONDS = Histogram(
    "medsam_segment_encode_wait_seconds",
    "Time a prompt waited for a worker to encode its image (cache misses only)",
    buckets=_BUCKETS,
)
SEGMENTS = Counter("medsam_segment_requests_total", "Prompts answered, by embedding cache outcome", ("cache",))
QUEUE_DEPTH = Gauge("medsam_queue_depth", "Jobs waiting in the queue, from the job rows", ("queue",))
ENCODES_IN_FLIGHT = Gauge("medsam_encodes_in_flight", "Encodes the web process is waiting for")


class RequestTimer:
    """Pure ASGI middleware: cheaper than BaseHTTPMiddleware, and it sees the matched route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_with_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            REQUEST_SECONDS.labels(scope.get("method", ""), template, str(status["code"])).observe(
                time.perf_counter() - start
            )


router = APIRouter(tags=["health"])


def _may_scrape(request: Request) -> bool:
    """Open only when MEDSAM_METRICS_PUBLIC says so; otherwise the scrape token or an admin's API token.

    Route names, queue depths and traffic say more about a deployment than it should tell strangers.
    """
    settings = request.app.state.settings
    if settings.metrics_public:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    if settings.metrics_token and hmac.compare_digest(token.encode(), settings.metrics_token.encode()):
        return True
    with request.app.state.store.transaction() as session:
        user = users.user_for_token(session, token)
        return user is not None and user.role == Role.admin


TRAINING_KINDS = (JobKind.finetune, JobKind.evaluate)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    if not _may_scrape(request):
        return Response(
            "metrics need 'Authorization: Bearer <MEDSAM_METRICS_TOKEN>' (or an admin's API token); "
            "set MEDSAM_METRICS_PUBLIC=true to serve them openly\n",
            status_code=401,
            media_type="text/plain",
            headers={"WWW-Authenticate": "Bearer"},
        )
    store = request.app.state.store
    try:
        with store.transaction() as session:
            queued = select(func.count()).select_from(Job).where(Job.state == JobState.queued)
            training = Job.kind.in_(TRAINING_KINDS)  # evaluations run on the training queue too
            QUEUE_DEPTH.labels("inference").set(session.scalar(queued.where(~training)))
            QUEUE_DEPTH.labels("training").set(session.scalar(queued.where(training)))
    except Exception:  # noqa: BLE001 - a scrape must still answer while the database is down
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
