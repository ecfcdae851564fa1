// Sparklines and plots, drawn as SVG paths (no chart library).
const NS = "http://www.w3.org/2000/svg";

// points: [[ts, value], ...] oldest first; span: the most seconds shown (the last hour).
// A series shorter than that fills the width (at least 10 s), rather than a sliver at
// the right: the plots start when the first page opens.
export function draw(svg, points, span) {
  const box = svg.viewBox.baseVal;
  const w = box.width, h = box.height, big = h > 40;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!points.length) return;
  const t1 = points[points.length - 1][0];
  span = Math.min(span, Math.max(t1 - points[0][0], 10));
  const t0 = t1 - span;
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of points) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const labels = hi === lo ? [[hi, 9]] : [[hi, 9], [lo, h - 2]];
  if (hi === lo) { hi += 1; lo -= 1; } // a flat line, in the middle
  const pad = big ? 12 : 2;
  const x = (ts) => ((ts - t0) / span) * w;
  const y = (v) => pad + (1 - (v - lo) / (hi - lo)) * (h - 2 * pad);
  let d = "";
  for (const [ts, v] of points) {
    if (ts < t0) continue;
    d += (d ? "L" : "M") + x(ts).toFixed(1) + " " + y(v).toFixed(1);
  }
  if (!d) return;
  if (!d.includes("L")) { // one point so far: a dot
    const [, px, py] = d.split(/[M ]/);
    const dot = document.createElementNS(NS, "circle");
    dot.setAttribute("class", "dot");
    dot.setAttribute("cx", String(Math.min(+px, w - 2)));
    dot.setAttribute("cy", py);
    dot.setAttribute("r", big ? "3" : "2");
    svg.appendChild(dot);
  }
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
    for (const [v, yy] of labels) {
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", "2");
      label.setAttribute("y", String(yy));
      label.textContent = String(+v.toPrecision(4));
      svg.appendChild(label);
    }
  }
}
