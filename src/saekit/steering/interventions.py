"""What one intervention does to the activation at a hook: add, clamp, ablate or scale features.

With the SAE's error term kept (the default), every mode changes the activation by a sum of
decoder rows and nothing else:

    add     x' = x + sum_f s_f W_dec[f]
    clamp   x' = x + sum_f (v_f - f(x)) W_dec[f]      the feature now reads v_f
    ablate  x' = x - sum_f f(x) W_dec[f]              clamp to 0
    scale   x' = x + sum_f (c_f - 1) f(x) W_dec[f]    the feature now reads c_f f(x)

so an intervention that changes no feature (`add` 0, `clamp` to the current value, `ablate`
an inactive feature, `scale` 1) leaves the activation bit for bit as it was. With
`keep_error=False` the activation is replaced by the SAE's reconstruction of the edited
features, `decode(f')`, as when the SAE is spliced in.

A transcoder reads one hook (`metadata.hook_name`) and writes another (`hook_name_out`): its
features are encoded from the first and the edit applies to the second.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saekit.steering.positions import Positions, check_positions

if TYPE_CHECKING:
    from saekit.models import LanguageModel
    from saekit.saes import SAE

MODES = ("add", "clamp", "ablate", "scale")
UNITS = ("raw", "act", "norm")

FeatureValues = Mapping[int, float] | Sequence[int] | int
"""`{feature: strength}`; for `ablate` also a list of features or one feature."""


@dataclass(frozen=True)
class SAESource:
    """Where an SAE belongs: the model it was trained on and the hook(s) it reads and writes."""

    model_name: str | None
    hook_name: str | None
    hook_name_out: str | None
    prepend_bos: bool


def sae_source(sae: SAE) -> SAESource:
    """The model and hooks of `sae`, from its provenance record (`cfg.json` metadata).

    Every steering tool reads them through this one function.
    """
    from saekit.data.provenance import Provenance

    prov, known = Provenance.from_sae(sae)
    model = prov.model if "model" in known else None
    hook = prov.hooks[0] if prov.hooks else None
    return SAESource(model, hook, sae.cfg.metadata.hook_name_out, prov.prepend_bos)


def _feature_values(features: FeatureValues, mode: str, d_sae: int) -> dict[int, float]:
    if isinstance(features, bool):
        raise ValueError(f"features={features!r}: pass feature indices")
    if isinstance(features, int):
        features = [features]
    if isinstance(features, Mapping):
        values = {k: v for k, v in features.items()}
    elif mode == "ablate":
        values = {f: 0.0 for f in features}
    else:
        raise ValueError(
            f"mode={mode!r} needs a value per feature: pass {{feature: strength}}, "
            f"not {features!r} (only mode='ablate' takes a plain list of features)"
        )
    if not values:
        raise ValueError("features is empty: name at least one feature to steer")
    out: dict[int, float] = {}
    for feature, value in values.items():
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise ValueError(f"feature {feature!r} is not an integer index")
        if not 0 <= feature < d_sae:
            raise ValueError(f"feature {feature} is out of range: the SAE has d_sae={d_sae}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"strength {value!r} of feature {feature} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"strength of feature {feature} is {value}: strengths must be finite")
        out[feature] = value
    return out


@dataclass
class Intervention:
    """One edit of SAE features at one hook (see the module docstring for the formulas).

    Args:
        sae: the SAE whose features are edited.
        features: `{feature: value}`: the strength to add (`add`), the value to clamp to
            (`clamp`), the factor (`scale`); `ablate` also takes a list of features.
        mode: "add", "clamp", "ablate" or "scale".
        positions: "all", "prompt", "generated", an int, a list or a slice
            (see `saekit.steering.positions`).
        units: "raw" (values as given), "act" (values times the feature's typical activation,
            `typical_acts`; add and clamp) or "norm" (add only: strength times the norm of the
            activation at that position, along the unit-norm decoder direction).
        hook: where the edit applies; default: the SAE's hook (`hook_name_out` for transcoders).
        read_hook: where the features are read; default: the SAE's `hook_name` (or `hook`).
        typical_acts: `[d_sae]` tensor or `{feature: act}` for `units="act"`
            (`saekit.steering.typical_activations` computes one).
        keep_error: keep the SAE's error term (the default); False replaces the activation by
            the reconstruction of the edited features.
    """

    sae: SAE
    features: FeatureValues
    mode: str = "add"
    positions: Positions = "all"
    units: str = "raw"
    hook: str | None = None
    read_hook: str | None = None
    typical_acts: Tensor | Mapping[int, float] | None = None
    keep_error: bool = True
    values: dict[int, float] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.units not in UNITS:
            raise ValueError(f"units={self.units!r} is not one of {', '.join(UNITS)}")
        if self.units == "act" and self.mode not in ("add", "clamp"):
            raise ValueError(f"units='act' applies to modes add and clamp, not {self.mode!r}")
        if self.units == "norm" and self.mode != "add":
            raise ValueError(f"units='norm' applies to mode add only, not {self.mode!r}")
        self.positions = check_positions(self.positions)
        self.values = _feature_values(self.features, self.mode, self.sae.cfg.d_sae)
        if self.units == "act":
            if self.typical_acts is None:
                raise ValueError(
                    "units='act' needs typical_acts (a [d_sae] tensor or {feature: act}); "
                    "compute it with saekit.steering.typical_activations(sae, lm, texts)"
                )
            for f in self.values:
                act = float(self.typical_acts[f])
                if not (math.isfinite(act) and act > 0):
                    raise ValueError(
                        f"units='act': typical activation of feature {f} is {act} (it never "
                        "fired on the calibration text); use units='raw'"
                    )

    def hooks(self) -> tuple[str, str]:
        """(read hook, write hook) names, from the arguments or the SAE's metadata."""
        src = sae_source(self.sae)
        write = self.hook or (src.hook_name_out if self.sae.cfg.is_transcoder else src.hook_name)
        read = self.read_hook or (src.hook_name if self.sae.cfg.is_transcoder else write)
        if write is None or read is None:
            raise ValueError(
                "the SAE's cfg.json names no metadata.hook_name"
                + (" / hook_name_out" if self.sae.cfg.is_transcoder else "")
                + ": pass hook= (and read_hook= for a transcoder)"
            )
        return read, write

    def bind(self, lm: LanguageModel) -> BoundIntervention:
        """Check the SAE fits `lm` and precompute the tensors the hook needs."""
        return BoundIntervention(self, lm)


def check_fits(sae: SAE, lm: LanguageModel, read: str, write: str) -> None:
    """Errors when hooks or widths do not fit `lm`; a warning when it is another model."""
    model_name = sae_source(sae).model_name
    if model_name and model_name != lm.spec:
        warnings.warn(
            f"the SAE was trained on {model_name!r} (cfg.json metadata.model_name) but the "
            f"model is {lm.spec!r}",
            stacklevel=4,
        )
    for name, hook, width in (("d_in", read, sae.cfg.d_in), ("d_out", write, sae.cfg.d_out)):
        dim = lm.hook_dim(hook)  # ValueError listing the valid hooks
        if dim != width:
            raise ValueError(
                f"the SAE's {name} is {width} but {lm.spec} has width {dim} at {hook}: "
                f"this SAE does not fit this model/hook (model_name={model_name!r})"
            )
    device = sae.W_dec.device
    if device != lm.device:
        raise ValueError(f"the SAE is on {device} but the model on {lm.device}: use sae.to(...)")


class BoundIntervention:
    """An `Intervention` checked against a model, with its decoder rows gathered."""

    def __init__(self, spec: Intervention, lm: LanguageModel) -> None:
        self.spec = spec
        self.read_hook, self.hook = spec.hooks()
        check_fits(spec.sae, lm, self.read_hook, self.hook)
        sae = spec.sae
        self.idx_K = torch.tensor(list(spec.values), dtype=torch.long, device=sae.W_dec.device)
        values_K = torch.tensor(list(spec.values.values()), dtype=torch.float64)
        if spec.units == "act":
            typical = spec.typical_acts
            values_K = values_K * torch.tensor([float(typical[f]) for f in spec.values])
        with torch.no_grad():
            self.W_dec_KD = sae.W_dec[self.idx_K].detach()
            self.values_K = values_K.to(self.W_dec_KD.device, self.W_dec_KD.dtype)
            self.delta_D: Tensor | None = None
            if spec.mode == "add":
                rows_KD = self.W_dec_KD
                if spec.units == "norm":
                    rows_KD = rows_KD / rows_KD.norm(dim=1, keepdim=True)
                self.delta_D = self.values_K @ rows_KD

    @property
    def needs_input(self) -> bool:
        """Whether the edit needs the SAE's features (all modes but add-with-error-kept)."""
        return self.spec.mode != "add" or not self.spec.keep_error

    @torch.no_grad()
    def edit(self, x_BTD: Tensor, x_in_BTD: Tensor | None, mask_BT: Tensor | None) -> Tensor:
        """The edited activation; `x_in_BTD` is the SAE's input (None: `x_BTD` itself)."""
        sae, mode = self.spec.sae, self.spec.mode
        dtype = self.W_dec_KD.dtype
        delta = self.delta_D
        if delta is not None and self.spec.units == "norm":
            delta = x_BTD.to(dtype).norm(dim=-1, keepdim=True) * delta
        if mode == "add" and self.spec.keep_error:
            new_BTD = x_BTD + delta.to(x_BTD.dtype)
        else:
            source = x_BTD if x_in_BTD is None else x_in_BTD
            f_BTF = sae.encode(source.to(dtype))
            f_BTK = f_BTF[..., self.idx_K]
            if mode == "clamp":
                target_BTK = self.values_K.expand_as(f_BTK)
            elif mode == "ablate":
                target_BTK = torch.zeros_like(f_BTK)
            elif mode == "scale":
                target_BTK = f_BTK * self.values_K
            else:  # add, error dropped
                target_BTK = f_BTK
            if self.spec.keep_error:
                new_BTD = x_BTD + ((target_BTK - f_BTK) @ self.W_dec_KD).to(x_BTD.dtype)
            else:
                f_BTF = f_BTF.clone()
                f_BTF[..., self.idx_K] = target_BTK
                new_BTD = sae.decode(f_BTF)
                if mode == "add":
                    new_BTD = new_BTD + delta
                new_BTD = new_BTD.to(x_BTD.dtype)
        if mask_BT is None:
            return new_BTD
        return torch.where(mask_BT.unsqueeze(-1), new_BTD, x_BTD)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (hook, mode, features and values, positions, units)."""
        spec = self.spec
        positions = spec.positions
        if isinstance(positions, slice):
            start, stop = positions.start, positions.stop
            positions = f"{'' if start is None else start}:{'' if stop is None else stop}"
        return {
            "hook": self.hook,
            "read_hook": self.read_hook,
            "mode": spec.mode,
            "features": {str(k): v for k, v in spec.values.items()},
            "positions": positions if isinstance(positions, str | slice) else list(positions),
            "units": spec.units,
            "keep_error": spec.keep_error,
        }
