"""Sparse probing as SAEBench defines it, with residual-stream baselines on the same splits.

For each labelled dataset and each class: a one-vs-rest task whose negatives are balanced
with the positives (SAEBench's sampling: an equal share from every other class, then as
many negatives as positives). The input is a text's mean-pooled SAE features (see
`saekit.evals.pooling`). For each k the k features with the largest |mean_pos - mean_neg|
on the training split are kept and a logistic regression (scikit-learn, L2, C=1,
max_iter=1000) is fitted on them; the score is its test accuracy. Accuracies are averaged
over classes, then over datasets.

Baselines use the same balanced samples: the probe on the full residual stream
(`llm_test_accuracy`) and on its top-k dimensions (`llm_top_{k}_test_accuracy`). The probe
on every SAE feature is `sae_test_accuracy`. Key names follow SAEBench's output.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.evals.labelled import TEST_PER_CLASS, TRAIN_PER_CLASS, LabelledDataset, load_labelled
from saekit.evals.pooling import PooledCache, pooled_activations

K_VALUES = (1, 2, 5, 10, 20)
EVAL_TYPE_ID = "sparse_probing"


def balanced_indices(
    labels: Sequence[str], positive: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and 0/1 targets of all positives plus as many negatives, shuffled.

    Negatives: `ceil(n_pos / n_other_classes)` drawn from each other class, then `n_pos` of
    those drawn at random (SAEBench's `prepare_probe_data`).
    """
    labels_arr = np.asarray(labels)
    pos = np.flatnonzero(labels_arr == positive)
    others = [c for c in dict.fromkeys(labels) if c != positive]
    if len(pos) == 0 or not others:
        raise ValueError(f"class {positive!r} needs positives and at least one other class")
    share = math.ceil(len(pos) / len(others))
    negs = np.concatenate(
        [rng.permutation(np.flatnonzero(labels_arr == c))[:share] for c in others]
    )
    if len(negs) < len(pos):
        raise ValueError(
            f"class {positive!r}: {len(pos)} positives but only {len(negs)} negatives to draw "
            "(every class needs the same number of texts)"
        )
    negs = negs[rng.permutation(len(negs))[: len(pos)]]
    idx = np.concatenate([pos, negs])
    y = np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(negs), dtype=np.int64)])
    order = rng.permutation(len(idx))
    return idx[order], y[order]


def top_k_mean_diff(X_ND: Tensor, y_N: Tensor, k: int) -> Tensor:
    """Indices of the k columns with the largest |mean over positives - mean over negatives|.

    Ties keep the lower index first.
    """
    y_N = torch.as_tensor(y_N, device=X_ND.device)
    diff_D = (X_ND[y_N == 1].mean(dim=0) - X_ND[y_N == 0].mean(dim=0)).abs()
    return torch.argsort(diff_D, descending=True, stable=True)[:k]


def logistic_regression(**settings: Any):
    """scikit-learn's `LogisticRegression`, with a clear error if scikit-learn is missing."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise ImportError(
            "sparse probing and absorption need scikit-learn: pip install 'saekit[evals]'"
        ) from err
    return LogisticRegression(**settings)


def probe_accuracy(
    X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of scikit-learn's logistic regression (L2, C=1, max_iter=1000)."""
    probe = logistic_regression(C=1.0, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ConvergenceWarning
        probe.fit(X_train.astype(np.float32), y_train)
    return float((probe.predict(X_test.astype(np.float32)) == y_test).mean())


def probe_class(
    X_ND: Tensor,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    k_values: Sequence[int],
    prefix: str,
    full: bool = True,
) -> dict[str, float]:
    """`{prefix}_test_accuracy` (every column) and `{prefix}_top_{k}_test_accuracy` per k."""
    (i_tr, y_tr), (i_te, y_te) = train, test
    X_tr, X_te = X_ND[i_tr], X_ND[i_te]
    out = {}
    if full:
        out[f"{prefix}_test_accuracy"] = probe_accuracy(X_tr.numpy(), y_tr, X_te.numpy(), y_te)
    for k in k_values:
        cols = top_k_mean_diff(X_tr, torch.from_numpy(y_tr), k)
        out[f"{prefix}_top_{k}_test_accuracy"] = probe_accuracy(
            X_tr[:, cols].numpy(), y_tr, X_te[:, cols].numpy(), y_te
        )
    return out


def probe_dataset(
    dataset: LabelledDataset,
    resid_ND: Tensor,
    feats: Mapping[str, Tensor],
    k_values: Sequence[int] = K_VALUES,
    seed: int = 42,
    sae_full_probe: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Per SAE: accuracies averaged over classes, and per class (`{key: {class: acc}}`).

    Rows of `resid_ND` and `feats[...]` follow `dataset.texts()`. Every SAE and the
    baseline see the same balanced samples.
    """
    _, splits, labels = dataset.texts()
    splits_arr = np.asarray(splits)
    tr_rows, te_rows = np.flatnonzero(splits_arr == "train"), np.flatnonzero(splits_arr == "test")
    tr_labels, te_labels = [labels[i] for i in tr_rows], [labels[i] for i in te_rows]
    per_class: dict[str, dict[str, dict[str, float]]] = {name: {} for name in feats}
    for c_index, cls in enumerate(dataset.classes):
        rng = np.random.default_rng([seed, c_index])
        i_tr, y_tr = balanced_indices(tr_labels, cls, rng)
        i_te, y_te = balanced_indices(te_labels, cls, rng)
        train, test = (tr_rows[i_tr], y_tr), (te_rows[i_te], y_te)
        llm = probe_class(resid_ND.float(), train, test, k_values, "llm")
        for name, X_NF in feats.items():
            scores = {
                **llm,
                **probe_class(X_NF.float(), train, test, k_values, "sae", sae_full_probe),
            }
            for key, value in scores.items():
                per_class[name].setdefault(key, {})[cls] = value
    means = {
        name: {key: float(np.mean(list(v.values()))) for key, v in d.items()}
        for name, d in per_class.items()
    }
    return means, per_class


def accuracy_se(per_dataset: Sequence[Mapping[str, float]], n_test: int) -> float:
    """Binomial standard error of an accuracy averaged over classes, then datasets.

    `per_dataset` holds each dataset's per-class accuracies, each measured on `n_test`
    test examples. Classes and datasets are treated as independent; this is the error from
    the finite test sets only (which training texts were drawn adds to it).
    """
    variances = [
        sum(p * (1 - p) / n_test for p in accs.values()) / len(accs) ** 2 for accs in per_dataset
    ]
    return math.sqrt(sum(variances)) / len(variances)


def run_sparse_probing(
    lm,
    hook: str,
    saes: Mapping[str, torch.nn.Module],
    datasets: Sequence[str | LabelledDataset],
    *,
    k_values: Sequence[int] = K_VALUES,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    context: int = 128,
    prepend_bos: bool = True,
    batch_rows: int = 16,
    seed: int = 42,
    sae_full_probe: bool = True,
    cache: PooledCache | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Sparse probing of every SAE in `saes` (all reading `hook`): `{name: SAEBench-style result}`.

    One model pass per dataset serves all SAEs and the residual baselines.
    """
    if not saes:
        raise ValueError("no SAE to probe")
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in saes}
    unstructured: dict[str, dict[str, Any]] = {name: {} for name in saes}
    summaries = []
    timings = dict.fromkeys(("data", "activations", "probes"), 0.0)
    for spec in tqdm(datasets, desc="sparse probing", disable=not progress):
        started = time.perf_counter()
        data = (
            spec
            if isinstance(spec, LabelledDataset)
            else load_labelled(spec, train_per_class, test_per_class, seed=seed)
        )
        summaries.append(data.summary())
        texts, _, _ = data.texts()
        timings["data"] += time.perf_counter() - started
        started = time.perf_counter()
        resid_ND, feats = pooled_activations(
            lm, hook, texts, saes, context=context, prepend_bos=prepend_bos,
            batch_rows=batch_rows, cache=cache, progress=progress,
        )  # fmt: skip
        timings["activations"] += time.perf_counter() - started
        started = time.perf_counter()
        means, per_class = probe_dataset(data, resid_ND, feats, k_values, seed, sae_full_probe)
        timings["probes"] += time.perf_counter() - started
        for name in saes:
            details[name].append({"dataset_name": data.name, **means[name]})
            unstructured[name][f"{data.name}_results"] = per_class[name]
    config = {
        "k_values": list(k_values), "train_per_class": train_per_class,
        "test_per_class": test_per_class, "context_length": context, "random_seed": seed,
        "prepend_bos": prepend_bos, "dataset_names": [s["dataset_name"] for s in summaries],
    }  # fmt: skip
    results = {}
    for name in saes:
        keys = [k for k in details[name][0] if k != "dataset_name"]
        avg = {k: float(np.mean([d[k] for d in details[name]])) for k in keys}
        per_key = unstructured[name].values()
        se = {key: accuracy_se([d[key] for d in per_key], 2 * test_per_class) for key in keys}
        results[name] = {
            "eval_type_id": EVAL_TYPE_ID,
            "standard_errors": se,  # saekit's: binomial, from the test sets' size
            "eval_config": config,
            "eval_result_metrics": {
                "llm": {k: v for k, v in avg.items() if k.startswith("llm_")},
                "sae": {k: v for k, v in avg.items() if k.startswith("sae_")},
            },
            "eval_result_details": details[name],
            "eval_result_unstructured": unstructured[name],
            "datasets": summaries,
            "timings_s": {k: round(v, 2) for k, v in timings.items()},  # shared by the SAEs
        }
    return results
