"""Feature data in the format Neuronpedia's upload takes (SAEDashboard's `batch-N.json`).

```
saekit export neuronpedia runs/saekit/<sae> --features 0:256 --tokens 200k --out np/
```

writes `np/batch-0.json`, `batch-1.json`, ... (`--batch-size` features each), each
`{model_id, layer, sae_set, features: [...]}` with, per feature: the top activations and
samples from activation intervals, as token strings with one activation value per token;
the activation histogram (`freq_hist_data_*`); the logit effects (`pos_str/pos_values`,
`neg_str/neg_values`) and their histogram over the vocabulary (`logits_hist_data_*`);
`frac_nonzero`. Beside them, `run_settings.json` (the SAE's metadata and how the export was
made) and, given `--explanations`, `explanations.jsonl`. `neuronpedia_batch.schema.json`
(next to this module) is the batch format, derived from SAEDashboard's exporter; every batch
written is checked against it when `jsonschema` is installed. Neuron-alignment and
correlation tables are left empty (saekit does not compute them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.analysis import collect_feature_stats, logit_effects, logit_weights
from saekit.analysis.features import Examples, FeatureStats
from saekit.analysis.logit_lens import token_strings
from saekit.fileio import atomic_write_text

SCHEMA_PATH = Path(__file__).with_name("neuronpedia_batch.schema.json")
N_INTERVALS = 10  # activation intervals the samples are grouped by (SAEDashboard's default)
LOGIT_BINS = 40


def schema() -> dict[str, Any]:
    """The JSON schema of a `batch-N.json` file."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_batch(batch: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` if `batch` does not follow the schema."""
    import jsonschema

    jsonschema.validate(batch, schema())


def hook_layer(hook: str | None) -> int:
    """The block index of a hook name (0 when it has none)."""
    match = re.match(r"blocks\.(\d+)\.", hook or "")
    return int(match.group(1)) if match else 0


def default_sae_set(hook: str | None) -> str:
    """`res-saekit`, `mlp-saekit`, `att-saekit` from the hook kind (Neuronpedia's `8-res-jb` style)."""
    kind = "mlp" if "mlp" in (hook or "") else "att" if "attn" in (hook or "") else "res"
    return f"{kind}-saekit"


def _r(values: Iterable[float]) -> list[float]:
    return [round(float(v), 3) for v in values]


def _example(ex: Examples, n: int, k: int, text: dict[int, str]) -> tuple[list[str], list[float]]:
    inside = ex.tokens_FKW[n, k] >= 0
    ids = ex.tokens_FKW[n, k][inside].tolist()
    return [text[i] for i in ids], _r(ex.acts_FKW[n, k][inside].tolist())


def _activations(stats: FeatureStats, n: int, text: dict[int, str]) -> list[dict[str, Any]]:
    """Top examples (bin -1 .. max, as SAEDashboard marks them) then interval samples."""
    out = []
    top_max = float(stats.act_max_F[n])
    for k in torch.nonzero(stats.top.valid_FK[n]).flatten().tolist():
        tokens, values = _example(stats.top, n, k, text)
        out.append({"bin_min": -1, "bin_max": round(top_max, 3), "bin_contains": -1,
                    "tokens": tokens, "values": values})  # fmt: skip
    edges = stats.hist_edges(n)
    centres_H = (edges[1:] + edges[:-1]) / 2
    counts_H = stats.hist_counts_FH[n].double()
    width = top_max / N_INTERVALS if top_max > 0 else 1.0
    for k in torch.nonzero(stats.samples.valid_FK[n]).flatten().tolist():
        value = float(stats.samples.values_FK[n, k])
        i = min(int(value / width), N_INTERVALS - 1)
        lo, hi = i * width, (i + 1) * width
        share = counts_H[(centres_H >= lo) & (centres_H < hi)].sum() / counts_H.sum().clamp_min(1)
        tokens, values = _example(stats.samples, n, k, text)
        out.append({"bin_min": round(lo, 3), "bin_max": round(hi, 3),
                    "bin_contains": round(float(share), 4), "tokens": tokens, "values": values})  # fmt: skip
    return out


def _histogram(values_V: Tensor, bins: int = LOGIT_BINS) -> tuple[list[float], list[float]]:
    lo, hi = float(values_V.min()), float(values_V.max())
    counts = torch.histc(values_V.float(), bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return _r((edges[1:] + edges[:-1]) / 2), [float(c) for c in counts]


@torch.no_grad()
def export_neuronpedia(
    sae: Any,
    lm: Any,
    batches: Iterable[tuple[Tensor, Tensor]],
    feature_ids: Sequence[int],
    out_dir: str | Path,
    *,
    prov: Any,
    max_tokens: int | None = None,
    batch_size: int = 128,
    model_id: str | None = None,
    sae_set: str | None = None,
    explanations: dict[int, str] | None = None,
    n_logits: int = 10,
    top_k: int = 20,
    n_samples: int = 40,
    context: tuple[int, int] = (24, 8),
    progress: bool = False,
) -> list[Path]:
    """One pass over `batches` for `feature_ids`; write the batch files (see module doc)."""
    hook = sae.cfg.metadata.hook_name
    layer, model_id = hook_layer(hook), model_id or re.sub(r"[^\w.-]+", "-", prov.model).strip("-")
    sae_set = sae_set or default_sae_set(hook)
    stats = collect_feature_stats(
        sae, lm, batches, feature_ids, max_tokens=max_tokens, progress=progress, top_k=top_k,
        n_samples=n_samples, context_left=context[0], context_right=context[1],
    )  # fmt: skip
    effects = {e.feature: e for e in logit_effects(sae, lm, feature_ids, k=n_logits)}
    ids = sorted({i for t in (stats.top.tokens_FKW, stats.samples.tokens_FKW) for i in t.flatten().tolist() if i >= 0})
    text = dict(zip(ids, token_strings(lm.tokenizer, ids), strict=True))
    features = []
    for n, feature in enumerate(stats.feature_ids):
        edges = stats.hist_edges(n)
        logit_centres, logit_counts = _histogram(logit_weights(sae, lm, [feature])[0].cpu())
        eff = effects[feature]
        features.append({
            "feature_index": int(feature),
            "neg_str": [t for _, t, _ in eff.negative], "neg_values": _r(v for *_, v in eff.negative),
            "pos_str": [t for _, t, _ in eff.positive], "pos_values": _r(v for *_, v in eff.positive),
            "frac_nonzero": float(stats.density_F[n]),
            "freq_hist_data_bar_values": _r((edges[1:] + edges[:-1]) / 2),
            "freq_hist_data_bar_heights": [float(c) for c in stats.hist_counts_FH[n]],
            "logits_hist_data_bar_heights": logit_counts, "logits_hist_data_bar_values": logit_centres,
            "n_prompts_total": int(stats.n_rows), "n_tokens_in_prompt": int(prov.context),
            "dataset": prov.dataset, "activations": _activations(stats, n, text),
        })  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, start in enumerate(range(0, len(features), batch_size)):
        batch = {"model_id": model_id, "layer": layer, "sae_set": sae_set,
                 "features": features[start : start + batch_size]}  # fmt: skip
        try:
            validate_batch(batch)
        except ImportError:
            pass  # jsonschema not installed: the tests validate
        paths.append(out / f"batch-{b}.json")
        atomic_write_text(paths[-1], json.dumps(batch))
    settings = {
        "model_id": model_id, "layer": layer, "sae_set": sae_set, "neuronpedia_id": f"{layer}-{sae_set}",
        "hook_name": hook, "architecture": sae.cfg.architecture, "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae, "features": [int(f) for f in feature_ids],
        "n_tokens_scanned": int(stats.n_tokens), "n_prompts_total": int(stats.n_rows),
        "provenance": prov.to_dict(), "special_tokens": prov.describe_special_tokens(),
        "sae_metadata": sae.cfg.metadata.to_dict(), "batch_files": [p.name for p in paths],
    }  # fmt: skip
    atomic_write_text(out / "run_settings.json", json.dumps(settings, indent=1))
    if explanations:
        lines = [json.dumps({"modelId": model_id, "layer": f"{layer}-{sae_set}", "index": str(f),
                             "description": explanations[f], "typeName": "saekit",
                             "explanationModelName": "saekit"})  # fmt: skip
                 for f in feature_ids if f in explanations]
        atomic_write_text(out / "explanations.jsonl", "\n".join(lines) + "\n")
    return paths


def read_explanations(path: str | Path) -> dict[int, str]:
    """`{feature: text}` from a JSON object `{"3": "..."}` or JSONL lines `{"feature", "explanation"}`."""
    raw = Path(path).read_text()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if isinstance(data, dict):
        return {int(k): str(v) for k, v in data.items()}
    return {int(row["feature"]): str(row.get("explanation") or row["description"]) for row in data}
