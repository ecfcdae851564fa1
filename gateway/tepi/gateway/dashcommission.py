"""The console's commissioning page (admin): ``tepi scan`` and ``tepi read`` as forms, and
"add this device" through the config page's apply path.

- **Scan** streams its progress as Server-Sent Events (``/admin/commission/scan``, opened
  by ``commission.js``): one event per unit asked, then the end. It is the CLI's own scan
  (`tepi.drivers.modbus.tools.scan`), on the agent's own Modbus link. A serial port a
  configured device uses is refused: two masters on one line garble each other. The form's
  CSRF token rides in the query (an EventSource can only GET).
- **Read** is one request: every decoding of the registers, as ``tepi read`` prints them.
- **Profiles**: the register maps the box knows (``tepi profiles``); one chosen in the add
  form is the new device's ``profile``.
- **Add this device** takes a device's YAML (prefilled from the form: a unit found, its port,
  a register read), appends it to the running config's ``devices`` and applies the result as
  the config page does (checked, on trial, rolled back unless confirmed, audited with the
  user). Refused, it opens the config page with the whole text and its problems, so the
  lines they name are the lines shown. The version applied is YAML written anew: the
  running file's comments are not in it (the base file keeps them).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from aiohttp import web

from tepi.core.errors import DeviceError
from tepi.drivers.modbus.link import ExceptionReply
from tepi.drivers.modbus.profile import load_profile, profile_names
from tepi.drivers.modbus.tools import BAUD_RATES, Decodings, Port, read, scan
from tepi.gateway.dashpages import e
from tepi.gateway.dashtext import t
from tepi.gateway.logring import redact
from tepi.gateway.modbustool import table, units_arg

if TYPE_CHECKING:
    from tepi.gateway.dashauth import Session
    from tepi.gateway.dashhttp import DashApp

__all__ = ["Commissioning", "device_yaml", "with_device"]

MAX_TIMEOUT_S = 5.0
TABLES = ("holding", "input", "coil", "discrete")


def device_yaml(port: Port, unit: int, address: int, table_name: str, baud: int) -> str:
    """A device for ``unit`` on ``port``, with the register read, to edit before adding."""
    dev: dict[str, Any] = {"id": f"unit-{unit}"}
    if port.serial:
        dev |= {"driver": "modbus-rtu", "port": port.path, "baudrate": baud}
    else:
        dev |= {"driver": "modbus-tcp", "host": port.host, "port": port.tcp_port}
        if port.framing != "mbap":
            dev["framing"] = port.framing
    dev |= {
        "unit": unit,
        "poll_interval": "10s",
        "registers": [{"name": f"r{address}", "address": address, "table": table_name}],
    }
    return str(yaml.safe_dump([dev], sort_keys=False))


def with_device(running: str, snippet: str, profile: str | None = None) -> str:
    """The running config's text with the device(s) of ``snippet`` (YAML: one device, or a
    list of them) appended to ``devices``, each given ``profile`` when one is chosen (its
    registers come first; the YAML's add to them or change them). ValueError when it is not
    that."""
    try:
        new = yaml.safe_load(snippet)
        cfg = yaml.safe_load(running)
    except yaml.YAMLError as err:
        raise ValueError(t("com.not_yaml", error=str(err).splitlines()[0])) from None
    if isinstance(new, dict):
        new = [new]
    devices_ok = isinstance(new, list) and new and all(isinstance(d, dict) for d in new)
    if not devices_ok or not isinstance(cfg, dict):
        raise ValueError(t("com.not_device"))
    if profile:
        new = [{**d, "profile": profile} for d in new]
    cfg["devices"] = [*(cfg.get("devices") or []), *new]
    return str(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def _float(form: Any, key: str, default: float, hi: float) -> float:
    try:
        value = float(form.get(key) or default)
    except ValueError:
        raise ValueError(t("com.bad_number", field=key)) from None
    if not 0 < value <= hi:
        raise ValueError(t("com.bad_number", field=key))
    return value


def _int(form: Any, key: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(form.get(key) or default)
    except ValueError:
        raise ValueError(t("com.bad_number", field=key)) from None
    if not lo <= value <= hi:
        raise ValueError(t("com.bad_number", field=key))
    return value


def _choice(value: str, field: str, ok: Callable[[str], bool]) -> str:
    if not ok(value):
        raise ValueError(t("com.bad_number", field=field))
    return value


class Commissioning:
    """The commissioning routes of one console (registered by `tepi.gateway.dashhttp`)."""

    def __init__(self, app: DashApp) -> None:
        self.app = app
        self.scanning = asyncio.Lock()  # one scan at a time: the bus is one

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/admin/commission", self.get_page)
        r.add_get("/admin/commission/scan", self.get_scan)
        r.add_post("/admin/commission/read", self.post_read)
        r.add_post("/admin/commission/add", self.post_add)

    def _busy_port(self, port: Port) -> str | None:
        """The configured device that uses this serial port, if one does."""
        actions = self.app.access.actions
        if not port.serial or actions is None:
            return None
        for d in actions.agent.cfg.devices:
            if getattr(d, "port", None) == port.path:
                return str(d.id)
        return None

    def _port(self, form: Any) -> Port:
        text = str(form.get("port", "")).strip()
        if not text:
            raise ValueError(t("com.no_port"))
        framing = "rtu" if form.get("framing") == "rtu" else "mbap"
        try:
            port = Port.parse(text, framing)
        except ValueError as err:
            raise ValueError(str(err)) from None
        busy = self._busy_port(port)
        if busy is not None:
            raise ValueError(t("com.port_busy", port=text, device=busy))
        return port

    def _page(
        self, req: web.Request, *, result: str = "", error: str | None = None, add: str = ""
    ) -> web.Response:
        session: Session = req["session"]
        note = f'<p class="error card" role="alert">{e(error)}</p>' if error else ""
        values = dict(req.query) | dict(req.get("form", {}))
        body = commission_page(values, session.csrf, note + result, add)
        return self.app.page(req, t("com.title"), "commission", body)

    async def get_page(self, req: web.Request) -> web.Response:
        return self._page(req)

    async def get_scan(self, req: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``{"done", "total", "unit", "baud", "answer"}`` per unit
        asked, then ``{"end": true, "found": [...]}`` (or ``{"error": ...}``)."""
        session: Session = req["session"]
        q = req.query
        if not hmac.compare_digest(q.get("csrf", ""), session.csrf):
            return web.Response(status=403, text=t("err.csrf") + "\n")
        try:
            port = self._port(q)
            units = units_arg(q.get("units") or "1-247")
            baud = _choice(q.get("baud", "9600"), "baud", lambda b: b == "auto" or b.isdigit())
            bauds = list(BAUD_RATES) if baud == "auto" else [int(baud)]
            reply_s = _float(q, "timeout", 0.2, MAX_TIMEOUT_S)
        except ValueError as err:
            refused: str | None = str(err)
        else:
            refused = t("com.scan_busy") if self.scanning.locked() else None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.headers["X-Accel-Buffering"] = "no"
        await resp.prepare(req)

        async def send(msg: dict[str, Any]) -> None:
            await resp.write(b"data: " + orjson.dumps(msg) + b"\n\n")

        if refused is not None:  # said in the stream: an EventSource cannot read a 400's body
            await send({"end": True, "found": [], "error": refused})
            return resp

        found: list[dict[str, Any]] = []
        self.app.endless_request()
        async with self.scanning:
            try:
                done: dict[int | None, int] = {}
                async for p in scan(port, units, bauds, reply_s):
                    if self.app.closing.is_set():  # the agent stops: so does the scan
                        await send({"end": True, "found": found, "error": t("com.scan_stopped")})
                        return resp
                    done[p.baud] = done.get(p.baud, 0) + 1
                    if p.answer is not None:
                        found.append({"unit": p.unit, "baud": p.baud, "answer": p.answer})
                    await send(
                        {"done": done[p.baud], "total": len(units), "unit": p.unit,
                         "baud": p.baud, "answer": p.answer}
                    )  # fmt: skip
                await send({"end": True, "found": found, "text": _scan_words(port, found)})
            except DeviceError as err:
                await send({"end": True, "found": found, "error": str(err)})
            except (ConnectionResetError, ConnectionError):
                pass  # the page was closed: the scan stops with it
        return resp

    async def post_read(self, req: web.Request) -> web.Response:
        form = await req.post()
        req["form"] = {k: str(v) for k, v in form.items() if k != "csrf"}
        try:
            port = self._port(form)
            unit = _int(form, "unit", 1, 0, 255)
            address = _int(form, "address", 0, 0, 65535)
            count = _int(form, "count", 2, 1, 125)
            baud = _int(form, "baud", 9600, 1200, 115200)
            reply_s = _float(form, "timeout", 1.0, MAX_TIMEOUT_S)
            tbl = _choice(str(form.get("table", "holding")), "table", TABLES.__contains__)
        except ValueError as err:
            return self._page(req, error=str(err))
        try:
            got = await read(port, tbl, address, count, unit, baud=baud, reply_s=reply_s)
        except (DeviceError, ValueError) as err:
            return self._page(req, error=str(err))
        if isinstance(got, ExceptionReply):
            return self._page(req, error=t("com.exception", unit=unit, reason=got.reason))
        lines = (
            table(got)
            if isinstance(got, Decodings)
            else [f"{address + i:>6}  {int(b)}" for i, b in enumerate(got)]
        )
        result = (
            f'<section class="card"><h2>{e(t("com.read_result", unit=unit, port=str(port)))}'
            f'</h2><pre class="config decodings">{e(chr(10).join(lines))}</pre></section>'
        )
        return self._page(req, result=result, add=device_yaml(port, unit, address, tbl, baud))

    async def post_add(self, req: web.Request) -> web.Response:
        actions = self.app.actions()
        form = await req.post()
        snippet = str(form.get("device", "")).replace("\r\n", "\n")
        profile = str(form.get("profile", ""))
        req["form"] = {"profile": profile}
        if profile and profile not in profile_names():
            return self._page(req, error=t("com.bad_number", field="profile"), add=snippet)
        path = actions.agent.config_path
        if path is None:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        running = await asyncio.to_thread(path.read_text, encoding="utf-8")
        try:
            text = with_device(running, snippet, profile or None)
        except ValueError as err:
            return self._page(req, error=str(err), add=snippet)
        # Through the config page: its apply, its answer (the problems with their lines,
        # in the text they name, or the version confirmed).
        return await self.app.admin.apply_config(req, redact(text))


def _scan_words(port: Port, found: list[dict[str, Any]]) -> str:
    if not found:
        return t("com.none_found", port=str(port))
    return t("com.found", n=len(found), port=str(port))


def commission_page(values: dict[str, Any], csrf: str, result: str, add: str) -> str:
    """The scan and read forms (keeping what was typed), ``result`` (HTML), the add form
    holding ``add``."""

    def v(key: str, default: str = "") -> str:
        return e(values.get(key) or default)

    framing = values.get("framing") or "mbap"
    fr = "".join(
        f'<option value="{f}"{" selected" if f == framing else ""}>{f}</option>'
        for f in ("mbap", "rtu")
    )
    tbl = values.get("table") or "holding"
    tables = "".join(
        f'<option value="{x}"{" selected" if x == tbl else ""}>{x}</option>' for x in TABLES
    )
    chosen = values.get("profile") or ""
    profiles = f'<option value="">{t("com.no_profile")}</option>' + "".join(
        f'<option value="{e(n)}"{" selected" if n == chosen else ""}>{e(n)}</option>'
        for n in profile_names()
    )
    profile_rows = "".join(
        f'<tr><td><b>{e(n)}</b></td><td>{e(p.get("description", ""))}<small class="hint">'
        f"{e(', '.join(str(r.get('name')) for r in p['registers']))}</small></td></tr>"
        for n, p in ((n, load_profile(n)) for n in profile_names())
    )
    port = (
        f'<label>{t("com.port")}<input name="port" value="{v("port")}" required '
        f'placeholder="/dev/ttyUSB0, 10.0.0.5:502"></label>'
        f'<label>{t("com.framing")}<select name="framing">{fr}</select></label>'
    )
    return (
        f'<section class="card"><h1>{t("com.title")}</h1><p class="hint">{t("com.intro")}</p>'
        f'<h2>{t("com.scan")}</h2><form class="tool scan" method="get" '
        'action="/admin/commission/scan">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{port}'
        f'<label>{t("com.units")}<input name="units" value="{v("units", "1-247")}"></label>'
        f'<label>{t("com.baud")}<input name="baud" value="{v("baud", "9600")}"></label>'
        f'<label>{t("com.timeout")}<input name="timeout" value="{v("timeout", "0.2")}">'
        f'</label><button type="submit">{t("com.scan_go")}</button></form>'
        f'<div class="scan-out" hidden data-scanning="{e(t("com.scanning"))}" '
        f'data-at-baud="{e(t("com.at_baud"))}" data-answers="{e(t("com.answers"))}" '
        f'data-use="{e(t("com.use"))}" data-lost="{e(t("live.lost"))}">'
        '<progress max="1" value="0"></progress>'
        '<p class="scan-text" role="status"></p><ul class="found"></ul></div>'
        f'<h2>{t("com.read")}</h2><form class="tool read" method="post" '
        'action="/admin/commission/read">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{port}'
        f'<label>{t("com.unit")}<input name="unit" value="{v("unit", "1")}"></label>'
        f'<label>{t("com.table")}<select name="table">{tables}</select></label>'
        f'<label>{t("com.address")}<input name="address" value="{v("address", "0")}"></label>'
        f'<label>{t("com.count")}<input name="count" value="{v("count", "2")}"></label>'
        f'<label>{t("com.baud_read")}<input name="baud" value="{v("baud", "9600")}"></label>'
        f'<button type="submit">{t("com.read_go")}</button></form></section>'
        f"{result}"
        f'<section class="card"><h2>{t("com.add")}</h2>'
        '<form method="post" action="/admin/commission/add" class="editor">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<textarea name="device" spellcheck="false" autocomplete="off" wrap="off" '
        f'class="short" aria-label="{t("com.add")}">{e(add)}</textarea>'
        f'<label class="profile">{t("com.profile")}<select name="profile">{profiles}</select>'
        "</label>"
        f'<div class="buttons"><button type="submit" data-busy="{e(t("com.adding"))}">'
        f"{t('com.add_go')}</button></div></form>"
        f'<p class="hint">{t("com.add_hint")}</p></section>'
        f'<section class="card"><h2>{t("com.profiles")}</h2><p class="hint">'
        f'{t("com.profiles_hint")}</p><table class="list profiles"><tbody>{profile_rows}'
        "</tbody></table></section>"
    )
