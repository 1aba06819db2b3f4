"""HookedLanguageModel answers the TransformerLens calls of the original tutorials (tiny model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit.compat import HookedLanguageModel, hooked, tl_utils

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model(tiny_lm) -> HookedLanguageModel:
    return hooked(tiny_lm)


def test_tokens_strings_and_padding(model):
    one = model.to_tokens("hello world")
    assert one.shape[0] == 1 and one[0, 0] == model.bos_token_id
    assert model.to_tokens("hello world", prepend_bos=False).shape[1] == one.shape[1] - 1
    two = model.to_tokens(["hello world", "hello"])
    assert two.shape == (2, one.shape[1]) and torch.equal(two[0], one[0])
    assert model.to_string(one[0, 1:]) == "hello world"
    strs = model.to_str_tokens("hello world")
    assert len(strs) == one.shape[1] and "".join(strs[1:]) == "hello world"
    assert model.to_str_tokens(one) == strs
    assert model.to_string(one) == [model.to_string(one[0])]
    assert model.to_single_str_token(int(one[0, 1])) == strs[1]


def test_call_on_text_and_tokens(model):
    tokens = model.to_tokens("the quick brown fox jumps")
    logits = model(tokens)
    torch.testing.assert_close(logits, model.logits(tokens))
    expected = F.cross_entropy(logits[0, :-1], tokens[0, 1:])
    torch.testing.assert_close(model(tokens, return_type="loss"), expected)
    torch.testing.assert_close(model("the quick brown fox jumps", return_type="loss"), expected)
    both = model(tokens, return_type="both")
    torch.testing.assert_close(both[1], expected)
    assert model(tokens, return_type="loss", loss_per_token=True).shape == (1, tokens.shape[1] - 1)
    assert model(tokens, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")


def test_padded_text_batch_loss_leaves_padding_out(model):
    short, long = "hello", "hello world and more words"
    batch = model(["hello world and more words", "hello"], return_type="loss", loss_per_token=True)
    alone = model(short, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(batch[1, : alone.shape[1]], alone[0], rtol=1e-4, atol=1e-4)
    mean = model([long, short], return_type="loss")
    n_long, n_short = batch.shape[1], alone.shape[1]
    expected = (batch[0].sum() + alone[0].sum()) / (n_long + n_short)
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-4)


def test_run_with_cache_on_text(model):
    text = "the quick brown fox"
    logits, cache = model.run_with_cache(text, names_filter=HOOK, prepend_bos=True)
    tokens = model.to_tokens(text)
    torch.testing.assert_close(cache[HOOK], model.run_to_hooks(tokens, [HOOK])[HOOK])
    torch.testing.assert_close(cache["resid_pre", 1], cache[HOOK])
    torch.testing.assert_close(logits, model.logits(tokens))
    _, every = model.run_with_cache(tokens)  # no filter, no session hooks: every hook
    assert set(every) == set(model.hook_names())
    _, some = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("resid_post"))
    assert sorted(some) == sorted(n for n in model.hook_names() if n.endswith("resid_post"))


def test_hooks_context_and_run_with_hooks_agree(model):
    tokens = model.to_tokens("the quick brown fox jumps over")
    seen = []

    def zero(act, hook):
        seen.append((hook.name, hook.layer()))
        return torch.zeros_like(act)

    hooked_loss = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, zero)], return_type="loss")
    with model.hooks(fwd_hooks=[(HOOK, zero)]):
        inside = model(tokens, return_type="loss")
        nested = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: None)], return_type="loss")
    torch.testing.assert_close(inside, hooked_loss)
    torch.testing.assert_close(nested, hooked_loss)
    torch.testing.assert_close(model(tokens, return_type="loss"), model(tokens, return_type="loss"))
    assert not torch.isclose(model(tokens, return_type="loss"), hooked_loss)
    assert seen == [(HOOK, 1)] * 3
    with pytest.raises(ValueError, match="backward"):
        model.run_with_hooks(tokens, bwd_hooks=[(HOOK, zero)])
    with pytest.raises(ValueError, match="hook"), model.hooks(fwd_hooks=[("blocks.99.nope", zero)]):
        pass


def test_persistent_hooks(model):
    tokens = model.to_tokens("a b c d")
    clean = model(tokens)
    model.add_hook(HOOK, lambda act, hook: act * 0)
    assert not torch.allclose(model(tokens), clean)
    model.reset_hooks()
    torch.testing.assert_close(model(tokens), clean)


def test_shorter_hook_output_replaces_the_first_positions(model):
    """A reconstruction of the prompt only, spliced into prompt + answer (what the tutorial's
    test_prompt under model.hooks does): the prompt's positions give TransformerLens's logits."""
    tokens = model.to_tokens("the quick brown fox jumps over")
    T = tokens.shape[1]
    full = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: a * 0)])
    short = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: a[:, : T - 1] * 0)])
    torch.testing.assert_close(short[:, : T - 1], full[:, : T - 1])
    with pytest.raises(ValueError, match="shape"):
        model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: a[..., :3])])


def test_cfg_and_unembedding(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model) == (model.n_layers, model.d_model)
    assert cfg.d_vocab == model.W_U.shape[1] and model.W_U.shape[0] == model.d_model
    assert isinstance(model.tokenizer.vocab, dict)


def test_get_act_name():
    name = tl_utils.get_act_name
    assert name("resid_pre", 10) == "blocks.10.hook_resid_pre"
    assert name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert name("mlp_out5") == "blocks.5.hook_mlp_out"
    assert name("k", 6) == "blocks.6.attn.hook_k"
    assert name("blocks.2.hook_resid_pre") == "blocks.2.hook_resid_pre"
    assert name("scale", 4, "ln2") == "blocks.4.ln2.hook_scale"
    assert name("embed") == "hook_embed"
    with pytest.raises(ValueError):
        name("resid_pre")


def test_test_prompt_ranks(model, capsys):
    ranks = tl_utils.test_prompt("the quick brown", " fox jumps", model, prepend_bos=True, top_k=3)
    tokens = torch.cat([model.to_tokens("the quick brown"), model.to_tokens(" fox jumps", prepend_bos=False)], 1)
    logits = model(tokens)[0]
    n = model.to_tokens("the quick brown").shape[1]
    for i, (_, rank) in enumerate(ranks):
        expected = int((logits[n + i - 1] > logits[n + i - 1, tokens[0, n + i]]).sum())
        assert rank == expected
    out = capsys.readouterr().out
    assert "Tokenized prompt" in out and out.count("Top 2th token") == len(ranks)


def test_tokenize_and_concatenate(model):
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["one two three four five six seven"] * 20})
    rows = tl_utils.tokenize_and_concatenate(data, model.tokenizer, max_length=8)["tokens"][:]
    assert rows.shape[1] == 8 and (rows[:, 0] == model.bos_token_id).all()
    body = [model.tokenizer.encode("one two three four five six seven", add_special_tokens=False)]
    assert rows[0, 1 : 1 + len(body[0][:7])].tolist() == body[0][:7]
    assert tl_utils.to_numpy(torch.ones(2)).tolist() == [1.0, 1.0]


def test_transformer_lens_test_prompt_runs_on_it(model, capsys):
    """TransformerLens's own `utils.test_prompt` (2.x/3.x) agrees with saekit's equivalent."""
    tl_utils_real = pytest.importorskip("transformer_lens.utils")
    tl_utils_real.test_prompt("the quick brown", " fox", model, prepend_bos=True, top_k=3)
    real = capsys.readouterr().out
    ranks = tl_utils.test_prompt("the quick brown", " fox", model, prepend_bos=True, top_k=3)
    assert f"{ranks}"[1:-1].replace("'", "") in real.replace("'", "")
