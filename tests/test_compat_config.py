"""The original config names read and write through to saekit; SparseAutoencoder, SAE groups,
the original loader and training entry point (tiny model)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from legacy_files import reference_relu_sae, write_legacy_pt
from sae_training.config import LanguageModelSAERunnerConfig
from sae_training.sparse_autoencoder import ForwardOutput, SparseAutoencoder
from sae_training.utils import LMSparseAutoencoderSessionloader
from saekit.compat import LegacySAEConfig, SAEGroup
from saekit.io.load import load_sae
from saekit.saes import SAE

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture
def legacy_pt(tmp_path, tiny_model_dir):
    docs = tmp_path / "docs.txt"
    from pydoc_data.topics import topics

    docs.write_text("\n".join(topics[k] for k in sorted(topics)[:3]))
    path = tmp_path / "sae.pt"
    state = write_legacy_pt(path, d_in=64, expansion_factor=2, model_name=str(tiny_model_dir),
                            hook_point=HOOK, hook_point_layer=2, dataset_path=str(docs),
                            context_size=16, store_batch_size=4, l1_coefficient=8e-5, lr=4e-4)
    return path, state


def test_legacy_names_read_through(legacy_pt):
    path, _ = legacy_pt
    cfg = LegacySAEConfig.of(load_sae(path).cfg)
    assert (cfg.hook_point, cfg.hook_point_layer, cfg.lp_norm) == (HOOK, 2, 1.0)
    assert (cfg.l1_coefficient, cfg.d_in, cfg.d_sae, cfg.expansion_factor) == (8e-5, 64, 128, 2)
    assert cfg.context_size == 16 and cfg.dataset_path.endswith("docs.txt")
    assert cfg.lr == 4e-4 and cfg.train_batch_size == 4096 and cfg.use_ghost_grads is False


def test_legacy_names_write_through_and_file_unchanged(legacy_pt, tmp_path):
    path, _ = legacy_pt
    sae = load_sae(path)
    plain = sae.cfg.to_dict()
    cfg = LegacySAEConfig.of(sae.cfg)
    assert cfg.to_dict() == plain  # same cfg.json
    cfg.hook_point_layer = 1
    cfg.context_size = 8
    cfg.l1_coefficient = 1e-3
    assert cfg.metadata.hook_name == "blocks.1.hook_resid_pre" and cfg.metadata.context_size == 8
    cfg.hook_point = HOOK
    assert cfg.hook_point_layer == 2
    with pytest.raises(ValueError, match="lp_norm"):
        cfg.lp_norm = 2
    sae.cfg = cfg
    sae.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert saved["l1_coefficient"] == 1e-3 and saved["metadata"]["context_size"] == 8


def test_sparse_autoencoder_forward_batch_pos(legacy_pt):
    path, state = legacy_pt
    sae = SparseAutoencoder.load_from_pretrained(str(path))
    x_BTD = torch.randn(3, 5, 64)
    out = sae(x_BTD)
    assert isinstance(out, ForwardOutput) and out._fields[4:] == ("l1_loss", "ghost_grad_loss")
    feats, recon = reference_relu_sae(state, x_BTD)
    torch.testing.assert_close(out.feature_acts, feats)  # [3, 5, 128]
    torch.testing.assert_close(out.sae_out, recon)
    sae_out, feature_acts, loss, mse_loss, l1_loss, _ = out
    assert feature_acts.shape == (3, 5, 128) and sae_out.shape == x_BTD.shape
    torch.testing.assert_close(l1_loss, 8e-5 * feats.sum(-1).mean())
    assert (sae.d_in, sae.d_sae, sae.l1_coefficient, sae.lp_norm) == (64, 128, 8e-5, 1.0)


def test_every_architecture_keeps_batch_and_position(tiny_lm):
    for arch, kw in [("relu", {}), ("topk", {"k": 4}), ("jumprelu", {}), ("gated", {}),
                     ("batchtopk", {"k": 4}), ("matryoshka", {"k": 4, "prefixes": [8]})]:  # fmt: skip
        sae = SAE.create(arch, d_in=16, d_sae=32, **kw).eval()
        out = sae(torch.randn(2, 7, 16))
        assert out.sae_out.shape == (2, 7, 16) and out.feature_acts.shape == (2, 7, 32), arch
        sae_out, feature_acts, loss, mse_loss, l1_loss, _ = out
        assert loss.dim() == 0


def test_loader_returns_a_group(legacy_pt, tmp_path):
    path, state = legacy_pt
    model, group, store = LMSparseAutoencoderSessionloader.load_session_from_pretrained(str(path))
    assert isinstance(group, SAEGroup) and len(group) == 1
    sae = group[0]
    assert isinstance(sae, SparseAutoencoder) and list(group) == [sae]
    assert group.cfg.hook_point == HOOK and group.eval() is group and not sae.training
    x = torch.randn(2, 64)
    torch.testing.assert_close(group(x).feature_acts, sae(x).feature_acts)
    assert model.default_hooks == (HOOK,) and store.get_batch_tokens().shape == (4, 16)
    sae.save_model(tmp_path / "again.pt")
    again = SparseAutoencoder.load_from_pretrained(str(tmp_path / "again"))
    torch.testing.assert_close(again.W_enc, state["W_enc"])
    assert again.cfg.hook_point == HOOK


def test_group_of_several_refuses_a_call():
    group = SAEGroup([SAE.create("topk", d_in=8, d_sae=16, k=2) for _ in range(2)])
    with pytest.raises(ValueError, match="2 SAEs"):
        group(torch.randn(1, 8))


README_CONFIG = dict(
    hook_point="blocks.2.hook_resid_pre", hook_point_layer=2, d_in=64,
    is_dataset_tokenized=False, expansion_factor=64, b_dec_init_method="geometric_median",
    lr=0.0004, l1_coefficient=0.00008, lr_scheduler_name="constantwithwarmup",
    train_batch_size=4096, context_size=128, lr_warm_up_steps=5000, n_batches_in_buffer=128,
    total_training_tokens=1_000_000 * 300, store_batch_size=32, use_ghost_grads=True,
    feature_sampling_window=1000, dead_feature_window=5000, dead_feature_threshold=1e-6,
    log_to_wandb=False, wandb_project="mats_sae_training_gpt2", wandb_log_frequency=100,
    device="cpu", seed=42, n_checkpoints=10, checkpoint_path="checkpoints", dtype=torch.float32,
)  # fmt: skip
"""The original README's training config (model and dataset left at saekit's defaults)."""


def test_runner_config_maps_onto_train_config():
    cfg = LanguageModelSAERunnerConfig(**README_CONFIG)
    assert cfg.d_sae == 64 * 64 and cfg.dtype == "float32"
    tc = cfg.to_train_config()
    assert tc.hooks == ("blocks.2.hook_resid_pre",) and tc.context == 128
    assert (tc.archs, tc.l1s, tc.expansion_factor, tc.lr) == (("relu",), (8e-5,), 64, 4e-4)
    assert (tc.tokens, tc.batch_tokens, tc.forward_rows) == (300_000_000, 4096, 32)
    assert tc.lr_schedule == "constant" and tc.lr_warmup_tokens == 5000 * 4096
    assert tc.buffer_tokens == 128 * 32 * 128 and tc.dead_feature_method == "ghost_grads"
    assert tc.dead_after_tokens == 5000 * 4096 and tc.b_dec_init == "geometric_median"
    assert tc.checkpoint_every == 300_000_000 // 11 and tc.log_every == 100 and tc.seed == 42
    cfg.lr = 1e-3  # write through: the next TrainConfig has it
    assert cfg.to_train_config().lr == 1e-3
    swept = cfg.replace(hook_point="blocks.{layer}.hook_resid_pre", hook_point_layer=[1, 2],
                        l1_coefficient=[1e-3, 2e-3])  # fmt: skip
    assert swept.to_train_config().hooks == ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre")
    assert swept.to_train_config().l1s == (1e-3, 2e-3)
    for bad in ({"lp_norm": 2}, {"lr_scheduler_name": "bogus"}, {"hook_point_head_index": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(cfg, **bad)


def test_language_model_sae_runner_trains(tiny_model_dir, tmp_path):
    from sae_training.lm_runner import language_model_sae_runner

    cfg = LanguageModelSAERunnerConfig(
        model_name=str(tiny_model_dir), hook_point=HOOK, hook_point_layer=2, d_in=64,
        dataset_path="builtin:python-docs", context_size=16, expansion_factor=2,
        l1_coefficient=[1e-3, 3e-3], lr=1e-3, train_batch_size=256, total_training_tokens=2048,
        store_batch_size=8, n_batches_in_buffer=4, lr_warm_up_steps=1,
        b_dec_init_method="mean", checkpoint_path=str(tmp_path / "run"),
    )  # fmt: skip
    group = language_model_sae_runner(cfg)
    assert len(group) == 2 and all(isinstance(s, SparseAutoencoder) for s in group)
    assert sorted(s.cfg.l1_coefficient for s in group) == [1e-3, 3e-3]
    assert all(s.cfg.hook_point == HOOK and s.cfg.d_sae == 128 for s in group)
    assert len(list((tmp_path / "run").rglob("cfg.json"))) >= 2


def test_fresh_session_for_training(tiny_model_dir):
    cfg = LanguageModelSAERunnerConfig(model_name=str(tiny_model_dir), hook_point=HOOK, d_in=64,
                                       expansion_factor=2, context_size=16, store_batch_size=2,
                                       train_batch_size=32, n_batches_in_buffer=2)  # fmt: skip
    model, group, store = LMSparseAutoencoderSessionloader(cfg).load_session()
    assert len(group) == 1 and group[0].cfg.hook_point == HOOK and group[0].d_sae == 128
    assert store.next_batch().shape == (32, 64)
