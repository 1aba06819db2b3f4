// The steering playground and the attribution-graph page: both queue a job and follow its events.
"use strict";
function follow(jobId, handlers) {
  const src = new EventSource(`/api/jobs/${jobId}/events`);
  src.onmessage = m => {
    const e = JSON.parse(m.data);
    (handlers[e.type] || (() => {}))(e);
    if (e.type === "done" || e.type === "error") { src.close(); refreshStatus(); }
  };
  src.onerror = () => { src.close(); (handlers.error || (() => {}))({error: "lost the connection to the server"}); };
  return src;
}

PAGES.steer = async function (main, params, ctx) {
  const rows = el("div", {id: "steer-features"});
  const addRow = (feature, strength) => rows.appendChild(el("div", {class: "feat-row"},
    el("input", {class: "feature", type: "number", min: 0, value: feature, placeholder: "feature", size: 8}),
    el("input", {class: "strength", type: "number", step: "any", value: strength, size: 8}),
    el("button", {type: "button", onclick: ev => ev.target.parentElement.remove()}, "×")));
  addRow(params.get("feature") || "0", params.get("strength") || "8");
  const prompt = el("textarea", {id: "steer-prompt", rows: 3}, params.get("prompt") || "The weather today is");
  const sel = (id, opts, value) => el("select", {id}, opts.map(o => el("option", {value: o, selected: o === value}, o)));
  const limits = ctx.status.limits;
  const form = el("form", {class: "bar", id: "steer-form"},
    el("label", {}, "features and strengths", rows, el("button", {type: "button", onclick: () => addRow("", "8")}, "+ feature")),
    el("label", {}, "mode", sel("mode", ["add", "clamp", "ablate", "scale"], "add")),
    el("label", {}, "units", sel("units", ["raw", "act", "norm"], "raw")),
    el("label", {}, "positions", el("input", {id: "positions", value: "all", size: 8})),
    el("label", {}, `new tokens (≤ ${limits.max_new_tokens})`, el("input", {id: "max-new", type: "number", min: 1, max: limits.max_new_tokens, value: Math.min(24, limits.max_new_tokens), size: 5})),
    el("label", {}, "sample", el("input", {id: "sample", type: "checkbox"})),
    el("label", {}, "seed", el("input", {id: "seed", type: "number", value: 0, size: 5})),
    el("button", {type: "submit", id: "steer-go"}, "Generate"));
  const progress = el("p", {class: "muted", id: "steer-progress"});
  const cols = {default: el("div", {class: "completion", id: "default"}), steered: el("div", {class: "completion", id: "steered"})};
  const shift = el("div", {id: "steer-shift"});
  main.replaceChildren(el("h1", {}, "Steering playground"),
    el("p", {class: "muted"}, "The same prompt generated twice: as the model is, and with the features edited (saekit.steer). Greedy unless sampling is on; both use the same seed."),
    prompt, form, progress,
    el("div", {class: "side"}, el("div", {}, el("h2", {}, "default"), cols.default), el("div", {}, el("h2", {}, "steered"), cols.steered)), shift);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const features = [...rows.querySelectorAll(".feat-row")].filter(r => r.querySelector(".feature").value !== "")
      .map(r => ({feature: +r.querySelector(".feature").value, strength: +r.querySelector(".strength").value}));
    const body = {sae: ctx.sae, prompt: prompt.value, features, mode: document.getElementById("mode").value,
      units: document.getElementById("units").value, positions: document.getElementById("positions").value,
      max_new_tokens: +document.getElementById("max-new").value, sample: document.getElementById("sample").checked,
      seed: +document.getElementById("seed").value};
    cols.default.textContent = ""; cols.steered.textContent = ""; shift.replaceChildren();
    progress.className = "muted"; progress.textContent = "queued…";
    let job;
    try { job = await api("/api/steer", body); } catch (err) { progress.className = "error"; progress.textContent = err.message; return; }
    follow(job.job, {
      queued: e => { progress.textContent = e.ahead ? `queued behind ${e.ahead} job(s)…` : "starting…"; },
      progress: e => { progress.textContent = e.message; },
      token: e => { cols[e.which].textContent += e.text; },
      final: e => { cols[e.which].textContent = e.text; },
      error: e => { progress.className = "error"; progress.textContent = e.error; },
      done: e => {
        const r = e.result;
        cols.default.textContent = r.default; cols.steered.textContent = r.steered;
        progress.textContent = "done";
        const line = (t, cls) => el("tr", {}, el("td", {}, el("code", {class: "t"}, tokText(t.text))),
          el("td", {class: "num " + cls}, `${t.p_default.toFixed(4)} → ${t.p_steered.toFixed(4)}`));
        shift.replaceChildren(el("h2", {}, "First generated token"),
          el("p", {}, `KL(default ‖ steered) = ${r.kl.toFixed(4)} nats`),
          el("div", {class: "cols"}, el("table", {class: "rows"}, el("thead", {}, el("tr", {}, el("th", {colspan: 2}, "rose"))), el("tbody", {}, r.rose.map(t => line(t, "pos")))),
            el("table", {class: "rows"}, el("thead", {}, el("tr", {}, el("th", {colspan: 2}, "fell"))), el("tbody", {}, r.fell.map(t => line(t, "neg"))))));
      },
    });
  });
};

PAGES.graph = async function (main, params, ctx) {
  const g = ctx.status.graph;
  if (!g.available) {
    main.replaceChildren(el("h1", {}, "Attribution graph"), el("p", {class: "muted", id: "graph-off"},
      `Not available: ${g.reason}. Start the server with a transcoder folder for every layer of the model to trace prompts.`));
    return;
  }
  const prompt = el("input", {id: "graph-prompt", value: params.get("prompt") || "The capital of France is", size: 60});
  const go = el("button", {id: "graph-go"}, "Trace");
  const progress = el("p", {class: "muted", id: "graph-progress"});
  const frame = el("div", {id: "graph-frame"});
  main.replaceChildren(el("h1", {}, "Attribution graph"),
    el("p", {class: "muted"}, `Prompt of at most ${ctx.status.limits.max_graph_tokens} tokens; the graph runs through the loaded transcoders (saekit attribute).`),
    el("p", {}, prompt, " ", go), progress, frame);
  go.addEventListener("click", async () => {
    progress.className = "muted"; progress.textContent = "queued…"; frame.replaceChildren();
    let job;
    try { job = await api("/api/graph", {prompt: prompt.value}); } catch (err) { progress.className = "error"; progress.textContent = err.message; return; }
    follow(job.job, {
      progress: e => { progress.textContent = e.message; },
      error: e => { progress.className = "error"; progress.textContent = e.error; },
      done: e => { progress.textContent = "done"; frame.replaceChildren(el("iframe", {class: "graph", src: e.result.viewer})); },
    });
  });
  if (params.get("prompt")) go.click();
};
