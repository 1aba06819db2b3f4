"""`saekit.steer`: a context manager that edits SAE features in every forward inside it.

```python
with saekit.steer(lm, sae, {1234: 8.0}, mode="add"):
    text = lm.generate("The weather today", max_new_tokens=40)
```

The edits are module hooks (through `lm.splice`), so they apply to plain forwards
(`lm.logits`, `lm.run_to_hooks`), to HF `generate` with its KV cache and to TransformerLens
models alike. Several interventions (features, SAEs, hooks) apply in the order given; nested
`steer` blocks stack the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from torch import Tensor

from saekit.steering.interventions import BoundIntervention, FeatureValues, Intervention
from saekit.steering.positions import Positions, PositionTracker

if TYPE_CHECKING:
    from saekit.models import LanguageModel
    from saekit.saes import SAE


class Steering:
    """The handle `steer` yields: the interventions in force, checked against the model."""

    def __init__(self, interventions: list[BoundIntervention]) -> None:
        self.interventions = interventions

    def describe(self) -> list[dict]:
        """One JSON-ready summary per intervention."""
        return [i.describe() for i in self.interventions]


def as_interventions(
    sae_or_interventions: SAE | Intervention | Sequence[Intervention],
    features: FeatureValues | None = None,
    **settings,
) -> list[Intervention]:
    """Normalise `steer`'s first arguments to a list of `Intervention`s."""
    from saekit.saes import SAE

    if isinstance(sae_or_interventions, SAE):
        if features is None:
            raise ValueError("steer(lm, sae, features, ...) needs features, e.g. {1234: 8.0}")
        return [Intervention(sae_or_interventions, features, **settings)]
    items = (
        [sae_or_interventions]
        if isinstance(sae_or_interventions, Intervention)
        else list(sae_or_interventions)
    )
    if features is not None or settings:
        raise ValueError(
            "pass features and settings inside each Intervention, not to steer(), "
            "when steering with Intervention objects"
        )
    if not items or not all(isinstance(i, Intervention) for i in items):
        raise ValueError("steer() takes an SAE and features, or a list of Intervention objects")
    return items


@contextmanager
def steer(
    lm: LanguageModel,
    sae_or_interventions: SAE | Intervention | Sequence[Intervention],
    features: FeatureValues | None = None,
    *,
    mode: str | None = None,
    positions: Positions | None = None,
    units: str | None = None,
    hook: str | None = None,
    typical_acts: Tensor | Mapping[int, float] | None = None,
    keep_error: bool | None = None,
) -> Iterator[Steering]:
    """Context manager: inside it every forward of `lm` has the given SAE features edited.

    Args:
        lm: the language model.
        sae_or_interventions: an SAE (then `features` and the settings below describe one
            `Intervention`), or one or more `Intervention`s (several SAEs, hooks, modes).
        features: `{feature: value}`; for `ablate` also a list of features.
        mode: "add" (default), "clamp", "ablate" or "scale".
        positions: "all" (default), "prompt", "generated", an int, a list or a slice.
        units: "raw" (default), "act" (times `typical_acts[f]`) or "norm" (times the
            activation's norm; add only).
        hook: where to edit; default: the SAE's hook from its cfg.json metadata.
        typical_acts: per-feature typical activation, for `units="act"`.
        keep_error: keep the SAE's error term (default True), so only the named features change.

    Errors (ValueError) name the setting: an unknown mode or units, a feature out of range, a
    non-finite strength, a hook the model lacks, an SAE whose width does not fit the hook.
    A model other than the SAE's `metadata.model_name` is a warning.
    """
    settings = {
        "mode": mode, "positions": positions, "units": units, "hook": hook,
        "typical_acts": typical_acts, "keep_error": keep_error,
    }  # fmt: skip
    given = {k: v for k, v in settings.items() if v is not None}
    specs = as_interventions(sae_or_interventions, features, **given)
    bound = [spec.bind(lm) for spec in specs]
    tracker = PositionTracker(lm)
    with ExitStack() as stack:
        stack.enter_context(tracker.installed())
        for item in bound:
            for hook, fn in _hook_fns(item, tracker):
                stack.enter_context(lm.splice(hook, fn))
        yield Steering(bound)


def _hook_fns(item: BoundIntervention, tracker: PositionTracker):
    """(hook, fn) pairs for `lm.splice`: a reader at the SAE's input hook if it differs."""
    state: dict[str, Tensor | None] = {"x_in": None}
    pairs = []
    if item.read_hook != item.hook and item.needs_input:

        def read(x_BTD: Tensor) -> Tensor:
            state["x_in"] = x_BTD
            return x_BTD

        pairs.append((item.read_hook, read))

    def write(x_BTD: Tensor) -> Tensor:
        B, T = x_BTD.shape[:2]
        mask = tracker.current.mask(item.spec.positions, B, T, x_BTD.device)
        x_in, state["x_in"] = state["x_in"], None
        if mask is False:
            return x_BTD
        if item.read_hook != item.hook and item.needs_input and x_in is None:
            raise RuntimeError(
                f"the forward reached {item.hook} without passing {item.read_hook}, where "
                "the transcoder reads its input"
            )
        return item.edit(x_BTD, x_in, mask)

    pairs.append((item.hook, write))
    return pairs
