"""The original `ActivationsStore` (saekit's, built on the SAE's provenance record)."""

from saekit.compat.session import ActivationsStore

__all__ = ["ActivationsStore"]
