"""Feature absorption on the first-letter task, as SAEBench defines it.

1. k-sparse probing finds each letter's *main* SAE features: an L1-regularised one-vs-rest
   probe on the SAE features of the train words ranks features by weight; for k = 1..10 a
   logistic regression on the top k is scored by F1 on the test words; k grows while F1
   rises by more than `f1_jump_threshold` (0.03) over the best so far.
2. For every test word the ground-truth probe gets right (score > 0 for its letter), with
   `p` the unit probe direction, `a` the residual activation and `f` the SAE features:
   probe projection `a . p`; a feature's projection `f_i * cos(p, W_dec[i])`.
   - absorption fraction: 0 if the main features' projection reaches `a . p` or the top 3
     other features (cos >= 0.1, positive projection) cover less than 0.4 of it; 1 if the
     main features project <= 0; else absorbed / (absorbed + main), with absorbed the top-3
     projection capped at what the main features leave unexplained;
   - full absorption: no main feature fires, the feature with the largest projection has
     cos >= 0.025 and carries at least 0.4 of `a . p` (which must be >= 0).
3. Per letter: sum of fractions / number of probe true positives (`mean_absorption_fraction`),
   full absorptions / true positives (`full_absorption_rate`); the scores average the
   letters whose ground-truth probe has F1 > 0.6.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.evals.first_letter import (
    LETTERS,
    FirstLetterData,
    LetterProbe,
    f1_score,
    letter_f1,
    train_probe,
)
from saekit.evals.probing import logistic_regression

EPS = 1e-8
EVAL_TYPE_ID = "absorption_first_letter"


def train_l1_probe(feats_NF: Tensor, letters_N: np.ndarray, seed: int = 42) -> Tensor:
    """Weights `[26, F]` of SAEBench's L1-regularised probe on SAE features (l1 0.01,
    weight decay 1e-6, 50 epochs), which ranks each letter's features.

    SAEBench's batch of 4096 gives ~6 steps per epoch on a GPT-2-sized vocabulary; on the
    few thousand words used here it would give one, and the probe would barely move from
    its random start. The batch is therefore `min(4096, ceil(N / 6))`: SAEBench's step count.
    """
    batch_size = min(4096, math.ceil(len(feats_NF) / 6))
    probe = train_probe(
        feats_NF, letters_N, l1_decay=0.01, weight_decay=1e-6, batch_size=batch_size, seed=seed
    )
    return probe.W_LD


def k_sparse_f1(
    train_NF: Tensor, train_letters: np.ndarray, test_MF: Tensor, test_letters: np.ndarray,
    feature_ids: Tensor, letter: int,
) -> float:  # fmt: skip
    """Test F1 (score > 0) of a balanced logistic regression on `feature_ids` for `letter`."""
    y = (train_letters == letter).astype(np.int64)
    if y.sum() == 0:
        return 0.0
    fit = logistic_regression(max_iter=500, class_weight="balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ConvergenceWarning
        fit.fit(train_NF[:, feature_ids].numpy(), y)
    pred = fit.decision_function(test_MF[:, feature_ids].numpy()) > 0
    return f1_score(test_letters == letter, pred)


def split_features(
    f1_by_k: Sequence[float], feats_by_k: Sequence[list[int]], threshold: float = 0.03
) -> list[int]:
    """The main features: those of the last k whose F1 beat the best so far by > `threshold`."""
    best, chosen = -100.0, []
    for f1, feats in zip(f1_by_k, feats_by_k, strict=True):
        if f1 > best + threshold:
            best, chosen = f1, list(feats)
        else:
            break
    return chosen


def word_absorption(
    act_probe_proj: float,
    feat_acts_F: Tensor,
    cos_F: Tensor,
    main_ids: Sequence[int],
    *,
    full_cos_threshold: float = 0.025,
    fraction_cos_threshold: float = 0.1,
    proportion_threshold: float = 0.4,
    max_absorbing: int = 3,
    top_feats: int = 10,
) -> tuple[float, bool]:
    """(absorption fraction, full absorption?) of one word; see the module docstring."""
    proj_F = feat_acts_F.double() * cos_F.double()
    main = torch.zeros(len(proj_F), dtype=torch.bool)
    main[list(main_ids)] = True
    main_proj = float(proj_F[main].sum())
    absorbers = proj_F[~main & (cos_F >= fraction_cos_threshold) & (proj_F > 0)]
    absorbed = float(absorbers.topk(min(max_absorbing, len(absorbers))).values.sum())
    proportion = absorbed / act_probe_proj if act_probe_proj != 0 else -math.inf
    if main_proj >= act_probe_proj or proportion < proportion_threshold:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        absorbed = min(absorbed, act_probe_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))
    top = int(proj_F.topk(min(top_feats, len(proj_F))).indices[0])
    full = (
        bool((feat_acts_F[list(main_ids)] < EPS).all())
        and float(cos_F[top]) >= full_cos_threshold
        and act_probe_proj > 0
        and float(proj_F[top]) / act_probe_proj >= proportion_threshold
    )
    return fraction, full


@torch.no_grad()
def sae_absorption(
    sae, data: FirstLetterData, probe: LetterProbe, *, max_k: int = 10,
    f1_jump_threshold: float = 0.03, min_probe_f1: float = 0.6, min_letters: int = 20,
    seed: int = 42,
) -> dict[str, Any]:  # fmt: skip
    """Absorption of one SAE on collected first-letter data: a SAEBench-style result."""
    param = next(sae.parameters())
    encode = lambda x: sae.encode(x.to(param.device, param.dtype)).float().cpu()  # noqa: E731
    train_NF, test_MF = encode(data.train_acts_ND), encode(data.test_acts_MD)
    tr_letters, te_letters = data.train_letters, data.test_letters
    weights_LF = train_l1_probe(train_NF, tr_letters, seed=seed)
    scores_ML = probe.scores(data.test_acts_MD)
    probe_f1 = letter_f1(scores_ML, te_letters)
    W_dec_FD = sae.W_dec.detach().float().cpu()
    details = []
    for li, letter in enumerate(LETTERS):
        feats_by_k = [weights_LF[li].topk(k).indices.tolist() for k in range(1, max_k + 1)]
        f1_by_k = [
            k_sparse_f1(train_NF, tr_letters, test_MF, te_letters, torch.tensor(ids), li)
            for ids in feats_by_k
        ]
        main_ids = split_features(f1_by_k, feats_by_k, f1_jump_threshold)
        direction_D = probe.W_LD[li] / probe.W_LD[li].norm().clamp_min(1e-12)
        cos_F = torch.nn.functional.cosine_similarity(direction_D[None], W_dec_FD, dim=-1)
        true_pos = np.flatnonzero((te_letters == li) & (scores_ML[:, li] > 0).numpy())
        fractions, fulls = [], 0
        for m in true_pos:
            proj = float(data.test_acts_MD[m].float() @ direction_D)
            fraction, full = word_absorption(proj, test_MF[m], cos_F, main_ids)
            fractions.append(fraction)
            fulls += full
        n = len(true_pos)
        details.append({
            "first_letter": letter,
            "mean_absorption_fraction": sum(fractions) / n if n else None,
            "full_absorption_rate": fulls / n if n else None,
            "num_full_absorption": fulls,
            "num_probe_true_positives": n,
            "num_split_features": len(main_ids),
            "split_feats": main_ids,
            "f1_probe": float(probe_f1[li]),
            "f1_sparse_sae_by_k": f1_by_k,
            "qualifies": bool(probe_f1[li] > min_probe_f1 and n > 0),
        })  # fmt: skip
    return _summarise(details, min_letters)


def _summarise(details: list[dict[str, Any]], min_letters: int) -> dict[str, Any]:
    kept = [d for d in details if d["qualifies"]]

    def stats(key: str) -> tuple[float | None, float | None]:
        values = [float(d[key]) for d in kept]
        if not values:
            return None, None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None

    frac, frac_sd = stats("mean_absorption_fraction")
    full, full_sd = stats("full_absorption_rate")
    split, split_sd = stats("num_split_features")
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_result_metrics": {
            "mean": {
                "mean_absorption_fraction_score": frac,
                "mean_full_absorption_score": full,
                "mean_num_split_features": split,
                "std_dev_absorption_fraction_score": frac_sd,
                "std_dev_full_absorption_score": full_sd,
                "std_dev_num_split_features": split_sd,
            }
        },  # fmt: skip
        "eval_result_details": details,
        "standard_errors": {  # saekit's: the spread over letters / sqrt(letters)
            "mean_absorption_fraction_score": _se(frac_sd, len(kept)),
            "mean_full_absorption_score": _se(full_sd, len(kept)),
            "mean_num_split_features": _se(split_sd, len(kept)),
        },
        "letters_qualifying": [d["first_letter"] for d in kept],
        "min_letters_saebench": min_letters,
        "saebench_would_report": len(kept) >= min_letters,
    }


def _se(sd: float | None, n: int) -> float | None:
    return None if sd is None else sd / math.sqrt(n)


def run_absorption(
    saes: Mapping[str, torch.nn.Module], data: FirstLetterData, probe: LetterProbe, **settings: Any
) -> dict[str, dict[str, Any]]:
    """`sae_absorption` for several SAEs on the same words, activations and probe."""
    return {name: sae_absorption(sae, data, probe, **settings) for name, sae in saes.items()}
