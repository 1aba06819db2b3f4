"""A full disk mid-run: one line naming the place, no temporary files left, resumable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs mount rights: root in a container that allows it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:120]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cache(model_dir, out, tokens=3000):
    cmd = [sys.executable, "-m", "saekit", "cache", "--model", str(model_dir), "--hook",
           "blocks.1.hook_resid_pre,blocks.2.hook_resid_pre", "--context", "32", "--tokens",
           str(tokens), "--shard-tokens", "300", "--forward-rows", "4", "--out", str(out),
           "--no-progress"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cache_on_a_full_disk_fails_in_one_line_then_resumes(small_disk, tiny_model_dir, tmp_path):
    # 3000 tokens x 2 hooks x 64 floats x 4 bytes = 1.5 MiB; leave less than that free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 2**20 - 600 * 2**10))
    done = _cache(tiny_model_dir, small_disk / "acts")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("saekit cache: error: no space left on the device of") and "MiB" in last
    assert "Traceback" not in done.stderr
    leftovers = [p.name for p in (small_disk / "acts").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    filler.unlink()  # space freed: the same command continues where it stopped
    done = _cache(tiny_model_dir, small_disk / "acts")
    assert done.returncode == 0, done.stderr
    reference = _cache(tiny_model_dir, tmp_path / "ref")
    assert reference.returncode == 0
    import json

    got = json.loads((small_disk / "acts" / "manifest.json").read_text())
    want = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in want["shards"]]


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(small_disk):
    import torch

    from saekit.fileio import DiskFullError
    from saekit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    save_checkpoint(small_disk, 1, {"w": torch.ones(1000)})
    with pytest.raises(DiskFullError, match=r"to write step_00000002 \(about 3.8 MiB needed\)"):
        save_checkpoint(small_disk, 2, {"w": torch.ones(1_000_000)})
    assert latest_checkpoint(small_disk).name == "step_00000001"
    assert torch.equal(load_checkpoint(latest_checkpoint(small_disk))["w"], torch.ones(1000))
    assert not [p for p in (small_disk / "checkpoints").iterdir() if p.name.endswith(".tmp")]
