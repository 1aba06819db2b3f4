"""Positions right after a special token (``<|im_start|>``, EOS, a window's start).

Such a position has no context before it and often carries large activations in many
features (an attention sink), so a feature's top examples can all sit there and hide its own
pattern. `after_special_mask` finds these positions (for `saekit dashboard
--exclude-after-special N`); `after_special_examples` counts the top examples on them, and
`after_special_note` is the dashboard's warning when they dominate.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch
from torch import Tensor

from saekit.analysis.features import FeatureStats


def after_special_mask(input_ids_BT: Tensor, special_ids: Sequence[int], n: int) -> Tensor:
    """Bool ``[B, T]``: positions within ``n`` tokens after a special token (``<|im_start|>``,
    EOS, ...) or among the first ``n`` of a window, where there is no context before them.
    Such positions often carry large activations in many features (an attention sink)."""
    B, T = input_ids_BT.shape
    special_BT = torch.isin(input_ids_BT, torch.tensor(list(special_ids), dtype=input_ids_BT.dtype,
                                                        device=input_ids_BT.device))  # fmt: skip
    near_BT = torch.zeros(B, T, dtype=torch.bool, device=input_ids_BT.device)
    for shift in range(1, n + 1):
        if shift >= T:
            near_BT[:] = True
            break
        near_BT[:, shift:] |= special_BT[:, :-shift]
        near_BT[:, shift - 1] = True  # the window's first n positions
    return near_BT


def after_special_examples(
    stats: FeatureStats, n: int, special: set[int]
) -> tuple[int, int, list[int]]:
    """Of the n-th feature's top examples: how many sit right after a special token or at a
    window's start, how many there are, and which special tokens precede them."""
    top, centre = stats.top, stats.context_left
    valid = torch.nonzero(top.valid_FK[n]).flatten().tolist()
    if centre == 0:  # no context kept: only the window start is known
        hits = [k for k in valid if int(top.positions_FK[n, k]) == 0]
        return len(hits), len(valid), []
    previous = [int(top.tokens_FKW[n, k, centre - 1]) for k in valid]
    hits = [t for t in previous if t < 0 or t in special]
    return len(hits), len(valid), list(dict.fromkeys(t for t in hits if t >= 0))


def after_special_note(after: int, shown: int, tokens: list[str]) -> str:
    """The feature page's warning: `after` of `shown` top examples follow `tokens`."""
    named = (
        ", ".join(f'<code class="t">{html.escape(t)}</code>' for t in tokens[:3])
        or "the window start"
    )
    return (
        f'<p class="warn">{after} of {shown} top examples sit on the first token after '
        f"{named}. Positions right after a special token often carry large activations in "
        "many features, which can hide this feature's own pattern: rebuild with "
        "<code>--exclude-after-special 1</code> to leave them out.</p>"
    )
