// A camera's page: the masks, counting lines and zones drawn over its snapshot, and (for an
// admin) the tools to draw them. Points are fractions of the picture (0..1, 0,0 top left),
// as the config holds them; the server checks what is posted (tepi.gateway.dashcameras).
// The words come from the server (data-* attributes).
const SVG = "http://www.w3.org/2000/svg";
const stage = document.querySelector(".stage");
const svg = stage?.querySelector("svg.overlay");
const img = stage?.querySelector("img.shot");
const form = document.querySelector("form.geometry");
const shapes = JSON.parse(stage?.dataset.geometry || "{}");
for (const k of ["masks", "ignore", "lines", "zones"]) shapes[k] ??= [];
// {kind: "mask" | "ignore" | "line" | "zone" | "stop", points: [[x, y], ...], zone (stop)}
let drawing = null;
const LIST = { mask: "masks", ignore: "ignore", line: "lines", zone: "zones" };

// Within 1% of an edge is on it: a mask meant to reach the picture's edge does.
const round = (v) => (v < 0.01 ? 0 : v > 0.99 ? 1 : Math.round(v * 10000) / 10000);
const aspect = () => (img && img.naturalHeight ? img.naturalWidth / img.naturalHeight : 16 / 9);

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  parent.append(node);
  return node;
}

function poly(points, cls) {
  el("polygon", { points: points.map((p) => p.join(",")).join(" "), class: cls }, svg);
}

function line(a, b, cls) {
  el("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: cls }, svg);
}

// A counting line, and an arrow from its middle to the side a crossing counts "in" on (the
// right of the line's direction, as seen on the picture), of the same length on screen
// whatever the picture's shape.
function countLine(points, cls) {
  const r = aspect();
  const on = (p) => [p[0] * r, p[1]]; // to a square space: the screen's proportions
  const off = (q) => [q[0] / r, q[1]];
  const [a, b] = points.map(on);
  line(points[0], points[1], cls);
  const n = Math.hypot(b[0] - a[0], b[1] - a[1]) || 1;
  const d = [(b[0] - a[0]) / n, (b[1] - a[1]) / n];
  const right = [-d[1], d[0]];
  const m = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
  const tip = [m[0] + right[0] * 0.06, m[1] + right[1] * 0.06];
  line(off(m), off(tip), `${cls} in`);
  for (const s of [1, -1]) {
    const head = [tip[0] - right[0] * 0.025 + s * d[0] * 0.02, tip[1] - right[1] * 0.025 + s * d[1] * 0.02];
    line(off(tip), off(head), `${cls} in`);
  }
}

function label(text, at) {
  const span = document.createElement("span");
  span.className = "shape-label";
  span.textContent = text;
  span.style.left = `${at[0] * 100}%`; // CSSOM, which the page's CSP allows
  span.style.top = `${at[1] * 100}%`;
  stage.append(span);
}

function render() {
  draw();
  if (form) list();
}

// The shapes over the picture (the list below the tools is list()'s).
function draw() {
  if (!svg) return;
  svg.replaceChildren();
  for (const old of stage.querySelectorAll(".shape-label")) old.remove();
  shapes.masks.forEach((m) => poly(m, "mask"));
  shapes.ignore.forEach((m) => poly(m, "ignore"));
  for (const z of shapes.zones) {
    poly(z.polygon, "zone");
    if (z.stop_line) line(z.stop_line[0], z.stop_line[1], "stop");
    label(z.name, z.polygon[0]);
  }
  for (const l of shapes.lines) {
    countLine(l.points, "count");
    label(l.name, l.points[0]);
  }
  if (drawing && drawing.points.length) {
    const p = drawing.points;
    for (let i = 1; i < p.length; i++) line(p[i - 1], p[i], "drawing");
    for (const q of p) el("circle", { cx: q[0], cy: q[1], r: 0.006, class: "drawing" }, svg);
  }
}

function fresh(kind) {
  const names = new Set(shapes[LIST[kind]].map((s) => s.name));
  let i = 1;
  while (names.has(`${kind}-${i}`)) i++;
  return `${kind}-${i}`;
}

function finish() {
  const { kind, points } = drawing;
  if (kind === "stop") {
    drawing.zone.stop_line = points;
    drawing = null;
    tools();
    render();
    return;
  }
  if (kind === "mask" || kind === "ignore") shapes[LIST[kind]].push(points);
  else if (kind === "line") shapes.lines.push({ name: fresh("line"), points });
  else shapes.zones.push({ name: fresh("zone"), polygon: points });
  drawing = { kind, points: [] };
  tools();
  render();
}

function list() {
  const ul = form.querySelector("ul.shapes");
  const words = ul.dataset;
  ul.replaceChildren();
  const item = (kind, index, title, named) => {
    const li = document.createElement("li");
    li.dataset.kind = kind;
    const b = document.createElement("b");
    b.textContent = title;
    li.append(b);
    if (named) {
      const input = document.createElement("input");
      input.value = named.name;
      input.setAttribute("aria-label", `${title} ${words.name}`);
      input.pattern = "[A-Za-z0-9][A-Za-z0-9_\\-]{0,31}";
      input.required = true;
      input.addEventListener("input", () => {
        named.name = input.value;
        draw(); // the list stays as it is: the field keeps its focus and caret
      });
      li.append(input);
    }
    if (kind === "zone") zoneQueue(li, named, words);
    const del = document.createElement("button");
    del.type = "button";
    del.className = "secondary";
    del.textContent = words.delete;
    del.addEventListener("click", () => {
      shapes[LIST[kind]].splice(index, 1);
      render();
    });
    li.append(del);
    ul.append(li);
  };
  shapes.masks.forEach((_, i) => item("mask", i, words.mask.replace("{n}", i + 1), null));
  shapes.ignore.forEach((_, i) => item("ignore", i, words.ignore.replace("{n}", i + 1), null));
  shapes.lines.forEach((l, i) => item("line", i, words.line, l));
  shapes.zones.forEach((z, i) => item("zone", i, words.zone, z));
}

// A zone's queue: its stop line drawn on the picture, and its real length in metres.
function zoneQueue(li, zone, words) {
  const length = document.createElement("input");
  length.type = "number";
  length.min = "0.5";
  length.step = "0.5";
  length.className = "length";
  length.placeholder = words.length;
  length.setAttribute("aria-label", `${zone.name} ${words.length}`);
  if (zone.length_m) length.value = String(zone.length_m);
  length.addEventListener("input", () => {
    const v = parseFloat(length.value);
    if (v > 0) zone.length_m = v;
    else delete zone.length_m;
  });
  const stop = document.createElement("button");
  stop.type = "button";
  stop.className = "secondary stop";
  stop.textContent = zone.stop_line ? words.stopRemove : words.stopDraw;
  stop.addEventListener("click", () => {
    if (zone.stop_line) {
      delete zone.stop_line;
      render();
      return;
    }
    drawing = { kind: "stop", zone, points: [] };
    tools();
    draw();
  });
  li.append(length, stop);
}

function tools() {
  const hint = form.querySelector(".tool-hint");
  for (const b of form.querySelectorAll("[data-tool]")) {
    b.setAttribute("aria-pressed", String(drawing?.kind === b.dataset.tool));
  }
  hint.textContent = hint.dataset[drawing?.kind || "none"];
  const n = drawing?.points.length || 0;
  const open = drawing && !["line", "stop"].includes(drawing.kind);
  form.querySelector(".close-shape").disabled = !(open && n >= 3);
  form.querySelector(".undo").disabled = n === 0;
  svg.classList.toggle("armed", Boolean(drawing));
}

function click(ev) {
  if (!drawing) return;
  const box = svg.getBoundingClientRect();
  const p = [round((ev.clientX - box.left) / box.width), round((ev.clientY - box.top) / box.height)];
  const pts = drawing.points;
  const first = pts[0];
  const near = first && Math.hypot((p[0] - first[0]) * aspect(), p[1] - first[1]) < 0.03;
  const two = ["line", "stop"].includes(drawing.kind);
  if (!two && pts.length >= 3 && near) return finish();
  pts.push(p);
  if (two && pts.length === 2) return finish();
  tools();
  render();
}

if (form && svg) {
  for (const b of form.querySelectorAll("[data-tool]")) {
    b.addEventListener("click", () => {
      drawing = drawing?.kind === b.dataset.tool ? null : { kind: b.dataset.tool, points: [] };
      tools();
      render();
    });
  }
  form.querySelector(".close-shape").addEventListener("click", finish);
  form.querySelector(".undo").addEventListener("click", () => {
    drawing?.points.pop();
    tools();
    render();
  });
  svg.addEventListener("click", click);
  form.addEventListener("submit", () => {
    form.elements.geometry.value = JSON.stringify(shapes);
  });
  tools();
}
img?.addEventListener("load", render);
render();
