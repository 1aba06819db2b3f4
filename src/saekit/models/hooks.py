"""Hook names -> modules, capture of activations with an early stop, and splicing.

A hook name is either a TransformerLens name (`blocks.3.hook_resid_pre`), which works on every
backend, or a raw module path from `model.named_modules()` (`model.layers.3.mlp`: that
module's output). `resolve_hook` turns either into a `HookPoint`: which module to watch and
whether its input or its output is the activation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from saekit.models.language_model import LanguageModel

# TransformerLens name suffix -> (Layout attribute, read). The attribute None means the layer.
_BLOCK_HOOKS: dict[str, tuple[str | None, Literal["input", "output"]]] = {
    "hook_resid_pre": (None, "input"),
    "hook_resid_mid": ("resid_mid", "input"),
    "hook_resid_post": (None, "output"),
    "hook_attn_out": ("attn_out", "output"),
    "hook_mlp_out": ("mlp_out", "output"),
}
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(\w+)")
_LAYER_IN_PATH = re.compile(r"\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class HookPoint:
    """Where one named activation is read.

    Attributes:
        name: the name the user gave (`blocks.3.hook_resid_pre`).
        module: path of the module in `lm.model.named_modules()`.
        read: "input" (first positional argument / `hidden_states`) or "output" of `module`.
        layer: decoder layer index (n_layers for the final norm), None when unknown.
    """

    name: str
    module: str
    read: Literal["input", "output"]
    layer: int | None


def _tl_names(lm: LanguageModel) -> list[str]:
    names = list(lm.model.hook_dict)
    return names + [f"blocks.{lm.n_layers}.hook_resid_pre"]


def _hf_block_suffixes(lm: LanguageModel) -> list[str]:
    return [s for s, (attr, _) in _BLOCK_HOOKS.items() if attr is None or getattr(lm.layout, attr)]


def hook_names(lm: LanguageModel) -> list[str]:
    """Every TransformerLens-style hook name valid for `lm` (raw module paths not listed)."""
    if lm.backend == "tl":
        return _tl_names(lm)
    names = [f"blocks.{i}.{s}" for i in range(lm.n_layers) for s in _hf_block_suffixes(lm)]
    if lm.layout.final_norm:
        names.append(f"blocks.{lm.n_layers}.hook_resid_pre")
    return names


def describe_hooks(lm: LanguageModel) -> str:
    """A compact list of the valid names, e.g. `blocks.{0..29}.hook_resid_pre`."""
    last = lm.n_layers - 1
    if lm.backend == "tl":
        suffixes = sorted(
            {n.split(".", 2)[2] for n in lm.model.hook_dict if n.startswith("blocks.0.")}
        )
        other = [n for n in lm.model.hook_dict if not n.startswith("blocks.")]
    else:
        suffixes = _hf_block_suffixes(lm)
        other = (
            [f"{lm.layout.final_norm} (the final norm's output)"] if lm.layout.final_norm else []
        )
    parts = [f"blocks.{{0..{last}}}.{s}" for s in suffixes]
    if lm.backend == "tl" or lm.layout.final_norm:
        parts.append(f"blocks.{lm.n_layers}.hook_resid_pre (input of the final norm)")
    parts += other
    example = next((n for n, _ in lm.model.named_modules() if n.endswith(".0.mlp")), "")
    raw = "a module path from lm.model.named_modules()" + (f" (e.g. {example})" if example else "")
    return ", ".join(parts) + ", or " + raw


def _invalid(lm: LanguageModel, name: str, why: str) -> ValueError:
    return ValueError(
        f"invalid hook {name!r}: {why}. Valid hooks for {lm.spec}: {describe_hooks(lm)}"
    )


def _layer_of(lm: LanguageModel, module_path: str) -> int | None:
    prefix = "blocks." if lm.backend == "tl" else lm.layout.layers + "."
    if module_path.startswith(prefix):
        match = _LAYER_IN_PATH.match("." + module_path[len(prefix) :])
        return int(match.group(1)) if match else None
    return None


def resolve_hook(lm: LanguageModel, name: str) -> HookPoint:
    """Map a hook name or raw module path to a `HookPoint`; ValueError lists valid names."""
    modules = dict(lm.model.named_modules())
    match = _BLOCK_NAME.fullmatch(name)
    if match:
        layer, suffix = int(match.group(1)), match.group(2)
        if layer == lm.n_layers and suffix == "hook_resid_pre":
            final = "ln_final" if lm.backend == "tl" else lm.layout.final_norm
            if final and final in modules:
                return HookPoint(name, final, "input", layer)
        if layer >= lm.n_layers:
            raise _invalid(
                lm, name, f"layer {layer} out of range, the model has {lm.n_layers} layers"
            )
    if lm.backend == "tl":
        if name in modules:
            return HookPoint(name, name, "output", _layer_of(lm, name))
        raise _invalid(lm, name, "no such hook or module")
    if match and match.group(2) in _BLOCK_HOOKS:
        attr, read = _BLOCK_HOOKS[match.group(2)]
        sub = getattr(lm.layout, attr) if attr else ""
        if attr is None or sub:
            path = f"{lm.layout.layers}.{layer}" + (f".{sub}" if sub else "")
            return HookPoint(name, path, read, layer)
        raise _invalid(lm, name, f"{type(lm.model).__name__} has no {match.group(2)}")
    if name in modules and name:
        if isinstance(modules[name], (nn.ModuleList, nn.ModuleDict)):
            raise _invalid(
                lm, name, f"{type(modules[name]).__name__} is a container that never runs; "
                f"hook one of its children ({name}.0, ...)"
            )  # fmt: skip
        return HookPoint(name, name, "output", _layer_of(lm, name))
    raise _invalid(lm, name, "no such hook or module")


# ---------------------------------------------------------------------------------------------
# Reading and replacing activations with PyTorch module hooks.


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured."""


def _output_tensor(output: object) -> Tensor:
    tensor = output[0] if isinstance(output, tuple) else output
    if not isinstance(tensor, Tensor):
        raise TypeError(f"module output is a {type(output).__name__}, not a tensor")
    return tensor


def _input_tensor(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _add_hook(module: nn.Module, read: str, fn: Callable[[Tensor], Tensor | None]):
    """Call `fn` on the module's input or output; a non-None result replaces it."""
    if read == "input":

        def pre_hook(_module, args, kwargs):
            new = fn(_input_tensor(args, kwargs))
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module, _args, output):
        new = fn(_output_tensor(output))
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(post_hook)


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(
    lm: LanguageModel, forward: Callable[[], object], names: Sequence[str]
) -> dict[str, Tensor]:
    """Run `forward()` and return the activations at `names`, stopping once all are read.

    The forward raises `_StopForward` from the hook of the last activation it reaches, so
    no layer after it runs. Returned tensors are copies (normal tensors, not inference ones).
    """
    points = [resolve_hook(lm, n) for n in dict.fromkeys(names)]
    if not points:
        raise ValueError("run_to_hooks needs at least one hook name")
    modules = dict(lm.model.named_modules())
    acts: dict[str, Tensor] = {}

    def saver(point: HookPoint) -> Callable[[Tensor], None]:
        def save(tensor: Tensor) -> None:
            if point.name in acts:  # a module called twice: keep its first call
                return
            with torch.inference_mode(False):
                acts[point.name] = tensor.detach().clone()
            if len(acts) == len(points):
                raise _StopForward

        return save

    handles = [_add_hook(modules[p.module], p.read, saver(p)) for p in points]
    with _hooks(handles):
        try:
            forward()
        except _StopForward:
            pass
    missing = [p.name for p in points if p.name not in acts]
    if missing:
        raise RuntimeError(f"the forward pass never reached hook(s) {missing}")
    return {p.name: acts[p.name] for p in points}


@contextmanager
def splice(lm: LanguageModel, name: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Inside the block, every forward replaces the activation at `name` by `fn(act_BTD)`."""
    point = resolve_hook(lm, name)

    def replace(act: Tensor) -> Tensor:
        new = fn(act)
        if not isinstance(new, Tensor) or new.shape != act.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(f"splice fn at {name} must return shape {tuple(act.shape)}, got {got}")
        return new.to(act.dtype)

    module = dict(lm.model.named_modules())[point.module]
    with _hooks([_add_hook(module, point.read, replace)]):
        yield
