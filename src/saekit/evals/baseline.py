"""What an evaluation computes without the SAE, computed once and shared.

The clean, zero-ablated and mean-ablated next-token losses depend on the model, the hooks the
SAEs write to and the evaluation tokens, not on the SAEs. A `Baseline` holds them per batch,
together with the residual stream at the fork and the clean next-token distribution at the
counted positions (`CleanDistribution`), so that an SAE's evaluation runs only its own spliced
suffix. `BaselineStore` keeps
baselines in memory (the SAEs of a run, its periodic evaluations) and, given a folder, on disk
as one safetensors file per content key (across runs and `saekit eval` calls): a hash of the
model (name, class, config, dtype, device type, and a checksum of every weight), the fork, the
hooks, any given ablation means, and the token ids and keep masks.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from saekit.evals.forward import CleanDistribution, ForkedModel, clean_losses, token_losses
from saekit.evals.spliced import ablated, ablated_stream, loss_positions, next_token_targets
from saekit.fileio import atomic_write
from saekit.paths import cache_root

FORMAT = 2  # bump when what a baseline holds, or how it is computed, changes
MEMORY_LARGE_BYTES = 1 << 30  # residual streams kept in memory up to this size, in all
DISK_LARGE_BYTES = 1 << 28  # ... and written to disk up to this size
MEMORY_ENTRIES = 4
EVAL_CACHE_ENV = "SAEKIT_EVAL_CACHE"
_SAMPLES = 1024  # weight elements hashed per tensor, besides its sum


@dataclass
class BatchBaseline:
    """One batch's SAE-independent part; the large tensors may be absent (then recomputed).

    Attributes:
        ce_clean_M: next-token CE of the clean model at the M counted positions.
        ce_zero_M, ce_mean_M: the same with each output hook zero- / mean-ablated.
        kl_zero_M: KL(clean || zero-ablated) at the counted positions, per output hook (the
            denominator of SAEBench's `kl_div_score`).
        resid_BTD: the residual stream at the fork (`ForkedModel.prefix`).
        clean: the clean next-token distribution at the counted positions, for the KL.
    """

    ce_clean_M: Tensor
    ce_zero_M: dict[str, Tensor]
    ce_mean_M: dict[str, Tensor] = field(default_factory=dict)
    kl_zero_M: dict[str, Tensor] = field(default_factory=dict)
    resid_BTD: Tensor | None = None
    clean: CleanDistribution | None = None


@dataclass
class Baseline:
    """Every batch's `BatchBaseline` and the mean activation each hook was ablated to."""

    key: str
    batches: list[BatchBaseline]
    mean_D: dict[str, Tensor]

    def large_bytes(self) -> int:
        """Bytes held by the residual streams and clean distributions."""
        return sum(
            t.numel() * t.element_size()
            for b in self.batches
            for t in (b.resid_BTD, *_clean_tensors(b.clean).values())
            if t is not None
        )

    def save(self, path: Path, with_large: bool) -> None:
        """One safetensors file (the large tensors only if `with_large`)."""
        tensors = {f"mean.{h}": m.float().contiguous() for h, m in self.mean_D.items()}
        for i, b in enumerate(self.batches):
            tensors[f"{i}.clean"] = b.ce_clean_M
            tensors.update({f"{i}.zero.{h}": ce for h, ce in b.ce_zero_M.items()})
            tensors.update({f"{i}.mean.{h}": ce for h, ce in b.ce_mean_M.items()})
            tensors.update({f"{i}.klzero.{h}": kl for h, kl in b.kl_zero_M.items()})
            if with_large:
                large = {"resid": b.resid_BTD, **_clean_tensors(b.clean)}
                tensors.update({f"{i}.{k}": t for k, t in large.items() if t is not None})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format": str(FORMAT), "key": self.key, "batches": str(len(self.batches))}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: Path, key: str, device: torch.device) -> Baseline:
        """Read a file written by `save` (ValueError if it holds another key)."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != str(FORMAT) or meta.get("key") != key:
            raise ValueError(f"{path} holds another baseline")
        tensors = load_file(str(path), device=str(device))
        batches = []
        for i in range(int(meta["batches"])):
            prefix = f"{i}."

            def part(kind: str, i: int = i) -> dict[str, Tensor]:
                head = f"{i}.{kind}."
                return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}

            batches.append(
                BatchBaseline(
                    tensors[prefix + "clean"], part("zero"), part("mean"), part("klzero"),
                    tensors.get(prefix + "resid"), _clean_from(tensors, prefix),
                )
            )  # fmt: skip
        means = {k[5:]: v for k, v in tensors.items() if k.startswith("mean.")}
        return cls(key, batches, means)


class BaselineStore:
    """Baselines by key: in memory, and in `folder` on disk when one is given."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, Baseline] = {}

    @classmethod
    def default(cls) -> BaselineStore:
        """A store in `$SAEKIT_EVAL_CACHE` (`off`: memory only), else `$SAEKIT_CACHE/eval`."""
        folder = os.environ.get(EVAL_CACHE_ENV)
        if folder == "off":
            return cls()
        return cls(Path(folder) if folder else cache_root() / "eval")

    def get(self, key: str, device: torch.device) -> Baseline | None:
        """The baseline with this key, or None."""
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            baseline = Baseline.load(path, key, device)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
            warnings.warn(f"ignoring unreadable evaluation cache {path}: {err}", stacklevel=2)
            return None
        self._remember(baseline)
        return baseline

    def put(self, baseline: Baseline) -> None:
        """Keep `baseline` in memory and, with a folder, write it to disk."""
        self._remember(baseline)
        path = self._path(baseline.key)
        if path is not None:
            try:
                baseline.save(path, with_large=baseline.large_bytes() <= DISK_LARGE_BYTES)
            except OSError as err:
                warnings.warn(f"could not cache the evaluation baseline: {err}", stacklevel=2)

    def _remember(self, baseline: Baseline) -> None:
        self._memory[baseline.key] = baseline
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.pop(next(iter(self._memory)))

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key[:40]}.safetensors"


def model_fingerprint(lm) -> dict[str, str]:
    """What identifies the model's function: name, class, config, dtype, device type, and a
    digest of every weight (its float64 sum and up to `_SAMPLES` evenly spaced elements)."""
    model = lm.model
    config = repr(model.cfg) if lm.backend == "tl" else model.config.to_json_string()
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().flatten()
        step = max(1, flat.numel() // _SAMPLES)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(repr(flat.double().sum().item()).encode())
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return {
        "spec": lm.spec, "class": type(model).__name__, "dtype": str(lm.dtype),
        "device": lm.device.type, "config": hashlib.sha256(config.encode()).hexdigest(),
        "weights": digest.hexdigest(),
    }  # fmt: skip


def baseline_key(
    forked: ForkedModel,
    hooks_out: Sequence[str],
    batches: Sequence[tuple[Tensor, Tensor]],
    mean_acts: Mapping[str, Tensor],
) -> str:
    """A content hash of everything a baseline depends on."""
    head = {
        "format": FORMAT, "model": model_fingerprint(forked.lm), "fork": forked.fork,
        "head": forked.head, "hooks": sorted(hooks_out), "means": sorted(mean_acts),
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for hook in sorted(mean_acts):
        digest.update(mean_acts[hook].detach().double().cpu().numpy().tobytes())
    for ids_BT, keep_BT in batches:
        digest.update(repr(tuple(ids_BT.shape)).encode())
        digest.update(ids_BT.cpu().numpy().tobytes())
        digest.update(keep_BT.cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute_baseline(
    forked: ForkedModel,
    batches: Sequence[tuple[Tensor, Tensor]],
    hooks_out: Sequence[str],
    mean_acts: Mapping[str, Tensor],
    key: str,
    progress: bool = False,
) -> Baseline:
    """The clean and ablated losses of every batch; hooks without a given mean are ablated to
    the mean of their clean activation over the kept tokens (a second pass)."""
    lm = forked.lm
    counted = sum(int(loss_positions(keep).sum()) for _, keep in batches)
    large = sum(ids.numel() for ids, _ in batches) + counted
    keep_large = forked.head and large * lm.d_model * lm.dtype.itemsize <= MEMORY_LARGE_BYTES
    sums = {hook: [0.0, 0] for hook in hooks_out if hook not in mean_acts}
    records = []
    bar = tqdm(total=len(batches) * (2 if sums else 1), desc="eval baseline", disable=not progress)
    for input_ids_BT, keep_BT in batches:
        positions_BT = loss_positions(keep_BT)
        targets_M = next_token_targets(input_ids_BT, positions_BT)
        resid_BTD = forked.prefix(input_ids_BT)
        with ExitStack() as stack:
            for hook, acc in sums.items():
                stack.enter_context(lm.splice(hook, _summing(acc, keep_BT)))
            clean_in_MD = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
        ce_clean_M, clean = clean_losses(forked, clean_in_MD, targets_M)
        record = BatchBaseline(ce_clean_M, {})
        for hook in hooks_out:
            record.ce_zero_M[hook], record.kl_zero_M[hook] = ablated_losses(
                forked, resid_BTD, input_ids_BT, keep_BT, hook, None, clean
            )
            if hook in mean_acts:
                record.ce_mean_M[hook] = ablated_ce(
                    forked, resid_BTD, input_ids_BT, keep_BT, hook, mean_acts[hook]
                )
        if keep_large:
            record.resid_BTD, record.clean = resid_BTD, clean
        records.append(record)
        bar.update()
    means = {hook: mean_acts[hook] for hook in hooks_out if hook in mean_acts}
    for hook, (total_D, n) in sums.items():
        means[hook] = (total_D / n).float() if n else torch.zeros(lm.hook_dim(hook))
    for record, (input_ids_BT, keep_BT) in zip(records, batches, strict=True):
        resid_BTD = record.resid_BTD if keep_large else forked.prefix(input_ids_BT)
        for hook in sums:
            record.ce_mean_M[hook] = ablated_ce(
                forked, resid_BTD, input_ids_BT, keep_BT, hook, means[hook]
            )
        bar.update(bool(sums))
    bar.close()
    return Baseline(key, records, means)


def ablated_ce(
    forked: ForkedModel,
    resid_BTD: Tensor | None,
    input_ids_BT: Tensor,
    keep_BT: Tensor,
    hook: str,
    value_D: Tensor | None,
) -> Tensor:
    """Next-token CE at the counted positions with `hook` zero- (None) or value-ablated."""
    return ablated_losses(forked, resid_BTD, input_ids_BT, keep_BT, hook, value_D)[0]


def ablated_losses(
    forked: ForkedModel,
    resid_BTD: Tensor | None,
    input_ids_BT: Tensor,
    keep_BT: Tensor,
    hook: str,
    value_D: Tensor | None,
    clean: CleanDistribution | None = None,
) -> tuple[Tensor, Tensor]:
    """`ablated_ce` and, given the clean distribution, KL(clean || ablated) at the same
    positions (else an empty tensor).

    When `hook` is the stream the suffix starts from (and the suffix reads nothing else), an
    ablated window differs from another only at the positions it keeps clean (BOS, separators),
    so windows whose ablated streams are identical (bit for bit) run the suffix and the
    unembedding once: the same numbers up to the rounding of a smaller batch.
    """
    positions_BT = loss_positions(keep_BT)
    targets_M = next_token_targets(input_ids_BT, positions_BT)
    shared = resid_BTD is not None and forked.starts_at(hook)
    if shared and forked.suffix_reads_only_resid(input_ids_BT):
        streams_BTD = ablated_stream(resid_BTD, value_D, keep_BT)  # the suffix's whole input
        first_U, row_B = _distinct_rows(streams_BTD, keep_BT)
        head_in_UTD = forked.suffix(streams_BTD[first_U], input_ids_BT[first_U])
        T = input_ids_BT.shape[1]
        slot_BT = row_B[:, None] * T + torch.arange(T, device=row_B.device)
        slot_M = slot_BT[positions_BT.to(slot_BT.device)]
        used_N, index_M = torch.unique(slot_M, return_inverse=True)  # the rows tokens read
        head_in_ND = head_in_UTD.flatten(0, 1)[used_N]
    else:
        with ablated(forked.lm, hook, value_D, keep_BT):
            head_in_ND = forked.suffix(resid_BTD, input_ids_BT)[positions_BT]
        index_M = None
    ce_M, kl_M = token_losses(forked, head_in_ND, targets_M, clean, index_M)
    return ce_M, (kl_M if kl_M is not None else ce_M.new_zeros(0))


def _distinct_rows(streams_BTD: Tensor, keep_BT: Tensor) -> tuple[Tensor, Tensor]:
    """The first window of each distinct (stream, keep mask) pair, bit for bit, `[U]`, and each
    window's pair `[B]` (windows that differ only in what they keep stay apart)."""
    bits_BK = streams_BTD.flatten(1).contiguous().view(_SAME_WIDTH_INT[streams_BTD.element_size()])
    keep_BK = keep_BT.to(bits_BK.device).flatten(1).to(bits_BK.dtype)
    _, row_B = torch.unique(torch.cat([bits_BK, keep_BK], dim=1), dim=0, return_inverse=True)
    batch_B = torch.arange(row_B.shape[0], device=row_B.device)
    first_U = torch.full((int(row_B.max()) + 1,), row_B.shape[0], device=row_B.device)
    return first_U.scatter_reduce(0, row_B, batch_B, reduce="amin"), row_B


_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # by element size
_CLEAN_FIELDS = {"clean_in": "head_in_MD", "clean_u": "u_MD", "clean_k": "k_M"}


def _clean_tensors(clean: CleanDistribution | None) -> dict[str, Tensor | None]:
    return {k: getattr(clean, f) for k, f in _CLEAN_FIELDS.items()} if clean else {}


def _clean_from(tensors: dict[str, Tensor], prefix: str) -> CleanDistribution | None:
    found = {f: tensors.get(prefix + k) for k, f in _CLEAN_FIELDS.items()}
    return CleanDistribution(**found) if any(t is not None for t in found.values()) else None


def _summing(acc: list, keep_BT: Tensor):
    """A splice fn that adds the kept positions' activations to `acc = [sum_D, count]`."""

    def grab(act_BTD: Tensor) -> Tensor:
        kept_ND = act_BTD[keep_BT.to(act_BTD.device)].double()
        acc[0] = acc[0] + kept_ND.sum(dim=0)
        acc[1] += kept_ND.shape[0]
        return act_BTD

    return grab
