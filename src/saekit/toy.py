"""Toy models of superposition, and how well an SAE recovers their true features.

The setup of Anthropic's "Toy Models of Superposition" (Elhage et al. 2022): `n_features`
sparse features (each active with probability `feature_probability`, value uniform in [0, 1])
are squeezed into `d_hidden < n_features` dimensions by `h = W x` and read back by
`x' = ReLU(W^T h + b)`, trained to minimise the importance-weighted squared error. With sparse
enough features the model stores more features than it has dimensions, in superposition.

An SAE trained (by saekit's trainer) on the hidden activations `h` should find the columns of
`W`: the true feature directions. `recovery` scores that with the ground truth: for each
true feature, the best cosine similarity of its direction with an SAE decoder row (mean: MMCS),
and the fraction of features recovered above a threshold. A random SAE is the negative
control.

```
saekit toy --n-features 64 --d-hidden 16 --out toy/
```
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.saes import SAE

HOOK = "toy.hidden"


@dataclass(frozen=True)
class ToyConfig:
    """A toy model, its training, and the SAE trained on its hidden activations."""

    n_features: int = 64
    """Sparse input features."""
    d_hidden: int = 16
    """Hidden dimensions (fewer than features: superposition)."""
    feature_probability: float = 0.03
    """Probability that a feature is active on an example."""
    importance_decay: float = 1.0
    """Importance of feature i is decay**i (1: all equally important)."""
    toy_steps: int = 2000
    """Training steps of the toy model."""
    toy_batch: int = 1024
    """Examples per toy-model step."""
    toy_lr: float = 3e-3
    """Adam learning rate of the toy model."""
    arch: str = "topk"
    """SAE architecture (topk or relu)."""
    d_sae: int = 128
    """SAE dictionary size."""
    k: int = 3
    """Active features per example for topk (the true L0 is n_features * feature_probability)."""
    l1_coefficient: float = 3e-2
    """L1 coefficient for relu (saekit's loss: fraction of variance unexplained + L1)."""
    sae_tokens: int = 1_000_000
    """Hidden activations the SAE trains on."""
    sae_batch: int = 4096
    """Activations per SAE step."""
    sae_lr: float = 3e-3
    """Adam learning rate of the SAE."""
    threshold: float = 0.9
    """A feature counts as recovered when a decoder row has at least this cosine similarity."""
    seed: int = 0
    """Seed for the toy model, its data and the SAE."""


class ToyModel(torch.nn.Module):
    """`x -> ReLU(W^T W x + b)` with `W [d_hidden, n_features]`."""

    def __init__(self, n_features: int, d_hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        W_HF = torch.randn(d_hidden, n_features, generator=generator) * (2 / (d_hidden + n_features)) ** 0.5
        self.W = torch.nn.Parameter(W_HF)
        self.b = torch.nn.Parameter(torch.zeros(n_features))

    def hidden(self, x_BF: Tensor) -> Tensor:
        """Hidden activations `[B, d_hidden]`."""
        return x_BF @ self.W.T

    def forward(self, x_BF: Tensor) -> Tensor:
        return torch.relu(self.hidden(x_BF) @ self.W + self.b)


def sample_features(cfg: ToyConfig, n: int, generator: torch.Generator) -> Tensor:
    """`[n, n_features]` sparse feature vectors: uniform [0, 1] where active, else 0."""
    shape = (n, cfg.n_features)
    active = torch.rand(shape, generator=generator) < cfg.feature_probability
    return torch.rand(shape, generator=generator) * active


def train_toy_model(cfg: ToyConfig) -> ToyModel:
    """Train the toy model on its sparse features (importance-weighted squared error)."""
    g = torch.Generator().manual_seed(cfg.seed)
    model = ToyModel(cfg.n_features, cfg.d_hidden, g)
    importance_F = cfg.importance_decay ** torch.arange(cfg.n_features, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.toy_lr)
    for _ in range(cfg.toy_steps):
        x_BF = sample_features(cfg, cfg.toy_batch, g)
        loss = (importance_F * (model(x_BF) - x_BF).pow(2)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def train_sae(cfg: ToyConfig, model: ToyModel) -> SAE:
    """Train an SAE on the toy model's hidden activations with saekit's trainer."""
    from saekit.training.config import LoopSettings, TrainConfig
    from saekit.training.run import UnitSpec, build_unit
    from saekit.training.trainer import Trainer

    torch.manual_seed(cfg.seed)
    settings = (("k", cfg.k),) if cfg.arch == "topk" else (("l1_coefficient", cfg.l1_coefficient),)
    tc = TrainConfig(model="toy", hooks=(HOOK,), archs=(cfg.arch,), tokens=cfg.sae_tokens,
                     batch_tokens=cfg.sae_batch, buffer_tokens=2 * cfg.sae_batch, lr=cfg.sae_lr,
                     device="cpu", progress=False, eval_tokens=0)  # fmt: skip
    unit = build_unit(UnitSpec("toy", HOOK, HOOK, cfg.arch, cfg.d_sae, settings), tc,
                      {HOOK: cfg.d_hidden}, "cpu")  # fmt: skip
    g = torch.Generator().manual_seed(cfg.seed + 1)

    def batches():
        while True:
            yield {HOOK: model.hidden(sample_features(cfg, cfg.sae_batch, g))}

    Trainer(LoopSettings.of(tc), [unit]).fit(batches())
    return unit.sae.eval()


def random_sae(cfg: ToyConfig) -> SAE:
    """An untrained SAE of the same shape (the negative control)."""
    torch.manual_seed(cfg.seed + 2)
    extra = {"k": cfg.k} if cfg.arch == "topk" else {}
    return SAE.create(cfg.arch, d_in=cfg.d_hidden, d_sae=cfg.d_sae, **extra).eval()


@torch.no_grad()
def cosine_matrix(model: ToyModel, sae: SAE) -> Tensor:
    """`[n_features, d_sae]` cosine similarity of true feature directions and decoder rows."""
    true_FH = model.W.T / model.W.T.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dec_SH = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return true_FH @ dec_SH.T


@torch.no_grad()
def recovery(model: ToyModel, sae: SAE, threshold: float = 0.9, min_norm: float = 0.5) -> dict[str, Any]:
    """Ground-truth recovery of the toy model's represented features (`||W_i|| >= min_norm`):
    mean max cosine similarity (MMCS), fraction above `threshold`, best match per feature."""
    represented_F = model.W.norm(dim=0) >= min_norm
    best_F, match_F = cosine_matrix(model, sae).max(dim=1)
    kept = best_F[represented_F]
    return {
        "represented_features": int(represented_F.sum()),
        "mmcs": float(kept.mean()) if len(kept) else 0.0,
        "fraction_recovered": float((kept >= threshold).float().mean()) if len(kept) else 0.0,
        "best_cosine": best_F.tolist(),
        "best_latent": match_F.tolist(),
    }


def plot(model: ToyModel, sae: SAE, path: Path) -> Path:
    """The feature-geometry figure: W^T W (superposition), feature norms, SAE/true cosines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    W_HF = model.W.detach()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    axes[0].imshow((W_HF.T @ W_HF).numpy(), cmap="RdBu", vmin=-1, vmax=1)
    axes[0].set_title("W^T W: feature interference")
    norms_F = W_HF.norm(dim=0)
    unit_HF = W_HF / norms_F.clamp_min(1e-12)
    shared_F = ((unit_HF.T @ W_HF).pow(2).sum(1) - norms_F.pow(2)).clamp_min(0).sqrt()
    axes[1].bar(range(len(norms_F)), norms_F.numpy(), color=plt.cm.viridis((shared_F / shared_F.max().clamp_min(1e-12)).numpy()))  # fmt: skip
    axes[1].set_title("||W_i|| (colour: superposition with other features)")
    cos = cosine_matrix(model, sae)
    order = cos.argmax(dim=0).argsort()
    image = axes[2].imshow(cos[:, order].numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    axes[2].set_title("cosine(true feature, SAE decoder row)")
    axes[2].set_xlabel("SAE latent (sorted by best match)")
    axes[2].set_ylabel("true feature")
    fig.colorbar(image, ax=axes[2])
    if model.W.shape[0] == 2:  # the classic picture: feature directions in the plane
        axes[0].clear()
        for i in range(W_HF.shape[1]):
            axes[0].plot([0, W_HF[0, i]], [0, W_HF[1, i]], marker="o")
        axes[0].set_aspect("equal")
        axes[0].set_title("feature directions in the hidden plane")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(cfg: ToyConfig, out: Path | None = None) -> dict[str, Any]:
    """Train the toy model and the SAE; return (and write to `out`) recovery vs the control."""
    model = train_toy_model(cfg)
    sae = train_sae(cfg, model)
    report = {
        "config": asdict(cfg),
        "sae": recovery(model, sae, cfg.threshold),
        "random_sae": recovery(model, random_sae(cfg), cfg.threshold),
    }
    if out is not None:
        out = Path(out)
        sae.save(out / "sae")
        torch.save({"W": model.W.detach(), "b": model.b.detach()}, out / "toy_model.pt")
        report["plot"] = str(plot(model, sae, out / "feature_geometry.png"))
        (out / "recovery.json").write_text(json.dumps(report, indent=1))
    return report


def register(subparsers: Any) -> None:
    """`saekit toy`: train a toy model of superposition and an SAE on it; report recovery."""
    p = subparsers.add_parser("toy", help="toy model of superposition: does an SAE recover its features?",
                              description=__doc__.split("\n\n")[0])  # fmt: skip
    from saekit.settings import count_arg

    for name, value in asdict(ToyConfig()).items():
        kind = count_arg if name.endswith("tokens") else type(value)  # 1M, 500k
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value,
                       help=f"{_FIELD_DOCS.get(name, '')} (default {value})")  # fmt: skip
    p.add_argument("--out", default="toy", help="output folder (default toy)")
    p.set_defaults(func=_main)


def _field_docs() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ToyConfig))
    body = tree.body[0].body
    return {
        node.target.id: nxt.value.value
        for node, nxt in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr)
    }


_FIELD_DOCS = _field_docs()


def _main(args: argparse.Namespace) -> int:
    cfg = ToyConfig(**{name: getattr(args, name) for name in asdict(ToyConfig())})
    report = run(cfg, Path(args.out))
    for name in ("sae", "random_sae"):
        r = report[name]
        print(f"{name:10s} MMCS {r['mmcs']:.3f}  recovered (cos >= {cfg.threshold}) "
              f"{r['fraction_recovered']:.1%} of {r['represented_features']} represented features")  # fmt: skip
    print(f"plot: {report['plot']}\nreport: {Path(args.out) / 'recovery.json'}")
    return 0
