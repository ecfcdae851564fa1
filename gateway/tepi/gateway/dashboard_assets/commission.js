// The commissioning page's scan: its progress over Server-Sent Events, each unit found with
// a button that fills the read form. The words come from the server (data-* on .scan-out).
const form = document.querySelector("form.scan");
const out = document.querySelector(".scan-out");

function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, key) => String(values[key] ?? ""));
}

function useUnit(msg) {
  const read = document.querySelector("form.read");
  for (const name of ["port", "framing"]) read.elements[name].value = form.elements[name].value;
  read.elements.unit.value = msg.unit;
  if (msg.baud) read.elements.baud.value = msg.baud;
  read.elements.address.focus();
}

function scan(ev) {
  ev.preventDefault();
  const bar = out.querySelector("progress");
  const text = out.querySelector(".scan-text");
  const list = out.querySelector(".found");
  const button = form.querySelector("button");
  list.replaceChildren();
  out.hidden = false;
  delete out.dataset.done;
  bar.removeAttribute("value");
  button.disabled = true;
  const params = new URLSearchParams(new FormData(form));
  const events = new EventSource(`${form.action}?${params}`);
  events.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.end) {
      events.close();
      button.disabled = false;
      bar.value = bar.max;
      text.textContent = msg.error || msg.text;
      out.dataset.done = msg.error ? "error" : String(msg.found.length);
      return;
    }
    const baud = msg.baud ? fill(out.dataset.atBaud, msg) : "";
    bar.max = msg.total;
    bar.value = msg.done;
    text.textContent = fill(out.dataset.scanning, { ...msg, baud });
    if (msg.answer) {
      const li = document.createElement("li");
      li.dataset.unit = msg.unit;
      li.textContent = `${fill(out.dataset.answers, { ...msg, baud })} `;
      const use = document.createElement("button");
      use.type = "button";
      use.className = "secondary";
      use.textContent = out.dataset.use;
      use.addEventListener("click", () => useUnit(msg));
      li.append(use);
      list.append(li);
    }
  };
  events.onerror = () => {
    events.close();
    button.disabled = false;
    if (!out.dataset.done) text.textContent = out.dataset.lost;
  };
}

if (form && out) form.addEventListener("submit", scan);
