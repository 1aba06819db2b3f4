"""The original session loader API on a tiny model, and the README snippet on smollm2-135m."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from legacy_files import offline_hub, populate_hf_cache, write_legacy_pt, write_legacy_sparsity
from saekit.compat import HookedLanguageModel, LMSparseAutoencoderSessionloader
from saekit.models import LanguageModel

HOOK = "blocks.2.hook_resid_pre"


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    docs = tmp_path / "docs.txt"
    from pydoc_data.topics import topics

    docs.write_text("\n".join(topics[k] for k in sorted(topics)[:3]))
    path = tmp_path / "final_sparse_autoencoder_tiny_blocks.2.hook_resid_pre_128.pt"
    write_legacy_pt(path, d_in=64, expansion_factor=2, model_name=str(tiny_model_dir),
                    hook_point=HOOK, hook_point_layer=2, dataset_path=str(docs), context_size=16,
                    store_batch_size=4, train_batch_size=32, n_batches_in_buffer=2, on_gpu=True)
    return LMSparseAutoencoderSessionloader.load_session_from_pretrained(str(path))


def test_session_parts(session):
    model, sae, store = session
    assert isinstance(model, LanguageModel) and isinstance(model, HookedLanguageModel)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.d_sae == 128
    assert (store.context_size, store.store_batch_size, store.train_batch_size) == (16, 4, 32)


def test_store_batches_come_from_the_hook(session):
    model, sae, store = session
    tokens_BT = store.get_batch_tokens()
    assert tokens_BT.shape == (4, 16)
    assert (tokens_BT[:, 0] == model.bos_token_id).all()

    batch_ND = store.next_batch()
    assert batch_ND.shape == (32, 64)
    # Every row is the activation of some non-special token of the dataset's first windows.
    # (run 4 windows per forward, as the store does, so the float results are identical)
    batches = [tokens_BT, store.get_batch_tokens(), store.get_batch_tokens()]
    first_BT = torch.cat(batches)
    acts_BTD = torch.cat([model.run_to_hooks(b, [HOOK])[HOOK] for b in batches])
    keep_BT = ~torch.isin(first_BT, torch.tensor(sorted(model.special_token_ids)))
    candidates_ND = acts_BTD[keep_BT]
    distance_N = torch.cdist(batch_ND, candidates_ND, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert distance_N.max() < 1e-5


def test_run_with_cache_and_hooks(session):
    model, sae, store = session
    tokens_BT = store.get_batch_tokens()
    logits, cache = model.run_with_cache(tokens_BT)
    torch.testing.assert_close(logits, model.logits(tokens_BT))
    torch.testing.assert_close(cache[HOOK], model.run_to_hooks(tokens_BT, [HOOK])[HOOK])

    sae_out, feature_acts, loss, mse_loss, l1_loss, _ = sae(cache[HOOK])
    assert sae_out.shape == cache[HOOK].shape and feature_acts.shape[-1] == 128

    clean = model.run_with_hooks(tokens_BT, return_type="loss")
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens_BT[:, 1:].flatten())
    torch.testing.assert_close(clean, expected)
    seen = []
    zeroed = model.run_with_hooks(
        tokens_BT, return_type="loss",
        fwd_hooks=[(HOOK, lambda act, hook: seen.append(hook.name) or torch.zeros_like(act))],
    )
    assert seen == [HOOK] and not torch.isclose(zeroed, clean)


def test_missing_dataset_is_explained(tmp_path, tiny_model_dir):
    path = tmp_path / "sae.pt"
    write_legacy_pt(path, d_in=64, model_name=str(tiny_model_dir), hook_point=HOOK, dataset_path=None)
    with pytest.raises(ValueError, match="dataset"):
        LMSparseAutoencoderSessionloader.load_session_from_pretrained(str(path))


README_SNIPPET = """
import torch
from saekit.compat import LMSparseAutoencoderSessionloader
from huggingface_hub import hf_hub_download

layer = 3 # pick a layer you want.
REPO_ID = "saekit-tests/SmolLM2-SAEs"
FILENAME = f"final_sparse_autoencoder_smollm2-135m_blocks.{layer}.hook_resid_pre_1152.pt"
path = hf_hub_download(repo_id=REPO_ID, filename=FILENAME)
model, sparse_autoencoder, activation_store = LMSparseAutoencoderSessionloader.load_session_from_pretrained(
    path = path
)
sparse_autoencoder.eval()

FILENAME = f"final_sparse_autoencoder_smollm2-135m_blocks.{layer}.hook_resid_pre_1152_log_feature_sparsity.pt"
path = hf_hub_download(repo_id=REPO_ID, filename=FILENAME)
log_feature_sparsity = torch.load(path, map_location=sparse_autoencoder.cfg.device)
"""


@pytest.mark.integration
def test_original_readme_snippet_runs_on_smollm2(tmp_path, monkeypatch):
    name = "final_sparse_autoencoder_smollm2-135m_blocks.3.hook_resid_pre_1152"
    write_legacy_pt(tmp_path / f"{name}.pt", d_in=576, expansion_factor=2, model_name="smollm2-135m",
                    hook_point="blocks.3.hook_resid_pre", hook_point_layer=3,
                    dataset_path="builtin:python-docs", context_size=32, store_batch_size=4,
                    train_batch_size=64, n_batches_in_buffer=2, on_gpu=True)
    sparsity = write_legacy_sparsity(tmp_path / f"{name}_log_feature_sparsity.pt", 1152)
    cache = tmp_path / "hf"
    populate_hf_cache(cache, "saekit-tests/SmolLM2-SAEs", {
        f"{name}.pt": tmp_path / f"{name}.pt",
        f"{name}_log_feature_sparsity.pt": tmp_path / f"{name}_log_feature_sparsity.pt",
    })
    offline_hub(monkeypatch, cache)

    scope: dict = {}
    exec(textwrap.dedent(README_SNIPPET), scope)

    model, sae, store = scope["model"], scope["sparse_autoencoder"], scope["activation_store"]
    torch.testing.assert_close(scope["log_feature_sparsity"], sparsity)
    assert model.d_model == 576 and not sae.training
    tokens_BT = store.get_batch_tokens()
    assert tokens_BT.shape == (4, 32)
    assert store.next_batch().shape == (64, 576)
    _, cache_ = model.run_with_cache(tokens_BT, prepend_bos=True)
    assert sae(cache_[sae.cfg.metadata.hook_name]).feature_acts.shape == (4, 32, 1152)
