"""The original config names, read and written through to saekit's settings.

Two views, one per place the original `LanguageModelSAERunnerConfig` was used:

- `LegacySAEConfig`: a loaded SAE's `cfg` (`sae.cfg.hook_point`, `.hook_point_layer`,
  `.lp_norm`, `.l1_coefficient`, `.expansion_factor`, `.context_size`, `.dataset_path`, ...).
  It *is* a saekit `SAEConfig` (same `cfg.json`), with the original names as properties
  over its fields and metadata.
- `LanguageModelSAERunnerConfig`: the original training config, field for field with the
  original's names; `to_train_config()` turns it into saekit's `TrainConfig` (`MAPPING`
  says which field becomes which setting) and `language_model_sae_runner` trains it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any

from saekit.saes.config import SAEConfig


def _layer_of(hook: str | None) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook or "")
    return int(match.group(1)) if match else None


@dataclass
class LegacySAEConfig(SAEConfig):
    """A saekit `SAEConfig` that also answers to the original config's names."""

    @classmethod
    def of(cls, cfg: SAEConfig) -> LegacySAEConfig:
        """The same configuration (shared metadata object) under the legacy names."""
        if isinstance(cfg, LegacySAEConfig):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(SAEConfig)})

    def _recorded(self, name: str) -> Any:
        """A training setting the original file recorded (None if the file has none)."""
        return self.metadata.extra.get("legacy_config", {}).get(name)

    @property
    def hook_point(self) -> str | None:
        """`metadata.hook_name`."""
        return self.metadata.hook_name

    @hook_point.setter
    def hook_point(self, value: str) -> None:
        self.metadata.hook_name = value

    @property
    def hook_point_layer(self) -> int | None:
        """The block index in `hook_point`."""
        return _layer_of(self.metadata.hook_name)

    @hook_point_layer.setter
    def hook_point_layer(self, layer: int) -> None:
        hook = self.metadata.hook_name or ""
        if _layer_of(hook) is None:
            raise ValueError(f"hook_point {hook!r} has no layer to change")
        self.metadata.hook_name = re.sub(r"^blocks\.\d+\.", f"blocks.{int(layer)}.", hook)

    @property
    def hook_point_head_index(self) -> int | None:
        """`metadata.hook_head_index`."""
        return self.metadata.hook_head_index

    @property
    def model_name(self) -> str | None:
        """`metadata.model_name`."""
        return self.metadata.model_name

    @model_name.setter
    def model_name(self, value: str) -> None:
        self.metadata.model_name = value

    @property
    def dataset_path(self) -> str | None:
        """`metadata.dataset_path`."""
        return self.metadata.dataset_path

    @dataset_path.setter
    def dataset_path(self, value: str) -> None:
        self.metadata.dataset_path = value

    @property
    def context_size(self) -> int | None:
        """`metadata.context_size`."""
        return self.metadata.context_size

    @context_size.setter
    def context_size(self, value: int) -> None:
        self.metadata.context_size = int(value)

    @property
    def expansion_factor(self) -> float:
        """`d_sae / d_in` (an int when it divides)."""
        ratio = self.d_sae / self.d_in
        return int(ratio) if ratio.is_integer() else ratio

    @property
    def lp_norm(self) -> float:
        """Always 1: saekit's sparsity penalty is the L1 norm (L0 for jumprelu)."""
        return 1.0

    @lp_norm.setter
    def lp_norm(self, value: float) -> None:
        if float(value) != 1.0:
            raise ValueError(f"lp_norm={value}: saekit's sparsity penalty is the L1 norm only")

    @property
    def use_ghost_grads(self) -> bool:
        """Whether the original run used ghost grads (training only; no effect at inference)."""
        return bool(self._recorded("use_ghost_grads"))

    @use_ghost_grads.setter
    def use_ghost_grads(self, value: bool) -> None:
        self.metadata.extra.setdefault("legacy_config", {})["use_ghost_grads"] = bool(value)

    @property
    def lr(self) -> float | None:
        """The learning rate the original file recorded (None for saekit folders)."""
        return self._recorded("lr")

    @property
    def train_batch_size(self) -> int | None:
        """Tokens per step the original file recorded (None for saekit folders)."""
        return self._recorded("train_batch_size")


MAPPING = {
    "model_name": "model", "hook_point (+ hook_point_layer)": "hooks",
    "dataset_path": "dataset", "context_size": "context", "prepend_bos": "prepend_bos",
    "d_in": "(checked against the hook's width)", "expansion_factor": "expansion_factor",
    "d_sae": "d_saes", "b_dec_init_method": "b_dec_init", "l1_coefficient": "l1s (arch relu)",
    "lp_norm": "(1 only)", "lr": "lr", "lr_scheduler_name": "lr_schedule",
    "lr_warm_up_steps": "lr_warmup_tokens (x train_batch_size)",
    "train_batch_size": "batch_tokens", "total_training_tokens": "tokens",
    "store_batch_size": "forward_rows",
    "n_batches_in_buffer": "buffer_tokens (x store_batch_size x context_size)",
    "use_ghost_grads": "dead_feature_method", "dead_feature_window": "dead_after_tokens (x train_batch_size)",
    "use_cached_activations + cached_activations_path": "activations",
    "log_to_wandb": "wandb", "wandb_project": "wandb_project", "wandb_log_frequency": "log_every",
    "n_checkpoints": "checkpoint_every", "checkpoint_path": "out", "device": "device",
    "seed": "seed",
}  # fmt: skip
"""Original field -> saekit `TrainConfig` setting."""

_SCHEDULES = {
    "constant": ("constant", False), "constantwithwarmup": ("constant", True),
    "linearwarmupdecay": ("linear", True), "cosineannealing": ("cosine", False),
    "cosineannealingwarmup": ("cosine", True),
}  # fmt: skip


@dataclass
class LanguageModelSAERunnerConfig:
    """The original training config. Training settings keep the original defaults; model,
    hook and dataset default to saekit's offline ones (the original's needed a download)."""

    model_name: str = "smollm2-135m"
    hook_point: str = "blocks.{layer}.hook_resid_pre"
    hook_point_layer: int | list[int] = 15
    hook_point_head_index: int | None = None
    dataset_path: str = "builtin:python-docs"
    is_dataset_tokenized: bool = False  # saekit detects tokenized datasets itself
    context_size: int = 128
    use_cached_activations: bool = False
    cached_activations_path: str | None = None
    d_in: int = 576
    n_batches_in_buffer: int = 20
    total_training_tokens: int = 2_000_000
    store_batch_size: int = 32
    device: Any = "cpu"
    seed: int = 42
    dtype: Any = "float32"
    prepend_bos: bool = True
    b_dec_init_method: str = "geometric_median"
    expansion_factor: int | list[int] = 4
    from_pretrained_path: str | None = None
    d_sae: int | None = None
    l1_coefficient: float | list[float] = 1e-3
    lp_norm: float = 1
    lr: float = 3e-4
    lr_scheduler_name: str = "constantwithwarmup"
    lr_warm_up_steps: int = 500
    train_batch_size: int = 4096
    use_ghost_grads: bool = False
    feature_sampling_window: int = 2000
    dead_feature_window: int = 1000
    dead_feature_threshold: float = 1e-8
    log_to_wandb: bool = False
    wandb_project: str = "mats_sae_training_language_model"
    run_name: str | None = None
    wandb_entity: str | None = None
    wandb_log_frequency: int = 10
    n_checkpoints: int = 0
    checkpoint_path: str = "checkpoints"

    def __post_init__(self) -> None:
        self.device = str(self.device)
        self.dtype = str(self.dtype).removeprefix("torch.")
        if not isinstance(self.expansion_factor, list):
            self.d_sae = self.d_in * self.expansion_factor
        self.to_train_config()  # refuse impossible settings now, as the original did

    def hook_points(self) -> tuple[str, ...]:
        """The hook name(s): `hook_point` with `{layer}` filled by each `hook_point_layer`."""
        layers = self.hook_point_layer if isinstance(self.hook_point_layer, list) else [self.hook_point_layer]
        return tuple(dict.fromkeys(self.hook_point.format(layer=layer) for layer in layers))

    def to_train_config(self) -> Any:
        """saekit's `TrainConfig` for these settings (see `MAPPING`)."""
        from saekit.training.config import TrainConfig

        for name, ok in (("lp_norm", float(self.lp_norm) == 1.0),
                         ("hook_point_head_index", self.hook_point_head_index is None),
                         ("from_pretrained_path", self.from_pretrained_path is None),
                         ("dtype", self.dtype == "float32"),
                         ("lr_scheduler_name", self.lr_scheduler_name in _SCHEDULES)):  # fmt: skip
            if not ok:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} has no saekit equivalent (see "
                    "docs/compat.md: saekit trains float32 L1 SAEs on whole hooks; resume "
                    "runs with `saekit train --resume`)"
                )
        schedule, warm = _SCHEDULES[self.lr_scheduler_name]
        l1s = self.l1_coefficient if isinstance(self.l1_coefficient, list) else [self.l1_coefficient]
        factors = self.expansion_factor if isinstance(self.expansion_factor, list) else None
        batch, context = self.train_batch_size, self.context_size
        every = self.total_training_tokens // (self.n_checkpoints + 1) if self.n_checkpoints else 0
        return TrainConfig(
            model=self.model_name, hooks=self.hook_points(), dataset=self.dataset_path,
            context=context, prepend_bos=self.prepend_bos, device=self.device,
            forward_rows=self.store_batch_size, archs=("relu",), l1s=tuple(float(x) for x in l1s),
            expansion_factor=None if factors else int(self.expansion_factor),
            d_saes=tuple(self.d_in * f for f in factors) if factors else (),
            tokens=self.total_training_tokens, batch_tokens=batch, lr=self.lr,
            lr_schedule=schedule, lr_warmup_tokens=self.lr_warm_up_steps * batch if warm else 0,
            lr_decay_fraction=1.0 if schedule != "constant" else 0.2,
            b_dec_init=self.b_dec_init_method,
            dead_feature_method="ghost_grads" if self.use_ghost_grads else "none",
            dead_after_tokens=self.dead_feature_window * batch,
            buffer_tokens=max(self.n_batches_in_buffer * self.store_batch_size * context, 2 * batch),
            activations=self.cached_activations_path if self.use_cached_activations else None,
            seed=self.seed, out=self.checkpoint_path, wandb=self.log_to_wandb,
            wandb_project=self.wandb_project, log_every=max(self.wandb_log_frequency, 1),
            checkpoint_every=every,
        )  # fmt: skip

    def replace(self, **changes: Any) -> LanguageModelSAERunnerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
