// Sparklines and plots, drawn as SVG paths (no chart library).
const NS = "http://www.w3.org/2000/svg";

// points: [[ts, value], ...] oldest first; span: the seconds shown (the last hour).
export function draw(svg, points, span) {
  const box = svg.viewBox.baseVal;
  const w = box.width, h = box.height, big = h > 40;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!points.length) return;
  const t1 = points[points.length - 1][0], t0 = t1 - span;
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of points) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = big ? 12 : 2;
  const x = (ts) => ((ts - t0) / span) * w;
  const y = (v) => pad + (1 - (v - lo) / (hi - lo)) * (h - 2 * pad);
  let d = "";
  for (const [ts, v] of points) {
    if (ts < t0) continue;
    d += (d ? "L" : "M") + x(ts).toFixed(1) + " " + y(v).toFixed(1);
  }
  if (!d) return;
  const first = points.find((p) => p[0] >= t0);
  const area = document.createElementNS(NS, "path");
  area.setAttribute("class", "area");
  area.setAttribute("d", `${d}L${x(t1).toFixed(1)} ${h}L${x(first[0]).toFixed(1)} ${h}Z`);
  svg.appendChild(area);
  const line = document.createElementNS(NS, "path");
  line.setAttribute("class", "line");
  line.setAttribute("d", d);
  svg.appendChild(line);
  if (big) {
    for (const [v, yy] of [[hi, 9], [lo, h - 2]]) {
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", "2");
      label.setAttribute("y", String(yy));
      label.textContent = String(+v.toPrecision(4));
      svg.appendChild(label);
    }
  }
}
