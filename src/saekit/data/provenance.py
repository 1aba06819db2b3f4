"""The provenance record: where an SAE's activations come from, and the one way to rebuild them.

A `Provenance` names the model, hooks, text and tokenisation conventions that produced a set
of activations. It is written into an activation cache's manifest, an SAE's `cfg.json`
metadata and a training run's config, and read back through `Provenance.from_sae` /
`Provenance.from_manifest`. Every tool that needs an SAE's tokens or activations again
(evaluation, dashboards, steering, autointerp, probing, the session loader) gets them from
`token_batches` and `activation_source` here, so none rebuilds windows by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from saekit.data.activations import ActivationSource
from saekit.data.datasets import BUILTIN_PYTHON_DOCS, HOLDOUT_EVERY, iter_documents
from saekit.data.tokens import TokenWindows, iter_token_batches
from saekit.dtypes import MODEL_DTYPES
from saekit.models.loading import DEFAULT_MODEL

Part = Literal["train", "heldout", "all"]
PARTS: tuple[str, ...] = ("train", "heldout", "all")
# Settings an SAE folder keeps in `metadata.extra` (SAELens has no key for them).
_EXTRA_KEYS = {"text_column": "text_column", "holdout_every": "holdout_every", "dtype": "model_dtype"}


@dataclass(frozen=True)
class Provenance:
    """Where activations come from: model, hooks, text, and how the text became tokens."""

    model: str = DEFAULT_MODEL
    """Model spec: `smollm2-135m` (embedded default), an HF id or folder, or `tl:NAME`."""
    hooks: tuple[str, ...] = ()
    """Hook name(s) to read activations at; empty means the middle layer's `hook_resid_pre`."""
    dataset: str = BUILTIN_PYTHON_DOCS
    """Dataset spec: `builtin:python-docs`, a local file or folder, or an HF hub id."""
    text_column: str = "text"
    """Text column of a tabular dataset."""
    context: int = 128
    """Tokens per context window."""
    prepend_bos: bool = True
    """Start every context window with the BOS token."""
    exclude_special_tokens: bool = True
    """Leave BOS/EOS/padding positions out: they are neither trained on, nor spliced, nor
    counted (their activations are outliers)."""
    holdout_every: int = HOLDOUT_EVERY
    """Every Nth document is held back from training for evaluation (0: none held back)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(MODEL_DTYPES)}")
        if self.context < 2:
            raise ValueError(f"context must be at least 2, got {self.context}")
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise ValueError(f"holdout_every must be 0 or at least 2, got {self.holdout_every}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(Provenance)}

    @classmethod
    def of(cls, settings: Any) -> Provenance:
        """The provenance fields of any object that has them (e.g. a `TrainConfig`)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> Provenance:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- SAE folders
    @classmethod
    def from_sae(cls, sae_or_cfg: Any) -> tuple[Provenance, set[str]]:
        """The record in an SAE's `cfg.json` metadata, and the names of the fields it records.

        Fields a folder does not record (SAELens folders have no `exclude_special_tokens`,
        no holdout rule) take the defaults; the second value tells them apart.
        """
        cfg = getattr(sae_or_cfg, "cfg", sae_or_cfg)
        meta = cfg.metadata
        found: dict[str, Any] = {
            "model": meta.model_name,
            "hooks": (meta.hook_name,) if meta.hook_name else None,
            "dataset": meta.dataset_path,
            "context": meta.context_size,
            "prepend_bos": meta.prepend_bos,
            "exclude_special_tokens": _as_bool(meta.exclude_special_tokens),
        }
        found |= {name: meta.extra.get(key) for name, key in _EXTRA_KEYS.items()}
        known = {k: v for k, v in found.items() if v is not None}
        return cls(**known), set(known)

    def write_metadata(self, meta: Any, hook_in: str, hook_out: str | None = None) -> None:
        """Record this provenance in an SAE's metadata (SAELens keys where they exist)."""
        meta.model_name = self.model
        meta.hook_name = hook_in
        meta.hook_name_out = hook_out if hook_out != hook_in else None
        meta.context_size = self.context
        meta.dataset_path = self.dataset
        meta.prepend_bos = self.prepend_bos
        meta.exclude_special_tokens = self.exclude_special_tokens
        for name, key in _EXTRA_KEYS.items():
            meta.extra[key] = getattr(self, name)

    # --- activation caches
    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Provenance:
        """The record of an activation cache (older manifests keep the fields at top level)."""
        if "provenance" in manifest:
            return cls.from_dict(manifest["provenance"])
        return cls(
            model=manifest["model"], hooks=tuple(manifest["hooks"]), dataset=manifest["dataset"],
            text_column=manifest.get("text_column", "text"), context=int(manifest["context_size"]),
            prepend_bos=bool(manifest["prepend_bos"]),
            exclude_special_tokens=bool(manifest["exclude_special_tokens"]),
            holdout_every=int(manifest.get("holdout_every", 0)),
        )  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """Build from `to_dict()` output, refusing unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown provenance field(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def conflicts(self, other: Provenance, fields: set[str]) -> list[str]:
        """`name: mine != theirs` for each of `fields` where the two records disagree."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in sorted(fields)
            if getattr(self, name) != getattr(other, name)
        ]

    def describe_special_tokens(self) -> str:
        """One line naming the special-token convention, for tables and logs."""
        if self.exclude_special_tokens:
            return "special tokens (BOS/EOS/pad) excluded: left clean, not counted"
        return "special tokens (BOS/EOS/pad) included: spliced and counted like any token"


def documents(
    prov: Provenance, part: Part = "all", *, repeat: bool = False, expected_tokens: int = 0
) -> Any:
    """The documents of `prov.dataset` in `part` (train, heldout or all), once or forever.

    Repeated documents warn when the data runs out and `expected_tokens` (what the run
    needs) takes more than `FEW_EPOCHS` passes over it.
    """
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not one of {', '.join(PARTS)}")
    if part == "heldout" and prov.holdout_every < 2:
        raise ValueError(
            f"no held-back documents: holdout_every={prov.holdout_every} holds none of "
            f"{prov.dataset!r} back; choose part='all' or a holdout_every of at least 2"
        )
    every = 0 if part == "all" else prov.holdout_every

    def once() -> Iterator:
        return iter_documents(
            prov.dataset, text_column=prov.text_column, holdout_every=every,
            holdout=part == "heldout",
        )  # fmt: skip

    return _Repeated(once, prov, expected_tokens) if repeat else once()


FEW_EPOCHS = 3
_COUNT_LIMIT = 20_000_000  # characters of epoch 1 held to count its tokens


class _Repeated:
    """The same documents epoch after epoch (re-iterable, so token windows can rewind)."""

    def __init__(self, once: Any, prov: Provenance, expected_tokens: int) -> None:
        self.once, self.prov, self.expected_tokens = once, prov, expected_tokens
        self.windows: TokenWindows | None = None  # set by token_windows: its tokenizer counts

    def __iter__(self) -> Iterator:
        first: list | None = []  # epoch 1's documents while small, to count its tokens
        size = 0
        for epoch in itertools.count(1):
            if epoch == 2 and first is not None:
                self._warn(first)
            first = None if epoch > 1 else first
            for doc in self.once():
                if first is not None:
                    size += len(doc)
                    first.append(doc)
                    if size > _COUNT_LIMIT:  # a big dataset: not worth holding to count it
                        first = None
                yield doc

    def _warn(self, docs: list) -> None:
        if not self.expected_tokens or self.windows is None:
            return
        texts = [d for d in docs if isinstance(d, str)]
        encoded = self.windows.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        per_epoch = sum(map(len, encoded)) + sum(len(d) for d in docs if not isinstance(d, str))
        per_epoch += len(docs)  # one separator per document
        epochs = self.expected_tokens / max(per_epoch, 1)
        if epochs > FEW_EPOCHS:
            warnings.warn(
                f"dataset {self.prov.dataset!r} holds about {per_epoch:,} training tokens: "
                f"{self.expected_tokens:,} tokens repeat it about {epochs:.0f} times; "
                "give more text (--dataset) or fewer --tokens",
                stacklevel=2,
            )


def token_windows(
    prov: Provenance,
    tokenizer: Any,
    part: Part = "all",
    *,
    repeat: bool = False,
    expected_tokens: int = 0,
) -> TokenWindows:
    """The packed context windows of `prov` (resumable with `state_dict`)."""
    docs = documents(prov, part, repeat=repeat, expected_tokens=expected_tokens)
    windows = TokenWindows(
        docs, tokenizer, prov.context,
        prepend_bos=prov.prepend_bos, exclude_special_tokens=prov.exclude_special_tokens,
    )  # fmt: skip
    if isinstance(docs, _Repeated):
        docs.windows = windows
    return windows


def token_batches(
    prov: Provenance, tokenizer: Any, rows: int, part: Part = "all"
) -> Iterator[tuple[Tensor, Tensor]]:
    """`(input_ids_BT, keep_mask_BT)` batches of `rows` windows, as the SAE saw its text."""
    return iter_token_batches(token_windows(prov, tokenizer, part), rows)


def activation_source(
    prov: Provenance,
    lm: Any,
    rows: int,
    part: Part = "all",
    *,
    hooks: list[str] | None = None,
    repeat: bool = False,
    expected_tokens: int = 0,
) -> ActivationSource:
    """Activations at `hooks` (default: the record's) of kept positions, one forward per item.

    `repeat` cycles the documents; `expected_tokens` lets it warn when that means many epochs.
    """
    hooks = list(hooks if hooks is not None else prov.hooks)
    windows = token_windows(prov, lm.tokenizer, part, repeat=repeat, expected_tokens=expected_tokens)
    return ActivationSource(lm, hooks, windows, rows)


def default_hook(n_layers: int) -> str:
    """The hook used when none is given: the middle layer's residual stream input."""
    return f"blocks.{n_layers // 2}.hook_resid_pre"


def _as_bool(value: Any) -> bool | None:
    """SAELens allows a list of token ids for `exclude_special_tokens`; any list excludes."""
    if value is None:
        return None
    return bool(value)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class DataSettings(Provenance):
    """A provenance record plus where and in what steps to compute it."""

    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    forward_rows: int = 32
    """Context windows per model forward."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forward_rows < 1:
            raise ValueError(f"forward_rows must be positive, got {self.forward_rows}")


# --- command-line flags: every command that reads activations takes these, named alike
FLAG_RENAMES = {"hooks": "hook"}
SAE_DEFAULT = "the SAE folder's, else {}"


def add_data_arguments(
    parser: Any, *, for_sae: bool = False, only: tuple[str, ...] | None = None
) -> None:
    """The data flags (`--model --hook --dataset --context ...`), one definition for all.

    With `for_sae`, the help says a flag not given takes the SAE folder's recorded value.
    """
    from saekit import settings

    defaults = None
    if for_sae:
        names = {f.name for f in dataclasses.fields(Provenance)}
        base = DataSettings()
        defaults = {
            n: SAE_DEFAULT.format(settings.show_default(getattr(base, n))) for n in names
        } | {"hooks": "the SAE folder's hook"}
    settings.add_arguments(parser, DataSettings, only=only, renames=FLAG_RENAMES, defaults=defaults)


def settings_for_sae(sae: Any, args: Any) -> tuple[DataSettings, dict[str, str]]:
    """The SAE folder's record overridden by the flags given; and where each field came from.

    The second value maps each field to `flag`, `SAE folder` or `default`, so reports can say
    which convention (e.g. special tokens) was used and why.
    """
    from saekit import settings

    recorded, known = Provenance.from_sae(sae)
    flags = settings.given(args, DataSettings)
    values = {k: getattr(recorded, k) for k in known} | flags
    data = settings.build(DataSettings, values)
    sources = {
        f.name: "flag" if f.name in flags else "SAE folder" if f.name in known else "default"
        for f in dataclasses.fields(DataSettings)
    }
    return data, sources
