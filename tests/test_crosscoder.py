"""Crosscoders: forward and loss against hand-written loops in float64, files, the
decoder-norm report, and training over several hooks and over two models."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama, small_train_config
from saekit.saes.crosscoder import Crosscoder, CrosscoderConfig, relative_decoder_norms
from saekit.training.crosscoder import DIFF_PREFIX
from saekit.training.run import train

S, D, F, K = 3, 6, 16, 3


def random_crosscoder(activation: str = "topk", seed: int = 0) -> Crosscoder:
    torch.manual_seed(seed)
    cc = Crosscoder(CrosscoderConfig(n_sources=S, d_in=D, d_sae=F, k=K, activation=activation))
    with torch.no_grad():
        cc.b_enc.normal_(0, 0.1)
        cc.b_dec.normal_()
        cc.W_enc.normal_()
    return cc


@torch.no_grad()
def loop_forward(cc: Crosscoder, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The crosscoder as loops in float64: per token, the pre-activation sums every source's
    encoder; keep the k largest (ReLU); each source decodes with its own decoder."""
    W_enc, b_enc = cc.W_enc.double(), cc.b_enc.double()
    W_dec, b_dec = cc.W_dec.double(), cc.b_dec.double()
    B = x_BSD.shape[0]
    f = torch.zeros(B, F, dtype=torch.float64)
    y = torch.zeros(B, S, D, dtype=torch.float64)
    for b in range(B):
        pre = b_enc.clone()
        for s in range(S):
            pre += x_BSD[b, s].double() @ W_enc[s]
        for j in sorted(range(F), key=lambda j: -pre[j].item())[:K]:
            f[b, j] = max(pre[j].item(), 0.0)
        for s in range(S):
            y[b, s] = b_dec[s] + sum(f[b, j] * W_dec[j, s] for j in range(F))
    return f, y


def hand_fvu(t: torch.Tensor, y: torch.Tensor) -> float:
    t, y = t.double(), y.double()
    return float(((y - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())


def test_forward_equals_a_loop_and_the_loss_is_the_sum_of_source_fvus():
    cc = random_crosscoder()
    x_BSD = torch.randn(7, S, D)
    with torch.no_grad():
        out = cc(x_BSD)
    f, y = loop_forward(cc, x_BSD)
    torch.testing.assert_close(out.feature_acts.double(), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sae_out.double(), y, rtol=1e-5, atol=1e-5)
    parts = [hand_fvu(x_BSD[:, s], y[:, s]) for s in range(S)]
    assert out.mse_loss.item() == pytest.approx(sum(parts), rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(parts), rel=1e-5)  # no dead mask: no AuxK
    assert (out.feature_acts > 0).sum(1).le(K).all()


def test_auxk_adds_the_dead_features_reconstruction_of_the_residual():
    cc = random_crosscoder()
    x_BSD = torch.randn(9, S, D)
    dead_F = torch.zeros(F, dtype=torch.bool)
    dead_F[[1, 4, 5, 9]] = True
    with torch.no_grad():
        out = cc(x_BSD, dead_mask=dead_F)
        pre = torch.einsum("bsd,sdf->bf", x_BSD.double(), cc.W_enc.double()) + cc.b_enc.double()
    residual = x_BSD.double() - out.sae_out.double()
    k_aux = min(D // 2, 4)
    aux_f = torch.zeros_like(pre)
    for b in range(pre.shape[0]):
        order = sorted(torch.nonzero(dead_F).flatten().tolist(), key=lambda j: -pre[b, j].item())
        for j in order[:k_aux]:
            aux_f[b, j] = max(pre[b, j].item(), 0.0)
    aux_y = torch.einsum("bf,fsd->bsd", aux_f, cc.W_dec.double())
    want = sum(hand_fvu(residual[:, s], aux_y[:, s]) for s in range(S)) / 32
    assert out.aux_loss.item() == pytest.approx(want, rel=1e-4)
    assert out.loss.item() == pytest.approx(out.mse_loss.item() + want, rel=1e-5)


def test_batchtopk_keeps_k_per_token_on_average_and_thresholds_at_inference():
    cc = random_crosscoder("batchtopk").train()
    x_BSD = torch.randn(10, S, D)
    with torch.no_grad():
        f = cc.encode(x_BSD)
        assert int((f > 0).sum()) == K * 10
        cc.threshold.fill_(0.5)
        cc.eval()
        pre = cc.pre_acts(x_BSD)
        torch.testing.assert_close(cc.encode(x_BSD), torch.where(pre > 0.5, pre, 0.0))


def test_fold_activation_scale_keeps_features_and_rescales_outputs():
    cc = random_crosscoder()
    scales = torch.tensor([0.5, 2.0, 3.0])
    x_BSD = torch.randn(5, S, D)
    with torch.no_grad():
        f_scaled = cc.encode(x_BSD * scales[:, None])
        y_scaled = cc.decode(f_scaled)
        cc.fold_activation_scale(scales, scales)
        torch.testing.assert_close(cc.encode(x_BSD), f_scaled)
        torch.testing.assert_close(cc.decode(f_scaled), y_scaled / scales[:, None])


def test_folder_round_trip(tmp_path):
    cc = random_crosscoder("batchtopk")
    with torch.no_grad():
        cc.threshold.uniform_()
    cc.cfg.metadata.extra["hook_names"] = ["a", "b", "c"]
    cc.save(tmp_path / "cc", sparsity=torch.full((F,), -2.0))
    back = Crosscoder.load(tmp_path / "cc")
    for name, value in cc.state_dict_flat().items():
        assert torch.equal(back.state_dict_flat()[name], value), name
    assert back.cfg.metadata.extra["hook_names"] == ["a", "b", "c"]


def test_relative_decoder_norms_by_hand():
    W = torch.zeros(3, 2, 4)
    W[0, 0, 0] = 3.0  # only model a
    W[1, 1, 2] = 2.0  # only model b
    W[2, 0, 1], W[2, 1, :] = 1.0, torch.tensor([0.0, 0.0, 0.6, 0.8])  # equal norms
    torch.testing.assert_close(relative_decoder_norms(W), torch.tensor([0.0, 1.0, 0.5]))


CROSSCODER_RUN = dict(crosscoder=True, ks=(4,), tokens=4096, eval_tokens=0)


def test_crosscoder_trains_over_several_hooks(tiny_model_dir, tmp_path):
    hooks = ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre")
    cfg = small_train_config(tiny_model_dir, tmp_path / "run", **CROSSCODER_RUN, hooks=hooks)
    result = train(cfg)
    cc = Crosscoder.load(result.sae_folders["crosscoder"])
    assert cc.cfg.n_sources == 3 and cc.cfg.d_sae == 256  # 4 x d_model
    assert cc.cfg.metadata.extra["hook_names"] == list(hooks)
    assert len(cc.cfg.metadata.extra["norm_scales"]) == 3
    metrics = result.final_metrics["crosscoder"]
    assert metrics["l0"] == pytest.approx(4.0) and metrics["explained_variance"] > 0


@pytest.fixture(scope="module")
def tiny_model_copy(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with its layer-1 MLP changed: a stand-in for a fine-tuned copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama-copy")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    other = make_tiny_llama(model.config.vocab_size, seed=1)
    model.model.layers[1].mlp.load_state_dict(other.model.layers[1].mlp.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_paired_source_gives_both_models_activations_of_the_same_tokens(
    tiny_model_dir, tiny_model_copy
):
    from saekit.data.provenance import Provenance, token_batches, token_windows
    from saekit.models import load_model
    from saekit.training.crosscoder import PairedActivationSource

    lm, lm_b = load_model(str(tiny_model_dir)), load_model(str(tiny_model_copy))
    hook = "blocks.2.hook_resid_pre"
    prov = Provenance(model=str(tiny_model_dir), hooks=(hook,), context=16)
    source = PairedActivationSource(lm, lm_b, [hook], token_windows(prov, lm.tokenizer), 4)
    chunk = next(source)
    ids_BT, keep_BT = next(token_batches(prov, lm.tokenizer, 4))
    want_a = lm.run_to_hooks(ids_BT, [hook])[hook][keep_BT]
    want_b = lm_b.run_to_hooks(ids_BT, [hook])[hook][keep_BT]
    torch.testing.assert_close(chunk[hook], want_a)
    torch.testing.assert_close(chunk[DIFF_PREFIX + hook], want_b)
    assert not torch.allclose(want_a, want_b)  # the copy differs after layer 1


def test_model_diffing_crosscoder_trains_and_records_both_models(
    tiny_model_dir, tiny_model_copy, tmp_path
):
    hook = "blocks.2.hook_resid_pre"
    cfg = small_train_config(
        tiny_model_dir, tmp_path / "run", **CROSSCODER_RUN, diff_model=str(tiny_model_copy),
        hooks=(hook,),
    )  # fmt: skip
    result = train(cfg)
    cc = Crosscoder.load(result.sae_folders["crosscoder"])
    extra = cc.cfg.metadata.extra
    assert extra["hook_names"] == [hook, DIFF_PREFIX + hook]
    assert extra["models"] == [str(tiny_model_dir), str(tiny_model_copy)]
    assert cc.cfg.n_sources == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(hooks=("blocks.1.hook_resid_pre",)), "two or more hooks"),
        (dict(archs=("relu",)), "archs must be one of topk, batchtopk"),
        (dict(crosscoder=False, diff_model="x"), "also give crosscoder"),
        (dict(diff_model="x"), "give one hook"),
        (dict(transcoders="all", hooks=()), "drop transcoders"),
    ],
)
def test_crosscoder_settings_are_checked(tiny_model_dir, tmp_path, changes, message):
    hooks = ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre")
    with pytest.raises(ValueError, match=message):
        small_train_config(
            tiny_model_dir, tmp_path, **{**CROSSCODER_RUN, "hooks": hooks, **changes}
        )
