"""The web console's pages as HTML, rendered on the server (no template engine: f-strings with
every value escaped by :func:`e`). No inline script and no inline style anywhere: the
Content-Security-Policy forbids both; behaviour is in ``dashboard_assets/app.js`` and looks
in ``app.css``. The words come from `tepi.gateway.dashtext`.

The live parts carry ``data-`` attributes the script fills from the event stream:
``data-k`` (an overview figure), ``data-v`` (a device's metric value), ``data-spark`` (its
sparkline), ``data-state`` (a device's state).
"""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import quote

from tepi.gateway.dashtext import LANGS, NAMES, lang, t
from tepi.gateway.health import Health

__all__ = [
    "device_page",
    "devices_page",
    "layout",
    "login_page",
    "logs_page",
    "overview_fields",
    "overview_page",
    "strip_svg",
]

LEVELS = ("debug", "info", "warning", "error")
NONE = "-"  # a figure that has no value (yet)
SCRIPTS = {"commission": "commission.js", "cameras": "cameras.js"}  # a page's own module


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def span(s: float, words: str = "for") -> str:
    """A length of time in seconds, minutes or hours (``words`` ``ago``: how long ago)."""
    if s < 90:
        return t(f"{words}.s", n=f"{s:.0f}")
    if s < 5400:
        return t(f"{words}.min", n=f"{s / 60:.0f}")
    return t(f"{words}.h", n=f"{s / 3600:.1f}")


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return t("ago.never")
    return span(max((now if now is not None else time.time()) - ts, 0), "ago")


def clock(ts: float) -> str:
    """A log record's time as the logs page shows it (the box's local time)."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def value_text(v: dict[str, Any]) -> str:
    """A reading as a person reads it: ``28.4 degC``, ``~31 ug/m3`` (uncertain), ``BAD (...)``."""
    if v.get("quality") == "bad":
        return t("dev.bad_value", reason=v.get("reason"))
    x = v.get("value")
    text = f"{x:.4g}" if isinstance(x, float) else str(x)
    unit = f" {v['unit']}" if v.get("unit") else ""
    return ("~" if v.get("quality") == "uncertain" else "") + text + unit


def _languages(path: str) -> str:
    """Links to this page in the other languages, each named in its own."""
    here = lang()
    links = "".join(
        f'<a href="/lang/{code}?next={e(quote(path, safe="/"))}" lang="{code}" '
        f'hreflang="{code}">{e(NAMES[code])}</a>'
        for code in LANGS
        if code != here
    )
    return f'<nav class="langs" aria-label="{e(t("nav.lang"))}">{links}</nav>'


def layout(
    title: str,
    page: str,
    body: str,
    *,
    gateway: str,
    session: Any | None,
    csrf: str = "",
    path: str = "/",
) -> str:
    """The page around ``body``: head, navigation, the user and the log-out button, and the
    language switch (back to ``path``, this page)."""
    nav = ""
    if session is not None:
        links = "".join(
            f'<a href="{href}"{" aria-current=page" if page == key else ""}>{t("nav." + key)}</a>'
            for key, href in (
                ("overview", "/"),
                ("devices", "/devices"),
                ("cameras", "/cameras"),
                ("alarms", "/alarms"),
                ("config", "/config"),
                ("logs", "/logs"),
                *((("commission", "/admin/commission"),) if session.role == "admin" else ()),
            )
        )
        nav = (
            f'<nav class="nav">{links}</nav><div class="who">'
            f"<span>{e(t('nav.user', user=session.user, role=session.role))}</span>"
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" '
            f'value="{e(csrf)}"><button type="submit">{t("nav.logout")}</button></form></div>'
        )
    return (
        f'<!doctype html><html lang="{lang()}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)} · {e(t('title', gateway=gateway))}</title>"
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css">'
        '<script type="module" src="/static/app.js"></script>'
        + (
            f'<script type="module" src="/static/{SCRIPTS[page]}"></script>'
            if page in SCRIPTS
            else ""
        )
        + "</head>"
        f'<body data-page="{e(page)}"><header><span class="brand">'
        f"{e(t('title', gateway=gateway))}</span>{nav}{_languages(path)}</header>"
        f'<main>{body}</main><p class="live-lost" hidden>{t("live.lost")}</p></body></html>'
    )


def login_page(gateway: str, token: str, next_url: str, error: str | None, no_users: bool) -> str:
    err = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    hint = f'<p class="hint">{t("login.nousers")}</p>' if no_users else ""
    body = (
        f'<section class="card login"><h1>{t("login.title")}</h1>{err}{hint}'
        '<form method="post" action="/login">'
        f'<input type="hidden" name="csrf" value="{e(token)}">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        f'<label>{t("login.user")}<input name="user" autocomplete="username" required '
        "autofocus></label>"
        f'<label>{t("login.password")}<input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        f'<button type="submit">{t("login.submit")}</button></form></section>'
    )
    back = "/login" + (f"?next={quote(next_url, safe='/')}" if next_url != "/" else "")
    return layout(t("login.title"), "login", body, gateway=gateway, session=None, path=back)


# ---- overview ----------------------------------------------------------------------------


def overview_fields(h: Health, now: float) -> dict[str, str]:
    """The overview's figures, worded: the page shows them and the stream refreshes them."""
    up, buf, proc, clk = h.uplink, h.buffer, h.process, h.clock
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(buf.dropped.items()) if v)
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(up.errors.items()) if v)
    return {
        "uplink.state": t("ov.online") if up.connected else t("ov.offline"),
        "uplink.broker": up.broker or NONE,
        "uplink.last_ack": ago(up.last_ack_ts, now),
        "uplink.connects": f"{up.connects:,}",
        "uplink.rate": t("ov.rate_value", rate=f"{up.publish_rate:.1f}"),
        "uplink.errors": errors or t("ov.none"),
        "buffer.depth": f"{buf.readings:,}",
        "buffer.oldest": t("ov.none")
        if buf.oldest_age_s is None
        else ago(now - buf.oldest_age_s, now),
        "buffer.file": t("ov.file_value", used=size(buf.bytes), max=size(buf.max_bytes)),
        "buffer.pending": f"{buf.pending:,}",
        "buffer.dropped": dropped or t("ov.none"),
        "process.cpu": f"{h.process.cpu_percent:.1f} %",
        "process.rss": size(proc.rss_bytes),
        "process.disk": size(proc.disk_free_bytes),
        "clock.state": t("ov.synced") if clk.synced else t("ov.not_synced"),
        "clock.gps": NONE if clk.gps_offset_s is None else f"{clk.gps_offset_s * 1000:+.0f} ms",
        "clock.now": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        "agent.uptime": span(h.uptime_s),
        "agent.version": h.version,
        "uplink.ok": "ok" if up.connected else "bad",
        "clock.ok": "ok" if clk.synced else "warn",
    }


def strip_svg(
    history: list[tuple[float, bool]], started: float, connected: bool, now: float
) -> str:
    """The link's last 24 h as a strip of coloured runs (one unit a minute): connected,
    not connected, and grey before the agent started (what it cannot know)."""
    span = 24 * 3600.0
    t0 = now - span
    # The state at t0: the last change before it, else "not running" before the start.
    runs: list[tuple[float, float, str]] = []
    state = "off"
    at = t0
    changes = [(ts, c) for ts, c in history if ts <= now]
    if started > t0:
        runs.append((t0, started, "off"))
        at, state = started, "down"
    for ts, c in changes:
        if ts <= at:
            state = "up" if c else "down"
            continue
        runs.append((at, ts, state))
        at, state = ts, "up" if c else "down"
    runs.append((at, now, "up" if connected else state if changes else "down"))
    # At least 10 minutes wide (2 pixels on a phone): a short run, such as the minutes
    # since the agent started, must still show. Later runs are drawn over earlier ones, so
    # the newest state is the one at the right edge.
    rects = "".join(
        f'<rect class="{k}" x="{min((a - t0) / 60, 1430):.1f}" y="0" '
        f'width="{max((b - a) / 60, 10):.1f}" height="10"/>'
        for a, b, k in runs
        if b > a
    )
    return (
        f'<svg class="strip" viewBox="0 0 1440 10" preserveAspectRatio="none" role="img" '
        f'aria-label="{e(t("ov.strip"))}">{rects}</svg>'
    )


def _row(label: str, key: str, fields: dict[str, str], cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<div><dt>{label}</dt><dd data-k="{key}"{c}>{e(fields[key])}</dd></div>'


def overview_page(
    h: Health,
    problems: list[str],
    strip: str,
    *,
    admin: bool,
    csrf: str,
    message: str | None,
) -> str:
    now = time.time()
    f = overview_fields(h, now)
    msg = f'<p class="notice" role="status">{e(message)}</p>' if message else ""
    probs = (
        '<ul class="problems">' + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>"
        if problems
        else f'<p class="ok">{t("ov.all_well")}</p>'
    )
    reload_form = (
        f'<form method="post" action="/admin/reload" class="admin"><input type="hidden" '
        f'name="csrf" value="{e(csrf)}"><button type="submit">{t("ov.reload")}</button></form>'
        if admin
        else ""
    )
    return (
        f'{msg}<section class="card"><h2>{t("ov.problems")}</h2>{probs}{reload_form}</section>'
        f'<div class="grid"><section class="card"><h2>{t("ov.uplink")} '
        f'<span class="badge" data-k="uplink.state" data-ok="{f["uplink.ok"]}">'
        f"{e(f['uplink.state'])}</span></h2><dl>"
        + _row(t("ov.broker"), "uplink.broker", f)
        + _row(t("ov.last_ack"), "uplink.last_ack", f)
        + _row(t("ov.rate"), "uplink.rate", f)
        + _row(t("ov.connects"), "uplink.connects", f)
        + _row(t("ov.link_errors"), "uplink.errors", f)
        + f"</dl><h3>{t('ov.strip')}</h3>{strip}"
        f'<p class="hint">{t("ov.strip_legend")}</p></section>'
        f'<section class="card"><h2>{t("ov.buffer")}</h2><dl>'
        + _row(t("ov.depth"), "buffer.depth", f)
        + _row(t("ov.oldest"), "buffer.oldest", f)
        + _row(t("ov.pending"), "buffer.pending", f)
        + _row(t("ov.file"), "buffer.file", f)
        + _row(t("ov.dropped"), "buffer.dropped", f)
        + f"</dl><h3>{t('ov.depth_plot')}</h3>"
        '<svg class="plot" data-spark="_buffer/depth" viewBox="0 0 300 60" '
        'preserveAspectRatio="none"></svg>'
        f"<h3>{t('ov.oldest_plot')}</h3>"
        '<svg class="plot" data-spark="_buffer/oldest" viewBox="0 0 300 60" '
        'preserveAspectRatio="none"></svg></section>'
        f'<section class="card"><h2>{t("ov.process")}</h2><dl>'
        + _row(t("ov.cpu"), "process.cpu", f)
        + _row(t("ov.rss"), "process.rss", f)
        + _row(t("ov.disk"), "process.disk", f)
        + _row(t("ov.uptime"), "agent.uptime", f)
        + _row(t("ov.version"), "agent.version", f)
        + f'</dl></section><section class="card"><h2>{t("ov.clock")} '
        f'<span class="badge" data-k="clock.state" data-ok="{f["clock.ok"]}">'
        f"{e(f['clock.state'])}</span></h2><dl>"
        + _row(t("ov.clock"), "clock.now", f)
        + _row(t("ov.gps_offset"), "clock.gps", f)
        + "</dl></section></div>"
    )


# ---- devices -----------------------------------------------------------------------------


def state_badge(d: dict[str, Any]) -> str:
    st = d["state"]
    extra = ""
    if st == "quarantined" and d.get("probe_interval_s"):
        seconds = f"{d['probe_interval_s']:.0f}"
        extra = f'<small class="hint">{e(t("dev.quarantined", seconds=seconds))}</small>'
    return f'<span class="badge" data-state="{e(st)}">{e(st)}</span>{extra}'


def _metric(dev: str, metric: str, v: dict[str, Any], big: bool = False) -> str:
    key = e(f"{dev}/{metric}")
    box = "0 0 300 80" if big else "0 0 100 24"
    cls = "plot" if big else "spark"
    return (
        f'<li><span class="m">{e(metric)}</span> <span class="v" data-v="{key}">'
        f"{e(value_text(v))}</span>"
        f'<svg class="{cls}" data-spark="{key}" viewBox="{box}" preserveAspectRatio="none">'
        "</svg></li>"
    )


def devices_page(devices: dict[str, Any]) -> str:
    if not devices:
        return f'<section class="card"><p>{t("dev.none")}</p></section>'
    rows = []
    for dev, d in devices.items():
        metrics = "".join(_metric(dev, m, v) for m, v in d.get("last", {}).items())
        values = (
            f'<ul class="metrics">{metrics}</ul>'
            if metrics
            else f'<p class="hint">{t("dev.no_values")}</p>'
        )
        err = f'<p class="err">{e(d["last_error"])}</p>' if d.get("last_error") else ""
        rows.append(
            f'<tr data-device="{e(dev)}"><td><a href="/devices/{e(dev)}">{e(dev)}</a></td>'
            f'<td data-devstate="{e(dev)}">{state_badge(d)}</td><td>{values}{err}</td></tr>'
        )
    return (
        f'<section class="card"><h1>{t("dev.title")}</h1><table class="devices"><thead><tr>'
        f"<th>{t('dev.device')}</th><th>{t('dev.state')}</th><th>{t('dev.values')}</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="hint">{t("dev.history_note")}</p></section>'
    )


def device_page(dev: str, d: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    metrics = "".join(_metric(dev, m, v, big=True) for m, v in d.get("last", {}).items())
    wire = d.get("protocol") or {}
    wire_rows = "".join(
        f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>"
        for k, v in wire.items()
        if not isinstance(v, dict | list)
    )
    counters = [
        (t("dev.polls"), d.get("polls")),
        (t("dev.readings"), d.get("readings")),
        (t("dev.bad"), d.get("bad_readings")),
        (t("dev.missed"), d.get("missed_polls")),
        (
            t("dev.last_poll"),
            NONE if d.get("last_poll_ms") is None else f"{d['last_poll_ms']:.0f} ms",
        ),
        (t("dev.last_ok"), ago(d.get("last_ok_ts"))),
        (t("dev.errors"), ", ".join(f"{k} {v}" for k, v in d.get("errors", {}).items()) or "0"),
        (t("dev.last_error"), d.get("last_error") or NONE),
    ]
    counter_rows = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in counters)
    log_rows = "".join(
        f"<li><time>{e(time.strftime('%H:%M:%S', time.localtime(x['ts'])))}</time> "
        f'<span class="lvl" data-level="{e(x["level"])}">{e(x["level"])}</span> '
        f"{e(x['message'])}</li>"
        for x in errors
    )
    return (
        f'<section class="card"><h1>{e(dev)} {state_badge(d)}</h1>'
        f'<h2>{t("dev.metrics")}</h2><ul class="metrics big">{metrics or t("dev.no_values")}</ul>'
        f'<p class="hint">{t("dev.history_note")}</p></section><div class="grid">'
        f'<section class="card"><h2>{t("dev.counters")}</h2><dl>{counter_rows}</dl></section>'
        + (
            f'<section class="card"><h2>{t("dev.wire")}</h2><dl>{wire_rows}</dl></section>'
            if wire_rows
            else ""
        )
        + f'</div><section class="card"><h2>{t("dev.recent")}</h2>'
        f'<ul class="log">{log_rows or "<li>" + t("logs.none") + "</li>"}</ul></section>'
    )


def logs_page(tail: dict[str, Any], level: str) -> str:
    opts = "".join(
        f'<option value="{lv}"{" selected" if lv == level else ""}>{lv}</option>' for lv in LEVELS
    )
    rows = "".join(
        f"<li><time>{e(clock(x['ts']))}</time> "
        f'<span class="lvl" data-level="{e(x["level"])}">{e(x["level"])}</span> '
        f'<span class="logger">{e(x["logger"])}</span> {e(x["message"])}</li>'
        for x in reversed(tail["lines"])
    )
    return (
        f'<section class="card"><h1>{t("logs.title")}</h1>'
        f'<form method="get" action="/logs" class="inline"><label>{t("logs.level")} '
        f'<select name="level">{opts}</select></label><button type="submit">{t("logs.show")}'
        f'</button></form><p class="hint">'
        + e(t("logs.kept", shown=len(tail["lines"]), kept=tail["kept"], seen=tail["seen"]))
        + f'</p><ul class="log" data-seen="{tail["seen"]}" data-level="{e(level)}">'
        f"{rows or '<li class=none>' + t('logs.none') + '</li>'}</ul></section>"
    )
