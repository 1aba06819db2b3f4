"""benchmarks/gpu_check.py on the CPU path: the commands it would run and the table it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROW = {"system": "saekit", "case": "default", "tokens": 409600, "train_s": 100.0,
       "wall_s": 120.0, "peak_rss_mb": 1500.0,
       "quality": {"blocks.7.hook_resid_pre": {"explained_variance": 0.922, "l0": 32.0,
                   "ce_loss_recovered": 0.99, "kl_div": 0.27, "dead_fraction": 0.017}}}  # fmt: skip


def test_dry_run_lists_every_step_and_writes_the_table(tmp_path, capsys):
    gpu_check = load_gpu_check()
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "system": "saelens",
                       "train_s": 250.0, "wall_s": 280.0, "quality": None}) + "\n")  # fmt: skip
    table = tmp_path / "table.md"
    argv = ["--dry-run", "--results", str(results), "--table", str(table), "--out", str(tmp_path),
            "--saelens-python", "/peers/bin/python"]  # fmt: skip
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    assert "pytest -m cuda" in out
    for case in ("default", "wide"):
        assert f"compare.py --case {case} --systems saekit,saelens --device cuda" in out
    assert "--saelens-python /peers/bin/python" in out and "--tokens 16384" not in out
    text = table.read_text()
    # 409,600 tokens in 100 s: 4,096 tokens/s; the peer row without quality shows dashes
    assert "| default | saekit (blocks.7.hook_resid_pre) | 100 s | 4,096 | 120 s | 1,500 MB | " \
           "0.922 | 32.0 | 0.990 | 0.270 | 1.7% |" in text  # fmt: skip
    assert "| default | saelens (-) | 250 s | 1,638 | 280 s |" in text
    assert text.count("| compare ") == 2 and "| cuda tests | 0 |" in text


def test_tiny_cpu_mode_shrinks_the_cases(tmp_path, capsys):
    gpu_check = load_gpu_check()
    argv = ["--dry-run", "--device", "cpu", "--tiny", "--cases", "default", "--out", str(tmp_path),
            "--table", str(tmp_path / "t.md")]  # fmt: skip
    assert gpu_check.main(argv) == 0
    out = capsys.readouterr().out
    assert "--device cpu" in out and "--tokens 16384 --eval-tokens 2048" in out
    assert "--case wide" not in out
