"""The provenance record: one definition of the data flags, written and read back everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from saekit.cli import build_parser
from saekit.data import TokenWindows, iter_documents, iter_token_batches
from saekit.data.provenance import (
    DataSettings,
    Provenance,
    settings_for_sae,
    token_batches,
)
from saekit.saes import SAE

DATA_FIELDS = [f.name for f in dataclasses.fields(DataSettings)]


def _subparser(name: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]


def _flags(name: str) -> dict[str, tuple[tuple[str, ...], object]]:
    """dest -> (option strings, default) of a sub-command's data flags."""
    return {
        a.dest: (tuple(a.option_strings), a.default)
        for a in _subparser(name)._actions
        if a.dest in DATA_FIELDS
    }


def test_every_command_that_reads_activations_takes_the_same_data_flags():
    reference = _flags("train")
    assert set(reference) == set(DATA_FIELDS)
    assert reference["hooks"][0] == ("--hook",) and reference["context"][0] == ("--context",)
    assert reference["forward_rows"][0] == ("--forward-rows",)
    assert reference["prepend_bos"][0] == ("--prepend-bos", "--no-prepend-bos")
    assert reference["exclude_special_tokens"][0] == (
        "--exclude-special-tokens", "--no-exclude-special-tokens",
    )  # fmt: skip
    for command in ("cache", "eval", "dashboard"):
        assert _flags(command) == reference, command
    lens = _flags("logit-lens")  # reads weights only: the model flags, named alike
    assert set(lens) == {"model", "dtype", "device"}
    assert all(lens[k] == reference[k] for k in lens)


def test_defaults_are_one_set():
    """No flag given: every command ends with DataSettings() (the same model, hook rule, ...)."""
    from saekit.training.cli import config_from_args

    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert DataSettings(**{k: getattr(cfg, k) for k in DATA_FIELDS}) == DataSettings()
    assert DataSettings().device == "auto" and DataSettings().hooks == ()


def test_sae_metadata_round_trip(tmp_path):
    prov = Provenance(
        model="m", dataset="d.jsonl", text_column="body", context=64, prepend_bos=False,
        exclude_special_tokens=False, holdout_every=7, dtype="bfloat16",
    )  # fmt: skip
    sae = SAE.create("topk", d_in=8, d_sae=16, k=2)
    prov.write_metadata(sae.cfg.metadata, "blocks.1.hook_resid_pre")
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["dataset_path"] == "d.jsonl" and cfg["metadata"]["context_size"] == 64
    read, known = Provenance.from_sae(SAE.load(tmp_path / "sae"))
    assert read == prov.replace(hooks=("blocks.1.hook_resid_pre",))
    assert known == set(Provenance().to_dict())


def test_a_folder_without_the_convention_says_so(tmp_path):
    """SAELens folders record no exclude_special_tokens: the default applies, marked as such."""
    sae = SAE.create("relu", d_in=8, d_sae=16, metadata={"model_name": "m", "hook_name": "h"})
    sae.save(tmp_path / "sae")
    assert "exclude_special_tokens" not in json.loads((tmp_path / "sae" / "cfg.json").read_text())[
        "metadata"
    ]
    prov, known = Provenance.from_sae(SAE.load(tmp_path / "sae"))
    assert "exclude_special_tokens" not in known and prov.exclude_special_tokens is True
    args = build_parser().parse_args(["eval", "x", "--context", "16"])
    data, sources = settings_for_sae(sae, args)
    assert data.context == 16 and sources["context"] == "flag"
    assert sources["model"] == "SAE folder" and sources["exclude_special_tokens"] == "default"


def test_token_batches_match_windows_built_by_hand(tiny_lm, tmp_path):
    texts = [f"document number {i} says something about item {i * 7}." for i in range(40)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    prov = Provenance(dataset=str(path), text_column="body", context=8, holdout_every=4)
    for part, held in (("train", False), ("heldout", True)):
        docs = [t for i, t in enumerate(texts) if (i % 4 == 3) == held]
        expected = list(iter_token_batches(TokenWindows(docs, tiny_lm.tokenizer, 8), 3))
        got = list(token_batches(prov, tiny_lm.tokenizer, 3, part))
        assert len(got) == len(expected) > 0
        for (ids, keep), (ids_e, keep_e) in zip(got, expected, strict=True):
            assert torch.equal(ids, ids_e) and torch.equal(keep, keep_e)
    got_all = torch.cat([ids for ids, _ in token_batches(prov, tiny_lm.tokenizer, 3, "all")])
    all_docs = list(iter_documents(str(path), text_column="body"))
    assert len(all_docs) == 40
    assert got_all.shape[0] > sum(len(b[0]) for b in token_batches(prov, tiny_lm.tokenizer, 3, "train"))
    with pytest.raises(ValueError, match="part='test' is not one of train, heldout, all"):
        token_batches(prov, tiny_lm.tokenizer, 3, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no held-back documents"):
        token_batches(prov.replace(holdout_every=0), tiny_lm.tokenizer, 3, "heldout")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dtype": "int8"}, "dtype='int8' is not one of"),
        ({"context": 1}, "context must be at least 2"),
        ({"holdout_every": 1}, "holdout_every must be 0 or at least 2"),
    ],
)
def test_bad_values_name_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        Provenance(**change)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="unknown provenance field.*ctx"):
        Provenance.from_dict({"ctx": 3})


def test_a_run_that_repeats_its_data_many_times_is_warned(tiny_lm, tmp_path):
    """A one-document file trained on the same few tokens thousands of times without a word."""
    import itertools
    import warnings

    from saekit.data.provenance import activation_source

    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "a short document with a few tokens. " * 8}) + "\n")
    prov = Provenance(dataset=str(path), context=16, holdout_every=0, hooks=("blocks.0.hook_resid_pre",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = activation_source(prov, tiny_lm, 2, repeat=True, expected_tokens=100_000)
        chunks = list(itertools.islice(source, 40))
    assert sum(len(c["blocks.0.hook_resid_pre"]) for c in chunks) > 0
    messages = [str(w.message) for w in caught if "repeat" in str(w.message)]
    assert len(messages) == 1 and "100,000 tokens repeat it about" in messages[0]
    with warnings.catch_warnings(record=True) as caught:  # a few epochs: no warning
        warnings.simplefilter("always")
        list(itertools.islice(activation_source(prov, tiny_lm, 2, repeat=True, expected_tokens=200), 40))
    assert not [w for w in caught if "repeat" in str(w.message)]
