"""saekit.dtypes: the dtype names and the run summary's note on the model dtype."""

from __future__ import annotations


def test_the_dtype_note_names_the_faster_choice_only_where_it_is_native(monkeypatch):
    from saekit.dtypes import model_dtype_note
    from saekit.saes import sparse

    monkeypatch.setattr(sparse, "native_bf16", lambda device: True)
    assert "--dtype bfloat16" in model_dtype_note("float32", "cpu")
    assert model_dtype_note("bfloat16", "cpu") == "model dtype: bfloat16"
    monkeypatch.setattr(sparse, "native_bf16", lambda device: False)
    assert model_dtype_note("float32", "cpu") == "model dtype: float32"
