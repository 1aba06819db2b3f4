"""Autointerp on the real default model: in process, and through a real `transformers serve`.

A random TopK SAE on smollm2-135m stands in for a trained one (its features fire often, which
is all these tests need); the LLM is the embedded SmolLM2-135M-Instruct itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

SMALL = ["--n-explain", "4", "--n-activating", "4", "--n-random", "4", "--per-prompt", "4"]


@pytest.fixture(scope="module")
def random_sae_folder(tmp_path_factory) -> Path:
    from saekit.data.provenance import Provenance
    from saekit.saes import SAE

    torch.manual_seed(0)
    sae = SAE.create("topk", d_in=576, d_sae=256, k=4)
    Provenance(context=64).write_metadata(sae.cfg.metadata, "blocks.15.hook_resid_pre")
    folder = tmp_path_factory.mktemp("random-sae")
    sae.save(folder)
    return folder


@pytest.fixture(scope="module")
def examples_folder(random_sae_folder, default_lm, tmp_path_factory) -> tuple[Path, list[int]]:
    """Examples of the first 32 features over 2k tokens, saved as `saekit explain` would; and
    three features that fire often enough to be explained and scored (many random features
    never fire)."""
    from saekit import load_sae
    from saekit.autointerp import ExampleSet, collect_examples
    from saekit.data.provenance import Provenance, token_batches

    sae = load_sae(str(random_sae_folder))
    prov, _ = Provenance.from_sae(sae)
    batches = token_batches(prov, default_lm.tokenizer, rows=8)
    collected = collect_examples(sae, default_lm, batches, range(32), max_tokens=2000)
    meta = {"sae": str(random_sae_folder), "tokens": 2000, "window": 32, "hard_negatives": 0}
    examples = ExampleSet.from_collected(collected, default_lm.tokenizer, meta)
    folder = tmp_path_factory.mktemp("examples")
    examples.save(folder)
    usable = [f for n, f in enumerate(examples.feature_ids)
              if len(examples.select(n, n_explain=4, n_activating=4, n_random=4).activating) == 4
              and len(examples.select(n, n_random=4).non_activating) == 4]  # fmt: skip
    assert len(usable) >= 3, collected.stats.fire_count_F.tolist()
    return folder, usable[:3]


def _check_results(out: Path, features: list[int], auc: bool) -> list[dict]:
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["feature"] for r in lines) == features  # each feature exactly once
    for r in lines:
        assert r["explanation"] and r["explanation"].strip()
        for key in ("scores", "shuffled"):
            for scorer in ("detection", "fuzzing"):
                m = r[key][scorer]
                for name in ("balanced_accuracy", "precision", "recall", "f1"):
                    assert 0.0 <= m[name] <= 1.0
                assert (m["auc"] is not None) == auc
                assert m["auc"] is None or 0.0 <= m["auc"] <= 1.0
        assert r["shuffled"]["explanation_of"] in features
        assert r["shuffled"]["explanation_of"] != r["feature"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shuffled"]["detection"]["n_features"] == len(features)
    assert ("auc_note" in summary) != auc
    assert (out / "scores.png").is_file()
    return lines


def test_in_process_model(examples_folder, default_lm, tmp_path):
    """The embedded model explains and scores in process; it gives token probabilities."""
    from saekit.autointerp import CachedClient, ExampleSet, run_autointerp
    from saekit.autointerp.hf import HFClient
    from saekit.autointerp.run import InterpSettings

    folder, features = examples_folder
    examples = ExampleSet.load(folder)
    client = CachedClient(
        HFClient.from_model(default_lm.model, default_lm.tokenizer, "hf:smollm2-135m"),
        tmp_path / "cache",
    )
    settings = InterpSettings(n_explain=4, n_activating=4, n_random=4, per_prompt=4)
    run_autointerp(examples, client, tmp_path, settings=settings, features=features[:2])
    _check_results(tmp_path, sorted(features[:2]), auc=True)
    # per feature: 1 explanation (2 if the first came back empty) + 2 scorers x 2 x 2 prompts
    assert 2 * (1 + 8) <= client.counts()["llm_calls"] <= 2 * (2 + 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(shutil.which("transformers") is None and not Path(sys.executable).with_name(
    "transformers").exists(), reason="needs transformers[serving] (the `transformers` CLI)")  # fmt: skip
def test_openai_path_through_transformers_serve(random_sae_folder, examples_folder, tmp_path):
    """`saekit explain --explainer openai:URL` against a real `transformers serve`, killed and
    resumed. The server ignores `logprobs`, so the summary says AUC is absent; it honours the
    `logit_bias` built from the model's tokenizer (`--answer-tokenizer`), so every scorer
    answer holds only the characters of a 0/1 list."""
    import httpx

    from saekit.models.loading import DEFAULT_MODEL
    from saekit.paths import cache_root

    model_dir = cache_root() / "models" / DEFAULT_MODEL  # the dequantised copy load_model keeps
    assert (model_dir / "config.json").is_file()
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(exe) if exe.exists() else "transformers", "serve", str(model_dir), "--host",
         "127.0.0.1", "--port", str(port), "--device", "cpu"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        end = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end, "transformers serve did not start in 120 s"
            time.sleep(0.3)
        out = tmp_path / "interp"
        folder, features = examples_folder
        spec = ",".join(map(str, features))
        argv = [sys.executable, "-m", "saekit", "explain", str(random_sae_folder), "--features",
                spec, "--tokens", "2k", "--examples", str(folder), "--explainer",
                f"openai:http://127.0.0.1:{port}/v1", "--concurrency", "2", "--out", str(out),
                "--answer-tokenizer", str(model_dir), "--no-progress", *SMALL]  # fmt: skip
        src = str(Path(__file__).parents[1] / "src")
        cli_env = env | {"PYTHONPATH": src + os.pathsep + env.get("PYTHONPATH", "")}
        first = subprocess.Popen(
            argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        got_one = _wait_for_lines(out / "results.jsonl", 1, first, limit=240)
        first.kill()  # killed mid-run (or, on a fast machine, perhaps just after the end)
        first.wait()
        assert got_one, first.stdout.read().decode()[-3000:]
        done = len((out / "results.jsonl").read_text().splitlines())
        second = subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "examples reused" in second.stdout
        lines = _check_results(out, sorted(features), auc=False)
        assert done >= 1 and len(lines) == 3
        summary = json.loads((out / "summary.json").read_text())
        assert summary["run"]["features_this_call"] == 3 - min(done, 3)
        assert "AUC is absent" in second.stdout
        cached = [json.loads(p.read_text()) for p in (out / "llm-cache").glob("*/*.json")]
        scorer_answers = [c["response"]["text"] for c in cached
                          if c["request"].get("binary_answers")]  # fmt: skip
        assert len(scorer_answers) >= 3 * 8
        assert all(set(a) <= set("[]01, ") for a in scorer_answers), scorer_answers
        failed = summary["failed_answers"]["detection"]
        assert failed["total"] == 3 * 8 and 0 <= failed["failed"] <= failed["retried"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
