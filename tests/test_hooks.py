"""Hook names map to the right tensors on every family; early stop; several hooks; splice."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from saekit.models import LanguageModel, resolve_hook

T = 7  # sequence length
COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
)


@cache
def tiny_family(family: str) -> nn.Module:
    """A 3-layer random model of `family`, built in memory (one per family, shared)."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        model = tf.GPT2LMHeadModel(cfg)
    elif family in ("llama", "qwen2"):
        cls = {
            "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        }
        cfg = cls[family][0](**COMMON, num_key_value_heads=2)
        model = cls[family][1](cfg)
    elif family in ("pythia", "neox-sequential"):
        cfg = tf.GPTNeoXConfig(**COMMON, use_parallel_residual=family == "pythia")
        model = tf.GPTNeoXForCausalLM(cfg)
    elif family == "gemma":
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**COMMON, num_key_value_heads=2, head_dim=8))
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4)
        model = tf.Gemma2ForCausalLM(cfg)
    else:
        raise ValueError(family)
    # HF's 0.02-std init makes every layer's output tiny; larger weights make the checks bite.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


FAMILIES = ["gpt2", "llama", "qwen2", "pythia", "neox-sequential", "gemma", "gemma2"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_lm(request) -> LanguageModel:
    return LanguageModel(tiny_family(request.param), tokenizer=None, spec=request.param)


def ids_BT(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (batch, T), generator=torch.Generator().manual_seed(seed))


def module_io(model: nn.Module, path: str, ids: torch.Tensor, read: str) -> torch.Tensor:
    """Input or output of one module, read with a plain PyTorch hook (independent of saekit)."""
    seen = []
    module = model.get_submodule(path)
    if read == "input":
        handle = module.register_forward_pre_hook(
            lambda m, a, k: seen.append(a[0] if a else k["hidden_states"]), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(
            lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o)
        )
    with torch.no_grad():
        model(ids, use_cache=False)
    handle.remove()
    return seen[0]


def test_resid_hooks_equal_hidden_states(family_lm):
    lm, ids = family_lm, ids_BT()
    n = lm.n_layers
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True, use_cache=False).hidden_states
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    names += [f"blocks.{i}.hook_resid_post" for i in range(n - 1)]
    acts = lm.run_to_hooks(ids, [*names, lm.layout.final_norm])
    for i in range(n):  # hidden_states[i] is the input of layer i
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_pre"], hidden[i])
    for i in range(n - 1):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_post"], hidden[i + 1])
    torch.testing.assert_close(acts[lm.layout.final_norm], hidden[n])  # after the final norm
    # The last layer's output is the final norm's input; the norm of it is hidden_states[n].
    last = lm.run_to_hooks(ids, [f"blocks.{n - 1}.hook_resid_post", f"blocks.{n}.hook_resid_pre"])
    torch.testing.assert_close(
        last[f"blocks.{n}.hook_resid_pre"], last[f"blocks.{n - 1}.hook_resid_post"]
    )
    with torch.no_grad():
        torch.testing.assert_close(lm.final_norm(last[f"blocks.{n}.hook_resid_pre"]), hidden[n])


def test_attn_and_mlp_out_add_up_to_the_residual_stream(family_lm):
    """resid_pre + attn_out (+ mlp_out) rebuild resid_mid / resid_post: the right tensors."""
    lm, ids = family_lm, ids_BT()
    for layer in range(lm.n_layers):
        b = f"blocks.{layer}."
        names = [
            b + s for s in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
        ]
        acts = {k.split(".")[-1]: v for k, v in lm.run_to_hooks(ids, names).items()}
        assert (
            acts["hook_attn_out"].abs().mean() > 1e-2 and acts["hook_mlp_out"].abs().mean() > 1e-2
        )
        torch.testing.assert_close(
            acts["hook_resid_pre"] + acts["hook_attn_out"] + acts["hook_mlp_out"],
            acts["hook_resid_post"],
            atol=1e-5,
            rtol=1e-5,
        )
        if lm.layout.resid_mid is None:
            continue
        mid = lm.run_to_hooks(ids, [b + "hook_resid_mid"])[b + "hook_resid_mid"]
        torch.testing.assert_close(
            acts["hook_resid_pre"] + acts["hook_attn_out"], mid, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(
    "family, hook, module, read",
    [
        ("llama", "blocks.1.hook_attn_out", "model.layers.1.self_attn", "output"),
        ("llama", "blocks.1.hook_mlp_out", "model.layers.1.mlp", "output"),
        ("llama", "blocks.1.hook_resid_mid", "model.layers.1.post_attention_layernorm", "input"),
        ("gpt2", "blocks.2.hook_attn_out", "transformer.h.2.attn", "output"),
        ("gpt2", "blocks.2.hook_resid_mid", "transformer.h.2.ln_2", "input"),
        ("pythia", "blocks.0.hook_attn_out", "gpt_neox.layers.0.attention", "output"),
        ("gemma2", "blocks.1.hook_attn_out", "model.layers.1.post_attention_layernorm", "output"),
        ("gemma2", "blocks.1.hook_mlp_out", "model.layers.1.post_feedforward_layernorm", "output"),
    ],
)
def test_sublayer_hooks_read_the_named_module(family, hook, module, read):
    model = tiny_family(family)
    lm, ids = LanguageModel(model, None, spec=family), ids_BT()
    point = resolve_hook(lm, hook)
    assert (point.module, point.read, point.layer) == (module, read, int(hook.split(".")[1]))
    torch.testing.assert_close(
        lm.run_to_hooks(ids, [hook])[hook], module_io(model, module, ids, read)
    )


def test_raw_module_paths(tiny_lm):
    ids = ids_BT(seed=3)
    acts = tiny_lm.run_to_hooks(
        ids, ["model.layers.1.mlp", "blocks.1.hook_mlp_out", "model.layers.1.mlp.up_proj"]
    )
    torch.testing.assert_close(acts["model.layers.1.mlp"], acts["blocks.1.hook_mlp_out"])
    assert acts["model.layers.1.mlp.up_proj"].shape == (2, T, 128)
    assert tiny_lm.hook_dim("model.layers.1.mlp.up_proj") == 128
    assert tiny_lm.hook_dim("blocks.2.hook_resid_post") == 64
    assert resolve_hook(tiny_lm, "model.layers.1.mlp.up_proj").layer == 1
    assert resolve_hook(tiny_lm, "lm_head").layer is None


class CallCounter:
    """Counts forward calls of modules (plain PyTorch hooks)."""

    def __init__(self, model: nn.Module, paths: list[str]):
        self.calls = dict.fromkeys(paths, 0)
        self.handles = [
            model.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: self._hit(p))
            for p in paths
        ]

    def _hit(self, path: str) -> None:
        self.calls[path] += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_forward_stops_after_the_last_hook(tiny_lm):
    layers = [f"model.layers.{i}" for i in range(4)]
    counter = CallCounter(
        tiny_lm.model, [*layers, "model.layers.1.self_attn", "model.layers.1.mlp", "lm_head"]
    )
    try:
        tiny_lm.run_to_hooks(ids_BT(), ["blocks.1.hook_resid_pre"])
        assert counter.calls == {**dict.fromkeys(counter.calls, 0), "model.layers.0": 1}
        counter.calls = dict.fromkeys(counter.calls, 0)
        tiny_lm.run_to_hooks(ids_BT(), ["blocks.1.hook_attn_out"])  # mlp of layer 1 never runs
        assert counter.calls == {
            **dict.fromkeys(counter.calls, 0),
            "model.layers.0": 1,
            "model.layers.1.self_attn": 1,
        }
    finally:
        counter.remove()


def test_several_hooks_in_one_pass(tiny_lm):
    ids = ids_BT(seed=5)
    names = ["blocks.3.hook_resid_pre", "blocks.0.hook_mlp_out", "blocks.2.hook_resid_post"]
    one_by_one = {name: tiny_lm.run_to_hooks(ids, [name])[name] for name in names}
    counter = CallCounter(tiny_lm.model, ["model.layers.0", "model.layers.3", "lm_head"])
    try:
        together = tiny_lm.run_to_hooks(ids, names)
    finally:
        counter.remove()
    assert counter.calls == {"model.layers.0": 1, "model.layers.3": 0, "lm_head": 0}
    assert list(together) == names
    for name in names:
        torch.testing.assert_close(together[name], one_by_one[name])


def test_returned_tensors_are_trainable_copies(tiny_lm):
    ids = ids_BT()
    acts = tiny_lm.run_to_hooks(ids, ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"])
    a = acts["blocks.1.hook_resid_pre"]
    assert not a.is_inference() and not a.requires_grad
    w = torch.ones(64, requires_grad=True)
    (a * w).sum().backward()  # usable as training input
    before = a.clone()
    tiny_lm.run_to_hooks(ids_BT(seed=9), ["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(a, before)


def test_attention_mask_pads_do_not_change_real_positions(tiny_lm):
    ids = ids_BT(batch=1, seed=4)
    padded = torch.cat([ids, torch.full((1, 3), 2)], dim=1)
    mask = torch.cat([torch.ones(1, T), torch.zeros(1, 3)], dim=1).long()
    hook = "blocks.2.hook_resid_post"
    plain = tiny_lm.run_to_hooks(ids, [hook])[hook]
    masked = tiny_lm.run_to_hooks(padded, [hook], attention_mask=mask)[hook]
    torch.testing.assert_close(masked[:, :T], plain)


def test_logits_and_unembed(tiny_lm):
    ids = ids_BT()
    logits = tiny_lm.logits(ids)
    assert logits.shape == (2, T, 500)
    W_U_DV = tiny_lm.unembed_matrix()
    assert W_U_DV.shape == (64, 500)
    resid = tiny_lm.run_to_hooks(ids, ["blocks.4.hook_resid_pre"])["blocks.4.hook_resid_pre"]
    with torch.no_grad():
        torch.testing.assert_close(tiny_lm.final_norm(resid) @ W_U_DV, logits)


def test_identity_splice_changes_nothing(family_lm):
    ids = ids_BT()
    base = family_lm.logits(ids)
    for hook in ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"]:
        with family_lm.splice(hook, lambda x: x):
            torch.testing.assert_close(family_lm.logits(ids), base)


def _zeroing_hook(module: nn.Module, read: str):
    """Zero a module's input or output with plain PyTorch hooks (the test's own version)."""
    if read == "input":
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: (
                ((torch.zeros_like(args[0]), *args[1:]), kwargs)
                if args
                else (args, {**kwargs, "hidden_states": torch.zeros_like(kwargs["hidden_states"])})
            ),
            with_kwargs=True,
        )
    return module.register_forward_hook(
        lambda m, a, out: (
            (torch.zeros_like(out[0]), *out[1:])
            if isinstance(out, tuple)
            else torch.zeros_like(out)
        )
    )


@pytest.mark.parametrize(
    "hook, module, read",
    [
        ("blocks.2.hook_resid_pre", "model.layers.2", "input"),
        ("blocks.1.hook_mlp_out", "model.layers.1.mlp", "output"),
        ("blocks.0.hook_attn_out", "model.layers.0.self_attn", "output"),
    ],
)
def test_zero_splice_equals_manual_zeroing(tiny_lm, hook, module, read):
    ids = ids_BT()
    base = tiny_lm.logits(ids)
    handle = _zeroing_hook(tiny_lm.model.get_submodule(module), read)
    try:
        expected = tiny_lm.logits(ids)
    finally:
        handle.remove()
    with tiny_lm.splice(hook, torch.zeros_like):
        spliced = tiny_lm.logits(ids)
        inside = tiny_lm.run_to_hooks(ids, [hook])[hook]
    assert not torch.allclose(spliced, base)
    torch.testing.assert_close(spliced, expected)
    assert inside.abs().max() == 0  # run_to_hooks sees the spliced activation
    torch.testing.assert_close(tiny_lm.logits(ids), base)  # removed on exit


def test_mean_ablation_splice_replaces_every_position(tiny_lm):
    ids, hook = ids_BT(), "blocks.1.hook_resid_post"
    seen = []
    with tiny_lm.splice(
        hook, lambda x: seen.append(x.clone()) or x.mean(dim=1, keepdim=True).expand_as(x)
    ):
        tiny_lm.logits(ids)
        after = tiny_lm.run_to_hooks(ids, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
    torch.testing.assert_close(after, seen[0].mean(dim=1, keepdim=True).expand_as(after))


def test_splices_nest(tiny_lm):
    ids = ids_BT()
    with tiny_lm.splice("blocks.1.hook_mlp_out", torch.zeros_like):
        only_mlp = tiny_lm.logits(ids)
        with tiny_lm.splice("blocks.2.hook_resid_pre", lambda x: 2 * x):
            both = tiny_lm.run_to_hooks(ids, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
        torch.testing.assert_close(tiny_lm.logits(ids), only_mlp)  # inner one removed
    handle = _zeroing_hook(tiny_lm.model.get_submodule("model.layers.1.mlp"), "output")
    try:
        expected = (
            2 * tiny_lm.run_to_hooks(ids, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
        )
    finally:
        handle.remove()
    torch.testing.assert_close(both, expected)


def test_splice_with_wrong_shape_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match=r"must return shape \(2, 7, 64\)"):
        with tiny_lm.splice("blocks.1.hook_resid_post", lambda x: x[..., :3]):
            tiny_lm.logits(ids_BT())


def test_hook_names_and_errors(tiny_lm):
    names = tiny_lm.hook_names()
    assert names[:5] == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_mlp_out",
    ]
    assert len(names) == 4 * 5 + 1 and names[-1] == "blocks.4.hook_resid_pre"
    for bad, why in [
        ("blocks.4.hook_resid_post", "layer 4 out of range, the model has 4 layers"),
        ("blocks.9.hook_resid_pre", "layer 9 out of range"),
        ("blocks.1.hook_resid_prex", "no such hook"),
        ("model.layers.1.mlpx", "no such hook or module"),
        ("", "no such hook"),
    ]:
        with pytest.raises(ValueError) as err:
            tiny_lm.run_to_hooks(ids_BT(), [bad])
        msg = str(err.value)
        assert why in msg and repr(bad) in msg
        assert "blocks.{0..3}.hook_resid_pre" in msg and "blocks.{0..3}.hook_mlp_out" in msg
        assert "e.g. model.layers.0.mlp" in msg and "model.norm (the final norm's output)" in msg


def test_parallel_residual_has_no_resid_mid():
    lm = LanguageModel(tiny_family("pythia"), None, spec="pythia")
    assert "blocks.0.hook_resid_mid" not in lm.hook_names()
    with pytest.raises(ValueError, match="GPTNeoXForCausalLM has no hook_resid_mid"):
        resolve_hook(lm, "blocks.0.hook_resid_mid")


def test_model_attributes(family_lm, tiny_lm):
    assert family_lm.n_layers == 3 and family_lm.d_model == 32 and family_lm.backend == "hf"
    assert tiny_lm.bos_token_id == 1 and tiny_lm.special_token_ids == {0, 1, 2}
    assert tiny_lm.device == torch.device("cpu") and tiny_lm.dtype == torch.float32


def test_containers_and_non_activation_modules_are_refused_with_the_reason(tiny_lm):
    """`--hook model.layers` used to end in 'never reached', `model.rotary_emb` in a crash later."""
    with pytest.raises(ValueError, match="ModuleList is a container that never runs; hook one of"):
        tiny_lm.hook_dim("model.layers")
    with pytest.raises(ValueError, match=r"model.rotary_emb' gives \[1, 3, .*not a \[batch, position"):
        tiny_lm.hook_dim("model.rotary_emb")
