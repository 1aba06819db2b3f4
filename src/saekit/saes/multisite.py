"""What the dictionaries over several sites (cross-layer transcoders, crosscoders) share:
their `cfg.json` checks and round trip, and their folder's files."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.dtypes import DTYPES
from saekit.fileio import atomic_write, atomic_write_text
from saekit.saes.config import SAEMetadata
from saekit.saes.folder import WEIGHTS_FILENAME

AUXK_SETTINGS = ("aux_k", "aux_coefficient", "threshold_lr")
"""The settings of the k-sparse activations (AuxK, the BatchTopK threshold's rate)."""


class MultisiteConfig:
    """Mixin of the config dataclasses: `LABEL` names the kind in errors, `ARCHITECTURE` is
    its `cfg.json` tag, `ACTIVATIONS` the valid activations, `SIZES` the positive sizes,
    `PENALISED` the activations whose sparsity is a penalty (no k), `SETTINGS` what a run
    may set per activation (`--sae-setting`)."""

    LABEL: ClassVar[str]
    ARCHITECTURE: ClassVar[str]
    ACTIVATIONS: ClassVar[tuple[str, ...]]
    SIZES: ClassVar[tuple[str, ...]]
    PENALISED: ClassVar[tuple[str, ...]] = ()
    SETTINGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "topk": AUXK_SETTINGS,
        "batchtopk": AUXK_SETTINGS,
    }

    @classmethod
    def with_k(cls) -> tuple[str, ...]:
        """The activations that take k."""
        return tuple(a for a in cls.ACTIVATIONS if a not in cls.PENALISED)

    def check(self) -> None:
        """Normalise the metadata; raise ValueError naming the first bad setting."""
        cfg: Any = self
        if not isinstance(cfg.metadata, SAEMetadata):
            cfg.metadata = SAEMetadata.from_dict(cfg.metadata)
        for name in self.SIZES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{self.LABEL} {name} must be a positive integer, got {value!r}")
        if cfg.activation not in self.ACTIVATIONS:
            raise ValueError(
                f"{self.LABEL} activation={cfg.activation!r} is not one of "
                f"{', '.join(self.ACTIVATIONS)}"
            )
        if cfg.activation in self.PENALISED:
            if cfg.k is not None:
                raise ValueError(
                    f"{self.LABEL} k={cfg.k} is not used by activation={cfg.activation!r} "
                    f"(a penalty sets its sparsity); k is for {', '.join(self.with_k())}"
                )
        elif not (isinstance(cfg.k, int) and 0 < cfg.k <= cfg.d_sae):
            raise ValueError(
                f"{self.LABEL} k={cfg.k} must be an integer in [1, d_sae={cfg.d_sae}] for "
                f"activation={cfg.activation!r}"
            )
        if cfg.dtype not in DTYPES:
            raise ValueError(
                f"{self.LABEL} dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The `cfg.json` dict; settings left at a None default (those of another activation)
        are not written, so a file holds only what applies to it."""
        out = {"architecture": self.ARCHITECTURE, **asdict(self)}  # type: ignore[call-overload]
        unset = {
            name for name, f in self.__dataclass_fields__.items()  # type: ignore[attr-defined]
            if f.default is None and getattr(self, name) is None
        }  # fmt: skip
        out = {k: v for k, v in out.items() if k not in unset}
        out["metadata"] = self.metadata.to_dict()  # type: ignore[attr-defined]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """From a `cfg.json` dict, refusing another architecture and unknown keys by name."""
        data = dict(data)
        if data.pop("architecture", None) != cls.ARCHITECTURE:
            raise ValueError(f"not a {cls.LABEL} config (architecture != {cls.ARCHITECTURE!r})")
        known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.LABEL} cfg.json has unknown keys {unknown}; known: {sorted(known)}"
            )
        return cls(**data)


def save_folder(
    folder: str | os.PathLike[str], cfg: MultisiteConfig, tensors: dict[str, Tensor],
    sparsity: Tensor | None = None,
) -> None:  # fmt: skip
    """Write `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILENAME, lambda p: save_file(tensors, p))
    if sparsity is not None:
        sp = {"sparsity": sparsity.detach().float().contiguous().cpu()}
        atomic_write(folder / "sparsity.safetensors", lambda p: save_file(sp, p))
    atomic_write_text(folder / "cfg.json", json.dumps(cfg.to_dict(), indent=2) + "\n")


def read_folder(
    folder: str | os.PathLike[str], config_cls: type, device: str | None
) -> tuple[Any, dict[str, Tensor]]:
    """The config and the weights of a folder written by `save_folder`."""
    folder = Path(folder)
    cfg = config_cls.from_dict(json.loads((folder / "cfg.json").read_text()))
    if device is not None:
        cfg.device = str(device)
    return cfg, load_file(str(folder / WEIGHTS_FILENAME), device=cfg.device)


def check_tensors(label: str, own: dict[str, Tensor], tensors: dict[str, Tensor]) -> None:
    """Raise ValueError unless `tensors` has exactly `own`'s names and shapes."""
    missing, extra = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
    if missing or extra:
        raise ValueError(f"{label} weights: missing {missing}, unexpected {extra}")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{label} weight {name} has shape {tuple(value.shape)}, expected "
                f"{tuple(own[name].shape)}"
            )
