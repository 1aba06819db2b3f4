"""`SAEParts`: an SAE as a config dict + weights under saekit names, between formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SAEParts:
    """An SAE as plain data: SAELens-6-style config (saekit names) and weights."""

    cfg: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    sparsity: torch.Tensor | None = None
    """log10 feature densities `[d_sae]`, when the source has them."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.cfg.setdefault("metadata", {})
