// Hash routing (#/features, #/feature/SAE/ID, #/inspect, #/steer, #/graph), the SAE choice, status.
"use strict";
const ctx = {sae: null, saeInfo: null, status: null};

async function refreshStatus() {
  try { ctx.status = await api("/api/status"); } catch (err) { return; }
  const st = ctx.status, line = document.getElementById("status");
  const busy = st.current ? `running ${st.current.kind}` + (st.queue ? `, ${st.queue} queued` : "") : "idle";
  line.textContent = st.ready ? `${st.model} · ${busy}` :
    `indexing features: ${Math.round(100 * (st.startup.progress || 0))}% ${st.startup.message}`;
  if (st.startup.status === "error") line.textContent = `indexing failed: ${st.startup.error}`;
}

async function route() {
  const main = document.getElementById("main");
  const [path, query] = (location.hash.slice(1) || "/features").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "features";
  hover.hide();
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("on", a.dataset.page === page));
  if (!ctx.status.ready && page !== "graph") {
    main.replaceChildren(el("h1", {}, "Building the feature index…"), el("p", {class: "muted", id: "wait"},
      ctx.status.startup.message || "starting"));
    setTimeout(async () => { await refreshStatus(); route(); }, 1000);
    return;
  }
  if (page === "feature" && parts[1]) selectSae(parts[1]);
  const render = PAGES[page];
  if (!render) return main.replaceChildren(el("p", {class: "error"}, `no page ${page}`));
  try { await render(main, params, ctx, ...parts.slice(1)); } catch (err) { showError(main, err); }
}

function selectSae(name) {
  const info = ctx.status.saes.find(s => s.name === name);
  if (!info) return;
  ctx.sae = name; ctx.saeInfo = info;
  document.getElementById("sae").value = name;
}

async function start() {
  await refreshStatus();
  const box = document.getElementById("sae");
  box.replaceChildren(...ctx.status.saes.map(s => el("option", {value: s.name},
    `${s.name} (${s.architecture}, ${s.d_sae} features${s.hook_out ? ", transcoder" : ""})`)));
  selectSae(ctx.status.saes[0].name);
  box.addEventListener("change", () => { selectSae(box.value); route(); });
  window.addEventListener("hashchange", route);
  setInterval(refreshStatus, 3000);
  route();
}
start();
