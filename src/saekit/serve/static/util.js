// Small helpers shared by the pages: DOM building (text only, never HTML from data), JSON calls.
"use strict";
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}
// token text with whitespace drawn visibly
function tokText(s) {
  const out = el("span");
  for (const part of String(s).split(/([ \t\n])/)) {
    if (part === " ") out.appendChild(el("span", {class: "ws"}, "·"));
    else if (part === "\t") out.appendChild(el("span", {class: "ws"}, "⇥"));
    else if (part === "\n") out.appendChild(el("span", {class: "ws"}, "↵"));
    else if (part) out.appendChild(document.createTextNode(part));
  }
  return out;
}
function tokenChips(tokens) { return tokens.map(t => el("code", {class: "t"}, tokText(t))); }
function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : (+v).toPrecision(digits);
}
async function api(path, body) {
  const opts = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
function showError(where, err) {
  where.replaceChildren(el("p", {class: "error"}, String(err.message || err)));
}
// hover box for token activations
const hover = {
  show(ev, text) { const b = document.getElementById("hoverbox"); b.textContent = text; b.hidden = false;
    b.style.left = (ev.clientX + 12) + "px"; b.style.top = (ev.clientY + 12) + "px"; },
  hide() { document.getElementById("hoverbox").hidden = true; },
};
// one shaded token span: colour by act / maxAct, exact value on hover
function tokenSpan(text, act, maxAct, extra) {
  const a = maxAct > 0 ? Math.max(0, Math.min(1, act / maxAct)) : 0;
  const label = JSON.stringify(text) + "  activation " + fmt(act, 4);
  return el("span", {class: "tok" + (extra ? " " + extra : ""), "data-act": act, title: label,
    style: `background:rgba(255,102,0,${a.toFixed(3)})`,
    onmousemove: ev => hover.show(ev, label), onmouseleave: () => hover.hide()}, tokText(text));
}
function exampleRows(examples, maxAct) {
  if (!examples.length) return el("p", {class: "muted"}, "No examples: the feature never fired on the scanned tokens.");
  return el("div", {class: "examples"}, examples.map(ex => el("div", {class: "ex"},
    el("span", {class: "val", title: `row ${ex.row}, position ${ex.position}`}, fmt(ex.value, 4)),
    el("span", {class: "ctx"}, ex.tokens.map((t, i) => tokenSpan(t, ex.acts[i], maxAct, i === ex.centre ? "cur" : ""))))));
}
function histogram(h, width = 420, height = 140) {
  const used = h.counts.reduce((m, c, i) => c ? i + 1 : m, 0);
  if (!used) return el("p", {class: "muted"}, "No nonzero activations.");
  const peak = Math.max(...h.counts), bw = width / used, ph = height - 20;
  const s = svg("svg", {class: "hist", width, height, viewBox: `0 0 ${width} ${height}`});
  for (let i = 0; i < used; i++) {
    const hh = ph * h.counts[i] / peak;
    s.appendChild(svg("rect", {x: i * bw, y: ph - hh, width: Math.max(bw - 1, 0.5), height: hh},
      svg("title", {}, `${fmt(h.edges[i], 4)} – ${fmt(h.edges[i + 1], 4)}: ${h.counts[i]}`)));
  }
  s.appendChild(svg("text", {x: 0, y: height - 4}, "0"));
  s.appendChild(svg("text", {x: width, y: height - 4, "text-anchor": "end"}, fmt(h.edges[used], 3)));
  s.appendChild(svg("text", {x: width, y: 12, "text-anchor": "end"}, `max count ${peak}`));
  return s;
}
