"""What an SAE expects of its inputs: model, hook, BOS and special tokens, in one place.

Every evaluation of the suite (probing, absorption, reports) reads these through
`sae_conventions`, a view of the SAE's provenance record (`saekit.data.provenance`); `saekit
eval` writes the data flags given into that record first, so flags and folders agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SAEConventions:
    """How activations for an SAE are made: which model and hook, and how text is tokenized."""

    model_name: str | None
    hook_name: str | None
    prepend_bos: bool = True
    exclude_special_tokens: bool = True
    context_size: int | None = None
    dataset_path: str | None = None


def sae_conventions(sae: Any, **overrides: Any) -> SAEConventions:
    """The conventions of `sae` (from its provenance record), with `overrides` applied.

    Overrides that are None are ignored, so CLI flags can be passed straight through.
    """
    from saekit.data.provenance import Provenance

    prov, known = Provenance.from_sae(sae)  # the SAE's provenance record, as every tool reads it
    conventions = SAEConventions(
        model_name=prov.model if "model" in known else None,
        hook_name=prov.hooks[0] if prov.hooks else None,
        prepend_bos=prov.prepend_bos,
        exclude_special_tokens=prov.exclude_special_tokens,
        context_size=prov.context if "context" in known else None,
        dataset_path=prov.dataset if "dataset" in known else None,
    )
    return replace(conventions, **{k: v for k, v in overrides.items() if v is not None})
