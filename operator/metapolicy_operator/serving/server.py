"""The HTTP side: kube-scheduler's extender verbs, probes and metrics (aiohttp).

- `POST /scheduler/prioritize`: ExtenderArgs -> HostPriorityList, always HTTP 200 for a
  readable request (whatever goes wrong after that becomes heuristic scores);
- `POST /scheduler/filter`: ExtenderArgs -> ExtenderFilterResult;
- a body that is not an ExtenderArgs: HTTP 400 with the reason in `Error`;
- `/healthz` (the process answers), `/readyz` (the caches hold their first lists),
  `/metrics`; also on the separate metrics port, if one is set.

Each prioritize answer also says in headers which policy and version scored it
(`X-Metapolicy-Policy`, `X-Metapolicy-Version`, `X-Metapolicy-Outcome`): kube-scheduler ignores
them, people and the benchmark read them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from metapolicy_operator.serving.metrics import ServeMetrics
from metapolicy_operator.serving.placer import Answer, FilterAnswer, Placer
from metapolicy_operator.serving.scores import neutral_scores
from metapolicy_operator.serving.wire import (
    BadRequest,
    ExtenderArgs,
    filter_error,
    filter_result,
    host_priority_list,
    parse_args,
)

log = logging.getLogger(__name__)

PRIORITIZE_PATH = "/scheduler/prioritize"
FILTER_PATH = "/scheduler/filter"
MAX_BODY = 64 * 2**20  # full Node objects of a large cluster (nodeCacheCapable: false)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


class PlacementServer:
    def __init__(
        self,
        placer: Placer,
        metrics: ServeMetrics,
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.placer = placer
        self.metrics = metrics
        self.ready = ready

    def app(self) -> web.Application:
        """The extender verbs, the probes and /metrics."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PRIORITIZE_PATH, self.prioritize)
        app.router.add_post(FILTER_PATH, self.filter)
        self._add_probes(app)
        return app

    def probes_app(self) -> web.Application:
        """The probes and /metrics only, for the metrics port."""
        app = web.Application()
        self._add_probes(app)
        return app

    def _add_probes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.scrape)

    # ----- extender verbs -------------------------------------------------------------------
    async def prioritize(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        args = await self._read(request, "prioritize")
        if isinstance(args, web.Response):
            return args
        try:
            answer = await self.placer.prioritize(args, started)
        except Exception:  # the placer fails open itself; this is the last guard
            log.exception("prioritize failed; answering neutral scores")
            answer = Answer(
                neutral_scores(len(args.names)), "neutral", fallbacks=["internal_error"]
            )
        self._count("prioritize", answer.outcome, answer.policy, answer.fallbacks)
        if answer.decided is not None:
            self.metrics.decisions.labels(answer.policy, answer.decided).inc()
        headers = {"X-Metapolicy-Outcome": answer.outcome}
        if answer.policy:
            headers["X-Metapolicy-Policy"] = answer.policy
        if answer.version is not None:
            headers["X-Metapolicy-Version"] = str(answer.version)
        response = _json(host_priority_list(args.names, answer.scores.tolist()), headers=headers)
        self.metrics.duration.labels("prioritize").observe(time.perf_counter() - started)
        return response

    async def filter(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        args = await self._read(request, "filter")
        if isinstance(args, web.Response):
            return args
        try:
            answer = self.placer.filter(args)
        except Exception:
            log.exception("filter failed; every node passes")
            everything = list(range(len(args.names)))
            answer = FilterAnswer(everything, {}, "fallback", fallbacks=["internal_error"])
        self._count("filter", answer.outcome, answer.policy, answer.fallbacks)
        response = _json(filter_result(args, answer.passing, answer.failed))
        self.metrics.duration.labels("filter").observe(time.perf_counter() - started)
        return response

    async def _read(self, request: web.Request, verb: str) -> ExtenderArgs | web.Response:
        started = time.perf_counter()
        try:
            return parse_args(await request.read())
        except BadRequest as error:
            self.metrics.requests.labels(verb, "bad_request").inc()
            self.metrics.duration.labels(verb).observe(time.perf_counter() - started)
            log.warning("%s: bad request: %s", verb, error)
            body = filter_error(str(error)) if verb == "filter" else {"Error": str(error)}
            return _json(body, status=400)

    def _count(self, verb: str, outcome: str, policy: str, fallbacks: list[str]) -> None:
        self.metrics.requests.labels(verb, outcome).inc()
        for reason in fallbacks:
            self.metrics.fallbacks.labels(policy, reason).inc()

    # ----- probes ---------------------------------------------------------------------------
    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        ok, message = self.ready()
        return web.Response(status=200 if ok else 503, text=message + "\n")

    async def scrape(self, _: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
