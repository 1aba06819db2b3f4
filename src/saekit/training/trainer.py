"""The training loop. It sees an iterator of activation batches and callbacks, never the model."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.evals.metrics import explained_variance, firing_counts
from saekit.saes.sparse import native_bf16, selection_agreement, use_sparse
from saekit.training.config import LoopSettings
from saekit.training.dead import FiringStats, resample_dead_features
from saekit.training.schedules import lr_factor, warmup_factor

Batch = dict[str, Tensor]  # hook name -> activations [batch_tokens, width]
AGREEMENT_CHECKS = 8
"""Approximate pair selection is compared with the exact one about this many times a run."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weight."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was written before stopping."""


@dataclass
class SAEUnit:
    """One SAE being trained, with everything that belongs to it alone."""

    name: str
    hook_in: str
    hook_out: str
    sae: torch.nn.Module
    optimizer: torch.optim.Optimizer
    firing: FiringStats
    use_dead_mask: bool
    resample: bool = False
    approx_selection: bool = False
    """Ask the SAE to choose its active pairs in bfloat16 (see `wants_approx_selection`)."""
    scale_in: float = 1.0
    scale_out: float = 1.0
    last_density_F: Tensor | None = None
    selection_agreement: float | None = None
    """Latest measured fraction of exactly chosen pairs that the approximate choice kept."""

    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Normalised (input, target) for this SAE from a batch of raw activations."""
        x_BD = batch[self.hook_in] * self.scale_in
        if self.hook_out == self.hook_in:
            return x_BD, x_BD
        return x_BD, batch[self.hook_out] * self.scale_out

    def state_dict(self) -> dict:
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "firing": self.firing.state_dict(),
            "scale_in": self.scale_in,
            "scale_out": self.scale_out,
            "last_density": self.last_density_F,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.firing.load_state_dict(state["firing"])
        self.scale_in = float(state["scale_in"])
        self.scale_out = float(state["scale_out"])
        self.last_density_F = state["last_density"]


def wants_approx_selection(setting: str, sae: torch.nn.Module, device: torch.device | str) -> bool:
    """Whether the trainer asks `sae` (in training mode) for approximate pair selection:
    `setting` is on, or auto where bfloat16 is natively fast, and the SAE takes the sparse
    path on `device` with an architecture that allows it (`approximate_selection`)."""
    if setting == "off" or not getattr(sae, "approximate_selection", False):
        return False
    return use_sparse(sae, device) and (setting == "on" or native_bf16(device))


@dataclass
class Callbacks:
    """Hooks the loop calls; each is optional."""

    on_log: Callable[[int, int, dict[str, dict[str, float]]], None] | None = None
    """(step, tokens_seen, {sae name: metrics}) every `log_every` steps."""
    on_eval: Callable[[int, int], None] | None = None
    """(step, tokens_seen) every `eval_every_tokens`."""
    on_checkpoint: Callable[[int, int], None] | None = None
    """(step, tokens_seen) every `checkpoint_every` tokens and on interrupt."""
    on_progress: Callable[[int, dict[str, float]], None] | None = None
    """(tokens in this step, headline metrics of the first SAE) every step."""


MIN_AUTO_CHECKPOINT_STEPS = 10


@dataclass
class Trainer:
    """Trains several SAEs on one stream of activation batches, step by step."""

    cfg: LoopSettings
    units: list[SAEUnit]
    callbacks: Callbacks = field(default_factory=Callbacks)
    step: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    _stop_signal: int | None = None
    _last_checkpoint: float = 0.0

    @property
    def total_steps(self) -> int:
        return max(1, self.cfg.tokens // self.cfg.batch_tokens)

    def _every(self, tokens: int) -> int:
        """A token interval as a whole number of steps (0 stays 0: never)."""
        return 0 if tokens <= 0 else max(1, round(tokens / self.cfg.batch_tokens))

    def fit(self, batches: Iterator[Batch]) -> None:
        """Train from `self.step` to the end, reading one batch per step."""
        cfg = self.cfg
        eval_every = self._every(cfg.eval_every_tokens)
        ckpt_every = self.checkpoint_interval()
        self._last_checkpoint = time.monotonic()
        resample_every = self._every(cfg.resample_every_tokens)
        with self._catch_stop_signals():
            while self.step < self.total_steps:
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(
                        f"the activation stream ended at step {self.step} of {self.total_steps}"
                    ) from None
                step_metrics = {u.name: self._train_unit(u, batch) for u in self.units}
                if resample_every and (self.step + 1) % resample_every == 0:
                    for unit in self.units:
                        if unit.resample:
                            self._resample(unit, batch)
                self.step += 1
                tokens_seen = self.step * cfg.batch_tokens
                first = next(iter(step_metrics.values()))
                if self.callbacks.on_progress:
                    self.callbacks.on_progress(cfg.batch_tokens, first)
                if self.callbacks.on_log and (
                    self.step % cfg.log_every == 0 or self.step == self.total_steps
                ):
                    self.callbacks.on_log(self.step, tokens_seen, self._with_firing(step_metrics))
                if (
                    self.callbacks.on_eval
                    and eval_every
                    and self.step % eval_every == 0
                    and self.step < self.total_steps  # the run evaluates once more at the end
                ):
                    self.callbacks.on_eval(self.step, tokens_seen)
                if self._stopping():
                    if self.callbacks.on_checkpoint:
                        self.callbacks.on_checkpoint(self.step, tokens_seen)
                    raise TrainingInterrupted(
                        f"stopped by signal {signal.Signals(self._stop_signal).name} at step "
                        f"{self.step}; resume with --resume"
                    )
                if self.callbacks.on_checkpoint and self._checkpoint_due(ckpt_every):
                    self.callbacks.on_checkpoint(self.step, tokens_seen)
                    self._last_checkpoint = time.monotonic()

    def checkpoint_interval(self) -> int:
        """Steps between checkpoints by tokens: the setting, else a quarter of the run (at
        least `MIN_AUTO_CHECKPOINT_STEPS` apart, so short runs are not slowed by them)."""
        if self.cfg.checkpoint_every is None:
            return max(MIN_AUTO_CHECKPOINT_STEPS, self.total_steps // 4)
        return self._every(self.cfg.checkpoint_every)

    def _checkpoint_due(self, every: int) -> bool:
        """By tokens (every `every` steps) or by wall time, never at the last step."""
        if self.step >= self.total_steps:
            return False
        minutes = self.cfg.checkpoint_minutes
        late = bool(minutes) and time.monotonic() - self._last_checkpoint >= 60 * minutes
        return bool(every and self.step % every == 0) or (bool(minutes) and self._agree(late))

    def _agree(self, flag: bool) -> bool:
        """One process decides alone (under torchrun, the ranks agree: see placement.py)."""
        return flag

    def _train_unit(self, unit: SAEUnit, batch: Batch) -> dict[str, float]:
        """One optimizer step of one SAE; returns its batch metrics."""
        cfg = self.cfg
        factor = lr_factor(
            self.step,
            self.total_steps,
            warmup_steps=self._every(cfg.lr_warmup_tokens),
            schedule=cfg.lr_schedule,
            decay_fraction=cfg.lr_decay_fraction,
            end_factor=cfg.lr_end_factor,
        )
        for group in unit.optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        x_BD, target_BD = unit.inputs(batch)
        coefficient = unit.sae.sparsity_coefficient * warmup_factor(
            self.step, self._every(cfg.sparsity_warmup_tokens)
        )
        dead_mask_F = unit.firing.dead_mask() if unit.use_dead_mask else None
        check_every = max(1, self.total_steps // AGREEMENT_CHECKS)
        if unit.approx_selection and (
            self.step % check_every == 0 or unit.selection_agreement is None
        ):
            unit.selection_agreement = selection_agreement(unit.sae, x_BD)
        device_type = x_BD.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.autocast):
            out = unit.sae(
                x_BD, target_BD, dead_mask=dead_mask_F, sparsity_coefficient=coefficient,
                sparse_feature_acts=True,  # only the firing counts are read below
                approx_selection=unit.approx_selection,
            )  # fmt: skip
        out = self._global_loss(unit, out, target_BD)
        loss = out.loss
        if not torch.isfinite(loss).item():
            raise NonFiniteLossError(
                f"step {self.step}: the loss of SAE {unit.name!r} is {loss.item()} "
                f"(mse {out.mse_loss.item()}, sparsity {out.sparsity_loss.item()}, "
                f"aux {out.aux_loss.item()}). Likely causes: a learning rate too high for this "
                f"run (lr={cfg.lr}), non-finite activations from the model (a float16 model "
                f"overflowing: try --dtype float32), or a sparsity coefficient too large. "
                "The last good checkpoint, if any, is kept in the run folder's checkpoints/."
            )
        loss.backward()
        self._reduce_gradients(unit)
        unit.sae.before_optimizer_step()
        unit.optimizer.step()
        unit.optimizer.zero_grad(set_to_none=True)
        unit.sae.after_optimizer_step()
        n_tokens = x_BD.shape[0]
        fired_F = getattr(out, "fired_F", None)  # the sparse path counts them from its pairs
        if fired_F is None:  # dense feature activations
            fired_F = firing_counts(out.feature_acts.detach())
        l0_value = fired_F.sum() / n_tokens  # one count gives L0 and the firing statistics
        unit.firing.add_counts(fired_F, n_tokens)
        if unit.firing.window_tokens >= cfg.dead_after_tokens:
            unit.last_density_F = unit.firing.window_density()
            unit.firing.reset_window()
        metrics = {
            "loss": loss.detach().float(),
            "mse_loss": out.mse_loss.detach().float(),
            "sparsity_loss": out.sparsity_loss.detach().float(),
            "aux_loss": out.aux_loss.detach().float(),
            "l0": l0_value.float(),
            "explained_variance": explained_variance(target_BD, out.sae_out.detach()).float(),
        }
        if unit.selection_agreement is not None:
            metrics["selection_agreement"] = l0_value.new_tensor(unit.selection_agreement)
        names = tuple(metrics)
        values = self._reduce_metrics(torch.stack(list(metrics.values()))).tolist()  # one sync
        return {**dict(zip(names, values, strict=True)), "lr": cfg.lr * factor}

    def _with_firing(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Add dead and dense fractions to each SAE's metrics."""
        for unit in self.units:
            density_F = self.density(unit)
            metrics[unit.name]["dead_fraction"] = unit.firing.dead_mask().float().mean().item()
            metrics[unit.name]["dense_fraction"] = (
                (density_F > self.cfg.dense_threshold).float().mean().item()
            )
        return metrics

    @staticmethod
    def density(unit: SAEUnit) -> Tensor:
        """Feature density over the latest window with enough tokens."""
        if unit.last_density_F is not None and unit.firing.window_tokens < unit.firing.dead_after_tokens // 2:
            return unit.last_density_F
        return unit.firing.window_density()

    def _resample(self, unit: SAEUnit, batch: Batch) -> None:
        x_BD, target_BD = unit.inputs(batch)
        n = resample_dead_features(
            unit.sae, unit.optimizer, unit.firing.dead_mask(), x_BD, target_BD, self.generator,
            is_transcoder=unit.hook_in != unit.hook_out,
        )
        if n:
            unit.firing.tokens_since_fired_F[unit.firing.dead_mask()] = 0

    # Hooks for data-parallel training (saekit.training.distributed overrides them).
    def _global_loss(self, unit: SAEUnit, out, target_BD: Tensor):
        """The loss parts to backpropagate (one process: the SAE's own)."""
        return out

    def _reduce_gradients(self, unit: SAEUnit) -> None:
        """Combine gradients across processes (one process: nothing to do)."""

    def _reduce_metrics(self, values: Tensor) -> Tensor:
        """Combine a step's metric values across processes."""
        return values

    def _stopping(self) -> bool:
        """Whether a stop signal arrived (in every process, when distributed)."""
        return self._stop_signal is not None

    def check_weights_finite(self) -> None:
        """Raise NonFiniteLossError if any SAE weight is NaN or infinite."""
        for unit in self.units:
            for pname, p in unit.sae.named_parameters():
                if not torch.isfinite(p).all():
                    raise NonFiniteLossError(
                        f"step {self.step}: SAE {unit.name!r} has non-finite values in {pname}"
                    )

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "units": {u.name: u.state_dict() for u in self.units},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for unit in self.units:
            unit.load_state_dict(state["units"][unit.name])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    @contextmanager
    def _catch_stop_signals(self):
        """Turn SIGINT/SIGTERM into a checkpoint at the end of the current step."""
        handled = (signal.SIGINT, signal.SIGTERM)
        try:
            previous = {s: signal.signal(s, self._on_signal) for s in handled}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_signal = signum
