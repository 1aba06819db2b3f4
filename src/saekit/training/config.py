"""The training configuration: one frozen dataclass, whose field docs become the CLI help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saekit import settings
from saekit.data.provenance import DataSettings
from saekit.settings import Count

DEFAULT_K = 32  # active features per token when no --k is given
LR_SCHEDULES = ("constant", "linear", "cosine")
DEAD_FEATURE_METHODS = ("auto", "auxk", "ghost_grads", "resample", "none")
B_DEC_INITS = ("mean", "geometric_median", "zeros")
APPROX_SELECTIONS = ("auto", "on", "off")
NORMALIZATIONS = ("expected_norm", "none")


@dataclass(frozen=True)
class LoopSettings:
    """What the training loop itself reads (`Trainer`): how long, how fast the learning rate and
    the sparsity coefficient move, when a feature counts as dead or dense, and when to log,
    evaluate and checkpoint. `TrainConfig` holds these among its settings; the loop gets only
    these (`LoopSettings.of(cfg)`)."""

    tokens: Count = 409_600
    """Training tokens."""
    batch_tokens: Count = 4096
    """Tokens per optimizer step (the global batch)."""
    lr: float = 3e-3
    """Adam learning rate."""
    lr_schedule: str = "linear"
    """Learning-rate decay after warm-up: constant, linear or cosine."""
    lr_warmup_tokens: Count = 0
    """Tokens of linear learning-rate warm-up from zero."""
    lr_decay_fraction: float = 0.2
    """Fraction of training (at the end) over which the learning rate decays to `lr_end_factor`."""
    lr_end_factor: float = 0.0
    """Final learning rate as a fraction of `lr`."""
    sparsity_warmup_tokens: Count = 0
    """Tokens of linear warm-up of the sparsity coefficient from zero."""
    dead_after_tokens: Count = 81_920
    """A feature that has not fired for this many tokens counts as dead."""
    resample_every_tokens: Count = 0
    """For dead_feature_method=resample: resample dead features every this many tokens."""
    dense_threshold: float = 0.1
    """A feature firing on more than this fraction of tokens counts as dense."""
    autocast: bool = False
    """Run SAE forward/backward under bfloat16 autocast (float32 master weights)."""
    log_every: int = 5
    """Steps between metric lines in metrics.jsonl."""
    eval_every_tokens: Count = 0
    """Evaluate on held-back tokens every this many training tokens (0: only at the end)."""
    checkpoint_every: Count | None = None
    """Write a checkpoint every this many tokens; default: every quarter of the run; 0: only by
    time (checkpoint_minutes) and on interrupt. A killed run continues with --resume."""
    checkpoint_minutes: float = 10.0
    """Also write a checkpoint when this many minutes passed since the last one (0: never)."""

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}"
            )
        for name in ("tokens", "batch_tokens", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_counts(self)
        if not 0.0 <= self.checkpoint_minutes < float("inf"):
            raise ValueError(f"checkpoint_minutes must be 0 or more, got {self.checkpoint_minutes}")
        if not 0.0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise ValueError(f"lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}")

    @classmethod
    def of(cls, settings: Any) -> LoopSettings:
        """The loop's settings of any object that has them (e.g. a `TrainConfig`)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def check_counts(settings: Any) -> None:
    """Raise ValueError for a negative token count among the dataclass's `Count` fields."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if str(f.type).startswith("Count") and value is not None and value < 0:
            raise ValueError(f"{f.name} must be 0 or more, got {value}")


@dataclass(frozen=True)
class TrainConfig(LoopSettings, DataSettings):
    """Everything that decides a training run: the data settings (the provenance record,
    device, forward rows), the loop's (`LoopSettings`) and the training's own. Comma lists in
    `hooks`, `archs`, `ks`, `l1s` and `d_saes` make a sweep: one SAE per combination, all fed
    by one model pass."""

    # --- what to train on
    hook_out: str | None = None
    """Train transcoders: read the input at `hooks`, reconstruct the activation at this hook."""
    transcoders: str | None = None
    """Train a transcoder per layer, from MLP input (`blocks.L.ln2.hook_normalized`) to MLP
    output (`blocks.L.hook_mlp_out`), all from one model pass: `all`, a layer `L` or a
    half-open range `A:B` (e.g. 0:10). Replaces hooks/hook_out."""
    cross_layer: bool = False
    """With transcoders: train one cross-layer transcoder over those layers instead (features
    read at layer l write to the MLP outputs of l and every later layer); arch topk or
    batchtopk (with k) or jumprelu (with the tanh penalty, its coefficient l1) sets the
    per-layer sparsity, d_sae the features per layer."""
    crosscoder: bool = False
    """Train one crosscoder over `hooks` (one latent space, an encoder and a decoder per hook,
    hooks of one width) instead of an SAE per hook; with diff_model, over one hook of two
    models. arch topk or batchtopk, k active features per token in total."""
    diff_model: str | None = None
    """With crosscoder: a second model with the same tokenizer (e.g. a fine-tuned copy of
    `model`); the crosscoder reads one hook of both, for model diffing."""
    skip: bool = False
    """Transcoders only: add a linear skip path `x @ W_skip` [d_in, d_out], trained jointly."""
    activations: str | None = None
    """Train from an activation cache written by `saekit cache` instead of the live model."""

    # --- the SAE(s)
    archs: tuple[str, ...] = ("topk",)
    """Architecture(s): relu, topk, batchtopk, jumprelu, gated, matryoshka."""
    d_saes: tuple[int, ...] = ()
    """Dictionary size(s); empty means `expansion_factor` times the hook width."""
    expansion_factor: int | None = None
    """Dictionary size as a multiple of the hook width (8 when neither this nor d_saes is set)."""
    ks: tuple[int, ...] = ()
    """Active features per token for topk, batchtopk and matryoshka; empty: 32."""
    l1s: tuple[float, ...] = ()
    """Sparsity coefficient(s) for relu, gated (L1) and jumprelu (L0; a jumprelu CLT's tanh
    penalty); empty uses each default."""
    sae_settings: tuple[tuple[str, Any], ...] = ()
    """Further architecture settings as KEY=VALUE (e.g. decoder_norm=weighted, bandwidth=0.001)."""

    # --- optimisation
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    b_dec_init: str = "mean"
    """Initial decoder bias: mean or geometric_median of a sample of activations, or zeros."""
    normalize_activations: str = "expected_norm"
    """expected_norm: scale activations so their mean norm is sqrt(d_in) during training (folded
    back into the saved weights); none: train on raw activations."""
    init_tokens: Count = 16_384
    """Tokens sampled before training to initialise b_dec and the normalisation scale."""
    dead_feature_method: str = "auto"
    """auto (AuxK for the TopK family, none otherwise), auxk, ghost_grads, resample or none."""
    # --- data movement
    buffer_tokens: Count = 65_536
    """Shuffle buffer size in tokens (bounds memory: about 3.5 x tokens x width x 4 bytes per
    hook at the peak of a refill)."""
    seed: int = 0
    """Seed for initialisation and shuffling."""

    # --- where and how
    out: str = "runs/saekit"
    """Run folder: SAE folder(s), metrics.jsonl, plots, checkpoints."""
    approx_selection: str = "auto"
    """TopK-family SAEs on the sparse (CPU) path choose their active features from a bfloat16
    encoder product; the chosen values stay exact float32, only near-ties may differ. auto:
    where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX: measured about 2x faster
    for that matmul); on; off. The run reports the measured agreement with the exact choice."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    sae_placement: str = "replicate"
    """Under torchrun: replicate (every rank trains every SAE on its slice of the batch),
    shard (SAE i trained by rank i % world on the whole batch; for sweeps) or features
    (cross_layer only: every rank holds a slice of every CLT encoder and decoder and sees
    every token; the partial reconstructions are summed)."""
    dist_timeout: int = 1800
    """Under torchrun: seconds a collective may wait for the other ranks before the job fails."""

    # --- logging, evaluation, checkpoints
    eval_tokens: Count = 16_384
    """Held-back tokens per evaluation (0 disables evaluation)."""
    eval_ce_tokens: Count = 4096  # = saekit.evals.evaluate.DEFAULT_CE_TOKENS (a test checks)
    """Of those, how many (the first windows) also get the spliced and ablated losses (CE loss
    recovered, KL; 0: all); the reconstruction and sparsity metrics use all of them."""
    wandb: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works without network)."""
    wandb_project: str = "saekit"
    """wandb project name."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad or contradictory setting."""
        for name, value, allowed in (
            ("dead_feature_method", self.dead_feature_method, DEAD_FEATURE_METHODS),
            ("b_dec_init", self.b_dec_init, B_DEC_INITS),
            ("normalize_activations", self.normalize_activations, NORMALIZATIONS),
            ("sae_placement", self.sae_placement, ("replicate", "shard", "features")),
            ("approx_selection", self.approx_selection, APPROX_SELECTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        for name in ("buffer_tokens", "dist_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_counts(self)
        if 2 * self.batch_tokens > self.buffer_tokens:
            raise ValueError(
                f"buffer_tokens={self.buffer_tokens} must be at least twice batch_tokens={self.batch_tokens}"
            )
        if self.d_saes and self.expansion_factor is not None:
            raise ValueError("give either d_saes or expansion_factor, not both")
        if self.hook_out is not None and len(self.hooks) > 1:
            raise ValueError("hook_out (transcoders) takes exactly one input hook")
        if self.transcoders is not None:
            from saekit.training.transcoders import check_layer_spec

            check_layer_spec(self.transcoders)
            if self.hooks or self.hook_out:
                raise ValueError("transcoders chooses the hooks itself; drop hooks and hook_out")
        if self.cross_layer:
            self._validate_cross_layer()
        elif self.sae_placement == "features":
            raise ValueError(
                "sae_placement features splits a CLT's features: also give cross_layer"
            )
        if self.crosscoder or self.diff_model:
            self._validate_crosscoder()
        if self.skip and not (self.transcoders or self.hook_out):
            raise ValueError("skip is for transcoders: also give transcoders or hook_out")
        if self.dead_feature_method == "resample" and self.resample_every_tokens <= 0:
            raise ValueError("dead_feature_method=resample needs resample_every_tokens > 0")
        if self.resample_every_tokens and self.dead_feature_method != "resample":
            raise ValueError("resample_every_tokens is only used with dead_feature_method=resample")
        self._validate_architectures(own_settings=not (self.cross_layer or self.crosscoder))
        with_k, with_coefficient = architectures_by_sparsity()
        if self.ks and not any(a in with_k for a in self.archs):
            raise ValueError(f"ks is only used by {', '.join(with_k)}")
        if self.l1s and not any(a in with_coefficient for a in self.archs):
            raise ValueError(f"l1s is only used by {', '.join(with_coefficient)}")

    def _validate_cross_layer(self) -> None:
        from saekit.saes.clt import CLT_ACTIVATIONS, CLT_TRAINING_DTYPES, CLTConfig

        if not self.transcoders:
            raise ValueError("cross_layer needs transcoders (the layers, e.g. --transcoders 0:6)")
        if len(self.archs) != 1 or self.archs[0] not in CLT_ACTIVATIONS:
            raise ValueError(f"cross_layer: archs must be one of {', '.join(CLT_ACTIVATIONS)}")
        if len(self.ks) > 1 or len(self.d_saes) > 1 or len(self.l1s) > 1 or self.skip:
            raise ValueError(
                "cross_layer trains one CLT: give at most one k, l1 and d_sae, no skip"
            )
        arch = self.archs[0]
        if arch in CLTConfig.PENALISED and self.ks:
            raise ValueError(
                f"cross_layer with arch {arch}: k is not used (l1 sets its tanh penalty's "
                f"coefficient); k is for arch {', '.join(CLTConfig.with_k())}"
            )
        self._check_dictionary_settings("cross_layer", CLTConfig)
        dtype = dict(self.sae_settings).get("dtype", "float32")
        if dtype not in CLT_TRAINING_DTYPES:
            raise ValueError(
                f"cross_layer: sae_setting dtype={dtype!r} is not one of "
                f"{', '.join(CLT_TRAINING_DTYPES)}"
            )
        if dtype != "float32" and self.sae_placement == "features":
            raise ValueError(
                "cross_layer: sae_setting dtype=bfloat16 is for one process (bfloat16 ties "
                "would let the ranks keep more than k features); with sae_placement features "
                "train in float32"
            )

    def _validate_crosscoder(self) -> None:
        from saekit.saes.crosscoder import CROSSCODER_ACTIVATIONS, CrosscoderConfig

        if not self.crosscoder:
            raise ValueError("diff_model is for model diffing: also give crosscoder")
        if self.transcoders or self.hook_out or self.cross_layer or self.skip:
            raise ValueError(
                "crosscoder reads and rebuilds hooks: drop transcoders, hook_out, skip"
            )
        if len(self.archs) != 1 or self.archs[0] not in CROSSCODER_ACTIVATIONS:
            raise ValueError(
                f"crosscoder: archs must be one of {', '.join(CROSSCODER_ACTIVATIONS)}"
            )
        if len(self.ks) > 1 or len(self.d_saes) > 1:
            raise ValueError("crosscoder trains one dictionary: give at most one k and d_sae")
        if self.diff_model and len(self.hooks) > 1:
            raise ValueError(
                "crosscoder with diff_model reads one hook of both models: give one hook"
            )
        if not self.diff_model and len(self.hooks) < 2:
            raise ValueError(
                "crosscoder needs two or more hooks (e.g. --hook blocks.3.hook_resid_post,"
                "blocks.4.hook_resid_post), or one hook and diff_model"
            )
        if self.diff_model and self.activations:
            raise ValueError("crosscoder with diff_model runs both models: drop activations")
        self._check_dictionary_settings("crosscoder", CrosscoderConfig)

    def _check_dictionary_settings(self, label: str, config_cls: Any) -> None:
        """A CLT's or crosscoder's own settings: those of its activation (`SETTINGS`); AuxK
        is its only dead-feature loss, for the activations that take k."""
        arch = self.archs[0]
        allowed = config_cls.SETTINGS[arch]
        bad = [key for key, _ in self.sae_settings if key not in allowed]
        if bad:
            hint = " (set l0_coefficient with l1)" if "l0_coefficient" in bad else ""
            raise ValueError(
                f"{label} with arch {arch}: sae_settings may be {', '.join(allowed)}, not "
                f"{', '.join(bad)}{hint}"
            )
        methods = ("auto", "none") if arch in config_cls.PENALISED else ("auto", "auxk", "none")
        if self.dead_feature_method not in methods:
            why = (
                f" (AuxK is for arch {', '.join(config_cls.with_k())}; against dead features "
                "use the pre-activation loss, sae_setting pre_act_coefficient)"
                if arch in config_cls.PENALISED else ""
            )  # fmt: skip
            raise ValueError(
                f"{label} with arch {arch}: dead_feature_method must be "
                f"{', '.join(methods)}, not {self.dead_feature_method}{why}"
            )

    def _validate_architectures(self, own_settings: bool = True) -> None:
        """Known archs; with `own_settings`, sae_settings that one of them has (a CLT's or
        crosscoder's are checked by `_check_dictionary_settings`)."""
        from saekit.saes.config import ARCH_SETTINGS

        for arch in self.archs:
            if arch not in ARCH_SETTINGS:
                raise ValueError(f"archs: {arch!r} is not one of {', '.join(ARCH_SETTINGS)}")
        for key, _ in self.sae_settings if own_settings else ():
            if not any(key in ARCH_SETTINGS[a] for a in self.archs):
                valid = sorted({name for a in self.archs for name in ARCH_SETTINGS[a]})
                raise ValueError(
                    f"sae_settings: {key!r} is not a setting of {', '.join(self.archs)} "
                    f"(valid: {', '.join(valid)})"
                )

    # --- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return settings.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (a config file, a saved run), refusing unknown keys by name."""
        return settings.build(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


def architectures_by_sparsity() -> tuple[list[str], list[str]]:
    """(architectures swept by k, architectures swept by a penalty coefficient)."""
    from saekit.saes import SAE_CLASSES

    with_k = [a for a, cls in SAE_CLASSES.items() if cls.sparsity_setting == "k"]
    return with_k, [a for a in SAE_CLASSES if a not in with_k]
