import json

import pytest

from saekit.cli import build_parser
from saekit.settings import parse_count
from saekit.training.cli import config_from_args
from saekit.training.config import TrainConfig


def parse(argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_no_flags_gives_the_embedded_default():
    cfg = parse([])
    assert cfg == TrainConfig()
    assert (cfg.model, cfg.dataset, cfg.archs, cfg.ks) == (
        "smollm2-135m", "builtin:python-docs", ("topk",), (),
    )  # no k given: each TopK-family SAE takes its default k (32)


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\nbatch-tokens: 2048\nhooks: [blocks.3.hook_resid_pre]\n")
    cfg = parse(["--config", str(path), "--lr", "0.002", "--tokens", "100k", "--k", "16,64"])
    assert cfg.lr == 0.002 and cfg.batch_tokens == 2048 and cfg.tokens == 100_000
    assert cfg.hooks == ("blocks.3.hook_resid_pre",) and cfg.ks == (16, 64)


def test_json_config_and_sae_settings(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"archs": ["relu"], "l1s": [2.0], "sae_settings": {"decoder_norm": "weighted"}}))
    cfg = parse(["--config", str(path), "--sae-setting", "decoder_norm=unit"])
    assert cfg.archs == ("relu",) and cfg.l1s == (2.0,)
    assert cfg.sae_settings == (("decoder_norm", "unit"),)  # the flag replaces the file's value


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        parse(["--config", str(path)])


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--learning-rate", "1"])
    assert "--learning-rate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr-schedule", "step"], "lr_schedule='step' is not one of"),
        (["--d-sae", "100", "--expansion-factor", "4"], "either d_saes or expansion_factor"),
        (["--l1", "5"], "l1s is only used by"),
        (["--arch", "relu", "--k", "8"], "ks is only used by"),
        (["--arch", "relu", "--k", "32"], "ks is only used by"),  # was silently ignored
        (["--log-every", "0"], "log_every must be positive"),  # was a ZeroDivisionError
        (["--eval-tokens", "-5"], "eval_tokens must be 0 or more"),
        (["--holdout-every", "1"], "holdout_every must be 0 or at least 2"),
        (["--checkpoint-every", "-1"], "checkpoint_every must be 0 or more"),
        (["--sae-setting", "nonsense=1"], "'nonsense' is not a setting of topk \\(valid: aux_coefficient"),
        (["--arch", "relu", "--sae-setting", "k=3"], "'k' is not a setting of relu"),
        (["--arch", "transformer"], "archs: 'transformer' is not one of relu, topk"),
        (["--batch-tokens", "4096", "--buffer-tokens", "4096"], "buffer_tokens"),
        (["--tokens", "0"], "tokens must be positive"),
        (["--resample-every-tokens", "1000"], "only used with dead_feature_method=resample"),
    ],
)
def test_contradictory_settings_are_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_resume_reads_saved_settings_and_refuses_changes(tmp_path):
    saved = TrainConfig(lr=0.01, out=str(tmp_path))
    (tmp_path / "train_config.json").write_text(json.dumps(saved.to_dict()))
    assert parse(["--resume", "--out", str(tmp_path)]) == saved
    with pytest.raises(ValueError, match="remove --lr"):
        parse(["--resume", "--out", str(tmp_path), "--lr", "0.1"])
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        parse(["--resume", "--out", str(tmp_path / "elsewhere")])


def test_parse_count():
    assert parse_count("409600") == 409_600
    assert parse_count("400k") == 400_000
    assert parse_count("1.5M") == 1_500_000
    assert parse_count("1e6") == 1_000_000
    assert parse_count(2048) == 2048
    with pytest.raises(ValueError, match="not a whole count"):
        parse_count("1.5")
    with pytest.raises(ValueError, match="not a count"):
        parse_count("lots")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.yaml", "lr: [1\n", r"bad.yaml: not valid YAML \(line 2\)"),
        ("bad.json", '{"lr": }', r"bad.json: not valid JSON \(line 1\)"),
        ("bad.yaml", 'lr: "fast"\n', "lr: expected a number, got 'fast'"),
        ("bad.yaml", "- lr\n", "expected a mapping of settings, got list"),
    ],
)
def test_broken_config_files_are_one_line_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        parse(["--config", str(path)])
    assert "\n" not in str(err.value)


def test_a_device_that_is_not_there_is_named():
    import torch

    from saekit.models import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:7'"):
        resolve_device("cuda:7")
    with pytest.raises(ValueError, match="device 'gpu0'.*use cpu, cuda"):
        resolve_device("gpu0")
    assert resolve_device("auto").type == "cpu"


def test_counts_with_suffixes_work_in_files_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("tokens: 400k\neval-tokens: 8k\ncheckpoint_every: 1.5M\n")
    cfg = parse(["--config", str(path), "--batch-tokens", "2k", "--buffer-tokens", "64k"])
    assert (cfg.tokens, cfg.eval_tokens, cfg.checkpoint_every) == (400_000, 8_000, 1_500_000)
    assert (cfg.batch_tokens, cfg.buffer_tokens) == (2_000, 64_000)
    path.write_text("tokens: many\n")
    with pytest.raises(ValueError, match="tokens: not a count"):
        parse(["--config", str(path)])


def test_cache_eval_dashboard_take_counts_with_suffixes():
    parser = build_parser()
    args = parser.parse_args(["cache", "--tokens", "1M", "--out", "x", "--shard-tokens", "16k"])
    assert (args.tokens, args.shard_tokens) == (1_000_000, 16_000)
    assert parser.parse_args(["eval", "sae", "--tokens", "16k"]).tokens == 16_000
    assert parser.parse_args(["dashboard", "sae", "--out", "d", "--tokens", "100k"]).tokens == 100_000


def test_every_setting_has_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--model", "--hook", "--dataset", "--arch", "--d-sae", "--expansion-factor", "--k",
                 "--l1", "--tokens", "--batch-tokens", "--context", "--lr", "--seed", "--out",
                 "--device", "--dtype", "--wandb", "--activations", "--checkpoint-every", "--resume"):
        assert flag in help_text
    assert "(default: " in help_text


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--arch", "relu", "--k", "32"], "saekit train: error: --k is only used by topk"),
        (["--log-every", "0"], "saekit train: error: --log-every must be positive, got 0"),
        (["--sae-setting", "x=1"], "saekit train: error: --sae-setting: 'x' is not a setting of topk"),
        (["--d-sae", "9", "--expansion-factor", "2"], "give either --d-sae or --expansion-factor"),
    ],
)
def test_cli_errors_name_flags_not_fields(argv, line, capsys):
    from saekit.cli import main

    assert main(["train", *argv]) == 2
    assert line in capsys.readouterr().err


def test_checkpoints_by_default_by_tokens_and_by_time():
    import time as _time

    from saekit.training.trainer import Trainer

    trainer = Trainer(TrainConfig(tokens=409_600, batch_tokens=4096), [])
    assert trainer.total_steps == 100 and trainer.checkpoint_interval() == 25  # a quarter
    short = Trainer(TrainConfig(tokens=16_384, batch_tokens=1024), [])
    assert short.checkpoint_interval() == 10  # no checkpoint every step of a short run
    assert Trainer(TrainConfig(checkpoint_every=0), []).checkpoint_interval() == 0
    assert Trainer(TrainConfig(checkpoint_every=8192, batch_tokens=4096), []).checkpoint_interval() == 2
    timed = Trainer(TrainConfig(checkpoint_every=0, checkpoint_minutes=0.5), [])
    timed.step, timed._last_checkpoint = 3, _time.monotonic()
    assert not timed._checkpoint_due(0)
    timed._last_checkpoint -= 31
    assert timed._checkpoint_due(0)
    timed.step = timed.total_steps  # never at the last step: the run saves its SAEs then
    assert not timed._checkpoint_due(0)
    off = Trainer(TrainConfig(checkpoint_every=0, checkpoint_minutes=0), [])
    off.step, off._last_checkpoint = 3, -1e9
    assert not off._checkpoint_due(0)
