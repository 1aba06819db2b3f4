"""The spliced model against a hand-written splice: plain PyTorch hooks, CE and KL by hand."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch

from conftest import import_peer
from saekit.evals import evaluate_sae, spliced_sae
from saekit.saes import SAE
from spliced_reference import spliced_batch

HOOK = "blocks.2.hook_resid_pre"  # = output of decoder layer 1 of the tiny Llama
SPECIALS = (0, 1, 2)  # eos, bos, pad of the tiny tokenizer


def make_sae(d_in: int = 64, seed: int = 0, **meta) -> SAE:
    torch.manual_seed(seed)
    sae = SAE.create("relu", d_in=d_in, d_sae=256, metadata={"hook_name": HOOK, **meta})
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # some features off, so L0 and density are not trivial
    return sae


def make_tokens(vocab: int, rows: int = 3, T: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, T), generator=g)
    ids[:, 0] = 1  # BOS
    ids[0, 5] = 0  # an EOS in the middle of a window
    keep = ~torch.isin(ids, torch.tensor(SPECIALS))
    return ids, keep


def _layer_output(out):
    return out[0] if isinstance(out, tuple) else out


def _with_output(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def hand_logits(model, ids, module, replace=None, grab=None):
    """Full forward; `replace(act)` swaps the output of `module`, `grab` stores it."""

    def hook(_m, _args, out):
        act = _layer_output(out)
        if grab is not None:
            grab.append(act.detach().clone())
        return _with_output(out, replace(act)) if replace else None

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        handle.remove()


def hand_ce(logits, ids, keep):
    """Next-token CE at positions t with keep[t] and t < T-1, by explicit loops."""
    logp = logits.double().log_softmax(-1)
    out = []
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if keep[b, t]:
                out.append(-logp[b, t, ids[b, t + 1]])
    return torch.stack(out)


def hand_kl(clean, other, keep):
    p_logp, q_logp = clean.double().log_softmax(-1), other.double().log_softmax(-1)
    out = []
    for b in range(keep.shape[0]):
        for t in range(keep.shape[1] - 1):
            if keep[b, t]:
                out.append((p_logp[b, t].exp() * (p_logp[b, t] - q_logp[b, t])).sum())
    return torch.stack(out)


def kept_replacement(keep, value_fn):
    def replace(act):
        return torch.where(keep.unsqueeze(-1), value_fn(act), act)

    return replace


def relu_sae_by_hand(sae, x):
    """The ReLU SAE's forward from its weights (b_dec subtracted from the input)."""
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    return f @ sae.W_dec + sae.b_dec, f


@pytest.fixture(scope="module")
def setup(tiny_lm):
    model = tiny_lm.model
    return tiny_lm, model, model.model.layers[1], make_sae()


def test_spliced_batch_matches_hand_splice(setup):
    lm, model, layer1, sae = setup
    ids, keep = make_tokens(len(lm.tokenizer))
    mean_D = torch.linspace(-1, 1, 64)
    got = spliced_batch(sae, lm, ids, keep, mean_act_D=mean_D)

    grabbed: list[torch.Tensor] = []
    clean = hand_logits(model, ids, layer1, grab=grabbed)
    x = grabbed[0]
    with torch.no_grad():
        x_hat, f = relu_sae_by_hand(sae, x)
        spliced = hand_logits(model, ids, layer1, kept_replacement(keep, lambda a: x_hat))
        zero = hand_logits(model, ids, layer1, kept_replacement(keep, torch.zeros_like))
        mean = hand_logits(
            model, ids, layer1, kept_replacement(keep, lambda a: mean_D.expand_as(a))
        )

    n_counted = int(keep[:, :-1].sum())
    assert got.ce_clean_M.shape == (n_counted,)
    torch.testing.assert_close(got.x_ND, x[keep])
    torch.testing.assert_close(got.target_ND, x[keep])
    torch.testing.assert_close(got.x_hat_ND, x_hat[keep])
    torch.testing.assert_close(got.feats_NF, f[keep])
    for ours, logits in (
        (got.ce_clean_M, clean),
        (got.ce_spliced_M, spliced),
        (got.ce_zero_M, zero),
        (got.ce_mean_M, mean),
    ):
        torch.testing.assert_close(ours.double(), hand_ce(logits, ids, keep), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        got.kl_M.double(), hand_kl(clean, spliced, keep), atol=1e-6, rtol=1e-4
    )
    assert got.kl_M.min() > 0  # the splice changes something


def test_keep_error_gives_the_clean_model(setup):
    lm, model, layer1, sae = setup
    ids, keep = make_tokens(len(lm.tokenizer), seed=1)
    got = spliced_batch(sae, lm, ids, keep, keep_error=True)
    torch.testing.assert_close(got.ce_spliced_M, got.ce_clean_M, atol=1e-5, rtol=0)
    assert got.kl_M.abs().max() < 1e-6
    assert (got.ce_zero_M - got.ce_clean_M).abs().max() > 1e-3  # ablation does change it

    clean = lm.logits(ids)
    with spliced_sae(lm, sae, keep_error=True):
        kept = lm.logits(ids)
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=1e-5)


def test_spliced_sae_context_matches_hand_splice(setup):
    lm, model, layer1, sae = setup
    ids, keep = make_tokens(len(lm.tokenizer), seed=2)
    with torch.no_grad():
        everywhere = hand_logits(model, ids, layer1, lambda a: relu_sae_by_hand(sae, a)[0])
        only_kept = hand_logits(
            model, ids, layer1, kept_replacement(keep, lambda a: relu_sae_by_hand(sae, a)[0])
        )
        with spliced_sae(lm, sae):
            ours_everywhere = lm.logits(ids)
        with spliced_sae(lm, sae, keep_mask_BT=keep):
            ours_kept = lm.logits(ids)
    torch.testing.assert_close(ours_everywhere, everywhere, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_kept, only_kept, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(everywhere, only_kept)


def test_transcoder_splices_the_output_hook(tiny_lm):
    lm, model = tiny_lm, tiny_lm.model
    torch.manual_seed(3)
    tc = SAE.create(
        "relu",
        d_in=64,
        d_sae=128,
        d_out=64,
        metadata={"hook_name": "blocks.1.hook_resid_mid", "hook_name_out": "blocks.1.hook_mlp_out"},
    )
    ids, keep = make_tokens(len(lm.tokenizer), seed=3)
    got = spliced_batch(tc, lm, ids, keep)

    layer = model.model.layers[1]
    inputs: list[torch.Tensor] = []
    h = layer.post_attention_layernorm.register_forward_pre_hook(
        lambda _m, args: inputs.append(args[0].detach().clone())
    )
    mlp_out: list[torch.Tensor] = []
    clean = hand_logits(model, ids, layer.mlp, grab=mlp_out)
    h.remove()
    with torch.no_grad():
        f = torch.relu(inputs[0] @ tc.W_enc + tc.b_enc)  # transcoders: no b_dec on the input
        y_hat = f @ tc.W_dec + tc.b_dec
        spliced = hand_logits(model, ids, layer.mlp, kept_replacement(keep, lambda a: y_hat))
    torch.testing.assert_close(got.x_ND, inputs[0][keep])
    torch.testing.assert_close(got.target_ND, mlp_out[0][keep])
    torch.testing.assert_close(got.x_hat_ND, y_hat[keep])
    torch.testing.assert_close(
        got.ce_clean_M.double(), hand_ce(clean, ids, keep), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        got.ce_spliced_M.double(), hand_ce(spliced, ids, keep), atol=1e-5, rtol=1e-5
    )


def hand_windows(model, layer1, sae, batches):
    """Per window (row), by hand: x, x_hat, features at the kept positions, and the clean,
    spliced, zero- and mean-ablated CE and the KL at the counted positions."""
    windows = []
    for ids, keep in batches:
        grabbed: list[torch.Tensor] = []
        c = hand_logits(model, ids, layer1, grab=grabbed)
        with torch.no_grad():
            x_hat, f = relu_sae_by_hand(sae, grabbed[0])
            s = hand_logits(
                model, ids, layer1, kept_replacement(keep, lambda a, x_hat=x_hat: x_hat)
            )
            z = hand_logits(model, ids, layer1, kept_replacement(keep, torch.zeros_like))
        for row in range(ids.shape[0]):
            one = slice(row, row + 1)
            k = keep[one]
            windows.append({
                "ids": ids[one], "keep": k, "x": grabbed[0][one][k].double(),
                "x_hat": x_hat[one][k].double(), "f": f[one][k],
                "clean": hand_ce(c[one], ids[one], k), "spliced": hand_ce(s[one], ids[one], k),
                "zero": hand_ce(z[one], ids[one], k), "kl": hand_kl(c[one], s[one], k),
            })  # fmt: skip
    mean_D = torch.cat([w["x"] for w in windows]).mean(0).float()
    for w in windows:
        m = hand_logits(
            model, w["ids"], layer1, kept_replacement(w["keep"], lambda a: mean_D.expand_as(a))
        )
        w["mean"] = hand_ce(m, w["ids"], w["keep"])
    return windows


def hand_metrics(windows):
    """Every metric of `evaluate_sae` from the hand-computed windows."""
    cat = {key: torch.cat([w[key] for w in windows]) for key in windows[0] if key not in ("ids", "keep")}
    x, x_hat, f = cat["x"], cat["x_hat"], cat["f"]
    ce = {k: cat[k].mean().item() for k in ("clean", "spliced", "zero", "mean")}
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    density = (f != 0).double().mean(0)
    return {
        "tokens": x.shape[0],
        "ce_tokens": cat["clean"].numel(),
        "l0": (f != 0).sum(1).double().mean().item(),
        "mse": ((x - x_hat) ** 2).mean().item(),
        "fvu": fvu.item(),
        "explained_variance": 1 - fvu.item(),
        "cos_sim": torch.nn.functional.cosine_similarity(x, x_hat, dim=1).mean().item(),
        "l2_ratio": (x_hat.norm(dim=1) / x.norm(dim=1)).mean().item(),
        "dead_fraction": (density == 0).double().mean().item(),
        "dense_fraction": (density > 0.1).double().mean().item(),
        "ce_loss_clean": ce["clean"],
        "ce_loss_spliced": ce["spliced"],
        "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_mean_ablation": ce["mean"],
        "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["clean"]),
        "ce_loss_recovered_mean_ablation": (ce["mean"] - ce["spliced"])
        / (ce["mean"] - ce["clean"]),
        "kl_div": cat["kl"].mean().item(),
    }


def assert_matches_hand(result, windows):
    for key, value in hand_metrics(windows).items():
        assert result[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    density = (torch.cat([w["f"] for w in windows]) != 0).double().mean(0)
    torch.testing.assert_close(result["log10_feature_density"], torch.log10(density + 1e-10))


def test_evaluate_sae_against_hand_computation(setup):
    lm, model, layer1, sae = setup
    batches = [make_tokens(len(lm.tokenizer), seed=s) for s in (4, 5)]
    sae.train()
    result = evaluate_sae(sae, lm, batches)
    assert sae.training  # mode restored
    assert_matches_hand(result, hand_windows(model, layer1, sae, batches))
    assert 0 < result["l0"] < 256 and 0 < result["dead_fraction"] < 1  # non-trivial example

    first_row = evaluate_sae(sae, lm, batches, max_tokens=1)
    assert first_row["tokens"] == int(batches[0][1][0].sum())


def test_max_tokens_does_not_depend_on_batching(setup):
    lm, _, _, sae = setup
    ids, keep = make_tokens(len(lm.tokenizer), rows=5, seed=7)
    limit = int(keep[:2].sum()) + 1  # reached inside the third window
    by_one = evaluate_sae(
        sae, lm, [(ids[i : i + 1], keep[i : i + 1]) for i in range(5)], max_tokens=limit
    )
    by_five = evaluate_sae(sae, lm, [(ids, keep)], max_tokens=limit)
    assert by_one["tokens"] == by_five["tokens"] == int(keep[:3].sum())
    for key in ("l0", "fvu", "ce_loss_spliced", "ce_loss_mean_ablation", "kl_div"):
        assert by_one[key] == pytest.approx(by_five[key], rel=1e-5), key


def test_scaled_sae_matches_folded_sae(setup):
    lm, _, _, sae = setup
    ids, keep = make_tokens(len(lm.tokenizer), seed=6)
    scaled = copy.deepcopy(sae)
    folded = copy.deepcopy(sae)
    folded.fold_activation_scale(2.5)
    a = spliced_batch(scaled, lm, ids, keep, scale_in=2.5, scale_out=2.5)
    b = spliced_batch(folded, lm, ids, keep)
    torch.testing.assert_close(a.x_hat_ND, b.x_hat_ND, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.ce_spliced_M, b.ce_spliced_M, atol=1e-5, rtol=1e-5)


def test_bad_inputs(tiny_lm):
    ids, keep = make_tokens(len(tiny_lm.tokenizer))
    with pytest.raises(ValueError, match=r"d_in=32 .*blocks\.2\.hook_resid_pre.*width is 64"):
        evaluate_sae(make_sae(d_in=32), tiny_lm, [(ids, keep)])
    no_hook = SAE.create("relu", d_in=64, d_sae=16)
    with pytest.raises(ValueError, match="names no hook"):
        evaluate_sae(no_hook, tiny_lm, [(ids, keep)])
    with pytest.raises(ValueError, match="blocks.9.hook_resid_pre.*out of range"):
        evaluate_sae(make_sae(), tiny_lm, [(ids, keep)], hook_name="blocks.9.hook_resid_pre")
    with pytest.raises(ValueError, match="no tokens"):
        evaluate_sae(make_sae(), tiny_lm, [])


@pytest.mark.integration
def test_smollm2_spliced_against_hand_splice(default_lm):
    """Real model, real text: CE is sane, keep-error is clean, the splice matches a hand hook."""
    from saekit.data.provenance import Provenance, token_batches

    lm = default_lm
    ids, keep = next(token_batches(Provenance(context=64), lm.tokenizer, 2, "heldout"))
    torch.manual_seed(0)
    sae = SAE.create(
        "topk", d_in=576, d_sae=1024, k=16, metadata={"hook_name": "blocks.3.hook_resid_pre"}
    )

    got = spliced_batch(sae, lm, ids, keep)
    layer2 = lm.model.model.layers[2]  # hook_resid_pre of layer 3 = output of layer 2
    grabbed: list[torch.Tensor] = []
    clean = hand_logits(lm.model, ids, layer2, grab=grabbed)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(grabbed[0]))
        spliced = hand_logits(lm.model, ids, layer2, kept_replacement(keep, lambda a: x_hat))
    torch.testing.assert_close(
        got.ce_clean_M.double(), hand_ce(clean, ids, keep), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        got.ce_spliced_M.double(), hand_ce(spliced, ids, keep), atol=1e-4, rtol=1e-4
    )
    assert 0.5 < got.ce_clean_M.mean() < 5  # a trained model on English text
    assert got.ce_zero_M.mean() > got.ce_clean_M.mean() + 0.5

    result = evaluate_sae(sae, lm, [(ids, keep)])
    assert result["tokens"] == int(keep.sum())
    assert result["l0"] == pytest.approx(16)
    kept = spliced_batch(sae, lm, ids, keep, keep_error=True)
    torch.testing.assert_close(kept.ce_spliced_M, kept.ce_clean_M, atol=1e-4, rtol=0)


def test_transformer_lens_backend_matches_hf_and_run_with_hooks():
    """Same weights on both backends: the same metrics; and TL's own hooks agree."""
    tl_module = import_peer("transformer_lens")  # fails under SAEKIT_CI when missing
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2Config, GPT2LMHeadModel

    from saekit.models import LanguageModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=32, n_layer=3, n_head=4, n_positions=16))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    cfg = tl_module.HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=128, d_vocab=101, n_ctx=16,
        act_fn="gelu_new", normalization_type="LN", default_prepend_bos=False,
    )  # fmt: skip
    tl = tl_module.HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    hf_lm = LanguageModel(hf.eval(), None, spec="tiny-gpt2")
    tl_lm = LanguageModel(tl.eval(), None, spec="tl:tiny")
    hook = "blocks.1.hook_resid_pre"
    torch.manual_seed(1)
    sae = SAE.create("relu", d_in=32, d_sae=64, metadata={"hook_name": hook})
    ids = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(2))
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 0] = False

    from saekit.evals.forward import ForkedModel

    for lm in (hf_lm, tl_lm):  # both start the suffix at the hook and stop at the unembedding
        forked = ForkedModel.of(lm, [hook], ids[:1])
        assert (forked.fork, forked.head) == (1, True), lm.spec
    got = spliced_batch(sae, tl_lm, ids, keep)
    with torch.no_grad():
        x = tl.run_with_cache(ids, names_filter=hook)[1][hook]
        x_hat = relu_sae_by_hand(sae, x)[0]
        spliced = tl.run_with_hooks(
            ids, fwd_hooks=[(hook, lambda act, hook: kept_replacement(keep, lambda a: x_hat)(act))]
        )
    torch.testing.assert_close(
        got.ce_spliced_M.double(), hand_ce(spliced, ids, keep), atol=1e-5, rtol=1e-5
    )

    on_hf = evaluate_sae(sae, hf_lm, [(ids, keep)])
    on_tl = evaluate_sae(sae, tl_lm, [(ids, keep)])
    for key in ("l0", "fvu", "ce_loss_clean", "ce_loss_spliced", "ce_loss_mean_ablation", "kl_div"):
        assert on_tl[key] == pytest.approx(on_hf[key], rel=1e-4, abs=1e-6), key


def test_evaluate_saes_equals_each_alone_and_shares_the_baseline(tiny_lm):
    """Two SAEs on one hook and a transcoder elsewhere, evaluated together: each result is what
    evaluate_sae gives alone; the layers before the earliest hook run once per batch, the rest
    once per SAE and once per SAE-independent forward; a second evaluation with the same store
    runs only the SAEs' suffixes."""
    from saekit.evals import EvalTarget, evaluate_saes
    from saekit.evals.baseline import BaselineStore

    lm = tiny_lm
    torch.manual_seed(7)
    tc = SAE.create(
        "relu", d_in=64, d_sae=128, d_out=64,
        metadata={"hook_name": "blocks.1.hook_resid_mid", "hook_name_out": "blocks.1.hook_mlp_out"},
    )  # fmt: skip
    saes = {"a": make_sae(seed=0), "b": make_sae(seed=1), "tc": tc}
    batches = [make_tokens(len(lm.tokenizer), seed=s) for s in (8, 9)]  # one batch of 6 rows
    alone = {name: evaluate_sae(sae, lm, batches) for name, sae in saes.items()}

    targets = {n: EvalTarget.of(s) for n, s in saes.items()}
    store = BaselineStore()
    with counting_calls(lm.model.model.layers[0], lm.model.model.layers[3]) as calls:
        together = evaluate_saes(targets, lm, batches, baselines=store)
    # layer 0 (before the transcoder's layer 1): once. Layer 3: clean, 2 hooks x (zero, mean)
    # ablated, 3 spliced; evaluated alone: 4 full forwards per SAE.
    assert calls == [1, 1 + 2 * 2 + 3]
    for name in saes:
        for key, value in alone[name].items():
            torch.testing.assert_close(
                torch.as_tensor(together[name][key]), torch.as_tensor(value), msg=f"{name} {key}"
            )
    assert alone["a"]["explained_variance"] != alone["b"]["explained_variance"]

    with counting_calls(lm.model.model.layers[0], lm.model.model.layers[3]) as calls:
        again = evaluate_saes(targets, lm, batches, baselines=store)
    assert calls == [0, 3]
    for name in saes:
        assert again[name]["kl_div"] == together[name]["kl_div"]
        assert again[name]["ce_loss_recovered"] == together[name]["ce_loss_recovered"]


@contextmanager
def counting_calls(*modules):
    """How many times each module's forward started inside the block."""
    calls = [0] * len(modules)

    def counter(i):
        def count(_module, _args):
            calls[i] += 1

        return count

    handles = [m.register_forward_pre_hook(counter(i)) for i, m in enumerate(modules)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
