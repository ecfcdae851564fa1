"""The web console's config and alarms pages: their routes, and their HTML (the rest:
`tepi.gateway.dashpages`, same rules: every value escaped, nothing inline, the words from
`tepi.gateway.dashtext`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from tepi.gateway.dashpages import NONE, ago, e
from tepi.gateway.dashtext import t

if TYPE_CHECKING:
    from tepi.gateway.dashauth import Session
    from tepi.gateway.dashhttp import DashApp

__all__ = [
    "AdminPages",
    "Outcome",
    "alarms_page",
    "config_page",
    "outcome_of",
    "problems_text",
]


@dataclass(frozen=True)
class Outcome:
    """What a check or an apply came to, for the page: ``ok`` (good news), ``bad`` (nothing
    changed, or rolled back), with a sentence and the config's problems."""

    ok: bool
    message: str
    errors: tuple[str, ...] = ()


def outcome_of(res: dict[str, Any]) -> Outcome:
    """What an apply (`tepi.gateway.dashconfig.ConsoleActions.apply`) came to, worded."""
    out = res.get("output") or {}
    if res["status"] == "done":
        keys = out.get("restart_needed") or []
        if keys:
            return Outcome(
                True,
                t("cfg.restart_needed", version=out["version"], keys=", ".join(map(str, keys))),
            )
        return Outcome(True, t("cfg.applied", version=out["version"], seconds=out.get("confirm_s")))
    errors = tuple(str(x) for x in out.get("errors", ())) if isinstance(out, dict) else ()
    if res.get("reason") == "config_refused" and errors:
        return Outcome(False, problems_text(len(errors)), errors)
    if res.get("reason") == "rolled_back":
        return Outcome(False, t("cfg.rolled_back", detail=res.get("detail")))
    return Outcome(False, t("cfg.failed", detail=res.get("detail")))


def problems_text(n: int) -> str:
    return t("cfg.problem") if n == 1 else t("cfg.problems", n=n)


def rules_text(n: int) -> str:
    return t("al.rule_1") if n == 1 else t("al.rules", n=n)


def _when(ts: float | None) -> str:
    if ts is None:
        return NONE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _back_form(version: str, csrf: str, label: str) -> str:
    return (
        '<form method="post" action="/admin/config/rollback" class="inline back">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="to" value="{e(version)}">'
        f'<button type="submit" class="secondary" data-busy="{e(t("cfg.going_back"))}">'
        f"{e(label)}</button></form>"
    )


def _history(rows: list[dict[str, Any]], running: str, admin: bool, csrf: str) -> str:
    """The changes, newest first; for an admin, a button to go back to each version that
    was confirmed and is not the one running."""
    if not rows:
        return f'<p class="hint">{t("cfg.no_history")}</p>'

    def back(r: dict[str, Any]) -> str:
        v = str(r.get("version"))
        if not admin or r.get("state") != "confirmed" or v == running:
            return ""
        return _back_form(v, csrf, t("cfg.back_to", version=v))

    body = "".join(
        f'<tr data-version="{e(r.get("version"))}"><td>{e(r.get("version"))}</td>'
        f"<td>{e(_when(r.get('ts')))}</td><td>{e(r.get('by') or NONE)}</td>"
        f'<td><span class="badge" data-ok="{"ok" if r.get("state") == "confirmed" else "bad"}">'
        f"{e(r.get('state'))}</span></td><td>{e(r.get('why') or '')}</td><td>{back(r)}</td></tr>"
        for r in reversed(rows)
    )
    head = "".join(
        f"<th>{t(k)}</th>" for k in ("cfg.version", "cfg.when", "cfg.by", "cfg.state", "cfg.why")
    )
    base = (
        f'<p class="back-base">{_back_form("base", csrf, t("cfg.back_to_base"))}</p>'
        if admin and running != "base"
        else ""
    )
    return f'<div class="scroll"><table class="list history"><thead><tr>{head}<th></th></tr>' \
        f"</thead><tbody>{body}</tbody></table></div>{base}"  # fmt: skip


def config_page(
    info: dict[str, Any],
    *,
    admin: bool,
    csrf: str,
    text: str | None = None,
    outcome: Outcome | None = None,
    confirm_s: float = 0,
) -> str:
    """The running config (redacted) with its version and history; for an admin, the
    editor holding ``text`` (else the running config) and what the last action came to."""
    if info.get("version") is None:
        return f'<section class="card"><h1>{t("cfg.title")}</h1><p>{t("cfg.no_file")}</p></section>'
    trial = info.get("trial")
    head = (
        f'<section class="card"><h1>{t("cfg.title")}</h1><dl>'
        f"<div><dt>{t('cfg.file')}</dt><dd>{e(info.get('file'))}</dd></div>"
        f"<div><dt>{t('cfg.running')}</dt><dd>{e(info['version'])}</dd></div>"
        + (
            f"<div><dt>{t('cfg.trial')}</dt><dd>{e(trial.get('version'))}</dd></div>"
            if trial
            else ""
        )
        + "</dl></section>"
    )
    result = ""
    if outcome is not None:
        items = "".join(f"<li><code>{e(x)}</code></li>" for x in outcome.errors)
        result = (
            f'<section class="card result" data-ok="{"ok" if outcome.ok else "bad"}" '
            f'role="status"><p class="{"ok" if outcome.ok else "error"}">{e(outcome.message)}</p>'
            + (f'<ul class="problems cfg-errors">{items}</ul>' if items else "")
            + "</section>"
        )
    if admin:
        editor = (
            f'<section class="card"><h2>{t("cfg.edit")}</h2>'
            '<form method="post" action="/admin/config/check" class="editor">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<textarea name="text" spellcheck="false" autocomplete="off" wrap="off" '
            f'aria-label="{t("cfg.edit")}">{e(text if text is not None else info["config"])}'
            '</textarea><div class="buttons">'
            f'<button type="submit" class="secondary">{t("cfg.check")}</button>'
            f'<button type="submit" formaction="/admin/config/apply" data-busy="'
            f'{e(t("cfg.applying", seconds=f"{confirm_s:.0f}"))}">{t("cfg.apply")}</button>'
            f'</div></form><p class="hint">{e(t("cfg.apply_hint", seconds=f"{confirm_s:.0f}"))}'
            f'</p><p class="hint">{t("cfg.secrets_hint")}</p></section>'
        )
    else:
        editor = (
            f'<section class="card"><h2>{t("cfg.running_text")}</h2>'
            f'<pre class="config">{e(info["config"])}</pre>'
            f'<p class="hint">{t("cfg.viewer_hint")}</p></section>'
        )
    hint = f'<p class="hint">{t("cfg.back_hint")}</p>' if admin else ""
    history = (
        f'<section class="card"><h2>{t("cfg.history")}</h2>'
        f"{_history(info.get('history') or [], str(info['version']), admin, csrf)}{hint}"
        "</section>"
    )
    return head + result + editor + history


def _alarm_row(a: dict[str, Any], admin: bool, csrf: str) -> str:
    firing = a.get("state") == "firing"
    where = "/".join(str(x) for x in (a.get("device"), a.get("metric")) if x) or NONE
    ack = ""
    if a.get("acknowledged"):
        ack = e(t("al.acked_by", by=a.get("ack_by") or "?"))
    elif firing and admin:
        ack = (
            f'<form method="post" action="/admin/alarms/{e(quote(a["rule"], safe=""))}/ack" '
            'class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<button type="submit">{t("al.ack")}</button></form>'
        )
    elif firing:
        ack = t("al.not_acked")
    resolved = ago(a.get("resolved"))
    value = a.get("value") if firing else a.get("resolved_value", a.get("value"))
    cells = (
        (t("al.state"), f'<span class="badge" data-ok="{"bad" if firing else "ok"}">'
         f"{e(a.get('state'))}</span> {e(a.get('severity') or '')}"),
        (t("al.where"), e(where)),
        (t("al.value"), e(NONE if value is None else value)),
        (t("al.fired"), e(ago(a.get("fired"))) + ("" if firing else
         f'<small class="hint">{e(t("al.resolved", when=resolved))}</small>')),
        (t("al.count"), e(a.get("count", ""))),
        (t("al.ack_col"), ack),
    )  # fmt: skip
    return (
        f'<tr data-rule="{e(a["rule"])}"><td><b>{e(a["rule"])}</b>'
        + (f'<small class="hint">{e(a["description"])}</small>' if a.get("description") else "")
        + "</td>"
        + "".join(f'<td data-label="{e(label)}">{html}</td>' for label, html in cells)
        + "</tr>"
    )


def alarms_page(
    alarms: dict[str, Any] | None, *, admin: bool, csrf: str, message: str | None = None
) -> str:
    """Firing alarms first, then the recent ones, from the alarm store as ``tepi alarms``
    lists them; acknowledge (admin) on a firing one not yet acknowledged."""
    if alarms is None:
        return f'<section class="card"><h1>{t("al.title")}</h1><p>{t("al.no_rules")}</p></section>'
    rows = alarms.get("alarms") or []
    firing = [a for a in rows if a.get("state") == "firing"]
    recent = [a for a in rows if a.get("state") != "firing"]
    keys = ("al.rule", "al.state", "al.where", "al.value", "al.fired", "al.count", "al.ack_col")
    head = "".join(f"<th>{t(k)}</th>" for k in keys)

    def table(items: list[dict[str, Any]], empty: str) -> str:
        if not items:
            return f"<p>{empty}</p>"
        body = "".join(_alarm_row(a, admin, csrf) for a in items)
        return (
            f'<table class="list alarms"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )

    note = f'<p class="notice" role="status">{e(message)}</p>' if message else ""
    return (
        f'<section class="card"><h1>{t("al.title")}</h1>{note}'
        f'<p class="hint">{e(rules_text(alarms.get("rules", 0)))}</p>'
        f"<h2>{t('al.active')}</h2>{table(firing, t('al.none_firing'))}</section>"
        f'<section class="card"><h2>{t("al.recent")}</h2>'
        f"{table(recent, t('al.none_recent'))}</section>"
    )


class AdminPages:
    """The config and alarms routes of one console (registered by `tepi.gateway.dashhttp`;
    what they do in the agent: `tepi.gateway.dashconfig`)."""

    def __init__(self, app: DashApp) -> None:
        self.app = app

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/config", self.get_config)
        r.add_post("/admin/config/check", self.post_check)
        r.add_post("/admin/config/apply", self.post_apply)
        r.add_post("/admin/config/rollback", self.post_rollback)
        r.add_get("/alarms", self.get_alarms)
        r.add_post("/admin/alarms/{rule}/ack", self.post_ack)

    async def _config(
        self, req: web.Request, text: str | None = None, outcome: Outcome | None = None
    ) -> web.Response:
        actions = self.app.actions()
        session: Session = req["session"]
        body = config_page(
            await actions.config(), admin=session.role == "admin", csrf=session.csrf, text=text,
            outcome=outcome, confirm_s=actions.confirm_timeout,
        )  # fmt: skip
        # 200 even for problems: the answer is the page with them (a form, not an API).
        return self.app.page(req, t("cfg.title"), "config", body)

    async def get_config(self, req: web.Request) -> web.Response:
        return await self._config(req)

    async def _edited(self, req: web.Request) -> str:
        text = str((await req.post()).get("text", ""))
        return text.replace("\r\n", "\n")  # a textarea sends CRLF

    async def post_check(self, req: web.Request) -> web.Response:
        actions = self.app.actions()
        text = await self._edited(req)
        if not actions.can_apply:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        errors = await actions.check(text)
        if errors:
            outcome = Outcome(False, problems_text(len(errors)), tuple(errors))
        else:
            outcome = Outcome(True, t("cfg.valid"))
        return await self._config(req, text, outcome)

    async def post_apply(self, req: web.Request) -> web.Response:
        return await self.apply_config(req, await self._edited(req))

    async def apply_config(self, req: web.Request, text: str) -> web.Response:
        """Apply ``text`` (as the editor shows it: redacted) for the session's user; the
        config page with what it came to."""
        actions = self.app.actions()
        if not actions.can_apply:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        session: Session = req["session"]
        outcome = outcome_of(await actions.apply(text, session.user))
        return await self._config(req, None if outcome.ok else text, outcome)

    async def post_rollback(self, req: web.Request) -> web.Response:
        """Back to a version kept on the box (``to``: ``v3`` or ``base``), as ``tepi config
        rollback --to`` and the IOC's ``config.rollback`` do: on trial, confirmed or rolled
        back, audited with the user."""
        actions = self.app.actions()
        if not actions.can_apply:
            raise web.HTTPNotFound(text=t("cfg.no_file"))
        to = str((await req.post()).get("to", ""))
        if not (to == "base" or (to[:1] == "v" and to[1:].isdigit() and len(to) <= 12)):
            raise web.HTTPBadRequest(text=t("cfg.bad_version") + "\n")
        session: Session = req["session"]
        outcome = outcome_of(await actions.rollback(to, session.user))
        if outcome.ok:
            outcome = Outcome(True, t("cfg.went_back", version=to) + " " + outcome.message)
        return await self._config(req, None, outcome)

    async def get_alarms(self, req: web.Request) -> web.Response:
        actions = self.app.actions()
        session: Session = req["session"]
        rule, done = req.query.get("acked"), req.query.get("done")
        message = None
        if rule:
            message = t("al.acked" if done == "1" else "al.not_ackable", rule=rule)
        body = alarms_page(
            await actions.alarms(), admin=session.role == "admin", csrf=session.csrf,
            message=message,
        )  # fmt: skip
        return self.app.page(req, t("al.title"), "alarms", body)

    async def post_ack(self, req: web.Request) -> web.Response:
        actions = self.app.actions()
        rule = req.match_info["rule"]
        session: Session = req["session"]
        try:
            done = await actions.ack(rule, session.user)
        except LookupError:
            raise web.HTTPNotFound(text=t("al.unknown", rule=rule)) from None
        raise web.HTTPSeeOther("/alarms?acked=" + quote(rule, safe="") + f"&done={int(done)}")
