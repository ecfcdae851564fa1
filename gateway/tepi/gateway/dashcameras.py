"""The console's cameras: each camera's latest snapshot, its health and the images waiting;
for an admin, privacy masks, counting lines and zones drawn on the snapshot.

- **The picture** is the camera's last stored snapshot, as the image buffer holds it: masks
  already filled, so the console never shows what a mask hides (a new mask is drawn on top
  of the old ones, which show as filled areas). A snapshot the broker has acknowledged is
  gone from the buffer; "Take a snapshot" stores a new one, as ``tepi snapshot`` does (it
  goes to the IOC too, with reason ``dashboard``). Any user may take one: it is a look, and
  the IOC is told who looked (the audit line).
- **Drawing** (``cameras.js``): the shapes (masks, ignore areas, lines, zones) are points
  in 0..1 of the image (the config's own units), edited in the browser and posted as one
  JSON document (:func:`parse_geometry` bounds and checks it). Saving puts them in the
  running config's text (:func:`with_geometry`: the device's ``masks``, its
  ``analytics.ignore``, ``analytics.lines`` and ``analytics.zones``) and applies that as
  the config page does: checked as ``tepi check`` checks a file, on trial, rolled back
  unless confirmed, audited with the user. Once it is confirmed, a snapshot is taken, so
  the page shows the new masks applied by the agent itself, not by the page.
- A zone's queue (its ``stop_line``, drawn, and ``length_m``, typed) is set on the page
  too; the analytics' other settings are left as they are. Analytics are turned on (with their
  defaults) when the first ignore area, line or zone is drawn on a camera without them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
import yaml
from aiohttp import web

from tepi.core.errors import DeviceError
from tepi.gateway.dashadmin import outcome_of
from tepi.gateway.dashpages import NONE, ago, e, size, state_badge, value_text
from tepi.gateway.dashtext import t
from tepi.gateway.logring import redact

if TYPE_CHECKING:
    from tepi.gateway.dashauth import Session
    from tepi.gateway.dashhttp import DashApp

__all__ = ["CameraPages", "camera_geometry", "parse_geometry", "with_geometry"]

audit = logging.getLogger("tepi.audit")

MAX_SHAPES = 32  # of each kind, per camera
MAX_POINTS = 64  # a polygon's
MAX_BODY = 48 * 1024
SNAPSHOT_WAIT_S = 20.0  # the longest a page waits for a snapshot (the camera's timeout is less)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _point(p: Any, what: str) -> list[float]:
    ok = (
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
    )
    if not ok or not all(math.isfinite(v) and 0 <= v <= 1 for v in p):
        raise ValueError(t("cam.bad_point", what=what))
    return [round(float(p[0]), 4), round(float(p[1]), 4)]


def _points(ps: Any, what: str, lo: int, hi: int) -> list[list[float]]:
    if not isinstance(ps, list) or not lo <= len(ps) <= hi:
        raise ValueError(t("cam.bad_points", what=what, lo=lo, hi=hi))
    return [_point(p, what) for p in ps]


def _name(x: Any, what: str) -> str:
    name = x.get("name") if isinstance(x, dict) else None
    if not isinstance(name, str) or not 0 < len(name) <= 32 or not set(name) <= _NAME_CHARS:
        raise ValueError(t("cam.bad_name", what=what))
    return name


def parse_geometry(body: str) -> dict[str, Any]:
    """The shapes a page posted, checked and bounded: ``{"masks": [[[x, y], ...], ...],
    "ignore": [[[x, y], ...], ...], "lines": [{"name", "points"}], "zones": [{"name",
    "polygon", "stop_line"?, "length_m"?}]}``. ValueError, worded for
    the page, when it is not that."""
    if len(body) > MAX_BODY:
        raise ValueError(t("cam.too_big"))
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError(t("cam.not_geometry")) from None
    if not isinstance(doc, dict) or set(doc) - {"masks", "ignore", "lines", "zones"}:
        raise ValueError(t("cam.not_geometry"))
    masks, ignore, lines, zones = (doc.get(k, []) for k in ("masks", "ignore", "lines", "zones"))
    for shapes in (masks, ignore, lines, zones):
        if not isinstance(shapes, list) or len(shapes) > MAX_SHAPES:
            raise ValueError(t("cam.too_many", n=MAX_SHAPES))
    out: dict[str, Any] = {
        "masks": [_points(m, f"mask {i + 1}", 3, MAX_POINTS) for i, m in enumerate(masks)],
        "ignore": [_points(m, f"ignore {i + 1}", 3, MAX_POINTS) for i, m in enumerate(ignore)],
        "lines": [],
        "zones": [],
    }
    for i, x in enumerate(lines):
        name = _name(x, f"line {i + 1}")
        out["lines"].append({"name": name, "points": _points(x.get("points"), name, 2, 2)})
    for i, z in enumerate(zones):
        name = _name(z, f"zone {i + 1}")
        zone: dict[str, Any] = {
            "name": name,
            "polygon": _points(z.get("polygon"), name, 3, MAX_POINTS),
        }
        if z.get("stop_line") is not None:
            zone["stop_line"] = _points(z["stop_line"], f"{name} stop line", 2, 2)
        if z.get("length_m") is not None:
            length = z["length_m"]
            ok = isinstance(length, int | float) and not isinstance(length, bool)
            if not ok or not (math.isfinite(length) and 0 < length <= 10000):
                raise ValueError(t("cam.bad_length", what=name))
            zone["length_m"] = round(float(length), 2)
        out["zones"].append(zone)
    for kind in ("lines", "zones"):
        names = [x["name"] for x in out[kind]]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(t("cam.named_twice", names=", ".join(twice)))
    return out


def with_geometry(running: str, camera: str, geometry: dict[str, Any]) -> str:
    """The running config's text with ``camera``'s masks, lines and zones replaced by
    ``geometry`` (from :func:`parse_geometry`). ValueError when the camera is not a device of
    that text (it may come from an included file: then it is edited on the config page), or
    the text is not YAML."""
    try:
        cfg = yaml.safe_load(running)
    except yaml.YAMLError as err:  # the running file as it is on disk (changed by hand?)
        raise ValueError(t("com.not_yaml", error=str(err).splitlines()[0])) from None
    devices = cfg.get("devices") if isinstance(cfg, dict) else None
    dev = next((d for d in devices or [] if isinstance(d, dict) and d.get("id") == camera), None)
    if dev is None:
        raise ValueError(t("cam.not_in_file", camera=camera))
    if geometry["masks"]:
        dev["masks"] = geometry["masks"]
    else:
        dev.pop("masks", None)
    analytics = dev.get("analytics")
    if analytics is None and (geometry["ignore"] or geometry["lines"] or geometry["zones"]):
        analytics = dev["analytics"] = {}
    if isinstance(analytics, dict):
        for key in ("ignore", "lines", "zones"):
            analytics.pop(key, None)
        if geometry["ignore"]:
            analytics["ignore"] = geometry["ignore"]
        if geometry["lines"]:
            analytics["lines"] = geometry["lines"]
        if geometry["zones"]:
            analytics["zones"] = geometry["zones"]
    return str(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def camera_geometry(dev: Any) -> dict[str, Any]:
    """A camera's configured masks, lines and zones (a `CameraConfig`), as the page draws
    them."""
    a = dev.analytics
    return {
        "masks": [[list(p) for p in m] for m in dev.masks],
        "ignore": [] if a is None else [[list(p) for p in m] for m in a.ignore],
        "lines": [] if a is None else [{"name": x.name, "points": [list(p) for p in x.points]}
                                       for x in a.lines],
        "zones": [] if a is None else [_zone(z) for z in a.zones],
    }  # fmt: skip


def _zone(z: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": z.name, "polygon": [list(p) for p in z.polygon]}
    if z.stop_line is not None:
        out["stop_line"] = [list(p) for p in z.stop_line]
    if z.length_m is not None:
        out["length_m"] = z.length_m
    return out


# ---- pages ---------------------------------------------------------------------------------


def _images_card(images: Any) -> str:
    if images is None:
        return ""
    waiting = ", ".join(f"{k} {c.count:,}" for k, c in sorted(images.by_class.items()) if c.count)
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(images.dropped.items()) if v)
    rows = (
        (t("cam.waiting"), f"{images.count:,} ({size(images.bytes)})"),
        (t("cam.waiting_by_class"), waiting or t("ov.none")),
        (t("cam.waiting_for"), images.waiting_for or t("ov.none")),
        (t("cam.sent"), f"{images.sent:,} ({size(images.bytes_sent)})"),
        (t("cam.dropped"), dropped or t("ov.none")),
    )
    dl = "".join(f"<div><dt>{k}</dt><dd>{e(v)}</dd></div>" for k, v in rows)
    return f'<section class="card"><h2>{t("cam.images")}</h2><dl>{dl}</dl></section>'


def cameras_page(cameras: dict[str, Any], images: Any) -> str:
    """One row per camera: its state and reason (the health checks), its snapshots; then
    the image buffer."""
    if not cameras:
        return f'<section class="card"><h1>{t("cam.title")}</h1><p>{t("cam.none")}</p></section>'
    rows = "".join(
        f'<tr data-camera="{e(cam)}"><td><a href="/cameras/{e(quote(cam, safe=""))}">'
        f"{e(cam)}</a></td><td>{state_badge(d)}</td>"
        f'<td data-label="{t("cam.health")}">{e(_health_words(d))}</td>'
        f'<td data-label="{t("cam.snapshots")}">{e(d["protocol"].get("snapshots", 0))}</td></tr>'
        for cam, d in cameras.items()
    )
    head = "".join(
        f"<th>{t(k)}</th>" for k in ("cam.camera", "dev.state", "cam.health", "cam.snapshots")
    )
    return (
        f'<section class="card"><h1>{t("cam.title")}</h1><table class="list cameras"><thead>'
        f"<tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>" + _images_card(images)
    )


def _health_words(d: dict[str, Any]) -> str:
    p = d.get("protocol") or {}
    state, reason = p.get("state"), p.get("reason")
    if state == "ok":
        return t("cam.healthy")
    return f"{state}: {reason}" if reason else str(state or NONE)


def camera_page(
    cam: str,
    d: dict[str, Any],
    geometry: dict[str, Any],
    shot: int | None,
    *,
    admin: bool,
    csrf: str,
    message: str | None = None,
    ok: bool = True,
    errors: tuple[str, ...] = (),
) -> str:
    """The snapshot with the shapes drawn over it (``cameras.js``); for an admin, the tools
    and the save form; the health checks and the camera's readings."""
    p = d.get("protocol") or {}
    esc = e(quote(cam, safe=""))
    result = ""
    if message:
        items = "".join(f"<li><code>{e(x)}</code></li>" for x in errors)
        result = (
            f'<section class="card result" data-ok="{"ok" if ok else "bad"}" role="status">'
            f'<p class="{"ok" if ok else "error"}">{e(message)}</p>'
            + (f'<ul class="problems cfg-errors">{items}</ul>' if items else "")
            + "</section>"
        )
    picture = (
        f'<img class="shot" src="/cameras/{esc}/image.jpg?seq={shot}" '
        f'alt="{e(t("cam.alt", camera=cam))}">'
        if shot is not None
        else f'<p class="no-shot">{t("cam.no_shot")}</p>'
    )
    snap_form = (
        f'<form method="post" action="/cameras/{esc}/snapshot" class="inline snap">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<button type="submit" class="secondary" data-busy="{e(t("cam.taking"))}">'
        f"{t('cam.take')}</button></form>"
    )
    tools = ""
    if admin:
        tool_buttons = "".join(
            f'<button type="button" data-tool="{k}" aria-pressed="false">{t("cam.tool_" + k)}'
            "</button>"
            for k in ("mask", "ignore", "line", "zone")
        )
        tools = (
            f'<form method="post" action="/admin/cameras/{esc}/geometry" class="geometry">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<input type="hidden" name="geometry" value="">'
            f'<div class="tools" role="toolbar" aria-label="{t("cam.tools")}">{tool_buttons}'
            f'<button type="button" class="close-shape" disabled>{t("cam.close_shape")}</button>'
            f'<button type="button" class="undo" disabled>{t("cam.undo")}</button></div>'
            f'<p class="hint tool-hint" data-mask="{e(t("cam.hint_mask"))}" '
            f'data-ignore="{e(t("cam.hint_ignore"))}" data-stop="{e(t("cam.hint_stop"))}" '
            f'data-line="{e(t("cam.hint_line"))}" data-zone="{e(t("cam.hint_zone"))}" '
            f'data-none="{e(t("cam.hint_none"))}">{t("cam.hint_none")}</p>'
            f'<ul class="shapes" data-mask="{e(t("cam.shape_mask"))}" '
            f'data-ignore="{e(t("cam.shape_ignore"))}" '
            f'data-line="{e(t("cam.shape_line"))}" data-zone="{e(t("cam.shape_zone"))}" '
            f'data-delete="{e(t("cam.delete"))}" data-name="{e(t("cam.name"))}" '
            f'data-length="{e(t("cam.length"))}" data-stop-draw="{e(t("cam.stop_draw"))}" '
            f'data-stop-remove="{e(t("cam.stop_remove"))}"></ul>'
            f'<div class="buttons"><button type="submit" data-busy="{e(t("cam.saving"))}">'
            f"{t('cam.save')}</button></div></form>"
            f'<p class="hint">{t("cam.save_hint")}</p>'
        )
    readings = "".join(
        f"<div><dt>{e(m)}</dt><dd>{e(value_text(v))}</dd></div>"
        for m, v in (d.get("last") or {}).items()
    )
    facts = (
        (t("cam.health"), _health_words(d)),
        (t("cam.snapshots"), p.get("snapshots", 0)),
        (t("cam.snapshot_errors"), p.get("snapshot_errors", 0)),
        (t("dev.last_ok"), ago(d.get("last_ok_ts"))),
        (t("dev.last_error"), d.get("last_error") or NONE),
    )
    fact_rows = "".join(f"<div><dt>{k}</dt><dd>{e(v)}</dd></div>" for k, v in facts)
    return (
        f"{result}"
        f'<section class="card camera"><h1>{e(cam)} {state_badge(d)}</h1>'
        f'<div class="stage" data-geometry="{e(orjson.dumps(geometry).decode())}">'
        f'{picture}<svg class="overlay" viewBox="0 0 1 1" preserveAspectRatio="none" '
        f'role="img" aria-label="{e(t("cam.overlay"))}"></svg></div>'
        f'<p class="hint">{t("cam.legend")}</p>{snap_form}{tools}</section>'
        f'<div class="grid"><section class="card"><h2>{t("cam.health")}</h2><dl>{fact_rows}'
        f'</dl></section><section class="card"><h2>{t("dev.metrics")}</h2>'
        f"<dl>{readings or NONE}</dl></section></div>"
    )


class CameraPages:
    """The camera routes of one console (registered by `tepi.gateway.dashhttp`)."""

    def __init__(self, app: DashApp) -> None:
        self.app = app
        self.shots: dict[str, int] = {}  # camera -> the last snapshot taken from the console

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/cameras", self.get_list)
        r.add_get("/cameras/{camera}", self.get_camera)
        r.add_get("/cameras/{camera}/image.jpg", self.get_image)
        r.add_post("/cameras/{camera}/snapshot", self.post_snapshot)
        r.add_post("/admin/cameras/{camera}/geometry", self.post_geometry)

    def _cameras(self) -> dict[str, Any]:
        return {
            k: d
            for k, d in self.app.access.devices().items()
            if (d.get("protocol") or {}).get("kind") == "camera"
        }

    def _camera(self, req: web.Request) -> tuple[str, dict[str, Any]]:
        cam = req.match_info["camera"]
        d = self._cameras().get(cam)
        if d is None:
            raise web.HTTPNotFound(text=t("cam.unknown", camera=cam))
        return cam, d

    def _shot(self, cam: str, d: dict[str, Any]) -> int | None:
        """The newest snapshot of ``cam`` the console knows of."""
        seqs = [s for s in (self.shots.get(cam), d["protocol"].get("last_snapshot_seq")) if s]
        return max(seqs) if seqs else None

    async def get_list(self, req: web.Request) -> web.Response:
        body = cameras_page(self._cameras(), self.app.access.health().images)
        return self.app.page(req, t("cam.title"), "cameras", body)

    async def get_camera(self, req: web.Request) -> web.Response:
        return await self._page(req)

    async def _page(
        self,
        req: web.Request,
        message: str | None = None,
        *,
        ok: bool = True,
        errors: tuple[str, ...] = (),
        status: int = 200,
    ) -> web.Response:
        cam, d = self._camera(req)
        session: Session = req["session"]
        actions = self.app.actions()
        dev = actions.device(cam)
        geometry = camera_geometry(dev) if dev is not None else {}
        shot = self._shot(cam, d)
        if shot is not None and await self._image(shot) is None:
            shot = None  # acknowledged and deleted: "take a snapshot" says so
        if message is None and req.query.get("taken"):
            message = t("cam.taken", seq=req.query["taken"])
        body = camera_page(
            cam, d, geometry, shot, admin=session.role == "admin", csrf=session.csrf,
            message=message, ok=ok, errors=errors,
        )  # fmt: skip
        resp = self.app.page(req, cam, "cameras", body)
        resp.set_status(status)
        return resp

    async def _image(self, seq: int) -> bytes | None:
        cams = self.app.access.cameras
        if cams is None:
            return None
        got = await cams.image(seq)
        return None if got is None else got[0]

    async def get_image(self, req: web.Request) -> web.Response:
        """The camera's newest snapshot (``?seq=`` names it, for the browser's cache); only a
        snapshot of this camera, never any other image of the buffer."""
        cam, d = self._camera(req)
        shot = self._shot(cam, d)
        if shot is None or req.query.get("seq", str(shot)) != str(shot):
            raise web.HTTPNotFound(text=t("cam.no_shot"))
        data = await self._image(shot)
        if data is None:
            raise web.HTTPNotFound(text=t("cam.no_shot"))
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "private, no-store"}
        )

    async def _snapshot(self, cam: str, user: str) -> tuple[bool, str]:
        cams = self.app.access.cameras
        if cams is None:
            raise web.HTTPNotFound(text=t("cam.none"))
        audit.info("dashboard: %s takes a snapshot of %s", user, cam)
        try:
            async with asyncio.timeout(SNAPSHOT_WAIT_S):
                got = await cams.snapshot(cam, "dashboard")
        except (DeviceError, OSError, KeyError, TimeoutError) as err:
            return False, t("cam.snapshot_failed", error=str(err) or type(err).__name__)
        self.shots[cam] = int(got["seq"])
        return True, str(got["seq"])

    async def post_snapshot(self, req: web.Request) -> web.Response:
        cam, _ = self._camera(req)
        session: Session = req["session"]
        ok, said = await self._snapshot(cam, session.user)
        if not ok:
            return await self._page(req, said, ok=False)
        raise web.HTTPSeeOther(f"/cameras/{quote(cam, safe='')}?taken={said}")

    async def post_geometry(self, req: web.Request) -> web.Response:
        cam, _ = self._camera(req)
        actions = self.app.actions()
        session: Session = req["session"]
        form = await req.post()
        path = actions.agent.config_path
        if path is None or not actions.can_apply:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        try:
            geometry = parse_geometry(str(form.get("geometry", "")))
            running = await asyncio.to_thread(path.read_text, encoding="utf-8")
            text = with_geometry(running, cam, geometry)
        except ValueError as err:
            return await self._page(req, str(err), ok=False, status=400)
        audit.info(
            "dashboard: %s draws on camera %s: %d mask(s), %d ignore area(s), %d line(s), "
            "%d zone(s)",
            session.user, cam, *(len(geometry[k]) for k in ("masks", "ignore", "lines", "zones")),
        )  # fmt: skip
        outcome = outcome_of(await actions.apply(redact(text), session.user))
        if not outcome.ok:
            return await self._page(req, outcome.message, ok=False, errors=outcome.errors)
        # Confirmed: the camera runs with the new config. A snapshot now shows it applied.
        took, said = await self._snapshot(cam, session.user)
        message = outcome.message + " " + (t("cam.shot_after", seq=said) if took else said)
        return await self._page(req, message, ok=took)
