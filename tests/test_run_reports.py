"""A run's reports: smoothing and axis limits, the summary's token counts and dead-feature
figures, a sweep's table, and the phase lines on stderr."""

from __future__ import annotations

import csv
import json
import math
import re
import time

import pytest

from conftest import small_train_config
from saekit.training.plots import robust_limits, smooth
from saekit.training.report import dead_line, summary_text, sweep_markdown


@pytest.fixture(autouse=True)
def eval_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_EVAL_CACHE", str(tmp_path / "eval-cache"))


def test_smooth_is_the_bias_corrected_moving_average():
    values = [float(v) for v in [4, 0, 2, 8, 6, 2, 4, 0, 10, 2]]
    beta = 1 - 1 / (len(values) / 5)  # span 2
    for n in range(1, len(values) + 1):  # closed form: weights beta^(n-1-i), normalised
        weights = [beta ** (n - 1 - i) for i in range(n)]
        expected = sum(w * v for w, v in zip(weights, values, strict=False)) / sum(weights)
        assert smooth(values, points=5)[n - 1] == pytest.approx(expected, rel=1e-12)
    assert smooth(values, points=20) == values  # span under one value: unchanged


def test_robust_limits_leave_out_an_early_outlier_only():
    ev = [-6.0, 0.2] + [0.5 + 0.004 * i for i in range(98)]
    lo, hi = robust_limits(ev)
    assert -6.0 < lo < min(ev[20:]) and hi > max(ev)  # the last 80% of the run shown
    assert robust_limits([0.5 + 0.004 * i for i in range(100)]) is None


def test_summary_names_tokens_trained_and_both_dead_figures():
    metrics = {"l0": 32.0, "explained_variance": 0.9, "eval_tokens": 16_384.0,
               "dead_fraction": 0.059, "dead_fraction_se": 0.01, "train_dead_fraction": 0.006}  # fmt: skip
    text = summary_text(
        __import__("pathlib").Path("runs/x"), 36_864, 10.0, {"h": metrics}, {},
        total_tokens=49_152, requested_tokens=50_000, dead_after_tokens=81_920,
    )  # fmt: skip
    first = text.splitlines()[0]
    assert "36,864 tokens in 10 s" in first and "49,152 tokens trained in all" in first
    assert "--tokens 50,000, rounded down" in first
    # 0.059 +- 1.96 * 0.01 = [0.0394, 0.0786]
    assert ("dead features: 5.9% [95%: 3.9%-7.9%] never fired in 16,384 held-back tokens; "
            "0.6% silent for the last 81,920 training tokens") in text  # fmt: skip
    assert dead_line({"dead_fraction": 0.1}, None) is None  # no window: not named as one


def test_sweep_run_writes_its_table_frontier_and_curves(tiny_model_dir, tmp_path, capsys):
    from saekit.training.run import train

    cfg = small_train_config(tiny_model_dir, tmp_path / "run", tokens=6 * 512 + 100,
                             ks=(4, 16), eval_tokens=512, eval_every_tokens=1024,
                             dead_after_tokens=1024, progress=True)  # fmt: skip
    result = train(cfg)
    run = tmp_path / "run"
    err = capsys.readouterr().err
    for phase in ("loading model", "computing the first 1,024 training tokens' activations", "final evaluation",
                  "plotting"):  # fmt: skip
        assert f"saekit: {phase}" in err, phase
    for name in ("training_curves.png", "feature_density.png", "sweep_summary.png"):
        assert (run / name).stat().st_size > 10_000, name
    assert "3,072 tokens in" in result.summary and "(--tokens 3,172, rounded down" in result.summary
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    final = {r["sae"]: r for r in records if r["kind"] == "eval" and r["step"] == 6}
    assert len([r for r in records if r["kind"] == "eval"]) == 2 * 3  # periodic + final
    rows = list(csv.DictReader((run / "sweep_summary.csv").open()))
    assert [r["setting"] for r in rows] == ["k=4", "k=16"]
    for row in rows:
        logged = final[row["sae"]]
        for key in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction"):
            assert float(row[key]) == pytest.approx(logged[key], rel=1e-9), key
        assert int(float(row["eval_tokens"])) == logged["eval_tokens"]
    table = (run / "sweep_summary.md").read_text()
    best = max(rows, key=lambda r: float(r["explained_variance"]))
    assert table.splitlines()[4].startswith(f"| {best['sae']} |")  # best first
    assert f"{float(best['explained_variance']):.3f}" in table
    assert math.isfinite(float(rows[0]["explained_variance_se"]))


def test_sweep_markdown_marks_missing_values():
    row = {"sae": "a", "architecture": "relu", "d_sae": 8, "setting": "l1=0.001",
           "l0": math.nan, "explained_variance": math.nan, "ce_loss_recovered": 0.5,
           "kl_div": math.nan, "dead_fraction": 0.25, "eval_tokens": math.nan}  # fmt: skip
    line = sweep_markdown([row], "t").splitlines()[4]
    assert line == "| a | relu | 8 | l1=0.001 | – | – | 0.500 | – | 25.0% |"


def test_a_resumed_run_reports_its_session_and_the_total(tiny_model_dir, tmp_path):
    import shutil

    from saekit.training.run import train

    cfg = small_train_config(tiny_model_dir, tmp_path / "run", tokens=6 * 512, ks=(4,),
                             eval_tokens=0, checkpoint_every=1024)  # fmt: skip
    first = train(cfg)
    assert first.summary.startswith(f"saekit run {tmp_path / 'run'}: 3,072 tokens in ")
    (tmp_path / "run" / "summary.txt").unlink()  # as if killed after the step-4 checkpoint
    shutil.rmtree(tmp_path / "run" / "blocks.2.hook_resid_pre")
    resumed = train(cfg, resume=True).summary.splitlines()[0]
    assert ": 1,024 tokens in " in resumed and "resumed: 3,072 tokens trained in all" in resumed
    assert "rounded down" not in resumed


def test_the_training_time_counts_the_first_fill_and_the_initialisation(
    tiny_model_dir, tmp_path, monkeypatch
):
    import saekit.training.run as run_module

    initialize = run_module.initialize_unit

    def slow(*args, **kwargs):  # as if the first activations took 2.5 s
        time.sleep(2.5)
        return initialize(*args, **kwargs)

    monkeypatch.setattr(run_module, "initialize_unit", slow)
    cfg = small_train_config(tiny_model_dir, tmp_path / "run", tokens=1024, eval_tokens=0)
    summary = run_module.train(cfg).summary
    seconds = int(re.search(r"1,024 tokens in (\d+) s", summary).group(1))
    assert seconds >= 2  # 2.5 s of it before the first step (rounded half to even)
