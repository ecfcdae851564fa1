// The console's live parts: one Server-Sent Events stream a page, filling the elements the
// server marked (data-k, data-v, data-spark, data-devstate). The words come from the server.
import { draw } from "./spark.js";

const HOUR = 3600;
const MAX_POINTS = 360;
const series = new Map(); // "device/metric" -> [[ts, value], ...]

function merge(points) {
  for (const [dev, metrics] of Object.entries(points || {})) {
    for (const [metric, pts] of Object.entries(metrics)) {
      const key = `${dev}/${metric}`;
      const have = series.get(key) || [];
      for (const p of pts) {
        const last = have[have.length - 1];
        if (last && last[0] >= p[0]) continue;
        if (last && Math.floor(last[0] / 10) === Math.floor(p[0] / 10)) have[have.length - 1] = p;
        else have.push(p);
      }
      while (have.length > MAX_POINTS) have.shift();
      series.set(key, have);
    }
  }
}

function redraw() {
  for (const svg of document.querySelectorAll("svg[data-spark]")) {
    const pts = series.get(svg.dataset.spark);
    if (pts) draw(svg, pts, HOUR);
  }
}

function apply(msg) {
  for (const [key, text] of Object.entries(msg.k || {})) {
    for (const el of document.querySelectorAll(`[data-k="${CSS.escape(key)}"]`)) {
      el.textContent = text;
    }
    if (key === "uplink.ok" || key === "clock.ok") {
      const badge = document.querySelector(`.badge[data-k="${key.replace(".ok", ".state")}"]`);
      if (badge) badge.dataset.ok = text;
    }
  }
  for (const [key, text] of Object.entries(msg.v || {})) {
    const el = document.querySelector(`[data-v="${CSS.escape(key)}"]`);
    if (el && el.textContent !== text) el.textContent = text;
  }
  for (const [dev, state] of Object.entries(msg.state || {})) {
    const cell = document.querySelector(`[data-devstate="${CSS.escape(dev)}"] .badge`);
    if (cell && cell.dataset.state !== state) {
      cell.dataset.state = state;
      cell.textContent = state;
    }
  }
  merge(msg.points);
  redraw();
}

// The alarms page is rendered by the server: when the alarms' state changes (one fires,
// resolves or is acknowledged), it is asked again.
let alarms = null;

function alarmsChanged(msg) {
  if (msg.alarms === undefined) return;
  if (alarms !== null && msg.alarms !== alarms) location.reload();
  alarms = msg.alarms;
}

// The logs page: new records at its level come over the stream, newest on top.
const MAX_LINES = 1000;

function logLines(msg) {
  const list = document.querySelector("ul.log[data-seen]");
  if (!list || !msg.log || !msg.log.length) return;
  list.querySelector("li.none")?.remove();
  for (const [time, level, logger, message] of msg.log) {
    const li = document.createElement("li");
    const when = document.createElement("time");
    when.textContent = time;
    const lvl = document.createElement("span");
    lvl.className = "lvl";
    lvl.dataset.level = level;
    lvl.textContent = level;
    const who = document.createElement("span");
    who.className = "logger";
    who.textContent = logger;
    li.append(when, " ", lvl, " ", who, ` ${message}`);
    list.prepend(li);
  }
  while (list.children.length > MAX_LINES) list.lastElementChild.remove();
}

function streamUrl(page) {
  if (page === "logs") {
    const list = document.querySelector("ul.log[data-seen]");
    const q = new URLSearchParams({ page, seen: list.dataset.seen, level: list.dataset.level });
    return `/events?${q}`;
  }
  return `/events?page=${page === "device" ? "devices" : page}`;
}

function start() {
  const page = document.body.dataset.page;
  if (!["overview", "devices", "device", "alarms", "logs"].includes(page)) return;
  const lost = document.querySelector(".live-lost");
  const events = new EventSource(streamUrl(page));
  events.onmessage = (ev) => {
    if (lost) lost.hidden = true;
    const msg = JSON.parse(ev.data);
    apply(msg);
    alarmsChanged(msg);
    logLines(msg);
    document.body.dataset.live = "1"; // the tests wait on this
  };
  events.onerror = () => {
    if (lost) lost.hidden = false;
  };
}

// A form whose button says data-busy (the config's apply, which waits for its trial):
// the buttons go grey and the words say how long it may take; the server answers at the end.
function busy() {
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", (ev) => {
      const text = ev.submitter && ev.submitter.dataset.busy;
      if (!text) return;
      for (const b of form.querySelectorAll("button")) b.disabled = true;
      ev.submitter.textContent = text;
    });
  }
}

start();
busy();
