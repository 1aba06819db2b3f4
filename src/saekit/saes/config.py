"""`SAEConfig`: the content of an SAE folder's `cfg.json` (SAELens 6 layout).

The file keeps SAELens 6's keys (`architecture, d_in, d_sae, dtype, device,
apply_b_dec_to_input, normalize_activations, reshape_activations, metadata`, plus `k` or
`d_out` where SAELens has them). saekit-only settings (`d_out`, `decoder_norm`, `prefixes`,
loss coefficients, ...) sit beside them at the top level: SAELens drops top-level keys its
config class does not know, so a saekit folder still opens there.

SAELens has no inference class for `batchtopk`/`matryoshka` (at inference both are a
JumpReLU with the learned threshold) nor a name `relu` (it says `standard`). The file's
`architecture` is therefore the SAELens name, and `saekit_architecture` records saekit's
own name when the two differ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from saekit.dtypes import DTYPES

# Written as metadata.sae_lens_version when a folder does not already carry one: SAELens
# treats a folder without it as its pre-6 flat layout and would drop the metadata block.
SAELENS_FORMAT_VERSION = "6.0.0"

REQUIRED = object()  # marker: the setting has no default and must be given

# saekit architecture -> its settings and their defaults (the single table of settings).
# Coefficients assume the MSE term is the fraction of variance unexplained (see base.py)
# and activations scaled to mean norm sqrt(d_in); tune them for other scales.
_AUXK = {"aux_k": None, "aux_coefficient": 1 / 32}
ARCH_SETTINGS: dict[str, dict[str, Any]] = {
    "relu": {"l1_coefficient": 1e-3, "decoder_norm": "unit"},
    "topk": {"k": REQUIRED, **_AUXK, "rescale_acts_by_decoder_norm": False},
    "batchtopk": {"k": REQUIRED, **_AUXK, "threshold_lr": 0.01},
    "matryoshka": {"k": REQUIRED, "prefixes": REQUIRED, **_AUXK, "threshold_lr": 0.01},
    "jumprelu": {
        "l0_coefficient": 1e-3,
        "bandwidth": 0.05,
        "init_threshold": 0.01,
        "sparsity_mode": "step",
        "tanh_scale": 4.0,
    },
    "gated": {"l1_coefficient": 1e-3},
}
SETTING_NAMES = sorted({name for s in ARCH_SETTINGS.values() for name in s})

# (saekit architecture, is_transcoder) -> the `architecture` SAELens 6 reads.
_TO_SAELENS = {
    ("relu", False): "standard",
    ("relu", True): "transcoder",
    ("topk", False): "topk",
    ("topk", True): "topk",  # SAELens has no TopK transcoder class
    ("batchtopk", False): "jumprelu",
    ("batchtopk", True): "jumprelu_transcoder",
    ("matryoshka", False): "jumprelu",
    ("matryoshka", True): "jumprelu_transcoder",
    ("jumprelu", False): "jumprelu",
    ("jumprelu", True): "jumprelu_transcoder",
    ("gated", False): "gated",
    ("gated", True): "gated",
}
# A file's `architecture` (without `saekit_architecture`) -> saekit architecture.
_FROM_FILE = {
    "standard": "relu",
    "transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    **{name: name for name in ARCH_SETTINGS},
}



def saelens_architecture(architecture: str, is_transcoder: bool = False) -> str:
    """The `architecture` name SAELens 6 reads for a saekit architecture."""
    return _TO_SAELENS[(architecture, is_transcoder)]


def architecture_from_file(name: str) -> str | None:
    """The saekit architecture of a cfg.json `architecture` name (SAELens or saekit), or None."""
    return _FROM_FILE.get(name)


@dataclass
class SAEMetadata:
    """Where the SAE belongs: model, hook(s), data. Descriptive only, never changes outputs.

    Like SAELens's metadata this block is open: keys saekit does not name are kept in
    `extra` and written back unchanged.
    """

    model_name: str | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None  # transcoders: the hook the SAE reconstructs
    context_size: int | None = None
    dataset_path: str | None = None
    prepend_bos: bool = True
    exclude_special_tokens: bool | list[int] | None = None  # None: not recorded (SAELens)
    model_class_name: str | None = None
    hook_head_index: int | None = None
    model_from_pretrained_kwargs: dict[str, Any] | None = None
    seqpos_slice: list[int | None] | None = None
    neuronpedia_id: str | None = None
    sae_lens_version: str | None = None
    sae_lens_training_version: str | None = None
    saekit_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict for `cfg.json` (extra keys merged in)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if out["exclude_special_tokens"] is None:  # unknown stays unknown, not a guess
            del out["exclude_special_tokens"]
        if out["sae_lens_version"] is None:
            out["sae_lens_version"] = SAELENS_FORMAT_VERSION
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEMetadata:
        if not isinstance(data, dict):
            raise ValueError(f"cfg.json: 'metadata' must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)


@dataclass
class SAEConfig:
    """One SAE's configuration; `to_dict()` is exactly what `cfg.json` holds.

    Architecture settings (`k`, `l1_coefficient`, `prefixes`, ...) are attributes too; a
    setting that does not belong to `architecture` is an error, a missing one gets its
    default from `ARCH_SETTINGS`.
    """

    architecture: str
    d_in: int
    d_sae: int
    d_out: int | None = None  # None: same as d_in; differs for transcoders
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool | None = None  # None: True for SAEs, False for transcoders
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    metadata: SAEMetadata = field(default_factory=SAEMetadata)
    # architecture settings (None: not set / not applicable)
    k: int | None = None
    aux_k: int | None = None
    aux_coefficient: float | None = None
    rescale_acts_by_decoder_norm: bool | None = None
    threshold_lr: float | None = None
    prefixes: list[int] | None = None
    l1_coefficient: float | None = None
    decoder_norm: str | None = None
    l0_coefficient: float | None = None
    bandwidth: float | None = None
    init_threshold: float | None = None
    sparsity_mode: str | None = None
    tanh_scale: float | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCH_SETTINGS:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; known: {sorted(ARCH_SETTINGS)}"
            )
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if not isinstance(self.d_out, int) or self.d_out <= 0:
            raise ValueError(f"d_out must be a positive integer, got {self.d_out!r}")
        if not isinstance(self.metadata, SAEMetadata):
            self.metadata = SAEMetadata.from_dict(self.metadata)
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = not self.is_transcoder
        if self.apply_b_dec_to_input and self.d_out != self.d_in:
            raise ValueError(
                f"apply_b_dec_to_input=True is impossible when d_out ({self.d_out}) != d_in "
                f"({self.d_in}): b_dec lives in the output space"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.normalize_activations != "none":
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported by "
                "saekit (only 'none'; fold a constant scale into the weights with "
                "SAE.fold_activation_scale)"
            )
        if self.reshape_activations != "none":
            raise ValueError(
                f"reshape_activations={self.reshape_activations!r} is not supported by saekit "
                "(only 'none'; flatten hook_z heads before the SAE)"
            )
        self._fill_settings()

    @property
    def is_transcoder(self) -> bool:
        """True when the SAE reads one hook and reconstructs another."""
        return self.d_out != self.d_in or self.metadata.hook_name_out is not None

    def settings(self) -> dict[str, Any]:
        """This architecture's settings and their values."""
        return {name: getattr(self, name) for name in ARCH_SETTINGS[self.architecture]}

    def _fill_settings(self) -> None:
        allowed = ARCH_SETTINGS[self.architecture]
        for name in SETTING_NAMES:
            value = getattr(self, name)
            if name not in allowed:
                if value is not None:
                    raise ValueError(
                        f"setting {name!r} does not apply to architecture "
                        f"{self.architecture!r}; its settings are {sorted(allowed)}"
                    )
            elif value is None:
                if allowed[name] is REQUIRED:
                    raise ValueError(f"architecture {self.architecture!r} needs {name!r}")
                setattr(self, name, allowed[name])
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        """The `cfg.json` content (SAELens 6 keys + saekit settings)."""
        saelens_arch = _TO_SAELENS[(self.architecture, self.is_transcoder)]
        out: dict[str, Any] = {"architecture": saelens_arch}
        if saelens_arch != self.architecture:
            out["saekit_architecture"] = self.architecture
        for f in fields(self):
            if f.name in ("architecture", "metadata") or f.name in SETTING_NAMES:
                continue
            out[f.name] = getattr(self, f.name)
        out.update(self.settings())
        out["metadata"] = self.metadata.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Parse `cfg.json` content; unknown keys raise ValueError naming them."""
        data = dict(data)
        if "architecture" not in data:
            raise ValueError("cfg.json has no 'architecture' key")
        file_arch = data.pop("architecture")
        arch = data.pop("saekit_architecture", None)
        if not isinstance(file_arch, str) or not isinstance(arch, (str, type(None))):
            raise ValueError(f"cfg.json: 'architecture' must be a string, got {file_arch!r}")
        if arch is None:
            if file_arch not in _FROM_FILE:
                raise ValueError(
                    f"unknown architecture {file_arch!r}; saekit reads {sorted(_FROM_FILE)}"
                )
            arch = _FROM_FILE[file_arch]
        elif arch not in ARCH_SETTINGS or file_arch not in (
            _TO_SAELENS.get((arch, False)),
            _TO_SAELENS.get((arch, True)),
            arch,
        ):
            raise ValueError(
                f"saekit_architecture={arch!r} does not match architecture={file_arch!r}"
            )
        names = {f.name for f in fields(cls)} - {"architecture"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"cfg.json has unknown keys {unknown}; known keys: {sorted(names)}")
        _check_types(data, {f.name: str(f.type) for f in fields(cls)})
        settings = ARCH_SETTINGS[arch]
        # SAELens writes keys saekit folds away or ignores for other architectures:
        if (
            "rescale_acts_by_decoder_norm" in data
            and "rescale_acts_by_decoder_norm" not in settings
        ):
            if data.pop("rescale_acts_by_decoder_norm"):
                raise ValueError(
                    f"rescale_acts_by_decoder_norm=True is only supported for topk, not {arch!r}"
                )
        return cls(architecture=arch, **data)

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list[int]": (list,)}


def _check_types(data: dict[str, Any], annotations: dict[str, str]) -> None:
    """ValueError naming the first cfg.json value whose JSON type its field cannot take."""
    for key, value in data.items():
        kinds = [k.strip() for k in annotations[key].split("|")]
        if key == "metadata" or (value is None and "None" in kinds):
            continue
        allowed = tuple(t for k in kinds for t in _TYPES.get(k, (object,)))
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if ok and isinstance(value, list):
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ValueError(f"cfg.json: {key}={value!r} is not of type {annotations[key]}")


def _check_values(cfg: SAEConfig) -> None:
    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"{name}={getattr(cfg, name)!r}: {why}")

    if cfg.k is not None and not (isinstance(cfg.k, int) and 0 < cfg.k <= cfg.d_sae):
        raise bad("k", f"must be an integer in [1, d_sae={cfg.d_sae}]")
    if cfg.aux_k is not None and not (isinstance(cfg.aux_k, int) and cfg.aux_k > 0):
        raise bad("aux_k", "must be a positive integer (None: d_in // 2)")
    if cfg.decoder_norm is not None and cfg.decoder_norm not in ("unit", "weighted"):
        raise bad("decoder_norm", "must be 'unit' or 'weighted'")
    if cfg.sparsity_mode is not None and cfg.sparsity_mode not in ("step", "tanh"):
        raise bad("sparsity_mode", "must be 'step' or 'tanh'")
    if cfg.bandwidth is not None and cfg.bandwidth <= 0:
        raise bad("bandwidth", "must be > 0")
    if cfg.threshold_lr is not None and not 0 < cfg.threshold_lr <= 1:
        raise bad("threshold_lr", "must be in (0, 1]")
    if cfg.prefixes is not None:
        p = list(cfg.prefixes)
        if not p or any(not isinstance(m, int) or m <= 0 for m in p) or p != sorted(set(p)):
            raise bad("prefixes", "must be strictly increasing positive integers")
        if p[-1] > cfg.d_sae:
            raise bad("prefixes", f"sizes may not exceed d_sae={cfg.d_sae}")
        if p[-1] != cfg.d_sae:
            p.append(cfg.d_sae)  # the whole dictionary is always the last prefix
        cfg.prefixes = p
