"""SAE folders saved by saekit open in SAELens 6, and SAELens's open in saekit, with identical
weights and identical encode / decode / forward outputs on the same inputs.

SAELens runs in its own venv (`bash scripts/setup_peers.sh` builds `.venv-peers`; set
SAEKIT_PEERS_PYTHON to use another interpreter): `tests/saelens_peer.py` runs there, imports
SAELens and no saekit, and trades safetensors files with these tests. Without that venv the
tests skip, except under SAEKIT_CI=1 (`.ci/run`), where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import missing_peer
from saekit.saes import SAE

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "saelens_peer.py"
D_IN, D_SAE, D_OUT, BATCH = 6, 16, 5, 7
HOW = "bash scripts/setup_peers.sh builds .venv-peers; SAEKIT_PEERS_PYTHON picks another"


class SAELensPeer:
    """One `saelens_peer.py` process in the peers venv, answering a job at a time."""

    def __init__(self, python: str, workdir: Path):
        self.workdir = workdir
        self.log = (workdir / "peer-stderr.txt").open("w+")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        env.pop("PYTHONPATH", None)  # the peer sees its own venv only, never saekit's sources
        self.proc = subprocess.Popen(
            [python, str(HELPER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, env=env, cwd=workdir,
        )  # fmt: skip
        self.jobs = 0
        self.version = self.answer()  # None: the interpreter could not import SAELens

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def answer(self):
        line = self.proc.stdout.readline()
        return json.loads(line)["result"] if line else None

    def ask(self, job: dict):
        """Send one job; its `result`. A failed job or a dead peer fails the test."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            pytest.fail(f"the SAELens peer died:\n{self.stderr()}", pytrace=False)
        answer = json.loads(line)
        if not answer["ok"]:
            pytest.fail(f"SAELens failed on {job}:\n{answer['error']}", pytrace=False)
        return answer["result"]

    def run(self, job: dict, x: torch.Tensor, f: torch.Tensor) -> dict:
        """Send `job` with inputs x and f; the peer's outputs (tensors + `meta`)."""
        self.jobs += 1
        inputs, out = self.workdir / f"in{self.jobs}.safetensors", self.workdir / f"out{self.jobs}"
        save_file({"x": x.contiguous(), "f": f.contiguous()}, str(inputs))
        self.ask({**job, "inputs": str(inputs), "out": str(out)})
        with safe_open(str(out), "pt") as fh:
            result = {k: fh.get_tensor(k) for k in fh.keys()}
            result["meta"] = fh.metadata()
        return result


@pytest.fixture(scope="module")
def saelens(tmp_path_factory):
    python = os.environ.get("SAEKIT_PEERS_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")
    if not Path(python).exists():
        missing_peer(f"no SAELens interpreter at {python}", HOW)
    peer = SAELensPeer(python, tmp_path_factory.mktemp("saelens-peer"))
    if peer.version is None:
        why = peer.stderr()
        peer.close()
        missing_peer(f"{python} does not import sae_lens:\n{why}", HOW)
    yield peer
    peer.close()


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """What saelens_peer.py does to SAELens SAEs: normal(0, 0.3), thresholds in [0, 0.3)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.uniform_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.3)


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, d_in] for encode/forward and sparse non-negative f [B, d_sae] for decode."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, D_IN, generator=g)
    f = torch.rand(BATCH, D_SAE, generator=g) * (torch.rand(BATCH, D_SAE, generator=g) < 0.3)
    return x, f


def forward(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    target = torch.zeros(*x.shape[:-1], sae.cfg.d_out)  # only the loss reads it
    return sae(x, target).sae_out


def assert_identical(sae: SAE, lens: dict, x: torch.Tensor, f: torch.Tensor) -> None:
    """saekit's weights equal SAELens's bit for bit, its outputs up to float32 rounding (most
    are bit-identical; SAELens's TopK decode with rescale_acts_by_decoder_norm multiplies by
    1 / norm where saekit divides, one ulp apart)."""
    weights = {k[len("weight.") :]: v for k, v in lens.items() if k.startswith("weight.")}
    state = sae.state_dict()
    assert sorted(weights) == sorted(state)
    for name, value in state.items():
        assert torch.equal(weights[name], value), f"weight {name} differs"
    with torch.no_grad():
        ours = {"encode": sae.encode(x), "decode": sae.decode(f), "forward": forward(sae, x)}
    for name, value in ours.items():
        torch.testing.assert_close(
            lens[name], value, rtol=1e-6, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    # the comparison exercised sparsity: some features fire, some do not
    assert (ours["encode"] != 0).any() and (ours["encode"] == 0).any()


# ------------------------------------------------------------------ saekit -> SAELens

# (saekit architecture, settings, d_out, the SAELens class that must open the folder)
SAEKIT_CASES = {
    "relu": ("relu", {}, None, "StandardSAE"),
    "topk": ("topk", {"k": 3}, None, "TopKSAE"),
    "topk-rescaled": ("topk", {"k": 3, "rescale_acts_by_decoder_norm": True}, None, "TopKSAE"),
    "batchtopk": ("batchtopk", {"k": 3}, None, "JumpReLUSAE"),
    "matryoshka": ("matryoshka", {"k": 3, "prefixes": [4, 8, D_SAE]}, None, "JumpReLUSAE"),
    "jumprelu": ("jumprelu", {}, None, "JumpReLUSAE"),
    "gated": ("gated", {}, None, "GatedSAE"),
    # transcoders (SAELens has no TopK or gated transcoder class)
    "relu-transcoder": ("relu", {}, D_OUT, "Transcoder"),
    "batchtopk-transcoder": ("batchtopk", {"k": 3}, D_OUT, "JumpReLUTranscoder"),
    "matryoshka-transcoder": ("matryoshka", {"k": 3, "prefixes": [8, D_SAE]}, D_OUT, "JumpReLUTranscoder"),
    "jumprelu-transcoder": ("jumprelu", {}, D_OUT, "JumpReLUTranscoder"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SAEKIT_CASES))
def test_saekit_folder_opens_in_saelens(saelens, tmp_path, case):
    arch, settings, d_out, lens_class = SAEKIT_CASES[case]
    sae = SAE.create(arch, d_in=D_IN, d_sae=D_SAE, d_out=d_out, **settings)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    randomise(sae)
    if arch in ("batchtopk", "matryoshka"):  # their learned threshold is a single number
        sae.threshold.fill_(0.2)
    sae.eval().save(tmp_path / "sae")
    x, f = inputs(1)
    lens = saelens.run({"op": "load", "folder": str(tmp_path / "sae")}, x, f)
    assert lens["meta"]["class"] == lens_class
    assert lens["meta"]["hook_name"] == "blocks.1.hook_resid_pre"
    assert_identical(sae, lens, x, f)


# ------------------------------------------------------------------ SAELens -> saekit

# (SAELens architecture, its cfg, training class?, buffers, the saekit architecture)
SAELENS_CASES = {
    "standard": ("standard", {}, False, {}, "relu"),
    "standard-uncentred": ("standard", {"apply_b_dec_to_input": False}, False, {}, "relu"),
    "topk": ("topk", {"k": 4}, False, {}, "topk"),
    "topk-rescaled": ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}, False, {}, "topk"),
    "jumprelu": ("jumprelu", {}, False, {}, "jumprelu"),
    "gated": ("gated", {}, False, {}, "gated"),
    "transcoder": ("transcoder", {"d_out": D_OUT, "apply_b_dec_to_input": False}, False, {}, "relu"),
    "jumprelu-transcoder": ("jumprelu_transcoder", {"d_out": D_OUT, "apply_b_dec_to_input": False}, False, {}, "jumprelu"),
    # training SAEs, exported with save_inference_model
    "standard-training": ("standard", {}, True, {}, "relu"),
    "gated-training": ("gated", {}, True, {}, "gated"),
    "jumprelu-training": ("jumprelu", {}, True, {}, "jumprelu"),
    "batchtopk-training": ("batchtopk", {"k": 3}, True, {"topk_threshold": 0.2}, "jumprelu"),
    "matryoshka-training": ("matryoshka_batchtopk", {"k": 3, "matryoshka_widths": [4, D_SAE]}, True, {"topk_threshold": 0.2}, "jumprelu"),
    "topk-rescaled-training": ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}, True, {}, "topk"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SAELENS_CASES))
def test_saelens_folder_opens_in_saekit(saelens, tmp_path, case):
    arch, cfg, training, buffers, saekit_arch = SAELENS_CASES[case]
    job = {
        "op": "create", "architecture": arch, "cfg": {"d_in": D_IN, "d_sae": D_SAE, **cfg},
        "hook_name": "blocks.2.hook_mlp_out", "seed": 3, "training": training,
        "buffers": buffers, "folder": str(tmp_path / "sae"),
    }  # fmt: skip
    x, f = inputs(2)
    lens = saelens.run(job, x, f)
    sae = SAE.load(tmp_path / "sae")
    assert sae.cfg.architecture == saekit_arch
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_mlp_out"
    assert_identical(sae, lens, x, f)


# ------------------------------------------------------------------ the rest of SAELens

# SAELens architectures saekit does not read (cfg beyond d_in and d_sae to build one):
# opening their folders is an error that names the architecture.
UNREAD = {
    "abstopk": {},
    "matching_pursuit": {},
    "skip_transcoder": {"d_out": D_OUT, "apply_b_dec_to_input": False},
    "jumprelu_skip_transcoder": {"d_out": D_OUT, "apply_b_dec_to_input": False},
    "temporal": {"n_heads": 1, "bottleneck_factor": 2, "kval_topk": 3},
}


def test_every_saelens_architecture_is_covered(saelens):
    """A SAELens release that adds an architecture fails here until the tests above (or
    UNREAD) say what saekit does with it."""
    registry = saelens.ask({"op": "registry"})
    tested = {case[0] for case in SAELENS_CASES.values() if not case[2]}
    tested_training = {case[0] for case in SAELENS_CASES.values() if case[2]}
    assert set(registry["inference"]) == tested | set(UNREAD)
    assert set(registry["training"]) == tested_training | (set(UNREAD) & set(registry["training"]))


@pytest.mark.parametrize("arch", sorted(UNREAD))
def test_unread_saelens_architectures_are_a_clear_error(saelens, tmp_path, arch):
    folder = tmp_path / "sae"
    saelens.ask({
        "op": "create", "architecture": arch, "cfg": {"d_in": D_IN, "d_sae": D_SAE, **UNREAD[arch]},
        "folder": str(folder),
    })  # fmt: skip
    with pytest.raises(ValueError, match=f"unknown architecture '{arch}'"):
        SAE.load(folder)
