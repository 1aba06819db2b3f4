"""Loading the original GPT-2 small residual SAEs, and Neuronpedia links."""

from __future__ import annotations

from typing import Any

import torch

from saekit.io.legacy import safe_torch_load

REPO_ID = "jbloom/GPT2-Small-SAEs"


def get_all_gpt2_small_saes(device: str = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`({hook: SparseAutoencoder}, {hook: log feature sparsity})` of the 12 + 1 original
    GPT-2 small residual SAEs, downloaded with `huggingface_hub` (cached; the restricted
    loader reads the `.pt` files, so no pickle code runs)."""
    from huggingface_hub import hf_hub_download

    from sae_training.sparse_autoencoder import SparseAutoencoder

    saes, sparsities = {}, {}
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(12)] + ["blocks.11.hook_resid_post"]
    for hook in hooks:
        name = f"final_sparse_autoencoder_gpt2-small_{hook}_24576"
        sae = SparseAutoencoder.load_from_pretrained(hf_hub_download(REPO_ID, f"{name}.pt"), device)
        saes[hook] = sae
        path = hf_hub_download(REPO_ID, f"{name}_log_feature_sparsity.pt")
        sparsities[hook] = safe_torch_load(path).to(device)
    return saes, sparsities


def neuronpedia_url(feature_id: int, layer: int = 0, model: str = "gpt2-small",
                    sae_set: str = "res-jb") -> str:  # fmt: skip
    """The Neuronpedia page of a feature (`https://www.neuronpedia.org/MODEL/LAYER-SET/ID`)."""
    return f"https://www.neuronpedia.org/{model}/{layer}-{sae_set}/{feature_id}"


def open_neuronpedia(feature_id: int, layer: int = 0) -> str:
    """Print (and return) the feature's Neuronpedia link; nothing is opened or fetched."""
    url = neuronpedia_url(feature_id, layer)
    print(f"Feature {feature_id}: {url}")
    return url


__all__ = ["get_all_gpt2_small_saes", "neuronpedia_url", "open_neuronpedia"]
