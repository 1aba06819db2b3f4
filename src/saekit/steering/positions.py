"""Which token positions an intervention touches, during plain forwards and cached generation.

A forward sees columns `t = 0..T-1` of a (possibly left-padded) sequence; with a KV cache the
columns continue where the cache ends (`j = offset + t`). `PositionTracker` reads the offset,
the left padding and the prompt length from each call of the whole model, so a hook at any
layer can turn a position selection into a `[B, T]` mask:

- `"all"`: every position (pad positions too; they influence nothing);
- `"prompt"`: the prompt's positions; in a plain forward outside `generate` everything is prompt;
- `"generated"`: the generated tokens' positions. The first new token is predicted from the
  last prompt position, so it is not changed by this selection; the later ones are;
- an int, a list of ints or a `slice`: `0` is each row's first real token (after the left
  padding), counting on through the generated tokens; `-1` is the last prompt token, `-2`
  the one before it. A slice `a:b` selects `a <= position < b` in those terms (step 1 only).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.models.generate import PROMPT_LENGTH

if TYPE_CHECKING:
    from saekit.models import LanguageModel

Positions = str | int | slice | Sequence[int]
"""A position selection: "all", "prompt", "generated", an int, a list of ints or a slice."""

NAMED_POSITIONS = ("all", "prompt", "generated")


def check_positions(positions: Positions) -> Positions:
    """Validate a selection and return it in canonical form (a tuple for lists)."""
    if isinstance(positions, str):
        if positions not in NAMED_POSITIONS:
            raise ValueError(
                f"positions={positions!r} is not one of {', '.join(NAMED_POSITIONS)}, "
                "an int, a list of ints or a slice"
            )
        return positions
    if isinstance(positions, bool):
        raise ValueError(f"positions={positions!r}: pass an int, not a bool")
    if isinstance(positions, int):
        return (positions,)
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise ValueError(f"positions={positions!r}: only step 1 slices are supported")
        for end in (positions.start, positions.stop):
            if end is not None and (isinstance(end, bool) or not isinstance(end, int)):
                raise ValueError(f"positions={positions!r}: slice bounds must be ints or None")
        return positions
    items = tuple(positions)
    if not items or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise ValueError(f"positions={positions!r}: a list of positions must hold ints")
    return items


@dataclass(frozen=True)
class ForwardPositions:
    """Where the columns of the current forward sit.

    Attributes:
        offset: tokens already in the KV cache (column t is sequence index offset + t).
        attention_mask: the call's mask `[B, offset + T]` (None: no padding).
        prompt_length: sequence index where the prompt ends.
    """

    offset: int
    attention_mask: Tensor | None
    prompt_length: int | None

    @property
    def start_B(self) -> Tensor | None:
        """Index of each row's first real token (the number of left pads)."""
        mask = self.attention_mask
        if mask is None or mask.dim() != 2:
            return None
        return (mask.cumsum(1) == 0).sum(1)

    def mask(
        self, positions: Positions, B: int, T: int, device: torch.device
    ) -> Tensor | bool | None:
        """Bool `[B, T]` mask of the selected columns; None: all of them; False: none."""
        if positions == "all":
            return None
        end = self.prompt_length if self.prompt_length is not None else self.offset + T
        if positions in ("prompt", "generated"):
            if self.offset + T <= end:  # only prompt columns
                return None if positions == "prompt" else False
            if self.offset >= end:  # only generated columns
                return False if positions == "prompt" else None
            j_T = torch.arange(self.offset, self.offset + T, device=device)
            return ((j_T < end) if positions == "prompt" else (j_T >= end)).expand(B, T)
        j_T = torch.arange(self.offset, self.offset + T, device=device)
        start_B = self.start_B
        start_B1 = (
            torch.zeros(B, 1, dtype=torch.long, device=device)
            if start_B is None
            else start_B.to(device).view(-1, 1).expand(B, 1)
        )

        def index(i: int) -> Tensor:  # sequence index [B, 1] of position i
            return start_B1 + i if i >= 0 else torch.full_like(start_B1, end + i)

        j_BT = j_T.expand(B, T)
        if isinstance(positions, slice):
            lo = index(positions.start) if positions.start is not None else start_B1
            sel_BT = j_BT >= lo
            if positions.stop is not None:
                sel_BT &= j_BT < index(positions.stop)
            return sel_BT
        sel_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
        for i in positions:
            sel_BT |= j_BT == index(i)
        return sel_BT


class PositionTracker:
    """Records `ForwardPositions` at the start of every call of the whole model."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.current = ForwardPositions(0, None, None)
        self._inferred_prompt_length: int | None = None

    def _pre_hook(self, _module, args: tuple, kwargs: dict) -> None:
        if self.lm.backend == "hf":
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            offset = int(cache.get_seq_length()) if cache is not None else 0
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            mask = kwargs.get("attention_mask")
        else:
            cache = kwargs.get("past_kv_cache")
            offset = int(cache.entries[0].past_keys.shape[1]) if cache is not None else 0
            ids = args[0] if args else kwargs.get("input")
            mask = kwargs.get("attention_mask")
        T = ids.shape[1] if isinstance(ids, Tensor) and ids.dim() >= 2 else None
        if not isinstance(mask, Tensor):
            mask = None
        prompt_length = PROMPT_LENGTH.get()
        if prompt_length is None:  # outside saekit's generate: the first uncached call
            if offset == 0:
                self._inferred_prompt_length = T
            prompt_length = self._inferred_prompt_length
        self.current = ForwardPositions(offset, mask, prompt_length)

    @contextmanager
    def installed(self):
        """Context manager: track positions while inside it."""
        handle = self.lm.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
