import os

import pytest
import torch

from saekit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from saekit.training.dead import FiringStats


def test_checkpoint_round_trip_keeps_nesting_types_and_bits(tmp_path):
    opt_state = {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 2)}}
    state = {
        "step": 7,
        "units": {"a": {"scale": 0.125, "optimizer": {"state": opt_state, "groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]}}},
        "rng": torch.get_rng_state(),
        "nothing": None,
        "bf16": torch.randn(3, dtype=torch.bfloat16),
    }
    save_checkpoint(tmp_path, 7, state)
    back = load_checkpoint(latest_checkpoint(tmp_path))
    assert back["step"] == 7 and back["nothing"] is None
    groups = back["units"]["a"]["optimizer"]["groups"]
    assert groups == [{"lr": 1e-3, "betas": (0.9, 0.99)}]
    restored = back["units"]["a"]["optimizer"]["state"]
    assert list(restored) == [0]  # int keys stay ints
    assert torch.equal(restored[0]["exp_avg"], opt_state[0]["exp_avg"])
    assert torch.equal(back["rng"], state["rng"])
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])


def test_checkpoint_writes_a_large_tensor_without_copying_it(tmp_path):
    """The shuffle buffer's store is most of a checkpoint: writing it must not hold a second
    copy (peak RSS of a fresh process), while views and shared memory still round-trip."""
    import subprocess
    import sys

    script = f"""
import torch
from saekit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
store = torch.randn(64 * 1024 * 1024)  # 256 MiB of float32
def kib(field):  # this process's own figures (ru_maxrss would include the parent's, via fork)
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024
before = kib("VmRSS")
save_checkpoint({str(tmp_path)!r}, 1, {{"store": store, "view": store[5:9], "again": store}})
grew = kib("VmHWM") - before
back = load_checkpoint(latest_checkpoint({str(tmp_path)!r}))
assert torch.equal(back["view"], store[5:9]) and torch.equal(back["store"], store)
assert torch.equal(back["again"], store)
print(grew)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    # "again" shares the store's memory, so it is the one copy made (256 MiB); the store
    # itself is written in place
    assert float(out.stdout) < 256 + 64, out.stdout


def test_latest_moves_atomically_and_old_checkpoints_are_pruned(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)})
    save_checkpoint(tmp_path, 2, {"x": torch.ones(1)})
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["x"].item() == 1.0


def test_half_written_checkpoint_is_never_latest(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(1)})
    # A crash while writing step 2 leaves only a temporary folder behind.
    os.makedirs(tmp_path / "checkpoints" / ".step_00000002.abc.tmp")
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_no_checkpoint_and_unsupported_values(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(TypeError, match="set"):
        save_checkpoint(tmp_path, 1, {"bad": {1, 2}})


def test_firing_stats_dead_mask_and_density():
    stats = FiringStats(d_sae=3, dead_after_tokens=4)
    # feature 0 fires on both tokens, feature 1 once, feature 2 never
    stats.update(torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0]]))
    assert stats.dead_mask().tolist() == [False, False, False]
    stats.update(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert stats.dead_mask().tolist() == [False, False, True]  # feature 2: 4 tokens silent
    assert stats.window_density().tolist() == [1.0, 0.25, 0.0]
    state = stats.state_dict()
    other = FiringStats(d_sae=3, dead_after_tokens=4)
    other.load_state_dict(state)
    assert other.dead_mask().tolist() == [False, False, True]
    stats.update(torch.tensor([[0.0, 0.0, 5.0]]))
    assert stats.dead_mask().tolist() == [False, False, False]


def test_resampling_revives_dead_features_from_high_loss_inputs():
    from saekit.saes import SAE
    from saekit.training.dead import resample_dead_features

    torch.manual_seed(0)
    sae = SAE.create("relu", d_in=6, d_sae=10)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, 6)
    sae(x).loss.backward()
    optimizer.step()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7]] = True
    with torch.no_grad():
        sae.b_enc[dead] = -100.0
    live_enc_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    before = sae.W_dec.detach().clone()
    n = resample_dead_features(sae, optimizer, dead, x, x, torch.Generator().manual_seed(0))
    assert n == 3
    assert torch.equal(sae.W_dec[~dead], before[~dead])  # live features untouched
    assert torch.allclose(sae.W_dec[dead].norm(dim=1), torch.ones(3))
    assert torch.allclose(sae.W_enc[:, dead].norm(dim=0), 0.2 * live_enc_norm.expand(3))
    assert (sae.b_enc[dead] == 0).all()
    for p, index in ((sae.W_dec, dead), (sae.b_enc, dead)):
        assert (optimizer.state[p]["exp_avg"][index] == 0).all()
        assert (optimizer.state[p]["exp_avg_sq"][index] == 0).all()
    # each new decoder row is the residual direction of one of the inputs
    with torch.no_grad():
        restored = SAE.create("relu", d_in=6, d_sae=10)
        restored.load_state_dict({**sae.state_dict(), "W_dec": before, "b_enc": sae.b_enc.clone()})
        restored.b_enc[dead] = -100.0
        residual = x - restored(x).sae_out
    directions = residual / residual.norm(dim=1, keepdim=True)
    for row in sae.W_dec[dead]:
        assert torch.isclose(directions @ row, torch.tensor(1.0), atol=1e-5).any()
