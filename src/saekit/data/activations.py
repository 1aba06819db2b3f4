"""Model + hooks + token windows -> a stream of activation chunks at kept positions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from saekit.data.tokens import TokenWindows, iter_token_batches


class ActivationSource:
    """Iterator of ``dict[hook, Tensor[N, D]]`` (float32), one item per model forward.

    Each forward runs ``rows_per_forward`` windows through ``lm.run_to_hooks``; only positions
    where the window's ``keep_mask`` is True are kept, the same positions for every hook, in
    stream order. Tensors stay on the model's device. ``state_dict()`` is the token position.
    """

    def __init__(
        self, lm: Any, hooks: list[str] | str, windows: TokenWindows, rows_per_forward: int = 32
    ) -> None:
        self.lm = lm
        self.hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        if not self.hooks:
            raise ValueError("ActivationSource needs at least one hook")
        self.windows = windows
        limit = getattr(lm, "max_context", None)
        if isinstance(limit, int) and windows.context_size > limit:
            raise ValueError(
                f"context {windows.context_size} is longer than the model's maximum of {limit} "
                f"positions; use --context {limit} or less"
            )
        self.rows_per_forward = rows_per_forward
        self.dims: dict[str, int] = {h: int(lm.hook_dim(h)) for h in self.hooks}
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def device(self) -> torch.device:
        """Where the activations come out: the model's device."""
        return torch.device(getattr(self.lm, "device", "cpu"))

    def __iter__(self) -> ActivationSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._batches is None:
            self._batches = iter_token_batches(self.windows, self.rows_per_forward)
        input_ids_BT, keep_mask_BT = next(self._batches)
        with torch.no_grad():  # not inference_mode: the trainer must be able to backprop
            acts = self.lm.run_to_hooks(input_ids_BT.to(self.device), self.hooks)
            keep_mask_BT = keep_mask_BT.to(self.device)
            return {h: acts[h][keep_mask_BT].float() for h in self.hooks}

    def skip(self) -> None:
        """Pass over the next forward's windows without running the model (rank sharding)."""
        if self._batches is None:
            self._batches = iter_token_batches(self.windows, self.rows_per_forward)
        next(self._batches, None)

    def state_dict(self) -> dict[str, Any]:
        """The position of the token windows after the last forward."""
        return {"windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the forward after the one at which ``state`` was taken."""
        self.windows.load_state_dict(state["windows"])
        self._batches = None


class LimitedSource:
    """Ends a source once it has yielded at least ``max_rows`` rows.

    The trainer wraps its source in one sized to the run's tokens, so the shuffle buffer
    drains at the end instead of the model computing activations nobody trains on.
    """

    def __init__(self, source: Any, max_rows: int) -> None:
        self.source = source
        self.max_rows = max_rows
        self.rows = 0

    @property
    def device(self) -> Any:
        """The wrapped source's device (the shuffle buffer restores its contents there)."""
        return getattr(self.source, "device", None)

    def __iter__(self) -> LimitedSource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.rows >= self.max_rows:
            raise StopIteration
        chunk = next(self.source)
        self.rows += next(iter(chunk.values())).shape[0]
        return chunk

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "source": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = int(state["rows"])
        self.source.load_state_dict(state["source"])
