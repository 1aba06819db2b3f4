"""SAE architectures: one class per architecture, found by name through the registry."""

from saekit.saes import batchtopk, gated, jumprelu, matryoshka, relu, topk  # noqa: F401  (registers the architectures)
from saekit.saes.base import SAE, SAEOutput
from saekit.saes.config import ARCH_SETTINGS, SAEConfig, SAEMetadata
from saekit.saes.registry import SAE_CLASSES, get_sae_class, register

__all__ = [
    "ARCH_SETTINGS",
    "SAE",
    "SAE_CLASSES",
    "SAEConfig",
    "SAEMetadata",
    "SAEOutput",
    "get_sae_class",
    "register",
]
