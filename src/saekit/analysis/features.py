"""Per-feature statistics from ONE batched pass over a token stream.

For a set of requested features, :class:`FeatureStatsCollector` keeps, batch by batch:

- firing counts, sum and max of the activation (a feature *fires* where its activation > 0);
- an exact histogram of the nonzero activations over [0, hi), hi a power of two above the max;
  when a larger value arrives hi doubles and bin pairs merge (exact), so no second pass;
- the top-k activating positions with a window of token ids and activations around each
  (a streaming top-k: the batch's top-k is merged with the running top-k by ``torch.topk``);
- a uniform random sample of firing positions (bottom-k sampling: each firing position gets a
  uniform random key, the k largest keys are kept), used for the lower-quantile examples.

Positions where ``keep_mask`` is False (BOS, EOS, pad) count nowhere and show activation 0;
so do, with ``exclude_after_special=N``, the N positions after each special token and the
first N of each window (see ``special_positions.after_special_mask``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Examples:
    """``K`` example positions per feature, each with a window of ``W`` tokens around it.

    Entries with ``valid_FK`` False are padding (the feature fired fewer than ``K`` times).
    Window tokens outside the row are ``-1`` with activation 0. The example's own token sits at
    window index ``context_left``.
    """

    values_FK: Tensor  # activation at the example position
    valid_FK: Tensor  # bool
    tokens_FKW: Tensor  # token ids of the window (-1 outside the row)
    acts_FKW: Tensor  # the feature's activation at each window token
    rows_FK: Tensor  # row index in the stream (0-based, counting every row seen)
    positions_FK: Tensor  # position of the example in its row


@dataclass
class FeatureStats:
    """The result of one pass: everything a dashboard shows except the logit effects."""

    feature_ids: list[int]
    n_tokens: int  # kept positions seen
    n_rows: int
    context_left: int
    context_right: int
    fire_count_F: Tensor
    act_sum_F: Tensor  # sum of the activation over positions where it fires
    act_max_F: Tensor
    hist_counts_FH: Tensor  # histogram of nonzero activations
    hist_hi_F: Tensor  # bin edges of feature f: linspace(0, hist_hi_F[f], H + 1)
    top: Examples  # sorted by activation, descending
    samples: Examples  # uniform sample of firing positions, sorted by activation, descending

    @property
    def density_F(self) -> Tensor:
        """Fraction of kept tokens on which each feature fires."""
        return self.fire_count_F.double() / max(self.n_tokens, 1)

    @property
    def mean_act_F(self) -> Tensor:
        """Mean activation over the tokens where the feature fires (NaN if it never fires)."""
        return self.act_sum_F.double() / self.fire_count_F.double()

    def hist_edges(self, i: int) -> Tensor:
        """Bin edges (H + 1) of the histogram of the i-th requested feature."""
        return torch.linspace(0.0, float(self.hist_hi_F[i]), self.hist_counts_FH.shape[1] + 1)


def parse_feature_spec(spec: str, d_sae: int | None = None) -> list[int]:
    """Parse ``"0:100"`` (a range, end excluded), ``"3,17,42"`` or a mix like ``"0:4,9"``."""
    ids: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                start, stop = (int(x) for x in part.split(":"))
                ids.extend(range(start, stop))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(f"bad feature spec {spec!r}: use '0:100' or '3,17,42'") from None
    if not ids:
        raise ValueError(f"feature spec {spec!r} selects no feature")
    bad = [i for i in ids if i < 0 or (d_sae is not None and i >= d_sae)]
    if bad:
        raise ValueError(f"feature ids {bad[:5]} out of range [0, {d_sae})")
    return list(dict.fromkeys(ids))  # unique, order kept


class FeatureStatsCollector:
    """Streaming statistics of ``F`` features; feed batches with :meth:`update`."""

    def __init__(
        self,
        feature_ids: Sequence[int],
        *,
        top_k: int = 20,
        n_samples: int = 60,
        n_bins: int = 64,
        context_left: int = 10,
        context_right: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if n_bins < 1 or n_bins & (n_bins - 1):
            raise ValueError(f"n_bins must be a power of two, got {n_bins}")
        self.feature_ids = list(feature_ids)
        self.top_k, self.n_samples, self.n_bins = top_k, n_samples, n_bins
        self.left, self.right = context_left, context_right
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        F, dev = len(self.feature_ids), self.device
        self.n_tokens = 0
        self.n_rows = 0
        self.fire_count_F = torch.zeros(F, dtype=torch.long, device=dev)
        self.act_sum_F = torch.zeros(F, dtype=torch.float64, device=dev)
        self.act_max_F = torch.zeros(F, device=dev)
        self.hist_counts_FH = torch.zeros(F, n_bins, dtype=torch.long, device=dev)
        self.hist_hi_F = torch.zeros(F, device=dev)
        self._top: dict[str, Tensor] | None = None  # keys: "key", "values", "tokens", ...
        self._samples: dict[str, Tensor] | None = None

    @torch.no_grad()
    def update(self, input_ids_BT: Tensor, keep_mask_BT: Tensor, acts_BTF: Tensor) -> None:
        """Add one batch: token ids, kept positions and the features' activations there."""
        B, T, F = acts_BTF.shape
        if F != len(self.feature_ids) or input_ids_BT.shape != (B, T):
            raise ValueError(
                f"acts {tuple(acts_BTF.shape)} / input_ids {tuple(input_ids_BT.shape)} do not "
                f"match {len(self.feature_ids)} features"
            )
        dev = self.device
        input_ids_BT = input_ids_BT.to(dev)
        keep_BT = keep_mask_BT.to(dev, torch.bool)
        acts_BTF = acts_BTF.to(dev, torch.float32) * keep_BT[..., None]
        fires_BTF = acts_BTF > 0

        self.n_tokens += int(keep_BT.sum())
        self.fire_count_F += fires_BTF.sum((0, 1))
        self.act_sum_F += acts_BTF.sum((0, 1), dtype=torch.float64)
        self.act_max_F = torch.maximum(self.act_max_F, acts_BTF.amax((0, 1)))
        self._update_histogram(acts_BTF, fires_BTF)

        acts_NF = acts_BTF.reshape(B * T, F)
        keys_NF = torch.rand(acts_NF.shape, generator=self.generator, device=dev)
        keys_NF = keys_NF.masked_fill(~fires_BTF.reshape(B * T, F), -1.0)
        self._top = self._merge(self._top, acts_NF, self.top_k, input_ids_BT, acts_BTF)
        self._samples = self._merge(self._samples, keys_NF, self.n_samples, input_ids_BT, acts_BTF)
        self.n_rows += B

    def _update_histogram(self, acts_BTF: Tensor, fires_BTF: Tensor) -> None:
        H = self.n_bins
        # hi is a power of two strictly above every value, so v / hi * H is exact in floating
        # point and doubling hi (summing bin pairs) gives the same bins as binning from scratch
        batch_max_F = acts_BTF.amax((0, 1))
        _, exponent_F = torch.frexp(batch_max_F)  # batch_max < 2**exponent
        needed_F = torch.ldexp(torch.ones_like(batch_max_F), exponent_F) * (batch_max_F > 0)
        new_F = (self.hist_hi_F == 0) & (needed_F > 0)
        self.hist_hi_F[new_F] = needed_F[new_F]
        for f in torch.nonzero(needed_F > self.hist_hi_F).flatten().tolist():
            merge = min(int(needed_F[f] / self.hist_hi_F[f]), H)
            merged = self.hist_counts_FH[f].view(H // merge, merge).sum(1)
            self.hist_counts_FH[f] = 0
            self.hist_counts_FH[f, : H // merge] = merged
            self.hist_hi_F[f] = needed_F[f]
        idx = torch.nonzero(fires_BTF)  # [n, 3] (b, t, f), row-major like acts_BTF[fires_BTF]
        f_n = idx[:, 2]
        bins_n = (acts_BTF[fires_BTF] / self.hist_hi_F[f_n] * H).long().clamp(max=H - 1)
        self.hist_counts_FH.view(-1).index_add_(
            0, f_n * H + bins_n, torch.ones_like(bins_n, dtype=torch.long)
        )

    def _merge(
        self,
        running: dict[str, Tensor] | None,
        score_NF: Tensor,
        k: int,
        input_ids_BT: Tensor,
        acts_BTF: Tensor,
    ) -> dict[str, Tensor]:
        """Top-k of ``score`` in this batch, with windows, merged into the running top-k."""
        B, T, F = acts_BTF.shape
        key_KF, flat_KF = score_NF.topk(min(k, score_NF.shape[0]), dim=0)
        b_KF, t_KF = flat_KF // T, flat_KF % T
        offsets_W = torch.arange(-self.left, self.right + 1, device=self.device)
        t_KFW = t_KF[..., None] + offsets_W
        inside_KFW = (t_KFW >= 0) & (t_KFW < T)
        t_KFW = t_KFW.clamp(0, T - 1)
        b_KFW = b_KF[..., None].expand_as(t_KFW)
        f_KFW = torch.arange(F, device=self.device)[None, :, None].expand_as(t_KFW)
        batch = {
            "key": key_KF.T,
            "values": acts_BTF.reshape(B * T, F).gather(0, flat_KF).T,
            "tokens": input_ids_BT[b_KFW, t_KFW].masked_fill(~inside_KFW, -1).transpose(0, 1),
            "acts": acts_BTF[b_KFW, t_KFW, f_KFW].masked_fill(~inside_KFW, 0).transpose(0, 1),
            "rows": (b_KF + self.n_rows).T,
            "positions": t_KF.T,
        }
        if running is not None:
            batch = {name: torch.cat([running[name], batch[name]], dim=1) for name in batch}
        key_FK, pick_FK = batch["key"].topk(min(k, batch["key"].shape[1]), dim=1)
        merged = {"key": key_FK}
        for name, value in batch.items():
            if name != "key":
                index = (
                    pick_FK
                    if value.dim() == 2
                    else pick_FK[..., None].expand(-1, -1, value.shape[2])
                )
                merged[name] = value.gather(1, index)
        return merged

    def result(self) -> FeatureStats:
        """The statistics so far, on the CPU."""
        if self._top is None or self._samples is None:
            raise ValueError("no batch was collected: the token stream was empty")
        return FeatureStats(
            feature_ids=self.feature_ids,
            n_tokens=self.n_tokens,
            n_rows=self.n_rows,
            context_left=self.left,
            context_right=self.right,
            fire_count_F=self.fire_count_F.cpu(),
            act_sum_F=self.act_sum_F.cpu(),
            act_max_F=self.act_max_F.cpu(),
            hist_counts_FH=self.hist_counts_FH.cpu(),
            hist_hi_F=self.hist_hi_F.cpu(),
            top=_examples(self._top, sort=False),
            samples=_examples(self._samples, sort=True),
        )


def _examples(state: dict[str, Tensor], sort: bool) -> Examples:
    """Package a running top-k; ``sort`` re-orders by activation (descending)."""
    valid_FK = state["key"] > 0 if not sort else state["key"] >= 0
    values_FK = state["values"].masked_fill(~valid_FK, float("-inf"))
    order_FK = values_FK.argsort(dim=1, descending=True, stable=True) if sort else None

    def pick(t: Tensor) -> Tensor:
        if order_FK is None:
            return t.cpu()
        index = order_FK if t.dim() == 2 else order_FK[..., None].expand(-1, -1, t.shape[2])
        return t.gather(1, index).cpu()

    return Examples(
        values_FK=pick(state["values"]),
        valid_FK=pick(valid_FK),
        tokens_FKW=pick(state["tokens"]),
        acts_FKW=pick(state["acts"]),
        rows_FK=pick(state["rows"]),
        positions_FK=pick(state["positions"]),
    )


@torch.no_grad()
def collect_feature_stats(
    sae,
    lm,
    batches: Iterable[tuple[Tensor, Tensor]],
    feature_ids: Sequence[int],
    *,
    hook: str | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    exclude_after_special: int = 0,
    special_ids: Sequence[int] = (),
    **collector_kwargs,
) -> FeatureStats:
    """One model pass over ``batches`` of ``(input_ids_BT, keep_mask_BT)``.

    Each batch runs the model up to ``hook`` (default: the SAE's ``metadata.hook_name``), encodes
    the activations with the SAE and feeds the requested features to a
    :class:`FeatureStatsCollector` (``collector_kwargs`` go there). Stops after the batch in
    which ``max_tokens`` kept tokens have been seen. With ``exclude_after_special=N``, the
    positions ``special_positions.after_special_mask`` marks (given the tokenizer's ``special_ids``) are
    not kept.
    """
    from tqdm.auto import tqdm

    hook = hook or sae.cfg.metadata.hook_name
    device = next(sae.parameters()).device
    collector = FeatureStatsCollector(feature_ids, device=device, **collector_kwargs)
    ids_F = torch.tensor(list(feature_ids), device=device)
    bar = tqdm(total=max_tokens, unit="tok", disable=not progress, desc="features")
    for input_ids_BT, keep_BT in batches:
        acts_BTD = lm.run_to_hooks(input_ids_BT.to(lm.device), [hook])[hook]
        feats_BTF = sae.encode(acts_BTD.to(device, next(sae.parameters()).dtype))[..., ids_F]
        if exclude_after_special > 0:
            from saekit.analysis.special_positions import after_special_mask

            keep_BT = keep_BT & ~after_special_mask(input_ids_BT, special_ids, exclude_after_special)
        before = collector.n_tokens
        collector.update(input_ids_BT, keep_BT, feats_BTF)
        bar.update(collector.n_tokens - before)
        if max_tokens is not None and collector.n_tokens >= max_tokens:
            break
    bar.close()
    return collector.result()
