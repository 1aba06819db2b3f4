"""Disk cache: contents, restart after a crash or SIGKILL, corruption, reading it back."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from saekit.cli import build_parser
from saekit.data import (
    ActivationSource,
    CachedActivations,
    CacheError,
    ShuffleBuffer,
    TokenWindows,
    build_cache,
    iter_documents,
    read_manifest,
)
from saekit.data.provenance import Provenance

HOOKS = ["blocks.1.hook_resid_pre", "blocks.2.hook_mlp_out"]
SETTINGS = dict(shard_tokens=300, rows_per_forward=4, progress=False)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """A jsonl file of 300 short real documents (so the holdout matters within a few shards)."""
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    texts = itertools.islice(iter_documents("builtin:python-docs"), 300)
    path.write_text("".join(json.dumps({"text": t[:400]}) + "\n" for t in texts))
    return str(path)


def _cache(lm, out, docs, tokens=1500, name="tiny", **kw):
    prov = Provenance(model=name, hooks=tuple(HOOKS), dataset=docs, context=32, holdout_every=3)
    return build_cache(lm, prov, tokens, out, **{**SETTINGS, **kw})


def _all_rows(folder):
    """Every shard's rows in manifest order, per hook."""
    shards = [load_file(folder / s["file"]) for s in read_manifest(folder)["shards"]]
    return {h: torch.cat([s[h] for s in shards]) for h in HOOKS}


@pytest.fixture(scope="module")
def fresh(tiny_lm, docs, tmp_path_factory):
    """An uninterrupted cache of the tiny model."""
    out = tmp_path_factory.mktemp("fresh")
    _cache(tiny_lm, out, docs)
    return out


def test_cache_holds_the_live_stream_in_shards(docs, tiny_lm, fresh):
    manifest = read_manifest(fresh)
    assert manifest["complete"] and manifest["provenance"]["model"] == "tiny"
    assert manifest["hooks"] == HOOKS and Provenance.from_manifest(manifest).context == 32
    assert manifest["dims"] == {h: 64 for h in HOOKS} and manifest["dtype"] == "float32"
    assert [s["tokens"] for s in manifest["shards"]] == [300] * 5 and manifest["tokens"] == 1500
    held_out = iter_documents(docs, holdout_every=3)  # documents 2, 5, 8, ... are not cached
    windows = TokenWindows(held_out, tiny_lm.tokenizer, 32)
    live = ActivationSource(tiny_lm, HOOKS, windows, 4)
    chunks = []
    while sum(len(c[HOOKS[0]]) for c in chunks) < manifest["tokens"]:
        chunks.append(next(live))
    rows = _all_rows(fresh)
    for h in HOOKS:
        torch.testing.assert_close(rows[h], torch.cat([c[h] for c in chunks])[:1500])
    assert sorted(os.listdir(fresh)) == sorted(
        ["manifest.json"] + [s["file"] for s in manifest["shards"]]
    )


def test_half_precision_is_stored_and_read_back_as_float32(docs, tiny_lm, fresh, tmp_path):
    _cache(tiny_lm, tmp_path, docs, tokens=400, store_dtype="bfloat16")
    assert load_file(tmp_path / "shard_00000.safetensors")[HOOKS[0]].dtype == torch.bfloat16
    chunk = next(CachedActivations(tmp_path, shuffle_shards=False))
    assert chunk[HOOKS[0]].dtype == torch.float32
    want = _all_rows(fresh)[HOOKS[0]][: len(chunk[HOOKS[0]])]
    torch.testing.assert_close(chunk[HOOKS[0]], want.bfloat16().float())


class CrashingLM:
    """The tiny model, but the forward after `n` successful ones raises."""

    def __init__(self, lm, n):
        self.lm, self.n = lm, n
        self.tokenizer, self.device, self.hook_dim = lm.tokenizer, lm.device, lm.hook_dim

    def run_to_hooks(self, ids_BT, hooks):
        if self.n == 0:
            raise RuntimeError("simulated crash")
        self.n -= 1
        return self.lm.run_to_hooks(ids_BT, hooks)


def test_rerun_after_a_crash_continues_without_redoing_or_duplicating(
    docs, tiny_lm, fresh, tmp_path
):
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cache(CrashingLM(tiny_lm, 5), tmp_path, docs)
    before = read_manifest(tmp_path)
    assert not before["complete"] and 1 <= len(before["shards"]) < 4
    (tmp_path / ".shard_00099.safetensors.k3x9a1.tmp").write_bytes(b"half written")
    # the shards already written are kept as they are, not redone
    mtimes = {s["file"]: (tmp_path / s["file"]).stat().st_mtime_ns for s in before["shards"]}
    _cache(tiny_lm, tmp_path, docs)
    after = read_manifest(tmp_path)
    assert after["shards"][: len(before["shards"])] == before["shards"]
    assert all((tmp_path / f).stat().st_mtime_ns == t for f, t in mtimes.items())
    assert after["shards"] == read_manifest(fresh)["shards"]  # same sizes and sha256
    assert not (tmp_path / ".shard_00099.safetensors.k3x9a1.tmp").exists()
    got, want = _all_rows(tmp_path), _all_rows(fresh)
    for h in HOOKS:
        assert torch.equal(got[h], want[h])


def test_rerun_with_another_forward_size_still_caches_every_token_once(
    docs, tiny_lm, fresh, tmp_path
):
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cache(CrashingLM(tiny_lm, 7), tmp_path, docs)
    position = read_manifest(tmp_path)["position"]
    assert position["skip_rows"] > 31  # the restart skips more than one 1-window forward
    _cache(tiny_lm, tmp_path, docs, rows_per_forward=1)
    got, want = _all_rows(tmp_path), _all_rows(fresh)
    for h in HOOKS:
        torch.testing.assert_close(got[h], want[h])


def test_rerun_of_a_complete_cache_does_nothing_and_more_tokens_extend_it(docs, tiny_lm, tmp_path):
    first = _cache(tiny_lm, tmp_path, docs, tokens=500)
    assert [s["tokens"] for s in first["shards"]] == [300, 200]
    assert _cache(tiny_lm, tmp_path, docs, tokens=500)["shards"] == first["shards"]
    longer = _cache(tiny_lm, tmp_path, docs, tokens=1500)
    assert longer["shards"][:2] == first["shards"]
    assert [s["tokens"] for s in longer["shards"]] == [300, 200, 300, 300, 300, 100]
    assert longer["tokens"] == 1500


def test_other_settings_or_foreign_folder_are_refused(docs, tiny_lm, tmp_path):
    _cache(tiny_lm, tmp_path / "c", docs, tokens=300)
    with pytest.raises(CacheError, match=r"other settings \(dtype"):
        _cache(tiny_lm, tmp_path / "c", docs, tokens=300, store_dtype="float16")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        _cache(tiny_lm, tmp_path / "other", docs, tokens=300)
    with pytest.raises(ValueError, match="unknown dtype"):
        _cache(tiny_lm, tmp_path / "d", docs, tokens=300, store_dtype="int8")


def _copy(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_corrupted_or_truncated_shards_are_rejected(docs, tiny_lm, fresh, tmp_path):
    flipped = _copy(fresh, tmp_path / "flipped")
    shard = flipped / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    source = CachedActivations(flipped, shuffle_shards=False)
    next(source)
    with pytest.raises(CacheError, match="shard_00001.*corrupted"):
        next(source)

    cut = _copy(fresh, tmp_path / "cut")
    shard = cut / "shard_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match="shard_00002.*truncated"):
        CachedActivations(cut)
    with pytest.raises(CacheError, match="truncated"):
        _cache(tiny_lm, cut, docs, tokens=3000)


def test_incomplete_cache_needs_allow_incomplete(docs, tiny_lm, tmp_path):
    with pytest.raises(RuntimeError):
        _cache(CrashingLM(tiny_lm, 5), tmp_path, docs)
    with pytest.raises(CacheError, match="incomplete"):
        CachedActivations(tmp_path)
    assert next(CachedActivations(tmp_path, allow_incomplete=True))[HOOKS[0]].shape[1] == 64
    with pytest.raises(CacheError, match="no manifest.json"):
        CachedActivations(tmp_path / "nowhere")


def test_cached_source_permutes_shards_per_epoch_and_resumes(fresh):
    n = len(read_manifest(fresh)["shards"])
    source = CachedActivations(fresh, seed=1, epochs=2)
    orders = [source.shard_order(0), source.shard_order(1)]
    assert all(sorted(o) == list(range(n)) for o in orders) and orders[0] != list(range(n))
    chunks = list(source)
    assert len(chunks) == 2 * n
    for chunk, idx in zip(chunks, orders[0] + orders[1], strict=True):
        want = load_file(fresh / f"shard_{idx:05d}.safetensors")
        assert all(torch.equal(chunk[h], want[h]) for h in HOOKS)

    def buffer():
        return ShuffleBuffer(CachedActivations(fresh, seed=1, hooks=HOOKS[:1]), 1000, 100, seed=5)

    full = list(buffer())
    first = buffer()
    head = [next(first) for _ in range(4)]
    resumed = buffer()
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert list(rest[0]) == HOOKS[:1]
    for got, want in zip(head + rest, full, strict=True):
        assert torch.equal(got[HOOKS[0]], want[HOOKS[0]])
    with pytest.raises(CacheError, match="not in the cache"):
        CachedActivations(fresh, hooks=["blocks.0.hook_resid_post"])


def test_cli_defaults():
    from saekit import settings
    from saekit.data.provenance import DataSettings

    args = build_parser().parse_args(["cache", "--tokens", "10", "--out", "x"])
    assert settings.given(args, DataSettings) == {}  # every data setting takes its default
    assert args.func.__name__ == "run_cache" and args.store_dtype is None


@pytest.mark.slow
def test_sigkill_midway_then_rerun_caches_every_token_once(docs, tiny_model_dir, tiny_lm, tmp_path):
    out = tmp_path / "killed"
    args = f"--model {tiny_model_dir} --hook {HOOKS[0]} --hook {HOOKS[1]} --dataset {docs} "
    args += f"--holdout-every 3 --tokens 6000 --out {out} --context 32 --shard-tokens 300 --forward-rows 4"
    cmd = [sys.executable, "-m", "saekit", "cache", *args.split(), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_manifest(out)
    assert proc.returncode == -signal.SIGKILL and not killed["complete"]

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["shards"][: len(killed["shards"])] == killed["shards"]

    reference = _cache(tiny_lm, tmp_path / "ref", docs, 6000, name=str(tiny_model_dir))
    skip = {"model", "shards"}
    assert {k: v for k, v in manifest.items() if k not in skip} == {
        k: v for k, v in reference.items() if k not in skip
    }  # same settings, token count and data position
    assert [s["tokens"] for s in manifest["shards"]] == [s["tokens"] for s in reference["shards"]]
    got, want = _all_rows(out), _all_rows(tmp_path / "ref")
    for h in HOOKS:
        torch.testing.assert_close(got[h], want[h])
