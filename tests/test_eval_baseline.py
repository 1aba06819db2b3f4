"""Forked forwards, chunked losses, cached baselines and standard errors against hand work."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.evals import baseline as baseline_module
from saekit.evals import evaluate_sae
from saekit.evals import forward as forward_module
from saekit.evals.baseline import BaselineStore, model_fingerprint
from saekit.evals.forward import (
    CleanDistribution,
    ForkedModel,
    clean_losses,
    fork_layer,
    token_losses,
)
from saekit.evals.intervals import RESAMPLES, document_units
from saekit.evals.metrics import kl_div_score
from test_spliced import (
    counting_calls,
    hand_ce,
    hand_kl,
    hand_logits,
    hand_metrics,
    hand_windows,
    kept_replacement,
    make_sae,
    make_tokens,
    relu_sae_by_hand,
)


@pytest.fixture(scope="module")
def setup(tiny_lm):
    batches = [make_tokens(len(tiny_lm.tokenizer), seed=s) for s in (4, 5)]
    sae = make_sae()
    layer1 = tiny_lm.model.model.layers[1]
    return tiny_lm, sae, batches, hand_windows(tiny_lm.model, layer1, sae, batches)


@pytest.mark.parametrize("fork, head", [(2, True), (2, False), (None, True), (None, False)])
def test_every_way_of_splitting_the_model_gives_the_hand_numbers(setup, monkeypatch, fork, head):
    lm, sae, batches, windows = setup
    monkeypatch.setattr(ForkedModel, "of", classmethod(lambda cls, lm, *_: cls(lm, fork, head)))
    result = evaluate_sae(sae, lm, batches)
    for key, value in hand_metrics(windows).items():
        assert result[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_the_split_is_after_the_earliest_hook_and_checked(tiny_lm):
    assert fork_layer(tiny_lm, ["blocks.2.hook_resid_pre"]) == 2
    assert fork_layer(tiny_lm, ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]) == 1
    assert fork_layer(tiny_lm, ["blocks.1.hook_mlp_out"]) == 1
    assert fork_layer(tiny_lm, ["blocks.4.hook_resid_pre"]) == 4  # the final norm's input
    assert fork_layer(tiny_lm, ["model.embed_tokens"]) is None
    ids, _ = make_tokens(len(tiny_lm.tokenizer))
    forked = ForkedModel.of(tiny_lm, ["blocks.4.hook_resid_pre"], ids[:1])
    assert (forked.fork, forked.head) == (4, True)
    logits = forked.logits(forked.suffix(forked.prefix(ids), ids))
    torch.testing.assert_close(logits, tiny_lm.logits(ids))


def test_an_sae_on_a_layers_output_is_spliced_in_the_forked_suffix(tiny_lm, monkeypatch):
    # An HF layer's output hook fires only when that layer runs: the suffix must include it.
    batches = [make_tokens(len(tiny_lm.tokenizer), seed=s) for s in (4, 5)]
    sae = make_sae(hook_name="blocks.1.hook_resid_post")
    forked = evaluate_sae(sae, tiny_lm, batches)
    monkeypatch.setattr(ForkedModel, "of", classmethod(lambda cls, lm, *_: cls(lm, None, False)))
    full = evaluate_sae(sae, tiny_lm, batches)
    assert forked["ce_loss_spliced"] != pytest.approx(forked["ce_loss_clean"], rel=1e-3)
    for key in ("ce_loss_spliced", "ce_loss_zero_ablation", "ce_loss_mean_ablation", "kl_div",
                "explained_variance", "l0"):  # fmt: skip
        assert forked[key] == pytest.approx(full[key], rel=1e-5, abs=1e-7), key


def test_a_model_the_split_does_not_reproduce_falls_back(tiny_lm, monkeypatch):
    ids, _ = make_tokens(len(tiny_lm.tokenizer), T=9)  # a length no other test checked
    broken = forward_module._hf_started_at

    def shifted(lm, fork, resid_BTD):
        return broken(lm, fork, resid_BTD + 1.0)  # as if layers depended on their position

    monkeypatch.setattr(forward_module, "_hf_started_at", shifted)
    forked = ForkedModel.of(tiny_lm, ["blocks.2.hook_resid_pre"], ids[:1])
    assert (forked.fork, forked.head) == (None, True)


def test_token_losses_in_chunks_equal_the_full_log_softmax(tiny_lm, monkeypatch):
    ids, keep = make_tokens(len(tiny_lm.tokenizer), rows=4, seed=11)
    forked = ForkedModel(tiny_lm, 2)
    resid = forked.prefix(ids)
    clean_in = forked.suffix(resid, ids)
    other_in = forked.suffix(resid * 0.5, ids)
    positions = keep.clone()
    positions[:, -1] = False
    targets = ids.roll(-1, 1)[positions]
    monkeypatch.setattr(forward_module, "CHUNK_ELEMENTS", 3 * len(tiny_lm.tokenizer))  # 3 rows
    clean_logits = tiny_lm.model.lm_head(clean_in)
    other_logits = tiny_lm.model.lm_head(other_in)
    ce_clean, compact = clean_losses(forked, clean_in[positions], targets)
    assert compact.u_MD is not None and compact.head_in_MD is None  # lm_head is affine
    torch.testing.assert_close(
        ce_clean.double(), hand_ce(clean_logits, ids, keep), atol=1e-5, rtol=1e-5
    )
    for clean in (CleanDistribution(clean_in[positions]), compact):
        ce, kl = token_losses(forked, other_in[positions], targets, clean)
        torch.testing.assert_close(
            ce.double(), hand_ce(other_logits, ids, keep), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            kl.double(), hand_kl(clean_logits, other_logits, keep), atol=1e-6, rtol=1e-4
        )


def test_tokens_reading_shared_rows_get_the_losses_of_the_expanded_rows(tiny_lm, monkeypatch):
    ids, keep = make_tokens(len(tiny_lm.tokenizer), rows=4, seed=12)
    forked = ForkedModel(tiny_lm, 2)
    clean_in = forked.suffix(forked.prefix(ids), ids)
    positions = keep.clone()
    positions[:, -1] = False
    targets = ids.roll(-1, 1)[positions]
    shared_ND = forked.suffix(forked.prefix(ids) * 0.5, ids)[0, :11]  # 11 rows: 2-row chunks
    index_M = torch.arange(targets.shape[0]) % 8 + 3  # tokens reading rows 3..10 (the last chunk)
    other_logits = tiny_lm.model.lm_head(shared_ND[index_M]).detach()
    clean_logits = tiny_lm.model.lm_head(clean_in[positions]).detach()
    monkeypatch.setattr(forward_module, "CHUNK_ELEMENTS", 2 * len(tiny_lm.tokenizer))  # 2 rows
    compact = clean_losses(forked, clean_in[positions], targets)[1]
    one = torch.ones(1, targets.shape[0], dtype=torch.bool)
    for clean in (CleanDistribution(clean_in[positions]), compact):
        ce, kl = token_losses(forked, shared_ND, targets, clean, index_M)
        want_ce = -other_logits.double().log_softmax(-1)[torch.arange(len(targets)), targets]
        torch.testing.assert_close(ce.double(), want_ce, atol=1e-5, rtol=1e-5)
        padded = torch.cat([one, torch.zeros(1, 1, dtype=torch.bool)], 1)  # a last position
        want_kl = hand_kl(
            torch.cat([clean_logits, clean_logits[:1]])[None],
            torch.cat([other_logits, other_logits[:1]])[None], padded,
        )  # fmt: skip
        torch.testing.assert_close(kl.double(), want_kl, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="index_M"):
        token_losses(forked, shared_ND, targets, None, index_M + 1)  # row 11 does not exist
    with pytest.raises(ValueError, match="11 unembedding inputs"):
        token_losses(forked, shared_ND, targets)


def test_logsumexp64_matches_float64_on_wide_logits():
    logits = torch.randn(5, 50_000, generator=torch.Generator().manual_seed(0)) * 8
    logits[0, :10] += 60.0  # a peaked row
    want = logits.double().logsumexp(-1)
    torch.testing.assert_close(forward_module.logsumexp64(logits), want, atol=2e-7, rtol=0)


def suffix_rows(monkeypatch) -> list[int]:
    """The number of windows of every `ForkedModel.suffix` call from now on."""
    rows_in: list[int] = []
    suffix = ForkedModel.suffix

    def counted(self, resid, ids):
        rows_in.append(ids.shape[0])
        return suffix(self, resid, ids)

    monkeypatch.setattr(ForkedModel, "suffix", counted)
    return rows_in


def test_identical_ablated_windows_run_the_suffix_once(setup, monkeypatch):
    lm, sae, batches, windows = setup
    rows_in = suffix_rows(monkeypatch)
    result = evaluate_sae(sae, lm, batches)
    for key, value in hand_metrics(windows).items():
        assert result[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # one batch of 6 windows (two with an EOS inside): clean, zero, mean ablated, spliced; the
    # four without a separator have the same ablated stream (BOS, then the ablation)
    assert [n for n in rows_in if n > 1] == [6, 3, 3, 6]  # besides the one-window checks
    monkeypatch.setattr(ForkedModel, "suffix_reads_only_resid", lambda self, ids: False)
    rows_in.clear()
    again = evaluate_sae(sae, lm, batches)
    assert [n for n in rows_in if n > 1] == [6] * 4
    for key in ("ce_loss_zero_ablation", "ce_loss_mean_ablation", "kl_div_zero_ablation"):
        assert again[key] == pytest.approx(result[key], rel=1e-5), key


def test_a_suffix_that_reads_the_tokens_is_not_deduplicated(tiny_lm, monkeypatch):
    monkeypatch.setattr(forward_module, "_VERIFIED", forward_module.weakref.WeakKeyDictionary())
    ids, _ = make_tokens(len(tiny_lm.tokenizer), T=7)
    forked = ForkedModel(tiny_lm, 2)
    assert forked.suffix_reads_only_resid(ids)
    assert forked.starts_at("blocks.2.hook_resid_pre")
    assert not forked.starts_at("blocks.2.hook_mlp_out")
    assert not forked.starts_at("blocks.1.hook_resid_post")  # read at layer 1's output
    suffix = ForkedModel.suffix
    monkeypatch.setattr(
        ForkedModel, "suffix", lambda self, r, i: suffix(self, r, i) + i[..., None] * 1e-3
    )
    monkeypatch.setattr(forward_module, "_VERIFIED", forward_module.weakref.WeakKeyDictionary())
    assert not ForkedModel(tiny_lm, 2).suffix_reads_only_resid(ids)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_deduplicated_ablations_in_other_dtypes(tiny_model_dir, monkeypatch, dtype):
    from saekit.models import load_model

    lm = load_model(str(tiny_model_dir), dtype=dtype)
    batches = [make_tokens(len(lm.tokenizer), seed=s) for s in (4, 5)]
    sae = make_sae()
    rows_in = suffix_rows(monkeypatch)
    deduplicated = evaluate_sae(sae, lm, batches)
    assert [n for n in rows_in if n > 1] == [6, 3, 3, 6]  # besides the one-window checks
    monkeypatch.setattr(ForkedModel, "suffix_reads_only_resid", lambda self, ids: False)
    every = evaluate_sae(sae, lm, batches)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-2
    for key in ("ce_loss_zero_ablation", "ce_loss_mean_ablation", "kl_div_zero_ablation"):
        assert deduplicated[key] == pytest.approx(every[key], rel=tolerance), key


def test_the_baseline_is_cached_on_disk_and_shared_across_stores(setup, tmp_path, monkeypatch):
    lm, sae, batches, windows = setup
    first = evaluate_sae(sae, lm, batches, baselines=BaselineStore(tmp_path))
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1

    layers = lm.model.model.layers
    with counting_calls(layers[0], layers[3]) as calls:  # a new process: a fresh store
        second = evaluate_sae(sae, lm, batches, baselines=BaselineStore(tmp_path))
    assert calls == [0, 1]  # only the spliced suffix of the one batch
    other = make_sae(seed=5)
    with counting_calls(layers[0], layers[3]) as calls:
        third = evaluate_sae(other, lm, batches, baselines=BaselineStore(tmp_path))
    assert calls == [0, 1]
    for key in ("ce_loss_clean", "ce_loss_zero_ablation", "ce_loss_mean_ablation", "kl_div"):
        assert second[key] == first[key], key
    assert third["ce_loss_clean"] == first["ce_loss_clean"]
    assert third["kl_div"] == pytest.approx(hand_metrics(hand_windows(
        lm.model, layers[1], other, batches))["kl_div"], rel=1e-4)  # fmt: skip

    # too large for the disk: only the losses are written; the rest is recomputed
    monkeypatch.setattr(baseline_module, "DISK_LARGE_BYTES", 0)
    small = tmp_path / "small"
    evaluate_sae(sae, lm, batches, baselines=BaselineStore(small))
    assert next(small.iterdir()).stat().st_size < files[0].stat().st_size / 5
    with counting_calls(layers[0], layers[3]) as calls:
        fourth = evaluate_sae(sae, lm, batches, baselines=BaselineStore(small))
    assert calls == [1, 2]  # prefix, clean suffix, spliced suffix
    assert fourth["kl_div"] == pytest.approx(first["kl_div"], rel=1e-6)

    files[0].write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable evaluation cache"):
        again = evaluate_sae(sae, lm, batches, baselines=BaselineStore(tmp_path))
    assert again["ce_loss_recovered"] == pytest.approx(first["ce_loss_recovered"], rel=1e-6)


def test_the_key_changes_with_the_weights_and_the_tokens(setup):
    lm, sae, batches, _ = setup
    forked = ForkedModel(lm, 2)
    key = baseline_module.baseline_key(forked, ["h"], batches, {})
    fingerprint = model_fingerprint(lm)
    weight = lm.model.model.layers[2].mlp.down_proj.weight
    with torch.no_grad():
        saved = weight[5, 7].item()
        weight[5, 7] += 1e-3  # an element no sample lands on: the sum still changes
        try:
            assert model_fingerprint(lm)["weights"] != fingerprint["weights"]
        finally:
            weight[5, 7] = saved
    assert model_fingerprint(lm) == fingerprint
    changed = [(batches[0][0].flip(1), batches[0][1]), batches[1]]
    assert baseline_module.baseline_key(forked, ["h"], changed, {}) != key
    assert baseline_module.baseline_key(forked, ["h"], batches, {}) == key
    assert baseline_module.baseline_key(forked, ["h"], batches, {"h": torch.ones(64)}) != key


def hand_documents(windows):
    """The hand-computed windows regrouped by document: a new one after each special token
    inside a window (the EOS between documents), continuing across windows."""
    docs: dict[int, dict[str, list]] = {}
    unit = 0
    for w in windows:
        keep = w["keep"][0]
        labels = []
        for t in range(keep.numel()):
            unit += int(t > 0 and not keep[t])
            labels.append(unit)
        labels = torch.tensor(labels)
        counted = keep.clone()
        counted[-1] = False
        for u in labels.unique().tolist():
            doc = docs.setdefault(u, {})
            for key in ("x", "x_hat", "f"):
                doc.setdefault(key, []).append(w[key][labels[keep] == u])
            for key in ("clean", "spliced", "zero", "mean", "kl"):
                doc.setdefault(key, []).append(w[key][labels[counted] == u])
    return [{k: torch.cat(v) for k, v in docs[u].items()} for u in sorted(docs)]


def test_standard_errors_are_a_bootstrap_over_documents(tiny_lm):
    """The same redraws of documents as the implementation, each metric by brute force on the
    redrawn documents' tokens."""
    batches = []
    for seed, eos in ((4, [(1, 7), (2, 3)]), (5, [(1, 9)])):
        ids, keep = make_tokens(len(tiny_lm.tokenizer), seed=seed)
        for row, col in eos:  # more document ends, some inside a window
            ids[row, col], keep[row, col] = 0, False
        batches.append((ids, keep))
    sae = make_sae(seed=3)
    windows = hand_windows(tiny_lm.model, tiny_lm.model.model.layers[1], sae, batches)
    docs = hand_documents(windows)
    assert len(docs) == 6  # five ends: two batches x one EOS each, plus the three above
    result = evaluate_sae(sae, tiny_lm, batches)
    draws = torch.randint(len(docs), (RESAMPLES, len(docs)),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    by_key: dict[str, list[float]] = {}
    for row in draws.tolist():
        metrics = hand_metrics([docs[i] for i in row])
        for key in ("explained_variance", "ce_loss_recovered", "kl_div", "dead_fraction"):
            by_key.setdefault(key, []).append(metrics[key])
    for key, values in by_key.items():
        values_R = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
        # the random model's zero ablation barely changes its loss, so CE loss recovered
        # divides by a small difference: float32 rounding shows at 1e-6 relative
        rel = 1e-3 if key == "ce_loss_recovered" else 1e-5
        assert result[f"{key}_se"] == pytest.approx(values_R.std().item(), rel=rel), key
    assert result["explained_variance_se"] > 0 and result["kl_div_se"] > 0


def test_documents_span_windows_and_windows_stand_in_without_separators():
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[:, 0] = False  # BOS opens every window
    keep[1, 2] = False  # an EOS: the document of window 0 ends inside window 1
    (units,) = document_units([keep])
    assert units[:, 1:].tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]]
    keep[1, 2] = True
    (units,) = document_units([keep])
    assert units[:, 0].tolist() == [0, 1, 2]  # one unit per window


def test_the_replacement_model_against_hand_hooks(tiny_lm):
    """Transcoders that write zeros on layers 1-2: the replaced model is the MLP-ablated one;
    clean and ablated CE and the KL by plain forward hooks on the MLPs."""
    from saekit.evals.replacement import Replacement, evaluate_replacement

    hooks_in = [f"blocks.{i}.hook_resid_mid" for i in (1, 2)]
    hooks_out = [f"blocks.{i}.hook_mlp_out" for i in (1, 2)]
    rep = Replacement(
        hooks_in, hooks_out, lambda i, x: x[:, :4].relu(), lambda i, feats, x: 0 * x
    )  # fmt: skip
    ids, keep = make_tokens(len(tiny_lm.tokenizer), rows=2, seed=12)
    result = evaluate_replacement(rep, tiny_lm, [(ids, keep)], max_tokens=100)

    mlps = [tiny_lm.model.model.layers[i].mlp for i in (1, 2)]
    zero_kept = [
        m.register_forward_hook(lambda _m, _a, out: torch.where(keep[..., None], 0.0, out))
        for m in mlps
    ]
    with torch.no_grad():
        ablated = tiny_lm.model(input_ids=ids).logits
    for handle in zero_kept:
        handle.remove()
    clean = tiny_lm.logits(ids)
    assert result["ce_loss_clean"] == pytest.approx(hand_ce(clean, ids, keep).mean().item(), rel=1e-5)
    assert result["ce_loss_ablated"] == pytest.approx(
        hand_ce(ablated, ids, keep).mean().item(), rel=1e-5
    )
    assert result["ce_loss_replaced"] == pytest.approx(result["ce_loss_ablated"], rel=1e-5)
    assert result["kl_div"] == pytest.approx(hand_kl(clean, ablated, keep).mean().item(), rel=1e-4)
    assert result["kl_div"] > 1e-5  # the ablation changes the random model a little


def test_kl_div_score_is_saebench_normalised_kl_by_hand(setup):
    """(KL_zero - KL_sae) / KL_zero, each KL(clean || variant) by explicit loops in float64."""
    lm, sae, batches, windows = setup
    layer1 = lm.model.model.layers[1]
    kl_sae, kl_zero = [], []
    for ids, keep in batches:
        grabbed: list[torch.Tensor] = []
        clean = hand_logits(lm.model, ids, layer1, grab=grabbed)
        x_hat = relu_sae_by_hand(sae, grabbed[0])[0].detach()
        spliced = hand_logits(lm.model, ids, layer1, kept_replacement(keep, lambda a, x_hat=x_hat: x_hat))
        zero = hand_logits(lm.model, ids, layer1, kept_replacement(keep, torch.zeros_like))
        kl_sae.append(hand_kl(clean, spliced, keep))
        kl_zero.append(hand_kl(clean, zero, keep))
    want_sae, want_zero = torch.cat(kl_sae).mean().item(), torch.cat(kl_zero).mean().item()
    assert want_zero > want_sae > 0 and want_sae > 0.1 * want_zero  # a score far from 0 and 1
    result = evaluate_sae(sae, lm, batches)
    assert result["kl_div"] == pytest.approx(want_sae, rel=1e-4)
    assert result["kl_div_zero_ablation"] == pytest.approx(want_zero, rel=1e-5)
    assert result["kl_div_score"] == pytest.approx((want_zero - want_sae) / want_zero, rel=1e-5)
    assert math.isfinite(result["kl_div_score_se"]) and result["kl_div_score_se"] > 0
    assert math.isnan(kl_div_score(0.1, 0.0))


LOSS_KEYS = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablation", "ce_loss_recovered",
             "kl_div", "kl_div_zero_ablation", "kl_div_score", "ce_tokens")  # fmt: skip


def test_losses_on_fewer_windows_and_reconstruction_on_all(tiny_lm):
    """`ce_tokens`: the losses of the first windows only (as if evaluated alone), every other
    metric over all windows (as in the full evaluation), against the hand numbers."""
    batches = [make_tokens(len(tiny_lm.tokenizer), rows=5, seed=s) for s in (6, 7)]
    sae = make_sae(seed=2)
    layer1 = tiny_lm.model.model.layers[1]
    windows = hand_windows(tiny_lm.model, layer1, sae, batches)
    kept = [int(w["keep"].sum()) for w in windows]
    cut = 4  # the first four windows (of ten) carry the losses: a cut inside the first batch
    result = evaluate_sae(sae, tiny_lm, batches, ce_tokens=sum(kept[: cut - 1]) + 1)
    everything, first = hand_metrics(windows), hand_metrics(windows[:cut])
    for key in ("tokens", "l0", "mse", "explained_variance", "cos_sim", "dead_fraction"):
        assert result[key] == pytest.approx(everything[key], rel=1e-5, abs=1e-9), key
    for key in LOSS_KEYS[:-3]:  # CE loss recovered: a small difference, see above
        rel = 1e-3 if key == "ce_loss_recovered" else 1e-4
        assert result[key] == pytest.approx(first[key], rel=rel, abs=1e-7), key
    assert result["ce_tokens"] == first["ce_tokens"] < everything["ce_tokens"]
    assert result["explained_variance"] != pytest.approx(first["explained_variance"], rel=1e-3)
    full = evaluate_sae(sae, tiny_lm, batches, ce_tokens=10**6)  # more than there are
    assert full["kl_div"] == pytest.approx(everything["kl_div"], rel=1e-4)
    with pytest.raises(ValueError, match="ce_tokens must be at least 1"):
        evaluate_sae(sae, tiny_lm, batches, ce_tokens=0)


def test_loss_errors_with_fewer_loss_windows_bootstrap_those_documents_only(tiny_lm):
    batches = [make_tokens(len(tiny_lm.tokenizer), rows=5, seed=s) for s in (6, 7)]
    for ids, keep in batches:  # a document end inside every other window
        ids[::2, 8], keep[::2, 8] = 0, False
    sae = make_sae(seed=2)
    windows = hand_windows(tiny_lm.model, tiny_lm.model.model.layers[1], sae, batches)
    cut = 6
    kept = [int(w["keep"].sum()) for w in windows]
    result = evaluate_sae(sae, tiny_lm, batches, ce_tokens=sum(kept[: cut - 1]) + 1)
    docs = hand_documents(windows[:cut])  # the documents the losses cover (the last in part)
    assert 3 <= len(docs) < len(hand_documents(windows))
    draws = torch.randint(len(docs), (RESAMPLES, len(docs)),
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    values = [hand_metrics([docs[i] for i in row])["kl_div"] for row in draws.tolist()]
    assert result["kl_div_se"] == pytest.approx(torch.tensor(values).std().item(), rel=1e-5)


def test_the_training_default_is_the_evaluation_default():
    from saekit.evals.evaluate import DEFAULT_CE_TOKENS
    from saekit.training.config import TrainConfig

    assert TrainConfig().eval_ce_tokens == DEFAULT_CE_TOKENS

