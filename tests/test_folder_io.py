"""SAE folders: save -> load round trips bit-for-bit, and every bad file gets a clear error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.saes import SAE
from saekit.saes.folder import load_sae_folder, load_sparsity, save_sae_folder

ARCHS = {
    "relu": {},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka": {"k": 3, "prefixes": [2, 5]},
    "jumprelu": {"sparsity_mode": "tanh"},
    "gated": {},
}
SAELENS_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "jumprelu": "jumprelu",
    "gated": "gated",
}


def make(arch: str, **kw) -> SAE:
    torch.manual_seed(0)
    sae = SAE.create(arch, d_in=6, d_sae=10, **{**ARCHS.get(arch, {}), **kw})
    with torch.no_grad():  # non-trivial biases so the round trip checks them
        for p in sae.parameters():
            if p.dim() == 1:
                p.uniform_(0.01, 0.5)
    return sae


def assert_same(a: SAE, b: SAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.cfg.settings() == b.cfg.settings()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_round_trip_bit_for_bit(tmp_path, arch):
    sae = make(arch)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_pre"
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_ARCH[arch]
    loaded = SAE.load(tmp_path)
    assert type(loaded) is type(sae) and not loaded.training
    assert_same(sae, loaded)
    assert loaded.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    x = torch.randn(5, 6)
    sae.eval()
    torch.testing.assert_close(loaded(x).sae_out, sae(x).sae_out, rtol=0, atol=0)
    # saving the loaded SAE again writes identical files
    loaded.save(tmp_path / "again")
    assert json.loads((tmp_path / "cfg.json").read_text()) == json.loads(
        (tmp_path / "again" / "cfg.json").read_text()
    )
    assert (tmp_path / "sae_weights.safetensors").read_bytes() == (
        tmp_path / "again" / "sae_weights.safetensors"
    ).read_bytes()


def test_round_trip_float64_and_transcoder(tmp_path):
    sae = make("relu", d_out=4, dtype="float64")
    assert sae.W_dec.shape == (10, 4) and not sae.cfg.apply_b_dec_to_input
    save_sae_folder(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "transcoder" and cfg["d_out"] == 4
    assert_same(sae, load_sae_folder(tmp_path))


def test_file_layout_uses_saelens_names(tmp_path):
    make("relu").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["saekit_architecture"] == "relu"
    for key in ["d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                "normalize_activations", "reshape_activations"]:  # fmt: skip
        assert key in cfg
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (6, 10), "b_enc": (10,), "W_dec": (10, 6), "b_dec": (6,),
    }  # fmt: skip
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_sparsity_file(tmp_path):
    sae = make("topk")
    sparsity = torch.linspace(-5, 0, 10)
    save_sae_folder(sae, tmp_path, sparsity=sparsity)
    assert torch.equal(load_sparsity(tmp_path), sparsity)
    assert load_sparsity(tmp_path / "nowhere") is None
    with pytest.raises(ValueError, match="sparsity must have shape"):
        save_sae_folder(sae, tmp_path, sparsity=torch.zeros(3))


def test_metadata_extra_keys_are_kept(tmp_path):
    make("relu").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["metadata"]["training_tokens"] = 123
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae_folder(tmp_path)
    assert sae.cfg.metadata.extra == {"training_tokens": 123}
    sae.save(tmp_path / "b")
    assert (
        json.loads((tmp_path / "b" / "cfg.json").read_text())["metadata"]["training_tokens"] == 123
    )


def test_expected_average_only_in_is_folded(tmp_path):
    sae = make("relu")
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="scaling factor"):
        load_sae_folder(tmp_path)
    (tmp_path / "activation_scaler.json").write_text('{"scaling_factor": 4.0}')
    loaded = load_sae_folder(tmp_path)
    assert loaded.cfg.normalize_activations == "none"
    x = torch.randn(3, 6)
    torch.testing.assert_close(loaded.encode(x), sae.encode(4.0 * x))
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae(4.0 * x).sae_out / 4.0)


# ---- bad files -----------------------------------------------------------------------


def edit_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"architecture": "mystery", "saekit_architecture": None},
            "unknown architecture .mystery.",
        ),
        (
            {"architecture": "temporal", "saekit_architecture": None},
            "unknown architecture 'temporal'",
        ),
        ({"saekit_architecture": "topk"}, "does not match"),
        ({"architecture": "mystery"}, "does not match"),
        ({"architecture": None}, "no 'architecture'"),
        ({"l1_coefficent": 0.1}, r"unknown keys \['l1_coefficent'\]"),
        ({"k": 3}, "'k' does not apply to architecture 'relu'"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"normalize_activations": "constant_norm_rescale"}, "constant_norm_rescale"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"d_sae": -1}, "d_sae must be a positive integer"),
        ({"decoder_norm": "l2"}, "decoder_norm='l2'"),
        ({"rescale_acts_by_decoder_norm": True}, "only supported for topk"),
        ({"metadata": [1]}, "'metadata' must be an object"),
    ],
)
def test_bad_config(tmp_path, changes, message):
    make("relu").save(tmp_path)
    edit_cfg(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        load_sae_folder(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(ValueError, match="cfg.json is missing"):
        load_sae_folder(tmp_path)
    make("relu").save(tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(ValueError, match="no sae_weights.safetensors"):
        load_sae_folder(tmp_path)


def test_not_json(tmp_path):
    make("relu").save(tmp_path)
    (tmp_path / "cfg.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sae_folder(tmp_path)


def test_bad_tensors(tmp_path):
    make("relu").save(tmp_path)
    path = tmp_path / "sae_weights.safetensors"
    tensors = load_file(path)

    save_file({k: v for k, v in tensors.items() if k != "b_enc"}, path)
    with pytest.raises(ValueError, match=r"missing \['b_enc'\]"):
        load_sae_folder(tmp_path)

    save_file({**tensors, "threshold": torch.zeros(10)}, path)
    with pytest.raises(ValueError, match=r"unexpected \['threshold'\]"):
        load_sae_folder(tmp_path)

    save_file({**tensors, "W_dec": torch.zeros(10, 5)}, path)
    with pytest.raises(ValueError, match=r"'W_dec' has shape \(10, 5\), expected \(10, 6\)"):
        load_sae_folder(tmp_path)

    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_sae_folder(tmp_path)


def test_broken_weights_and_configs_are_one_line_errors(tmp_path):
    """int32 weights were cast silently; a list cfg.json crashed `saekit info`."""
    import json as _json

    from safetensors.torch import load_file as _load
    from safetensors.torch import save_file as _save

    make("relu").save(tmp_path / "int")
    w = _load(str(tmp_path / "int" / "sae_weights.safetensors"))
    _save({k: (v * 100).to(torch.int32) for k, v in w.items()}, str(tmp_path / "int" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="tensor 'W_enc' is torch.int32, not floating point"):
        SAE.load(tmp_path / "int")
    make("relu").save(tmp_path / "inf")
    w = _load(str(tmp_path / "inf" / "sae_weights.safetensors"))
    w["W_dec"][1, 2] = float("inf")
    _save(w, str(tmp_path / "inf" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="'W_dec' holds 1 NaN/inf"):
        SAE.load(tmp_path / "inf")
    assert SAE.load(tmp_path / "inf", check_weights=False).W_dec[1, 2] == float("inf")
    make("relu").save(tmp_path / "list")
    (tmp_path / "list" / "cfg.json").write_text("[1, 2]")
    from saekit import load_sae

    with pytest.raises(ValueError, match="must hold a JSON object"):
        load_sae(tmp_path / "list")
    make("relu").save(tmp_path / "nokey")
    cfg = _json.loads((tmp_path / "nokey" / "cfg.json").read_text())
    del cfg["d_in"]
    (tmp_path / "nokey" / "cfg.json").write_text(_json.dumps(cfg))
    with pytest.raises(ValueError, match="lacks required key.*d_in"):
        load_sae(tmp_path / "nokey")


def test_a_folder_saved_on_a_gpu_that_is_not_here(tmp_path):
    """cfg.json naming cuda:7 used to end in a CUDA traceback."""
    import json as _json

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make("relu").save(tmp_path / "gpu")
    cfg = _json.loads((tmp_path / "gpu" / "cfg.json").read_text())
    cfg["device"] = "cuda:7"
    (tmp_path / "gpu" / "cfg.json").write_text(_json.dumps(cfg))
    with pytest.raises(ValueError, match="names device 'cuda:7', which is not here"):
        SAE.load(tmp_path / "gpu")
    assert SAE.load(tmp_path / "gpu", device="cpu").W_enc.device.type == "cpu"
