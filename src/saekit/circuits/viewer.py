"""A self-contained HTML viewer of a graph JSON (no network: data, style and script inline).

Nodes sit by layer (rows: embeddings at the bottom, logits on top) and position (columns);
links are drawn with width by |weight|, blue positive and red negative. Clicking a node shows
its details (type, activation, influence, explanation, top activating tokens when known) and
its strongest inputs and outputs, and highlights its links.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from saekit.fileio import atomic_write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh}
#graph{flex:1;overflow:auto;border-right:1px solid #ccc}
#side{width:340px;padding:10px;overflow:auto;font-size:13px}
h1{font-size:15px;margin:4px 0}.muted{color:#666}
circle,rect{cursor:pointer;stroke:#333;stroke-width:.5}
.sel{stroke:#000;stroke-width:2.5}
line{stroke-opacity:.35}line.hi{stroke-opacity:.9}
text.tok{font-size:10px;fill:#333}text.lay{font-size:10px;fill:#888}
table{border-collapse:collapse}td{padding:1px 6px 1px 0}
"""

_SCRIPT = r"""
const G = JSON.parse(document.getElementById('graph-data').textContent);
const INFO = JSON.parse(document.getElementById('feature-info').textContent);
const NS = 'http://www.w3.org/2000/svg';
const nPos = G.metadata.prompt_tokens.length;
const layers = G.nodes.filter(n => !['E'].includes(n.layer)).map(n => +n.layer);
const maxLayer = Math.max(0, ...layers);
const colW = 90, rowH = 34, padL = 60, padB = 50;
const rowOf = n => n.layer === 'E' ? 0 : (+n.layer) + 1;
const byId = {};
const cells = {};
for (const n of G.nodes) {
  byId[n.node_id] = n;
  const key = rowOf(n) + ':' + n.ctx_idx;
  (cells[key] = cells[key] || []).push(n);
}
const H = (maxLayer + 2) * rowH + padB, W = padL + nPos * colW + 20;
for (const key in cells) {
  const list = cells[key];
  list.forEach((n, i) => {
    const [r, p] = key.split(':').map(Number);
    n.x = padL + p * colW + colW / 2 + (i - (list.length - 1) / 2) * Math.min(12, (colW - 10) / list.length);
    n.y = H - padB - r * rowH;
  });
}
const svg = document.createElementNS(NS, 'svg');
svg.setAttribute('width', W); svg.setAttribute('height', H);
document.getElementById('graph').appendChild(svg);
const maxW = Math.max(1e-12, ...G.links.map(l => Math.abs(l.weight)));
const lines = [];
for (const l of G.links) {
  const s = byId[l.source], t = byId[l.target];
  if (!s || !t) continue;
  const e = document.createElementNS(NS, 'line');
  e.setAttribute('x1', s.x); e.setAttribute('y1', s.y); e.setAttribute('x2', t.x); e.setAttribute('y2', t.y);
  e.setAttribute('stroke', l.weight >= 0 ? '#2166ac' : '#b2182b');
  e.setAttribute('stroke-width', 0.4 + 4 * Math.abs(l.weight) / maxW);
  e.dataset.s = l.source; e.dataset.t = l.target;
  svg.appendChild(e); lines.push(e);
}
const colour = {'embedding': '#9e9e9e', 'logit': '#4caf50', 'mlp reconstruction error': '#ffb74d'};
for (const n of G.nodes) {
  const shape = n.feature_type === 'cross layer transcoder' ? 'circle' : 'rect';
  const e = document.createElementNS(NS, shape);
  if (shape === 'circle') { e.setAttribute('cx', n.x); e.setAttribute('cy', n.y); e.setAttribute('r', 5); }
  else { e.setAttribute('x', n.x - 5); e.setAttribute('y', n.y - 5); e.setAttribute('width', 10); e.setAttribute('height', 10); }
  e.setAttribute('fill', colour[n.feature_type] || '#7e57c2');
  e.setAttribute('class', 'node'); e.setAttribute('id', 'n-' + n.node_id);
  e.addEventListener('click', () => select(n.node_id));
  const tip = document.createElementNS(NS, 'title'); tip.textContent = n.node_id + ' ' + (n.clerp || '');
  e.appendChild(tip); svg.appendChild(e);
}
G.metadata.prompt_tokens.forEach((t, p) => {
  const e = document.createElementNS(NS, 'text');
  e.setAttribute('x', padL + p * colW + 4); e.setAttribute('y', H - 10); e.setAttribute('class', 'tok');
  e.textContent = t; svg.appendChild(e);
});
for (let r = 0; r <= maxLayer + 1; r++) {
  const e = document.createElementNS(NS, 'text');
  e.setAttribute('x', 4); e.setAttribute('y', H - padB - r * rowH + 3); e.setAttribute('class', 'lay');
  e.textContent = r === 0 ? 'emb' : (r === maxLayer + 1 ? 'logit' : 'L' + (r - 1)); svg.appendChild(e);
}
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
const fmt = v => v === null || v === undefined ? '-' : (+v).toPrecision(4);
function edgeTable(list, key) {
  list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  return '<table>' + list.slice(0, 10).map(l => '<tr><td>' + esc(l[key]) + '</td><td>' + fmt(l.weight) + '</td></tr>').join('') + '</table>';
}
function select(id) {
  const n = byId[id];
  document.querySelectorAll('.sel').forEach(e => e.classList.remove('sel'));
  document.getElementById('n-' + id).classList.add('sel');
  for (const e of lines) e.classList.toggle('hi', e.dataset.s === id || e.dataset.t === id);
  const ins = G.links.filter(l => l.target === id), outs = G.links.filter(l => l.source === id);
  let h = '<h1 id="detail-title">' + esc(id) + '</h1><p class="muted">' + esc(n.feature_type) + '</p>';
  h += '<table><tr><td>layer</td><td>' + esc(n.layer) + '</td></tr><tr><td>position</td><td>' + n.ctx_idx +
       ' (' + esc(G.metadata.prompt_tokens[n.ctx_idx]) + ')</td></tr><tr><td>activation</td><td>' + fmt(n.activation) +
       '</td></tr><tr><td>influence</td><td>' + fmt(n.influence) + '</td></tr></table>';
  if (n.clerp) h += '<p class="clerp">' + esc(n.clerp) + '</p>';
  const info = INFO[n.layer + '_' + (n.node_id.split('_')[1])];
  if (n.feature_type === 'cross layer transcoder' && info) {
    if (info.explanation) h += '<p><b>Explanation:</b> ' + esc(info.explanation) + '</p>';
    if (info.top_activating_tokens) h += '<p><b>Top activating tokens:</b> ' + info.top_activating_tokens.map(esc).join(', ') + '</p>';
  }
  h += '<h1>Inputs (' + ins.length + ')</h1>' + edgeTable(ins, 'source');
  h += '<h1>Outputs (' + outs.length + ')</h1>' + edgeTable(outs, 'target');
  document.getElementById('detail').innerHTML = h;
}
const first = G.nodes.find(n => n.is_target_logit);
if (first && location.hash !== '#none') select(location.hash ? location.hash.slice(1) : first.node_id);
"""


def _json_script(element_id: str, data: Any) -> str:
    text = json.dumps(data).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def viewer_html(graph_json: dict, feature_info: dict[str, dict] | None = None) -> str:
    """The viewer page for a graph JSON. `feature_info` maps "layer_feature" to
    {"explanation": str, "top_activating_tokens": [str, ...]}."""
    meta = graph_json["metadata"]
    title = html.escape(meta.get("prompt", ""))
    info = meta.get("info", {})
    summary = ", ".join(f"{k} {info[k]:.3f}" for k in ("replacement_score", "completeness_score") if k in info)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Attribution graph</title>"
        f"<style>{_STYLE}</style></head><body><div id='graph'></div><div id='side'>"
        f"<h1>{title}</h1><p class='muted'>{len(graph_json['nodes'])} nodes, "
        f"{len(graph_json['links'])} links. {html.escape(summary)}</p><div id='detail'></div></div>"
        f"{_json_script('graph-data', graph_json)}{_json_script('feature-info', feature_info or {})}"
        f"<script>{_SCRIPT}</script></body></html>"
    )


def write_viewer(path: str | Path, graph_json: dict, feature_info: dict[str, dict] | None = None) -> Path:
    """Write the viewer page to `path`."""
    path = Path(path)
    atomic_write_text(path, viewer_html(graph_json, feature_info))
    return path
