"""The local replacement model of one prompt.

The clean forward fixes attention patterns and norm denominators; each MLP is replaced by its
transcoder plus an error term (true MLP output minus the transcoder's reconstruction), so the
replacement reproduces the clean logits exactly. Its forward can then be rerun with features
changed (interventions) or with every source removed (what the biases alone contribute).

Frozen positions (`prepare(ids, frozen_positions=...)`, e.g. the BOS token, as circuit-tracer
does for position 0): their MLP outputs are held at the clean values, a constant like a bias,
so they get no feature nodes and zero error nodes. Transcoders trained without special tokens
(`exclude_special_tokens`) never saw those positions, whose activations are outliers.

Shapes: T positions, D d_model, V vocabulary, L layers, N active features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saekit.circuits.frozen import CleanRun, frozen_model
from saekit.circuits.transcoders import PerLayerTranscoders


@dataclass
class Prompt:
    """One prompt in the replacement model.

    Attributes:
        input_ids_T: the tokens.
        run: the clean forward (frozen scales and patterns, true MLP outputs, logits).
        features_N3: active features as rows (layer, position, feature), sorted.
        acts_N: their activations; pre_N: their linear pre-activations.
        error_LTD: true MLP output minus the transcoder output, per layer (0 at frozen positions).
        frozen_T: positions whose MLP outputs are held at their clean values (no nodes).
    """

    input_ids_T: Tensor
    run: CleanRun
    features_N3: Tensor
    acts_N: Tensor
    pre_N: Tensor
    error_LTD: Tensor
    frozen_T: Tensor

    @property
    def n_pos(self) -> int:
        return int(self.input_ids_T.shape[0])


class ReplacementOutput(NamedTuple):
    """What `ReplacementModel.forward` returns."""

    logits_TV: Tensor
    """Logits of the replacement model."""
    pre_N: Tensor
    """Pre-activations of the prompt's (clean) active features in this forward."""
    acts: list[Tensor]
    """Feature activations per layer, [T, F] each, as used in this forward."""


class ReplacementModel:
    """A language model with transcoders for its MLPs (`lm` an HF Llama-family model, or a
    TransformerLens one: `tl:NAME`)."""

    def __init__(self, lm, transcoders: PerLayerTranscoders) -> None:
        self.frozen = frozen_model(lm)
        if transcoders.n_layers != self.frozen.n_layers:
            raise ValueError(
                f"{transcoders.n_layers} transcoder layers for a {self.frozen.n_layers}-layer model"
            )
        self.lm = lm
        self.transcoders = transcoders

    @property
    def n_layers(self) -> int:
        return self.frozen.n_layers

    def mlp_input(self, run: CleanRun, layer: int, resid_mid_TD: Tensor) -> Tensor:
        """What the transcoder of `layer` reads, from the residual stream after attention."""
        if self.transcoders.read == "normed":
            return self.frozen.mlp_norm(run, layer, resid_mid_TD)
        return resid_mid_TD

    @torch.no_grad()
    def prepare(
        self, input_ids_T: Tensor, frozen_positions: Sequence[int] | Tensor | None = None
    ) -> Prompt:
        """Run the clean forward and encode every layer's MLP input.

        `frozen_positions`: positions whose MLP outputs stay at their clean values (no feature
        nodes, zero error nodes), e.g. `special_positions(lm, ids)`.
        """
        ids = torch.as_tensor(input_ids_T).view(-1)
        frozen = torch.zeros(len(ids), dtype=torch.bool)
        if frozen_positions is not None:
            index = torch.as_tensor(frozen_positions, dtype=torch.long).view(-1)
            if len(index) and (index.min() < -len(ids) or index.max() >= len(ids)):
                raise ValueError(f"frozen positions {index.tolist()} outside the prompt's {len(ids)} tokens")
            frozen[index] = True
        run = self.frozen.clean_forward(ids)
        tc = self.transcoders
        frozen_dev = frozen.to(run.embed_TD.device)
        acts = []
        for layer in range(self.n_layers):
            pre_TF, act_TF = tc.encode(layer, self.mlp_input(run, layer, run.resid_mid_LTD[layer]))
            acts.append((pre_TF, act_TF.masked_fill(frozen_dev[:, None], 0)))
        errors, rows, values, pres = [], [], [], []
        for layer in range(self.n_layers):
            recon = tc.bias_out(layer) + sum(
                tc.decode_to(layer, src, acts[src][1]) for src in tc.writes_from(layer)
            )
            errors.append((run.mlp_out_LTD[layer] - recon).masked_fill(frozen_dev[:, None], 0))
            pre_TF, act_TF = acts[layer]
            pos, feat = act_TF.nonzero(as_tuple=True)
            rows.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
            values.append(act_TF[pos, feat])
            pres.append(pre_TF[pos, feat])
        return Prompt(ids.cpu(), run, torch.cat(rows).cpu(), torch.cat(values),
                      torch.cat(pres), torch.stack(errors), frozen)  # fmt: skip

    def dense_acts(self, prompt: Prompt, values_N: Tensor | None = None) -> list[Tensor]:
        """Per-layer activations [T, F] from the prompt's active list (or other `values_N`)."""
        values = prompt.acts_N if values_N is None else values_N
        out = []
        for layer in range(self.n_layers):
            dense = torch.zeros(prompt.n_pos, self.transcoders.d_sae(layer), dtype=values.dtype,
                                device=values.device)  # fmt: skip
            mask = prompt.features_N3[:, 0] == layer
            rows = prompt.features_N3[mask]
            dense[rows[:, 1], rows[:, 2]] = values[mask.to(values.device)]
            out.append(dense)
        return out

    @torch.no_grad()
    def forward(
        self,
        prompt: Prompt,
        *,
        feature_acts_N: Tensor | None = None,
        set_features: dict[tuple[int, int, int], float] | None = None,
        recompute: bool = False,
        embed_scale: float = 1.0,
        error_scale: float = 1.0,
    ) -> ReplacementOutput:
        """Rerun the replacement model with frozen attention and norms.

        Args:
            feature_acts_N: activations of the active features (default: the clean ones).
            set_features: `{(layer, position, feature): activation}` forced in this forward.
            recompute: recompute features from their inputs through the transcoders'
                nonlinearities (False: features keep `feature_acts_N`, so only the direct
                effects of a change are seen).
            embed_scale, error_scale: multiply the token embeddings / error terms (0 removes
                them, leaving what the biases contribute).
        """
        run, tc, fz = prompt.run, self.transcoders, self.frozen
        fixed = self.dense_acts(prompt, feature_acts_N)
        frozen = prompt.frozen_T.to(run.embed_TD.device)
        x = run.embed_TD * embed_scale
        if run.const_TD is not None:  # positional embeddings: a constant, not a node
            x = x + run.const_TD
        used, pre_parts = [], []
        for layer in range(self.n_layers):
            x = x + fz.attn(run, layer, x)
            pre_TF, act_TF = tc.encode(layer, self.mlp_input(run, layer, x))
            rows = prompt.features_N3[prompt.features_N3[:, 0] == layer]
            pre_parts.append(pre_TF[rows[:, 1], rows[:, 2]])
            act_TF = act_TF.masked_fill(frozen[:, None], 0) if recompute else fixed[layer]
            for (lay, pos, feat), value in (set_features or {}).items():
                if lay == layer:
                    act_TF[pos, feat] = value
            used.append(act_TF)
            out = tc.bias_out(layer) + error_scale * prompt.error_LTD[layer]
            out = out + sum(tc.decode_to(layer, src, used[src]) for src in tc.writes_from(layer))
            if frozen.any():  # held at the clean MLP output: a constant, like a bias
                out = torch.where(frozen[:, None], run.mlp_out_LTD[layer], out)
            x = x + out
        return ReplacementOutput(fz.final(run, x), torch.cat(pre_parts), used)


def special_positions(lm, input_ids_T: Tensor) -> list[int]:
    """Positions of the tokenizer's special tokens (BOS, EOS, padding) in a prompt."""
    special = lm.special_token_ids
    return [i for i, t in enumerate(torch.as_tensor(input_ids_T).view(-1).tolist()) if t in special]
