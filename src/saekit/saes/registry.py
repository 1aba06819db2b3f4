"""Architecture name (as stored in cfg.json) -> SAE class."""

from __future__ import annotations

from saekit.saes.base import SAE

SAE_CLASSES: dict[str, type[SAE]] = {}


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make `cls` available under `cls.architecture`."""
    if not cls.architecture or cls.architecture in SAE_CLASSES:
        raise ValueError(f"architecture {cls.architecture!r} is empty or already registered")
    SAE_CLASSES[cls.architecture] = cls
    return cls


def get_sae_class(architecture: str) -> type[SAE]:
    """The class registered under `architecture`; ValueError listing the known ones."""
    try:
        return SAE_CLASSES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; known: {sorted(SAE_CLASSES)}"
        ) from None
