"""The dtype names saekit accepts (in configs, flags and files) and their torch dtypes."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
MODEL_DTYPES = ("float32", "bfloat16", "float16")
"""What a language model or an activation cache may be stored in."""


def torch_dtype(name: str, allowed: tuple[str, ...] | None = None) -> torch.dtype:
    """The torch dtype named `name`; ValueError listing the allowed names if it is not one."""
    allowed = allowed or tuple(DTYPES)
    if name not in allowed:
        raise ValueError(f"unknown dtype {name!r}; use one of {list(allowed)}")
    return DTYPES[name]


def model_dtype_note(dtype: str, device: str | torch.device) -> str:
    """One line for a run's summary: the model's dtype, and where the hardware computes
    bfloat16 natively and the run used float32, the measured alternative (docs/performance.md,
    "The model's dtype")."""
    from saekit.saes.sparse import native_bf16

    line = f"model dtype: {dtype}"
    if dtype == "float32" and native_bf16(device):
        line += (
            " (this CPU computes bfloat16 natively: --dtype bfloat16 ran the default case's"
            " model forward 1.9x faster, with the same SAE quality on the float32 model)"
        )
    return line
