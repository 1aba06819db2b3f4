"""The original README snippet and evaluation tutorial cells run verbatim on saekit.

The code comes from `original_snippets.py` (the mats_sae_training README and
`tutorials/evaluating_your_sae.ipynb`, byte for byte) and runs on the embedded model
(smollm2-135m) with an original-format `.pt` SAE. What the test supplies is the world around
the code, never the code: the hub files are served from a local cache (HF_HUB_OFFLINE) under
the original repo and file names, with a legacy `.pt` SAE for smollm2-135m inside (layer 8's
residual stream, d_sae 1152, random weights); the one hub dataset the dashboard cell loads is
a local dataset of Python documentation; plotly figures are collected instead of opened in a
browser; and where TransformerLens 2/3 is not installed (TransformerLens 4 removed
`transformer_lens.utils`), `saekit.compat.tl_utils` answers `from transformer_lens import utils`.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import original_snippets as original
from legacy_files import offline_hub, populate_hf_cache, write_legacy_pt, write_legacy_sparsity

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO_ID = "jbloom/GPT2-Small-SAEs"
NAME = "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_24576"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Offline hub with the original file names, a local dataset, collected plots."""
    src = tmp_path / "src"
    src.mkdir()
    write_legacy_pt(src / f"{NAME}.pt", d_in=576, expansion_factor=2, model_name="smollm2-135m",
                    hook_point="blocks.8.hook_resid_pre", hook_point_layer=8,
                    dataset_path="builtin:python-docs", context_size=32, store_batch_size=4,
                    train_batch_size=64, n_batches_in_buffer=2, l1_coefficient=8e-5, on_gpu=True)
    sparsity = write_legacy_sparsity(src / f"{NAME}_log_feature_sparsity.pt", 1152)
    populate_hf_cache(tmp_path / "hub", REPO_ID, {p.name: p for p in src.iterdir()})
    offline_hub(monkeypatch, tmp_path / "hub")

    from pydoc_data.topics import topics

    import datasets

    def load_dataset(path, *args, split=None, **kwargs):
        assert path == "NeelNanda/c4-code-20k" and split == "train", path
        return datasets.Dataset.from_dict({"text": [topics[k] for k in sorted(topics)[:6]]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    try:
        from transformer_lens import utils as _  # noqa: F401  (TransformerLens 2.x / 3.x)
    except ImportError:
        from saekit.compat import tl_utils

        package = types.ModuleType("transformer_lens")
        package.utils = tl_utils
        monkeypatch.setitem(sys.modules, "transformer_lens", package)
        monkeypatch.setitem(sys.modules, "transformer_lens.utils", tl_utils)

    import plotly.basedatatypes

    shown = []
    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", lambda fig, *a, **k: shown.append(fig))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(tmp_path)
    grad = torch.is_grad_enabled()
    yield types.SimpleNamespace(shown=shown, sparsity=sparsity, dir=tmp_path)
    torch.set_grad_enabled(grad)


def test_readme_snippet_verbatim(world):
    scope: dict = {}
    exec(original.README_LOAD, scope)
    exec(original.README_SPARSITY, scope)
    torch.testing.assert_close(scope["log_feature_sparsity"], world.sparsity)
    group = scope["sparse_autoencoder"]
    assert len(group) == 1 and not group[0].training
    assert group.cfg.hook_point == "blocks.8.hook_resid_pre" and group.cfg.d_sae == 1152
    assert scope["model"].cfg.d_model == 576
    assert scope["activation_store"].get_batch_tokens().shape == (4, 32)


def test_evaluation_tutorial_cells_verbatim(world, capsys):
    scope: dict = {}
    for name in ("SETUP", "DOWNLOAD", "LOAD", "LIST_SAES", "PICK_SAE", "L0_TEST",
                 "RECONSTRUCTION_TEST", "CAPABILITY_TEST", "TOP_FEATURES", "DASHBOARDS"):  # fmt: skip
        cell = next(v for k, v in vars(original).items() if k.startswith("CELL_") and k.split("_", 2)[2] == name)
        exec(cell, scope)
    out = capsys.readouterr().out

    # cell 6: the original config names, read from the .pt file
    assert "0: Layer 8, p_norm 1.0, alpha 8e-05" in out
    # cell 10: [batch, pos, d_sae] features of the store's batch; the L0 histogram
    assert scope["batch_tokens"].shape == (4, 32)
    assert "average l0" in out and len(world.shown) >= 2
    # cell 11: clean loss < zero-ablated loss (the SAE is random: its reconstruction is not good)
    lines = {line.split()[0]: float(line.split()[-1]) for line in out.splitlines()
             if line.split()[:1] in (["Orig"], ["reconstr"], ["Zero"])}  # fmt: skip
    assert 0 < lines["Orig"] < lines["Zero"]
    # cell 13: the prompt, its SAE features at every position, test_prompt's report
    prompt_len = len(scope["model"].to_str_tokens(scope["example_prompt"]))
    assert scope["feature_acts"].shape == (1, prompt_len, 1152)
    assert out.count("Ranks of the answer tokens") == 2 and "Tokenized prompt" in out
    # cell 16: a dashboard page for each of the prompt's top 10 features at the last position
    pages = sorted(world.dir.glob("data_*.html"))
    assert len(pages) == 10 and (world.dir / "vocab_dict.json").exists()
    assert all("Top activations" in p.read_text() for p in pages)
