"""Upload an SAE folder to the HF hub with a generated model card."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from saekit.fileio import atomic_folder
from saekit.io.converters import detect_format

# Files of an SAE folder worth publishing (what `save`, `saekit eval` and a run write).
UPLOAD_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.jsonl",
                "eval.json")


def read_metrics(folder: Path) -> dict[str, Any]:
    """Final metrics of a run: `eval.json` if present, else the last line of `metrics.jsonl`."""
    if (folder / "eval.json").is_file():
        data = json.loads((folder / "eval.json").read_text())
        return data if isinstance(data, dict) else {}
    if (folder / "metrics.jsonl").is_file():
        lines = [ln for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        if lines:
            return json.loads(lines[-1])
    return {}


def make_model_card(folder: str | Path, repo_id: str) -> str:
    """README.md for the hub: YAML metadata (library, model, hook, metrics) and usage."""
    folder = Path(folder)
    if detect_format(folder) not in ("saekit", "saelens"):
        raise ValueError(f"{folder} is not a saekit SAE folder; convert it first (saekit convert)")
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg.get("metadata", {})
    arch = cfg.get("saekit_architecture", cfg.get("architecture"))
    metrics = {k: v for k, v in read_metrics(folder).items() if isinstance(v, (int, float))}
    header: dict[str, Any] = {"library_name": "saekit", "tags": ["sparse-autoencoder", "saekit", "saelens"]}
    if meta.get("model_name"):
        header["base_model"] = meta["model_name"]
    sae_info = {"architecture": arch, "d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"),
                "hook_name": meta.get("hook_name"), "model_name": meta.get("model_name")}
    if cfg.get("k") is not None:
        sae_info["k"] = cfg["k"]
    if metrics:
        sae_info["metrics"] = metrics
    header["sae"] = {k: v for k, v in sae_info.items() if v is not None}
    rows = "\n".join(f"| {k} | {v} |" for k, v in header["sae"].items() if k != "metrics")
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items())
    parts = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        f"A sparse autoencoder ({arch}) trained with [saekit](https://pypi.org/project/saekit/)"
        + (f" on `{meta['hook_name']}` of `{meta['model_name']}`." if meta.get("hook_name") and meta.get("model_name") else "."),
        "", "| setting | value |", "|---|---|", rows, "",
    ]
    if metric_rows:
        parts += ["## Metrics", "", "| metric | value |", "|---|---|", metric_rows, ""]
    parts += [
        "## Use", "", "```python", "import saekit",
        f'sae = saekit.load_sae("hf://{repo_id}")', "f = sae.encode(x)  # x: activations at the hook",
        "```", "",
        "The folder is in SAELens 6's layout (`cfg.json` + `sae_weights.safetensors`), so "
        f'`sae_lens.SAE.from_pretrained("{repo_id}", "")` opens it too.', "",
    ]
    return "\n".join(parts)


def stage_upload(folder: str | Path, repo_id: str, staging: str | Path, force: bool = False) -> Path:
    """Copy what would be uploaded (the SAE files + README.md) into a new folder `staging`."""
    folder = Path(folder)
    card = make_model_card(folder, repo_id)
    with atomic_folder(staging, force=force) as tmp:
        for name in UPLOAD_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(staging)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    force: bool = False,
) -> str:
    """Upload `folder` to `repo_id` (created if needed); returns the commit URL.

    With `dry_run_dir`, only writes the staged upload there and returns its path.
    """
    if dry_run_dir is not None:
        return str(stage_upload(folder, repo_id, dry_run_dir, force=force))
    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        staging = stage_upload(folder, repo_id, Path(tmp) / "upload")
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staging,
                                 commit_message="Upload SAE with saekit")
    return str(getattr(info, "commit_url", info))
