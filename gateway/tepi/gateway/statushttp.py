"""The status API's HTTP side, on aiohttp: the routes, and Prometheus's text format.

`tepi.gateway.statusapi` owns the sockets and imports this module only when the first
connection comes: aiohttp costs about 10 MB of RSS, which a box that nobody asks never pays
(docs/performance.md#memory). For the same reason prometheus-client is imported at the first
``/metrics`` scrape, not with this module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tepi.core.errors import DeviceError
from tepi.gateway.dashauth import LOOPBACK_HOSTS, host_allowed
from tepi.gateway.health import Health
from tepi.gateway.statusapi import AlarmAccess, CameraAccess, ConfigAccess

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("tepi.gateway.statusapi")  # one logger for the whole status API


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


def prometheus_renderer(health: Callable[[], Health]) -> Callable[[], bytes]:
    """The ``/metrics`` body maker: one health snapshot per scrape, in Prometheus's text
    format. Imports prometheus-client; call it off the event loop the first time."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    from tepi.gateway.health import prometheus

    class HealthCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from prometheus(health())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector())
    return lambda: generate_latest(registry)


class StatusApp:
    """The routes of the status API (its docstring) for one agent, on sockets it is given."""

    def __init__(  # noqa: PLR0917 - the app's parts, the last ones optional
        self,
        health: Callable[[], Health],
        devices: Callable[[], dict[str, Any]],
        cameras: CameraAccess | None = None,
        alarms: AlarmAccess | None = None,
        config: ConfigAccess | None = None,
        dashboard: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self._config = config
        self._dashboard = dashboard
        self._health = health
        self._devices = devices
        self._cameras = cameras
        self._alarms = alarms
        self._metrics: Callable[[], bytes] | None = None
        self._metrics_lock = asyncio.Lock()
        self._failing: set[str] = set()  # routes whose last request failed (logged once)
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/devices", self._get_devices)
        app.router.add_post("/cameras/{camera}/snapshot", self._post_snapshot)
        app.router.add_get("/images/{seq:[0-9]{1,18}}", self._get_image)
        app.router.add_get("/alarms", self._get_alarms)
        app.router.add_post("/alarms/{rule}/ack", self._post_ack)
        app.router.add_post("/config/{action:get|apply|rollback}", self._post_config)
        app.router.add_get("/dashboard", self._get_dashboard)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, listening: list[socket.socket], accepted: list[socket.socket]) -> None:
        """Serve the connections already accepted, then everything the listening sockets get
        (they belong to aiohttp from here on; ``runner.cleanup()`` closes them)."""
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        for conn in accepted:
            await loop.connect_accepted_socket(server, conn)
        for sock in listening:
            await web.SockSite(self.runner, sock).start()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A handler's bug fails that request (500), never the agent; its traceback is
        logged the first time in a row the route fails, its recovery as info."""
        # Over TCP (loopback), the Host must be the box: DNS rebinding (module docstring).
        if isinstance(request.transport and request.transport.get_extra_info("sockname"), tuple):
            host = request.headers.get("Host")
            if not host_allowed(host, LOOPBACK_HOSTS, any_ip=False):
                return _error(403, "Host not allowed: ask http://127.0.0.1:PORT")
        # Keyed by the route matched, not the path asked: a path is the client's text.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException:
            raise
        except Exception as err:  # one request's failure: a 500, logged
            if route not in self._failing:
                self._failing.add(route)
                log.error("status API %s failed: %s", route, err, exc_info=err)
            return web.Response(status=500, text="internal error\n")
        if route in self._failing:
            self._failing.discard(route)
            log.info("status API %s answers again", route)
        return resp

    async def _get_health(self, _req: web.Request) -> web.Response:
        return _json(self._health().payload())

    async def _get_dashboard(self, _req: web.Request) -> web.Response:
        info = self._dashboard() if self._dashboard is not None else None
        if info is None:
            return _error(404, "the web console is off (dashboard.listen)")
        return _json(info)

    async def _get_devices(self, _req: web.Request) -> web.Response:
        return _json(self._devices())

    async def _post_snapshot(self, req: web.Request) -> web.Response:
        """A snapshot now: ``{"seq", "thumbnail", "width", "height", "size", "path"}``;
        404 for a device that is not a camera, 503 when the camera gives no frame, 507 when
        the image buffer refuses it (each with ``{"error": ...}``)."""
        if self._cameras is None:
            return _error(404, "no cameras configured")
        reason = req.query.get("reason", "request")[:64]
        try:
            out = await self._cameras.snapshot(req.match_info["camera"], reason)
        except KeyError:
            return _error(404, f"no camera {req.match_info['camera']!r} in the config")
        except DeviceError as err:
            return _error(503, f"the camera gave no picture: {err}")
        except OSError as err:
            return _error(507, f"the image buffer did not keep it: {err}")
        return _json(out)

    async def _get_alarms(self, _req: web.Request) -> web.Response:
        """``{"alarms": [...]}``: each rule's alarm, firing first; 404 without rules."""
        if self._alarms is None:
            return _error(404, "no rules configured")
        try:
            return _json(await self._alarms.list())
        except LookupError as err:
            return _error(404, str(err))

    async def _post_ack(self, req: web.Request) -> web.Response:
        """Acknowledge a rule's alarm: ``{"acknowledged": rule}``; 404 when it has none, 409
        when it is already acknowledged (until it fires again)."""
        rule = req.match_info["rule"]
        by = req.query.get("by", "local")[:64] or "local"
        if self._alarms is None:
            return _error(404, "no rules configured")
        try:
            done = await self._alarms.ack(rule, by)
        except LookupError as err:
            return _error(404, str(err))
        if not done:
            return _error(409, f"the alarm of {rule} is already acknowledged")
        return _json({"acknowledged": rule, "by": by})

    async def _post_config(self, req: web.Request) -> web.Response:
        """A config command (``tepi config``): its result, after the trial; 400 for a body
        that is not a JSON object."""
        if self._config is None:
            return _error(404, "the agent runs without a config file")
        try:
            args = await req.json() if req.can_read_body else {}
        except ValueError:
            return _error(400, "the body must be a JSON object (the command's args)")
        if not isinstance(args, dict):
            return _error(400, "the body must be a JSON object (the command's args)")
        return _json(await self._config(req.match_info["action"], args))

    async def _get_image(self, req: web.Request) -> web.Response:
        """An image of the image buffer, while it is there (until the broker has it)."""
        if self._cameras is None:
            return _error(404, "no cameras configured")
        found = await self._cameras.image(int(req.match_info["seq"]))
        if found is None:
            return _error(404, "no such image (sent and deleted, or dropped)")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    async def _get_metrics(self, _req: web.Request) -> web.Response:
        async with self._metrics_lock:
            if self._metrics is None:
                self._metrics = await asyncio.to_thread(prometheus_renderer, self._health)
        return web.Response(body=self._metrics(), content_type="text/plain", charset="utf-8")
