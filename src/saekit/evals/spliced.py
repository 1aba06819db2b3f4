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


def next_token_targets(input_ids_BT: Tensor, positions_BT: Tensor) -> Tensor:
    """The token after each counted position, `[M]` (positions from `loss_positions`)."""
    return input_ids_BT.roll(-1, dims=1)[positions_BT.to(input_ids_BT.device)]


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
    with reconstruction_spliced(lm, sae, hook_in, hook_out, keep_mask_BT, keep_error=keep_error):
        yield


Observer = Callable[[Tensor, Tensor, Tensor, Tensor], None]
"""`observe(x_BTD, target_BTD, x_hat_BTD, feats_BTF)`: the SAE's input, the clean activation it
replaces, its reconstruction and features, for each forward through the splice."""


@contextmanager
def reconstruction_spliced(
    lm,
    sae,
    hook_in: str,
    hook_out: str,
    keep_mask_BT: Tensor | None = None,
    *,
    scale_in: float = 1.0,
    scale_out: float = 1.0,
    keep_error: bool = False,
    observe: Observer | None = None,
) -> Iterator[None]:
    """`spliced_sae` with the hooks given, scaled SAEs (see `reconstruct`), and an observer.

    A transcoder's input is read at `hook_in` in the same forward: nothing upstream of
    `hook_out` changes, so the activations it reads are the clean model's.
    """
    inputs: dict[str, Tensor] = {}

    def grab(act_BTD: Tensor) -> Tensor:
        inputs["x"] = act_BTD
        return act_BTD

    def replace(act_BTD: Tensor) -> Tensor:
        x_BTD = act_BTD if hook_in == hook_out else inputs.pop("x", None)
        if x_BTD is None:
            raise RuntimeError(f"hook {hook_out!r} ran before the transcoder input {hook_in!r}")
        x_hat_BTD, feats_BTF = reconstruct(sae, x_BTD, scale_in, scale_out)
        if observe is not None:
            observe(x_BTD, act_BTD, x_hat_BTD, feats_BTF)
        x_hat_BTD = x_hat_BTD.to(act_BTD.dtype)
        if keep_error:
            x_hat_BTD = x_hat_BTD + (act_BTD - x_hat_BTD)
        return _where_kept(keep_mask_BT, x_hat_BTD, act_BTD)

    with ExitStack() as stack:
        if hook_in != hook_out:
            stack.enter_context(lm.splice(hook_in, grab))
        stack.enter_context(lm.splice(hook_out, replace))
        yield


def ablated_stream(
    act_BTD: Tensor, value_D: Tensor | None, keep_mask_BT: Tensor | None = None
) -> Tensor:
    """`act_BTD` with `value_D` (zeros when None) at the kept positions (all without a mask)."""
    new_BTD = torch.zeros_like(act_BTD) if value_D is None else value_D.expand_as(act_BTD)
    return _where_kept(keep_mask_BT, new_BTD, act_BTD)


@contextmanager
def ablated(lm, hook: str, value_D: Tensor | None, keep_mask_BT: Tensor | None = None):
    """Inside the block, the activation at `hook` is `value_D` (zeros when None) at kept positions."""
    with lm.splice(hook, lambda act_BTD: ablated_stream(act_BTD, value_D, keep_mask_BT)):
        yield


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """`(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)`: 1 is perfect, 0 is no better
    than the ablation (NaN when ablation does not change the loss)."""
    denom = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / denom if denom != 0 else float("nan")
