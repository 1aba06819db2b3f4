"""The model with an SAE spliced in: CE loss (clean, spliced, ablated) and KL per token.

Positions follow the training rule: the SAE replaces the activation only where `keep_mask` is
True (BOS, EOS and padding keep their clean activation when the SAE was trained without
them), and the next-token loss at position t counts when `keep_mask[t]` is True and
t is not the last position (whose target lies outside the window). Zero and mean ablation
replace the same positions. A transcoder reads its input at `hook_name` and its output
replaces the activation at `hook_name_out`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


def sae_hooks(
    sae, hook_name: str | None = None, hook_name_out: str | None = None
) -> tuple[str, str]:
    """`(hook_in, hook_out)` of an SAE: overrides, else its cfg metadata (`hook_out = hook_in`
    for a plain SAE)."""
    meta = sae.cfg.metadata
    hook_in = hook_name or getattr(meta, "hook_name", None)
    if not hook_in:
        raise ValueError("the SAE's cfg names no hook (metadata.hook_name); pass the hook name")
    hook_out = hook_name_out or getattr(meta, "hook_name_out", None) or hook_in
    return hook_in, hook_out


def check_sae_fits(sae, lm, hook_in: str, hook_out: str) -> None:
    """Raise ValueError unless the SAE's input and output widths match the model's hooks."""
    d_in, d_out = sae.W_enc.shape[0], sae.W_dec.shape[1]
    width_in = lm.hook_dim(hook_in)
    if d_in != width_in:
        raise ValueError(
            f"SAE d_in={d_in} does not match hook {hook_in!r} of {lm.spec}, whose width is "
            f"{width_in}: this SAE was trained on another model or hook"
        )
    width_out = width_in if hook_out == hook_in else lm.hook_dim(hook_out)
    if d_out != width_out:
        raise ValueError(
            f"SAE output width {d_out} does not match hook {hook_out!r} of {lm.spec}, whose "
            f"width is {width_out}"
        )


def loss_positions(keep_mask_BT: Tensor) -> Tensor:
    """Bool `[B, T]`: positions whose next-token prediction counts (kept and not last)."""
    positions_BT = keep_mask_BT.clone().bool()
    positions_BT[:, -1] = False
    return positions_BT


def next_token_ce(logits_BTV: Tensor, input_ids_BT: Tensor, positions_BT: Tensor) -> Tensor:
    """Cross-entropy of predicting token t+1 at each counted position t, float32 `[N]`."""
    targets_BT = input_ids_BT.roll(-1, dims=1)
    logits_NV = logits_BTV[positions_BT].float()
    return torch.nn.functional.cross_entropy(logits_NV, targets_BT[positions_BT], reduction="none")


def next_token_kl(clean_logits_BTV: Tensor, logits_BTV: Tensor, positions_BT: Tensor) -> Tensor:
    """KL(clean || other) of the next-token distributions at each counted position, `[N]`."""
    clean_logp_NV = clean_logits_BTV[positions_BT].float().log_softmax(dim=-1)
    logp_NV = logits_BTV[positions_BT].float().log_softmax(dim=-1)
    return (clean_logp_NV.exp() * (clean_logp_NV - logp_NV)).sum(dim=-1)


def reconstruct(
    sae, x_ND: Tensor, scale_in: float = 1.0, scale_out: float = 1.0
) -> tuple[Tensor, Tensor]:
    """`(x_hat, feats)` of the SAE on `x` (any leading shape), computed in the SAE's dtype.

    An SAE still training on scaled activations (`x * scale_in`, target `* scale_out`) gets
    `x_hat = decode(encode(x * scale_in)) / scale_out`, in the raw units of the model.
    """
    param = sae.W_enc
    x_ND = x_ND.to(device=param.device, dtype=param.dtype)
    x_ND = x_ND * scale_in if scale_in != 1.0 else x_ND
    feats = sae.encode(x_ND)
    x_hat_ND = sae.add_skip(x_ND, sae.decode(feats))
    return (x_hat_ND / scale_out if scale_out != 1.0 else x_hat_ND), feats


def _where_kept(keep_mask_BT: Tensor | None, new_BTD: Tensor, act_BTD: Tensor) -> Tensor:
    new_BTD = new_BTD.to(device=act_BTD.device, dtype=act_BTD.dtype)
    if keep_mask_BT is None:
        return new_BTD
    return torch.where(keep_mask_BT.to(act_BTD.device).unsqueeze(-1), new_BTD, act_BTD)


@contextmanager
def spliced_sae(
    lm,
    sae,
    *,
    keep_error: bool = False,
    keep_mask_BT: Tensor | None = None,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
) -> Iterator[None]:
    """Inside the block, forwards of `lm` run with the SAE's reconstruction at its hook.

    `keep_error=True` adds back the SAE's error (`x - x_hat`), so the output equals the clean
    model's up to rounding (for attribution through the error term). With `keep_mask_BT`, only
    those positions are replaced (every forward must then have that shape).
    """
    hook_in, hook_out = sae_hooks(sae, hook_name, hook_name_out)
    check_sae_fits(sae, lm, hook_in, hook_out)
    inputs: dict[str, Tensor] = {}

    def grab(act_BTD: Tensor) -> Tensor:
        inputs["x"] = act_BTD
        return act_BTD

    def replace(act_BTD: Tensor) -> Tensor:
        x_BTD = act_BTD if hook_in == hook_out else inputs.pop("x", None)
        if x_BTD is None:
            raise RuntimeError(f"hook {hook_out!r} ran before the transcoder input {hook_in!r}")
        x_hat_BTD = reconstruct(sae, x_BTD)[0].to(act_BTD.dtype)
        if keep_error:
            x_hat_BTD = x_hat_BTD + (act_BTD - x_hat_BTD)
        return _where_kept(keep_mask_BT, x_hat_BTD, act_BTD)

    with ExitStack() as stack:
        if hook_in != hook_out:
            stack.enter_context(lm.splice(hook_in, grab))
        stack.enter_context(lm.splice(hook_out, replace))
        yield


@contextmanager
def ablated(lm, hook: str, value_D: Tensor | None, keep_mask_BT: Tensor | None = None):
    """Inside the block, the activation at `hook` is `value_D` (zeros when None) at kept positions."""

    def replace(act_BTD: Tensor) -> Tensor:
        new_BTD = torch.zeros_like(act_BTD) if value_D is None else value_D.expand_as(act_BTD)
        return _where_kept(keep_mask_BT, new_BTD, act_BTD)

    with lm.splice(hook, replace):
        yield


@dataclass
class SplicedBatch:
    """One batch's evaluation: kept-position activations and per-counted-position losses.

    Attributes:
        x_ND: SAE input at the kept positions (transcoders: the activation at `hook_name`).
        target_ND: activation the SAE reconstructs at the kept positions (= `x_ND` for an SAE).
        x_hat_ND: the SAE's reconstruction at the kept positions.
        feats_NF: feature activations at the kept positions.
        ce_clean_M, ce_spliced_M, ce_zero_M: next-token CE at the M counted positions.
        ce_mean_M: the same under mean ablation, when a mean was given.
        kl_M: KL(clean || spliced) of the next-token distribution at the counted positions.
    """

    x_ND: Tensor
    target_ND: Tensor
    x_hat_ND: Tensor
    feats_NF: Tensor
    ce_clean_M: Tensor
    ce_spliced_M: Tensor
    ce_zero_M: Tensor
    ce_mean_M: Tensor | None
    kl_M: Tensor


def capture_logits(lm, input_ids_BT: Tensor, hooks: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Clean logits and the activations at `hooks`, from one full forward."""
    acts: dict[str, Tensor] = {}

    def grabber(name: str) -> Callable[[Tensor], Tensor]:
        def grab(act_BTD: Tensor) -> Tensor:
            if name not in acts:  # a module called twice: keep its first call
                acts[name] = act_BTD.clone()
            return act_BTD

        return grab

    with ExitStack() as stack:
        for name in dict.fromkeys(hooks):
            stack.enter_context(lm.splice(name, grabber(name)))
        logits_BTV = lm.logits(input_ids_BT)
    return logits_BTV, acts


@torch.no_grad()
def spliced_logits(
    lm,
    input_ids_BT: Tensor,
    keep_mask_BT: Tensor,
    hook_out: str,
    x_hat_BTD: Tensor,
    *,
    keep_error: bool = False,
) -> Tensor:
    """Logits of `lm` with `x_hat_BTD` written over `hook_out` at the kept positions."""

    def replace(act_BTD: Tensor) -> Tensor:
        new_BTD = x_hat_BTD.to(act_BTD.dtype)
        if keep_error:
            new_BTD = new_BTD + (act_BTD - new_BTD)
        return _where_kept(keep_mask_BT, new_BTD, act_BTD)

    with lm.splice(hook_out, replace):
        return lm.logits(input_ids_BT)


@torch.no_grad()
def ablation_ce(
    lm, input_ids_BT: Tensor, keep_mask_BT: Tensor, hook: str, value_D: Tensor | None
) -> Tensor:
    """Next-token CE at the counted positions with `hook` zero- (None) or value-ablated."""
    input_ids_BT = input_ids_BT.to(lm.device)
    keep_mask_BT = keep_mask_BT.to(lm.device)
    with ablated(lm, hook, value_D, keep_mask_BT):
        logits_BTV = lm.logits(input_ids_BT)
    return next_token_ce(logits_BTV, input_ids_BT, loss_positions(keep_mask_BT))


@torch.no_grad()
def spliced_batch(
    sae,
    lm,
    input_ids_BT: Tensor,
    keep_mask_BT: Tensor,
    *,
    keep_error: bool = False,
    mean_act_D: Tensor | None = None,
    hook_name: str | None = None,
    hook_name_out: str | None = None,
    scale_in: float = 1.0,
    scale_out: float = 1.0,
) -> SplicedBatch:
    """Evaluate the SAE on one batch: a clean forward (which also reads the activations), a
    spliced forward, a zero-ablated forward and, given `mean_act_D`, a mean-ablated one.
    `scale_in`/`scale_out`: see `reconstruct`."""
    hook_in, hook_out = sae_hooks(sae, hook_name, hook_name_out)
    check_sae_fits(sae, lm, hook_in, hook_out)
    input_ids_BT = input_ids_BT.to(lm.device)
    keep_mask_BT = keep_mask_BT.to(lm.device).bool()
    positions_BT = loss_positions(keep_mask_BT)

    clean_logits_BTV, acts = capture_logits(lm, input_ids_BT, [hook_in, hook_out])
    # nothing upstream of the hooks changes in the spliced forward, so the clean input is the
    # spliced forward's input too: reconstruct once and reuse
    x_hat_BTD, feats_BTF = reconstruct(sae, acts[hook_in], scale_in, scale_out)

    spliced_logits_BTV = spliced_logits(
        lm, input_ids_BT, keep_mask_BT, hook_out, x_hat_BTD, keep_error=keep_error
    )
    ce_zero_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook_out, None)
    ce_mean_M = None
    if mean_act_D is not None:
        ce_mean_M = ablation_ce(lm, input_ids_BT, keep_mask_BT, hook_out, mean_act_D)

    return SplicedBatch(
        x_ND=acts[hook_in][keep_mask_BT],
        target_ND=acts[hook_out][keep_mask_BT],
        x_hat_ND=x_hat_BTD[keep_mask_BT.to(x_hat_BTD.device)],
        feats_NF=feats_BTF[keep_mask_BT.to(feats_BTF.device)],
        ce_clean_M=next_token_ce(clean_logits_BTV, input_ids_BT, positions_BT),
        ce_spliced_M=next_token_ce(spliced_logits_BTV, input_ids_BT, positions_BT),
        ce_zero_M=ce_zero_M,
        ce_mean_M=ce_mean_M,
        kl_M=next_token_kl(clean_logits_BTV, spliced_logits_BTV, positions_BT),
    )


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """`(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)`: 1 is perfect, 0 is no better
    than the ablation (NaN when ablation does not change the loss)."""
    denom = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / denom if denom != 0 else float("nan")
