"""Random transcoders for every layer of a tiny model (shared by the tests/test_circuits*.py)."""

from __future__ import annotations

import torch

from saekit.saes.base import SAE


def random_transcoders(
    lm, arch: str = "relu", d_sae: int = 48, seed: int = 0, read: str = "resid", **settings
) -> list[SAE]:
    """One random transcoder per layer of `lm`, reading the MLP input, writing the MLP output.

    Encoder biases are shifted so that a fair share of features fire (relu) and b_dec is
    non-zero, so bias terms are exercised.
    """
    torch.manual_seed(seed)
    saes = []
    for layer in range(lm.n_layers):
        hook_in = (
            f"blocks.{layer}.hook_resid_mid" if read == "resid"
            else f"blocks.{layer}.ln2.hook_normalized"  # what `saekit train --transcoders` reads
        )  # fmt: skip
        sae = SAE.create(
            arch, d_in=lm.d_model, d_sae=d_sae, d_out=lm.d_model, apply_b_dec_to_input=False,
            metadata={"hook_name": hook_in, "hook_name_out": f"blocks.{layer}.hook_mlp_out"},
            **settings,
        )  # fmt: skip
        with torch.no_grad():
            sae.W_enc.normal_(0, 1.0 / lm.d_model**0.5)
            # the normed input has unit scale: smaller decoders keep the layers' gains near 1
            sae.W_dec.normal_(0, 0.05 if read == "resid" else 0.002)
            sae.b_dec.normal_(0, 0.01)
            if hasattr(sae, "b_enc"):
                sae.b_enc.normal_(-0.02, 0.05)
        saes.append(sae)
    return saes
