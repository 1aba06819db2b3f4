"""Build files the way mats_sae_training wrote them (used by several test modules).

The original saved `torch.save({"cfg": LanguageModelSAERunnerConfig(...), "state_dict": ...})`
where the config class lives in module `sae_training.config`. We define that module here,
save, and remove it again, so loading must work without the original code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from pathlib import Path

import torch


@contextlib.contextmanager
def original_config_module():
    """Temporarily register `sae_training.config` with the original dataclass config."""

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        model_name: str = "gpt2-small"
        hook_point: str = "blocks.8.hook_resid_pre"
        hook_point_layer: int = 8
        hook_point_head_index: int | None = None
        dataset_path: str = "Skylion007/openwebtext"
        is_dataset_tokenized: bool = False
        context_size: int = 128
        d_in: int = 768
        expansion_factor: int = 32
        d_sae: int | None = None
        l1_coefficient: float = 8e-5
        lr: float = 4e-4
        train_batch_size: int = 4096
        store_batch_size: int = 32
        n_batches_in_buffer: int = 8
        device: str | torch.device = "cuda"
        dtype: torch.dtype = torch.float32

        def __post_init__(self):
            self.d_sae = self.d_in * self.expansion_factor
            self.device = torch.device(self.device)

    pkg = types.ModuleType("sae_training")
    mod = types.ModuleType("sae_training.config")
    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    mod.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    pkg.config = mod
    sys.modules["sae_training"], sys.modules["sae_training.config"] = pkg, mod
    try:
        yield LanguageModelSAERunnerConfig
    finally:
        del sys.modules["sae_training"], sys.modules["sae_training.config"]


def random_state_dict(d_in: int, d_sae: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Original parameter names and shapes, unit-norm decoder rows."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


@contextlib.contextmanager
def storages_tagged(location: str):
    """Make `torch.save` record every storage at `location` (as a GPU run would)."""
    import torch.serialization as ser

    original = ser.location_tag
    ser.location_tag = lambda storage: location
    try:
        yield
    finally:
        ser.location_tag = original


def write_legacy_pt(
    path: Path, *, d_in: int = 16, expansion_factor: int = 4, seed: int = 0,
    on_gpu: bool = False, **cfg_fields,
) -> dict[str, torch.Tensor]:
    """Write an original-format SAE file; returns its state dict."""
    state_dict = random_state_dict(d_in, d_in * expansion_factor, seed)
    with original_config_module() as config_cls:
        cfg = config_cls(d_in=d_in, expansion_factor=expansion_factor, **cfg_fields)
        ctx = storages_tagged("cuda:0") if on_gpu else contextlib.nullcontext()
        with ctx:
            torch.save({"cfg": cfg, "state_dict": state_dict}, path)
    return state_dict


def write_legacy_sparsity(path: Path, d_sae: int, seed: int = 1) -> torch.Tensor:
    """Write a `..._log_feature_sparsity.pt` file (a pickled tensor); returns it."""
    g = torch.Generator().manual_seed(seed)
    log_sparsity = -torch.rand(d_sae, generator=g) * 6
    torch.save(log_sparsity, path)
    return log_sparsity


def reference_relu_sae(state_dict: dict[str, torch.Tensor], x_BD: torch.Tensor):
    """The original SAE's forward, written out: features and reconstruction."""
    feats_BF = torch.relu((x_BD - state_dict["b_dec"]) @ state_dict["W_enc"] + state_dict["b_enc"])
    return feats_BF, feats_BF @ state_dict["W_dec"] + state_dict["b_dec"]


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as `huggingface_hub` caches a downloaded model repo (main = COMMIT)."""
    import shutil

    repo_dir = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, src in files.items():
        dst = repo_dir / "snapshots" / COMMIT / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst)


def offline_hub(monkeypatch, cache_dir: Path) -> None:
    """Point huggingface_hub at `cache_dir` with HF_HUB_OFFLINE=1 (no network at all)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
