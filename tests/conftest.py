"""Shared fixtures: a tiny random Llama saved offline, and the real default model; and
`import_peer`, how tests reach the libraries saekit is checked against."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

IN_CI = os.environ.get("SAEKIT_CI", "") not in ("", "0")
"""Set by `.ci/run` (SAEKIT_CI=1): a missing peer library fails its tests, never skips them."""


def missing_peer(what: str, how: str) -> None:
    """Skip the calling test (module, when called at import) because `what` is missing;
    under SAEKIT_CI fail it instead: CI installs every peer, so a skip there would hide a
    broken set-up and report comparisons that never ran."""
    if IN_CI:
        pytest.fail(f"SAEKIT_CI is set but {what} ({how})", pytrace=False)
    pytest.skip(f"{what} ({how})", allow_module_level=True)


def import_peer(name: str, how: str = "pip install 'saekit[tl]'") -> ModuleType:
    """`pytest.importorskip(name)`, except that under SAEKIT_CI a failed import fails."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing_peer(f"{name} does not import: {err}", how)
        raise  # not reached: missing_peer skips or fails


SMALL_RUN = dict(
    hooks=("blocks.2.hook_resid_pre",),
    context=32,
    batch_tokens=512,
    buffer_tokens=2048,
    forward_rows=8,
    init_tokens=1024,
    expansion_factor=4,
    log_every=2,
    progress=False,
    threads=1,
)
"""Training settings for runs on the tiny model: a few seconds each, one thread."""


def small_train_config(model_dir: Path, out: Path, **changes):
    """A `TrainConfig` of SMALL_RUN on the model in `model_dir`, with `changes` applied."""
    from saekit.training.config import TrainConfig

    return TrainConfig(model=str(model_dir), out=str(out), **{**SMALL_RUN, **changes})


def _training_text() -> list[str]:
    """A few KB of real English text that every Python install carries."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)[:40]]


def make_tiny_tokenizer(vocab_size: int = 500):
    """Train a small byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<s>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


def make_tiny_llama(vocab_size: int, seed: int = 0):
    """A 4-layer random Llama (hidden 64, 4 heads, 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Folder with a tiny random Llama + a small real BPE tokenizer (offline, < 2 s)."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """`saekit.models.load_model` on the tiny random Llama (cpu, float32)."""
    from saekit.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def default_lm():
    """The real embedded default model (smollm2-135m); use only in `integration` tests."""
    from saekit.models import load_model

    return load_model("smollm2-135m")
