"""Where training metrics go: metrics.jsonl always, a tqdm bar, and wandb when asked."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


class MetricsLog:
    """Appends one JSON line per SAE per logging step to `metrics.jsonl`."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (used on resume, so no step appears twice)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


@contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """Announce a step that may take a while on stderr, then how long it took:
    `saekit: loading smollm2-135m ...` / `saekit: loading smollm2-135m: 4.2 s`."""
    if not enabled:
        yield
        return
    print(f"saekit: {what} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"saekit: {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


class ProgressBar:
    """A tqdm bar over training tokens showing tokens/s, L0 and explained variance live."""

    def __init__(self, total_tokens: int, done_tokens: int, enabled: bool):
        self.bar = tqdm(
            total=total_tokens, initial=done_tokens, unit="tok", unit_scale=True,
            desc="train", disable=not enabled, dynamic_ncols=True,
        )  # fmt: skip

    def update(self, tokens: int, metrics: dict[str, float]) -> None:
        self.bar.update(tokens)
        self.bar.set_postfix(
            l0=f"{metrics['l0']:.1f}", ev=f"{metrics['explained_variance']:.3f}", refresh=False
        )

    def close(self) -> None:
        self.bar.close()


class WandbLogger:
    """Logs what the original codebase logged to wandb: losses, L0, explained variance, dead
    features, feature density histograms and CE loss recovered at evaluations."""

    def __init__(self, project: str, run_name: str, config: dict[str, Any], run_dir: Path):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "--wandb needs the wandb package: pip install 'saekit[wandb]'"
            ) from err
        self.wandb = wandb
        self.run = wandb.init(
            project=project, name=run_name, config=config, dir=str(run_dir), resume="allow",
            id=_wandb_id(run_dir),
        )  # fmt: skip

    def log(self, step: int, per_sae: dict[str, dict[str, float]], prefix: str = "") -> None:
        flat = {
            f"{name}/{prefix}{key}": value
            for name, metrics in per_sae.items()
            for key, value in metrics.items()
        }
        self.run.log(flat, step=step)

    def log_density(self, step: int, name: str, log10_density_F: torch.Tensor) -> None:
        values = log10_density_F.detach().cpu().numpy()
        self.run.log(
            {f"{name}/log10_feature_density": self.wandb.Histogram(values)}, step=step
        )

    def finish(self) -> None:
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run folder, so --resume continues the same wandb run."""
    id_file = run_dir / "wandb_id.txt"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = f"saekit-{int(time.time())}"
    id_file.write_text(run_id + "\n")
    return run_id
