"""Property tests: whatever settings, flags, cfg.json or bytes come in, saekit either works or
says what is wrong in one line (a ValueError family error), never a stray traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legacy_files import write_legacy_pt
from saekit import load_sae
from saekit.cli import build_parser
from saekit.saes import SAE
from saekit.training.cli import config_from_args
from saekit.training.config import TrainConfig

FIELDS = sorted(TrainConfig().to_dict())
ONE_LINE = (ValueError, FileNotFoundError)  # what the CLI prints as `saekit X: error: ...`
FUZZ = settings(max_examples=int(__import__("os").environ.get("SAEKIT_FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**9), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["1M", "400k", "1.5m", "-3k", "fast", "topk", "relu"]),
)  # fmt: skip
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))


def _one_line(err: BaseException) -> None:
    assert isinstance(err, ONE_LINE), f"{type(err).__name__}: {err}"
    assert str(err) and "\n" not in str(err).strip(), str(err)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS + ["nonsense"]), values, max_size=4))
def test_any_config_dict_builds_or_fails_in_one_line(data):
    try:
        TrainConfig.from_dict(data)
    except Exception as err:  # noqa: BLE001 - the property is about every exception
        _one_line(err)


flag_values = st.one_of(
    st.sampled_from(["0", "-1", "1k", "2.5M", "1e3", "nan", "inf", "x", "", "topk,relu", "a=b"]),
    st.integers(-5, 10**7).map(str),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELDS), flag_values), max_size=3))
def test_any_train_flags_parse_or_fail_in_one_line(pairs):
    renames = {"hooks": "hook", "archs": "arch", "d_saes": "d_sae", "ks": "k", "l1s": "l1",
               "sae_settings": "sae_setting"}  # fmt: skip
    argv = ["train"]
    for name, value in pairs:
        flag = "--" + renames.get(name, name).replace("_", "-")
        if isinstance(TrainConfig.__dataclass_fields__[name].default, bool):
            argv.append(flag if value.startswith("1") else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse's own one-line usage error
        assert exit_.code == 2
        return
    try:
        config_from_args(args)
    except Exception as err:  # noqa: BLE001
        _one_line(err)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "sae"
    SAE.create("topk", d_in=8, d_sae=16, k=2, metadata={"hook_name": "h"}).save(folder)
    return folder


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@FUZZ
@given(changes=st.dictionaries(
    st.sampled_from(["architecture", "d_in", "d_sae", "k", "dtype", "metadata", "apply_b_dec_to_input",
                     "normalize_activations", "aux_k", "prefixes", "junk"]),
    json_values, min_size=1, max_size=3,
))  # fmt: skip
def test_any_cfg_json_loads_or_fails_in_one_line(good_folder, tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("cfg") / "sae"
    shutil.copytree(good_folder, folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    try:
        load_sae(folder)
    except Exception as err:  # noqa: BLE001
        _one_line(err)


def _corrupt(data: bytes, positions: list[int], byte: int, cut: int | None) -> bytes:
    buf = bytearray(data)
    for p in positions:
        buf[p % len(buf)] = byte
    return bytes(buf[:cut] if cut is not None else buf)


corruptions = dict(
    positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
    byte=st.integers(0, 255),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)


@FUZZ
@given(**corruptions)
def test_corrupted_weights_load_or_fail_in_one_line(good_folder, tmp_path_factory, positions, byte, cut):
    folder = tmp_path_factory.mktemp("bytes") / "sae"
    shutil.copytree(good_folder, folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(_corrupt(weights.read_bytes(), positions, byte, cut))
    try:
        sae = load_sae(folder)
    except Exception as err:  # noqa: BLE001
        _one_line(err)
    else:  # a flip inside the numbers may load; the numbers are then finite floats
        assert all(t.is_floating_point() and t.isfinite().all() for t in sae.state_dict().values())


@pytest.fixture(scope="module")
def legacy_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt") / "final_sparse_autoencoder_gpt2-small_blocks.8.hook_resid_pre_32.pt"
    write_legacy_pt(path, d_in=8, expansion_factor=4)
    return path


@FUZZ
@given(**corruptions)
def test_corrupted_pt_files_load_or_fail_in_one_line(legacy_pt, tmp_path_factory, positions, byte, cut):
    path = tmp_path_factory.mktemp("ptb") / legacy_pt.name
    path.write_bytes(_corrupt(legacy_pt.read_bytes(), positions, byte, cut))
    try:
        load_sae(path)
    except Exception as err:  # noqa: BLE001
        _one_line(err)


def test_a_pt_zip_whose_entries_leave_the_archive_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(2)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../../outside.txt", "x")
    with pytest.raises(ValueError, match=r"entry '../../outside.txt' points outside the archive"):
        load_sae(path)
