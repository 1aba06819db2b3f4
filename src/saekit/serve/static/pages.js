// The five pages. Each takes (main, params, ctx) and fills main; ctx.sae is the chosen SAE.
"use strict";
const PAGES = {};
const featureLink = (sae, f) => el("a", {href: `#/feature/${encodeURIComponent(sae)}/${f}`}, String(f));

PAGES.features = async function (main, params, ctx) {
  const v = k => params.get(k) || "";
  const form = el("form", {class: "bar", id: "search-form"},
    el("label", {}, "explanation contains", el("input", {id: "q", type: "search", value: v("q"), size: 28})),
    el("label", {}, "boosts token", el("input", {id: "token", type: "search", value: v("token"), size: 12,
      placeholder: "e.g. ' the'"})),
    el("label", {}, "min density", el("input", {id: "min", type: "number", step: "any", min: 0, max: 1, value: v("min"), size: 8})),
    el("label", {}, "max density", el("input", {id: "max", type: "number", step: "any", min: 0, max: 1, value: v("max"), size: 8})),
    el("label", {}, "sort by", el("select", {id: "sort"}, ["feature", "density", "max_activation", "mean_activation", "score"]
      .map(s => el("option", {value: s, selected: s === (v("sort") || "feature")}, s)))),
    el("label", {}, "order", el("select", {id: "desc"}, el("option", {value: "0"}, "ascending"),
      el("option", {value: "1", selected: v("desc") === "1"}, "descending"))),
    el("button", {type: "submit", id: "search-go"}, "Search"));
  const out = el("div", {id: "results"});
  main.replaceChildren(el("h1", {}, "Features of ", ctx.sae), form, out);
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, id] of [["q", "q"], ["token", "token"], ["min", "min"], ["max", "max"], ["sort", "sort"], ["desc", "desc"]]) {
      const x = document.getElementById(id).value; if (x && !(k === "desc" && x === "0")) p.set(k, x);
    }
    location.hash = "#/features?" + p.toString();
  });
  const offset = +v("offset") || 0;
  const q = new URLSearchParams({q: v("q"), sort: v("sort") || "feature", desc: v("desc") === "1", limit: 200, offset});
  if (v("token")) q.set("token", v("token"));
  if (v("min")) q.set("min_density", v("min"));
  if (v("max")) q.set("max_density", v("max"));
  out.append(el("p", {class: "muted"}, "Searching…"));
  let data;
  try { data = await api(`/api/saes/${encodeURIComponent(ctx.sae)}/features?${q}`); }
  catch (err) { return showError(out, err); }
  const byToken = !!v("token");
  const head = ["feature", "density", "mean act", "max act", "top activating tokens", "top boosted tokens",
    "explanation", "score"].concat(byToken ? ["logit weight"] : []);
  const sortKey = {"feature": "feature", "density": "density", "mean act": "mean_activation",
    "max act": "max_activation", "score": "score"};
  const goto = changes => {  // the same search with some parameters changed
    const p = new URLSearchParams(params); for (const [k, x] of Object.entries(changes)) p.set(k, x);
    location.hash = "#/features?" + p.toString();
  };
  const th = h => sortKey[h] && !byToken ? el("th", {title: "click to sort", onclick: () =>
    goto({sort: sortKey[h], desc: v("sort") === sortKey[h] && v("desc") !== "1" ? "1" : "0", offset: 0})}, h) : el("th", {}, h);
  const pager = el("p", {class: "muted"},
    offset > 0 ? el("a", {href: "#", onclick: ev => { ev.preventDefault(); goto({offset: Math.max(0, offset - 200)}); }}, "← previous 200") : "",
    offset > 0 && offset + data.rows.length < data.total ? " · " : "",
    offset + data.rows.length < data.total ? el("a", {href: "#", id: "next-page", onclick: ev => { ev.preventDefault(); goto({offset: offset + 200}); }}, "next 200 →") : "");
  const rows = data.rows.map(r => el("tr", {class: r.fire_count ? "" : "dead"},
    el("td", {}, featureLink(ctx.sae, r.feature)), el("td", {class: "num"}, fmt(r.density)),
    el("td", {class: "num"}, fmt(r.mean_activation)), el("td", {class: "num"}, fmt(r.max_activation)),
    el("td", {}, r.fire_count ? tokenChips(r.top_activating_tokens) : "never fires"),
    el("td", {}, tokenChips(r.top_boosted_tokens)), el("td", {}, r.explanation || ""),
    el("td", {class: "num"}, fmt(r.score, 2)), byToken ? el("td", {class: "num"}, fmt(r.token_score, 4)) : null));
  out.replaceChildren(el("p", {class: "muted", id: "result-count"},
      `${data.total} feature(s)` + (data.total > data.rows.length ? `, ${offset + 1}–${offset + data.rows.length} shown` : "")),
    el("table", {class: "rows"}, el("thead", {}, el("tr", {}, head.map(th))), el("tbody", {}, rows)), pager);
};

PAGES.feature = async function (main, params, ctx, sae, id) {
  main.replaceChildren(el("p", {class: "muted"}, "Loading…"));
  let f;
  try { f = await api(`/api/saes/${encodeURIComponent(sae)}/features/${encodeURIComponent(id)}`); }
  catch (err) { return showError(main, err); }
  const nav = el("p", {}, f.prev !== null ? el("a", {href: `#/feature/${encodeURIComponent(sae)}/${f.prev}`}, "← prev") : "",
    " · ", el("a", {href: "#/features"}, "index"), " · ",
    f.next !== null ? el("a", {href: `#/feature/${encodeURIComponent(sae)}/${f.next}`}, "next →") : "", " · ",
    el("a", {href: `#/steer?feature=${f.feature}`, id: "steer-link"}, "steer with this feature"));
  const facts = el("table", {class: "facts"},
    el("tr", {}, el("th", {}, "density"), el("td", {}, `${fmt(f.density)} (${f.fire_count} of ${f.n_tokens} tokens)`)),
    el("tr", {}, el("th", {}, "mean activation when firing"), el("td", {}, fmt(f.mean_activation, 4))),
    el("tr", {}, el("th", {}, "max activation"), el("td", {}, fmt(f.max_activation, 4))));
  const interp = f.explanation ? el("p", {class: "interp", id: "explanation"}, el("b", {}, "Explanation: "), f.explanation,
    Object.keys(f.scores).length ? el("span", {class: "muted"}, "  balanced accuracy: " +
      Object.entries(f.scores).map(([k, m]) => `${k} ${fmt(m.balanced_accuracy, 2)}` +
        (f.shuffled[k] !== undefined ? ` (shuffled ${fmt(f.shuffled[k], 2)})` : "")).join(", ")) : "") : null;
  const logitTable = (rows, cls, title) => el("table", {class: "logits"},
    el("thead", {}, el("tr", {}, el("th", {colspan: 2}, title))),
    el("tbody", {}, rows.map(([tid, t, val]) => el("tr", {}, el("td", {}, el("code", {class: "t", title: `id ${tid}`}, tokText(t))),
      el("td", {class: cls}, (val >= 0 ? "+" : "") + val.toFixed(3))))));
  const logits = f.logits ? el("div", {class: "cols"}, logitTable(f.logits.positive, "pos", "boosted"),
    logitTable(f.logits.negative, "neg", "suppressed")) : el("p", {class: "muted"}, "Not available for this SAE's output width.");
  const quantiles = f.quantiles.map(g => [el("h3", {}, `quantile ${g.lower_percent}–${g.upper_percent}% of firing activations (${fmt(g.low)} – ${fmt(g.high)})`),
    exampleRows(g.examples, f.max_activation)]);
  main.replaceChildren(nav, el("h1", {id: "feature-title"}, `Feature ${f.feature}`),
    el("p", {class: "muted"}, [sae, ctx.saeInfo && ctx.saeInfo.hook !== sae ? ctx.saeInfo.hook : null,
      ctx.saeInfo ? ctx.saeInfo.model : null].filter(Boolean).join(" · ")), interp || "",
    el("div", {class: "cols"}, el("div", {}, facts, el("h2", {}, "Activation histogram (nonzero)"), histogram(f.histogram)),
      el("div", {}, el("h2", {}, "Logit effects (W_dec · W_U, final norm not applied)"), logits)),
    el("h2", {}, "Top activations"), el("div", {id: "top"}, exampleRows(f.top, f.max_activation)),
    el("h2", {}, "Samples from lower quantiles"), el("div", {id: "quantiles"}, quantiles.length ? quantiles : el("p", {class: "muted"}, "No samples.")));
};

PAGES.inspect = async function (main, params, ctx) {
  const text = el("textarea", {id: "inspect-text", rows: 4}, params.get("text") || "The quick brown fox jumps over the lazy dog.");
  const out = el("div", {id: "inspect-out"});
  const go = el("button", {id: "inspect-go"}, "Show features");
  main.replaceChildren(el("h1", {}, "What fires here"),
    el("p", {class: "muted"}, "Paste text; each token is shaded by its strongest feature. Click a token to list its top features."),
    text, el("p", {}, go), out);
  go.addEventListener("click", async () => {
    out.replaceChildren(el("p", {class: "muted"}, "Running the model…"));
    let r;
    try { r = await api("/api/inspect", {sae: ctx.sae, text: text.value, k: 8}); } catch (err) { return showError(out, err); }
    const maxOf = r.features.map(fs => fs.length ? fs[0].activation : 0), peak = Math.max(0, ...maxOf);
    const detail = el("div", {id: "token-features"});
    const showToken = i => {
      document.querySelectorAll("#inspect-tokens .tok").forEach((s, j) => s.classList.toggle("sel", i === j));
      detail.replaceChildren(el("h2", {}, "Token ", el("code", {class: "t"}, tokText(r.tokens[i]))),
        r.features[i].length ? el("table", {class: "rows"}, el("tbody", {}, r.features[i].map(s => el("tr", {},
          el("td", {}, s.indexed ? featureLink(ctx.sae, s.feature) : String(s.feature)),
          el("td", {class: "num"}, fmt(s.activation, 4)), el("td", {}, s.explanation || ""))))) :
          el("p", {class: "muted"}, "No feature is active here."));
    };
    const toks = el("div", {id: "inspect-tokens"}, r.tokens.map((t, i) => {
      const s = tokenSpan(t, maxOf[i], peak); s.addEventListener("click", () => showToken(i)); return s;
    }));
    const total = {};  // strongest activation of each feature anywhere in the text
    r.features.forEach(fs => fs.forEach(s => { total[s.feature] = Math.max(total[s.feature] || 0, s.activation); }));
    const top = Object.entries(total).sort((a, b) => b[1] - a[1]).slice(0, 15);
    out.replaceChildren(toks, el("div", {class: "cols"},
      el("div", {}, el("h2", {}, "Strongest features in the text"), el("table", {class: "rows", id: "inspect-top"},
        el("tbody", {}, top.map(([f, a]) => el("tr", {}, el("td", {}, featureLink(ctx.sae, f)), el("td", {class: "num"}, fmt(a, 4))))))),
      el("div", {}, detail)));
    const best = maxOf.indexOf(peak); if (best >= 0) showToken(best);
  });
  if (params.get("text")) go.click();
};
