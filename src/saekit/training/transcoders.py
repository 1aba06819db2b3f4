"""Which (input, output) hooks a run trains on: single hooks, one transcoder, or the MLPs of
a range of layers (`--transcoders all`, `0:10`, `5`).

A layer's transcoder reads the MLP's input `blocks.L.ln2.hook_normalized` (after the norm)
and reconstructs its output `blocks.L.hook_mlp_out` (`saekit.models.hooks.MLP_IN/MLP_OUT`).
"""

from __future__ import annotations

import re

from saekit.models.hooks import MLP_IN, MLP_OUT

_RANGE = re.compile(r"(\d*):(\d*)")


def mlp_hooks(layer: int) -> tuple[str, str]:
    """(MLP input hook, MLP output hook) of `layer`."""
    return f"blocks.{layer}.{MLP_IN}", f"blocks.{layer}.{MLP_OUT}"


def check_layer_spec(spec: str) -> None:
    """ValueError naming the setting unless `spec` is `all`, `A:B` or `L`."""
    if spec != "all" and not spec.isdigit() and not _RANGE.fullmatch(spec):
        raise ValueError(
            f"transcoders={spec!r}: write all, a layer L, or a half-open range A:B (e.g. 0:10)"
        )


def transcoder_layers(spec: str, n_layers: int) -> list[int]:
    """The layers `spec` names in a model of `n_layers` (`A:B` is half-open, like Python)."""
    check_layer_spec(spec)
    if spec == "all":
        return list(range(n_layers))
    if spec.isdigit():
        start, stop = int(spec), int(spec) + 1
    else:
        a, b = _RANGE.fullmatch(spec).groups()  # type: ignore[union-attr]
        start, stop = int(a or 0), int(b) if b else n_layers
    if not 0 <= start < stop <= n_layers:
        raise ValueError(
            f"transcoders={spec!r}: the model has layers 0..{n_layers - 1}; "
            f"give a non-empty range within them (e.g. 0:{n_layers})"
        )
    return list(range(start, stop))


def hook_pairs(
    hooks: tuple[str, ...], hook_out: str | None, transcoders: str | None, n_layers: int,
    default: str,
) -> list[tuple[str, str]]:  # fmt: skip
    """(input hook, output hook) of each thing to train, before any architecture sweep."""
    if transcoders:
        return [mlp_hooks(layer) for layer in transcoder_layers(transcoders, n_layers)]
    return [(h, hook_out or h) for h in (hooks or (default,))]


def layers_in_cache(hooks: tuple[str, ...]) -> int:
    """1 + the highest layer whose MLP input a cache holds (0: none)."""
    layers = [int(m.group(1)) for h in hooks if (m := re.fullmatch(rf"blocks\.(\d+)\.{MLP_IN}", h))]
    return max(layers, default=-1) + 1
