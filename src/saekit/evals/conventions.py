"""What an SAE expects of its inputs: model, hook, BOS and special tokens, in one place.

Every evaluation of the suite (probing, absorption, reports) reads these through
`sae_conventions`, so when the provenance record (`saekit.data.provenance`) lands only this
function changes.
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
    """The conventions of `sae` (from its `cfg.json` metadata), with `overrides` applied.

    Overrides that are None are ignored, so CLI flags can be passed straight through.
    """
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)

    def get(key: str, default: Any = None) -> Any:
        value = getattr(meta, key, None) if meta is not None else None
        return default if value is None else value

    conventions = SAEConventions(
        model_name=get("model_name"),
        hook_name=get("hook_name"),
        prepend_bos=bool(get("prepend_bos", True)),
        exclude_special_tokens=bool(get("exclude_special_tokens", True)),
        context_size=get("context_size"),
        dataset_path=get("dataset_path"),
    )
    return replace(conventions, **{k: v for k, v in overrides.items() if v is not None})
