"""Attribution: the direct effects between the nodes of a prompt's local replacement model.

With attention patterns, norm scales and feature activations frozen, every target's input
(a feature's pre-activation, a logit minus the mean logit) is a linear function of what the
sources write into the residual stream. One backward sweep through the frozen linear paths
(`FrozenModel.attn_adjoint`, written out, no autograd) gives a whole row of the adjacency
per target, for a batch of targets at once: `batch_size` rows per sweep, never one sweep per
edge. The gradient at a layer's MLP output dotted with a source's decoder vector times its
activation is the edge weight.

Shapes: B targets in a batch, T positions, D d_model, L layers, N features, K logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from saekit.circuits.graph import Graph, normalize_rows
from saekit.circuits.replacement import Prompt, ReplacementModel


def select_logits(
    logits_V: Tensor, max_logits: int = 10, desired_prob: float = 0.95
) -> tuple[Tensor, Tensor]:
    """(token ids, probabilities) of the top logits: at most `max_logits`, stopping once
    their cumulative probability reaches `desired_prob`."""
    if max_logits < 1 or not 0.0 < desired_prob <= 1.0:
        raise ValueError(
            f"max_logits must be >= 1 (got {max_logits}) and desired_prob in (0, 1] (got {desired_prob})"
        )
    probs = torch.softmax(logits_V.float(), dim=-1)
    top_p, top_ids = probs.topk(min(max_logits, probs.shape[0]))
    count = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_prob))) + 1
    return top_ids[:count], top_p[:count]


class Attributor:
    """Computes adjacency rows of one prompt in a replacement model.

    Args:
        model: the replacement model.
        prompt: `model.prepare(input_ids)`.
        logit_ids_K: the target logits.
    """

    def __init__(
        self, model: ReplacementModel, prompt: Prompt, logit_ids_K: Tensor
    ) -> None:
        self.model, self.prompt, self.fz = model, prompt, model.frozen
        tc, run = model.transcoders, prompt.run
        feats = prompt.features_N3.to(run.embed_TD.device)
        self.layer_rows = [(feats[:, 0] == layer).nonzero()[:, 0] for layer in range(model.n_layers)]
        # Decoder vectors scaled by activations, per (output layer, source layer), padded to
        # [T, C, D] by position so that one batched matmul gives a layer's edges.
        self.scaled_dec = {
            (out, src): self._by_position(
                feats[self.layer_rows[src]], prompt.n_pos,
                tc.decoder_vectors(out, src, feats[self.layer_rows[src], 2])
                * prompt.acts_N[self.layer_rows[src], None],
            )
            for out in range(model.n_layers) for src in tc.writes_from(out)
        }  # fmt: skip
        self.n_features = int(feats.shape[0])
        T, L = prompt.n_pos, model.n_layers
        self.n_sources = self.n_features + L * T + T
        unembed_DV = self.fz.unembed_matrix()
        demeaned_KD = (unembed_DV[:, logit_ids_K.to(unembed_DV.device)] - unembed_DV.mean(1, keepdim=True)).T
        self.logit_vecs_KD = torch.stack([self.fz.final_adjoint(run, v, T - 1) for v in demeaned_KD])
        enc = [tc.encoder_vectors(layer, feats[self.layer_rows[layer], 2]) for layer in range(L)]
        self.encoder_ND = torch.zeros(self.n_features, run.embed_TD.shape[1], dtype=run.embed_TD.dtype,
                                      device=run.embed_TD.device)  # fmt: skip
        for layer in range(L):
            vecs = enc[layer]
            if model.transcoders.read == "normed":
                pos = feats[self.layer_rows[layer], 1]
                vecs = self.fz.read_vectors(run, layer, vecs, pos)
            self.encoder_ND[self.layer_rows[layer]] = vecs
        self.feats = feats

    @torch.no_grad()
    def rows(self, layers_B: Tensor, positions_B: Tensor, vectors_BD: Tensor) -> Tensor:
        """Adjacency rows [B, n_sources] (features, errors, tokens) of targets that read
        `vectors_BD` from the residual stream at (layer, position); layer L = the final
        residual stream (logits)."""
        run, fz, L, T = self.prompt.run, self.fz, self.model.n_layers, self.prompt.n_pos
        B = vectors_BD.shape[0]
        device = run.embed_TD.device
        layers_B, positions_B = layers_B.to(device), positions_B.to(device)
        out = torch.zeros(B, self.n_sources, dtype=vectors_BD.dtype, device=device)
        grad = torch.zeros(B, T, vectors_BD.shape[1], dtype=vectors_BD.dtype, device=device)
        batch = torch.arange(B, device=device)

        def inject(layer: int) -> None:
            hit = layers_B == layer
            if hit.any():
                grad[batch[hit], positions_B[hit]] += vectors_BD[hit]

        inject(L)
        for layer in reversed(range(L)):
            if (layers_B > layer).any():  # else nothing flows back to this layer's writes yet
                for src in self.model.transcoders.writes_from(layer):
                    dec = self.scaled_dec[(layer, src)]
                    self._feature_edges(out, grad, self.layer_rows[src], dec)
                err = self.n_features + layer * T
                out[:, err : err + T] = (grad * self.prompt.error_LTD[layer]).sum(-1)
            inject(layer)
            if (layers_B >= layer).any():
                grad = grad + fz.attn_adjoint(run, layer, grad)
        tok = self.n_features + L * T
        out[:, tok : tok + T] = (grad * run.embed_TD).sum(-1)
        return out

    @staticmethod
    def _by_position(feats_n3: Tensor, n_pos: int, dec_nD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decoders [T, C, D] padded with zeros, slot mask [T, C], their rows' order [n])."""
        positions = feats_n3[:, 1]
        counts = torch.bincount(positions, minlength=n_pos)
        C = int(counts.max()) if len(positions) else 0
        order = positions.argsort(stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(positions), device=positions.device) - starts[positions[order]]
        padded = torch.zeros(n_pos, C, dec_nD.shape[1], dtype=dec_nD.dtype, device=dec_nD.device)
        padded[positions[order], slot] = dec_nD[order]
        mask = torch.zeros(n_pos, C, dtype=torch.bool, device=dec_nD.device)
        mask[positions[order], slot] = True
        return padded, mask, order

    def _feature_edges(self, out: Tensor, grad_BTD: Tensor, rows: Tensor, dec) -> None:
        padded_TCD, mask_TC, order = dec
        if padded_TCD.shape[1] == 0:
            return
        edges_TBC = torch.bmm(grad_BTD.transpose(0, 1), padded_TCD.transpose(1, 2))
        out[:, rows[order]] += edges_TBC.permute(1, 0, 2)[:, mask_TC]

    def feature_rows(self, index_N: Tensor) -> Tensor:
        """Adjacency rows of the feature nodes `index_N`."""
        feats = self.feats[index_N.to(self.feats.device)]
        return self.rows(feats[:, 0], feats[:, 1], self.encoder_ND[index_N.to(self.feats.device)])

    def logit_rows(self) -> Tensor:
        """Adjacency rows of the logit nodes."""
        K = self.logit_vecs_KD.shape[0]
        layers = torch.full((K,), self.model.n_layers)
        return self.rows(layers, torch.full((K,), self.prompt.n_pos - 1), self.logit_vecs_KD)


def attribute(
    model: ReplacementModel,
    input_ids_T: Tensor | Prompt,
    *,
    prompt_text: str | None = None,
    max_logits: int = 10,
    desired_prob: float = 0.95,
    batch_size: int = 256,
    max_feature_nodes: int | None = None,
    update_every: int = 4,
    frozen_positions: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Graph:
    """The attribution graph of a prompt (dense adjacency, unpruned).

    Args:
        input_ids_T: the tokens, or `model.prepare(tokens)` when already run.
        max_logits, desired_prob: logit targets: the top ones up to this cumulative probability.
        batch_size: targets per backward sweep (memory grows with batch_size * positions).
        max_feature_nodes: keep at most this many features, chosen greedily by their
            influence on the logits in the rows computed so far (None: every active feature).
        update_every: with `max_feature_nodes`, re-rank after this many batches.
        frozen_positions: positions whose MLP outputs are held (no nodes there; see
            `ReplacementModel.prepare`); ignored when a prepared `Prompt` is given.
        progress: called with (rows done, rows total).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    if isinstance(input_ids_T, Prompt):
        prompt = input_ids_T
    else:
        prompt = model.prepare(input_ids_T, frozen_positions)
    logit_ids, logit_probs = select_logits(prompt.run.logits_TV[-1], max_logits, desired_prob)
    att = Attributor(model, prompt, logit_ids)
    N, K = att.n_features, len(logit_ids)
    keep = N if max_feature_nodes is None else min(max_feature_nodes, N)
    logit_rows = att.logit_rows().cpu()
    S = att.n_sources
    n_nodes = keep + S - N + K
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=logit_rows.dtype)
    if keep == N:  # every feature, in order: rows go straight into the adjacency, no copies
        for part in torch.arange(N).split(batch_size):
            adjacency[int(part[0]) : int(part[-1]) + 1, :S] = att.feature_rows(part).cpu()
            if progress:
                progress(int(part[-1]) + 1 + K, N + K)
        adjacency[S:, :S] = logit_rows
        chosen = torch.arange(N)
    else:
        chosen = _greedy_rows(att, adjacency, logit_rows, logit_probs, keep, batch_size,
                              update_every, progress)  # fmt: skip
    return Graph(
        prompt=prompt_text if prompt_text is not None else _decode(model, prompt.input_ids_T),
        input_ids_T=prompt.input_ids_T, features_N3=prompt.features_N3[chosen],
        acts_N=prompt.acts_N.cpu()[chosen], logit_ids_K=logit_ids.cpu(),
        logit_probs_K=logit_probs.cpu(), adjacency=adjacency, n_layers=model.n_layers,
        info={"active_features": N, "seconds": round(time.perf_counter() - start, 3),
              "frozen_positions": prompt.frozen_T.nonzero()[:, 0].tolist()},
    )  # fmt: skip


def _greedy_rows(
    att: Attributor,
    adjacency: Tensor,
    logit_rows_KS: Tensor,
    probs_K: Tensor,
    keep: int,
    batch_size: int,
    update_every: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """Fill `adjacency` with the rows of the `keep` features most influential on the logits,
    re-ranked every `update_every` batches from the rows so far; their indices, sorted."""
    N, K = att.n_features, logit_rows_KS.shape[0]
    feature_rows = torch.zeros(keep, att.n_sources, dtype=logit_rows_KS.dtype)
    order = torch.zeros(keep, dtype=torch.long)
    visited = torch.zeros(N, dtype=torch.bool)
    done = 0
    while done < keep:
        ranking = _partial_influence(logit_rows_KS, probs_K, feature_rows[:done], order[:done], N)
        ranking = ranking.argsort(descending=True)
        pending = ranking[~visited[ranking]][: min(update_every * batch_size, keep - done)]
        for part in pending.split(batch_size):
            feature_rows[done : done + len(part)] = att.feature_rows(part).cpu()
            order[done : done + len(part)] = part
            visited[part] = True
            done += len(part)
            if progress:
                progress(done + K, keep + K)
    selected = order.sort()
    cols = torch.cat([selected.values, torch.arange(N, att.n_sources)])
    inner = adjacency.shape[0] - K
    adjacency[:keep, :inner] = feature_rows[selected.indices][:, cols]
    adjacency[inner:, :inner] = logit_rows_KS[:, cols]
    return selected.values


def _partial_influence(
    logit_rows_KS: Tensor, probs_K: Tensor, rows_MS: Tensor, order_M: Tensor, n_features: int
) -> Tensor:
    """Influence on the logits of every feature, from the rows computed so far.

    The same series as `graph.influence` on the square adjacency, kept to its computed rows
    ([M + K, S], not [S + K, S + K]): a step from the sources reaches further only through the
    features whose rows are known.
    """
    M = len(order_M)
    rows = normalize_rows(torch.cat([rows_MS, logit_rows_KS]))
    current = probs_K.to(rows.dtype) @ rows[M:]
    total = current.clone()
    for _ in range(10_000):  # acyclic: ends after the longest path
        arriving = current[order_M]
        if not arriving.any():
            return total[:n_features]
        current = arriving @ rows[:M]
        total += current
    raise RuntimeError("feature ranking did not converge (is the graph cyclic?)")


def _decode(model: ReplacementModel, ids_T: Tensor) -> str:
    tokenizer = model.lm.tokenizer
    return tokenizer.decode(ids_T.tolist()) if tokenizer is not None else ""
