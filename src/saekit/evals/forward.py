"""The model split at the residual stream: run the prefix once, fork the suffixes from it.

Every forward of an evaluation (clean, SAE spliced, zero- and mean-ablated) agrees on the layers
before the earliest hook it touches, so `ForkedModel` runs those once (`prefix`) and starts
each variant from the saved residual stream (`suffix`), which stops at the unembedding's input.
The unembedding itself (`logits`) runs only at the counted positions, a chunk of tokens at a
time (`token_losses`; tokens that share an input share its row), so a full `[tokens, vocab]`
log-softmax is never held in memory.

- HF models: the suffix is HF's own forward with the decoder-layer list cut to the layers from
  the fork on and the fork layer's input replaced by the saved residual stream.
- TransformerLens models: `model(resid, start_at_layer=fork)`.

`ForkedModel.of` checks on one window that the prefix + suffix + unembedding reproduce
`lm.logits`. A model that does not (per-layer settings indexed by position, a logit scale
the unembedding does not apply) falls back to a suffix from the tokens, and then to full logits,
so the numbers stay those of the full forward.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.models.hooks import capture

CHUNK_ELEMENTS = 1 << 23  # logits per chunk in `token_losses` (32 MB of float32)
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # else (half types): 2e-2
_FAILURES = (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError)
_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {settings: ok}


class ForkedModel:
    """`lm` split at the input of decoder layer `fork` (None: every suffix starts at the tokens).

    `head` True: `suffix` stops at the unembedding's input and `logits` applies it; False:
    `suffix` returns the logits and `logits` is the identity.
    """

    def __init__(self, lm, fork: int | None, head: bool = True) -> None:
        self.lm = lm
        self.fork = fork
        self.head = head and _head_input_hook(lm) is not None

    @classmethod
    def of(cls, lm, hooks: Sequence[str], sample_ids_BT: Tensor) -> ForkedModel:
        """The cheapest split that reproduces `lm.logits` on `sample_ids_BT` (checked once)."""
        fork = fork_layer(lm, hooks)
        for settings in dict.fromkeys(((fork, True), (fork, False), (None, True))):
            forked = cls(lm, *settings)
            if (forked.fork, forked.head) == settings and forked.reproduces_logits(sample_ids_BT):
                return forked
        return cls(lm, None, head=False)  # the full forward itself

    @property
    def vocab(self) -> int:
        """Width of the logits."""
        return self.lm.unembed_matrix().shape[1]

    def prefix(self, input_ids_BT: Tensor) -> Tensor | None:
        """The residual stream at the input of layer `fork`, `[B, T, D]` (None without a fork)."""
        if self.fork is None:
            return None
        name = f"blocks.{self.fork}.hook_resid_pre"
        return self.lm.run_to_hooks(input_ids_BT, [name])[name]

    @torch.no_grad()
    def suffix(self, resid_BTD: Tensor | None, input_ids_BT: Tensor) -> Tensor:
        """The rest of the forward from `resid_BTD` (splices in effect): the unembedding's input
        `[B, T, D]`, or the logits `[B, T, V]` when `head` is False."""
        lm = self.lm
        if self.fork is None:
            forward = lambda: lm.logits(input_ids_BT)  # noqa: E731
            started = nullcontext()
        elif lm.backend == "tl":
            forward = lambda: lm.model(resid_BTD, start_at_layer=self.fork)  # noqa: E731
            started = nullcontext()
        else:
            forward = lambda: lm.logits(input_ids_BT)  # noqa: E731
            started = _hf_started_at(lm, self.fork, resid_BTD)
        with started:
            if not self.head:
                return forward()
            name = _head_input_hook(lm)
            return capture(lm, forward, [name])[name]

    def logits(self, head_in_ND: Tensor) -> Tensor:
        """Logits `[N, V]` from the unembedding's input (identity when `head` is False)."""
        if not self.head:
            return head_in_ND
        lm = self.lm
        if lm.backend == "tl":
            logits_NV = lm.model.unembed(head_in_ND)
            cap = lm.model.cfg.output_logits_soft_cap
        else:
            logits_NV = lm.model.get_output_embeddings()(head_in_ND)
            cap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None and cap > 0:  # TransformerLens: -1 when there is none
            logits_NV = torch.tanh(logits_NV / cap) * cap
        return logits_NV

    def affine_head(self) -> Tensor | None:
        """`W [V, D]` when `logits` is `h @ W.T + b` in float32 or float64, else None."""
        lm = self.lm
        if not self.head or lm.dtype not in (torch.float32, torch.float64):
            return None
        if lm.backend == "tl":
            if lm.model.cfg.output_logits_soft_cap > 0:
                return None
            return lm.model.unembed.W_U.T
        head = lm.model.get_output_embeddings()
        cap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
        if type(head) is not nn.Linear or (cap is not None and cap > 0):
            return None
        return head.weight

    def reproduces_logits(self, input_ids_BT: Tensor) -> bool:
        """Whether prefix + suffix + unembedding give `lm.logits` (cached per model)."""
        cache = _VERIFIED.setdefault(self.lm.model, {})
        settings = (self.fork, self.head, tuple(input_ids_BT.shape[1:]))
        if settings not in cache:
            ids_BT = input_ids_BT.to(self.lm.device)
            try:
                with torch.no_grad():
                    want_BTV = self.lm.logits(ids_BT).float()
                    head_in = self.suffix(self.prefix(ids_BT), ids_BT)
                    got_BTV = self.logits(head_in).float()
                tolerance = _CHECK_TOLERANCE.get(self.lm.dtype, 2e-2)
                scale = want_BTV.abs().max().clamp_min(1e-6)
                cache[settings] = bool((got_BTV - want_BTV).abs().max() <= tolerance * scale)
            except _FAILURES:
                cache[settings] = False
        return cache[settings]

    def starts_at(self, hook: str) -> bool:
        """Whether `hook` reads the residual stream every suffix starts from."""
        if self.fork is None:
            return False
        point = self.lm.resolve_hook(hook)
        start = self.lm.resolve_hook(f"blocks.{self.fork}.hook_resid_pre")
        return (point.module, point.read) == (start.module, start.read)

    def suffix_reads_only_resid(self, input_ids_BT: Tensor) -> bool:
        """Whether the suffix's output depends on the saved residual stream alone, not on the
        token ids (checked once per model on one window with other tokens: a model that feeds
        token embeddings to later layers fails it)."""
        cache = _VERIFIED.setdefault(self.lm.model, {})
        settings = ("resid only", self.fork, self.head, tuple(input_ids_BT.shape[1:]))
        if settings not in cache:
            ids_1T = input_ids_BT[:1].to(self.lm.device)
            embeddings = getattr(self.lm.model, "get_input_embeddings", None)
            vocab = embeddings().num_embeddings if embeddings is not None else self.vocab
            try:
                resid_1TD = self.prefix(ids_1T)
                cache[settings] = resid_1TD is not None and torch.equal(
                    self.suffix(resid_1TD, ids_1T), self.suffix(resid_1TD, (ids_1T + 1) % vocab)
                )
            except _FAILURES:
                cache[settings] = False
        return cache[settings]


def suffix_capturing(
    forked: ForkedModel, resid_BTD: Tensor | None, input_ids_BT: Tensor, hooks: Sequence[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """`forked.suffix`, and copies of the activations at `hooks` (a module called twice: its
    first call) from the same forward."""
    acts: dict[str, Tensor] = {}

    def grabber(name: str):
        def grab(act_BTD: Tensor) -> Tensor:
            if name not in acts:
                acts[name] = act_BTD.clone()
            return act_BTD

        return grab

    with ExitStack() as stack:
        for name in dict.fromkeys(hooks):
            stack.enter_context(forked.lm.splice(name, grabber(name)))
        head_in = forked.suffix(resid_BTD, input_ids_BT)
    return head_in, acts


def fork_layer(lm, hooks: Sequence[str]) -> int | None:
    """The latest decoder layer whose input all `hooks` come after and which runs every module
    they are read at (None if one has no layer)."""
    layers = []
    for name in hooks:
        point = lm.resolve_hook(name)
        if point.layer is None:
            return None
        layers.append(point.layer)  # a layer's output hook fires only if the layer runs
    fork = min(layers)
    if lm.backend == "hf" and fork == lm.n_layers and not lm.layout.final_norm:
        return None
    return fork


def _head_input_hook(lm) -> str | None:
    """The module whose output the unembedding reads (the final norm)."""
    if lm.backend == "tl":
        return "ln_final" if lm.model.cfg.normalization_type else None
    return lm.layout.final_norm or None


@contextmanager
def _hf_started_at(lm, fork: int, resid_BTD: Tensor) -> Iterator[None]:
    """HF forwards run only layers `fork:`, whose first input is `resid_BTD`."""
    parent_path, _, attr = lm.layout.layers.rpartition(".")
    parent = lm.model.get_submodule(parent_path)
    layers = getattr(parent, attr)
    first = layers[fork] if fork < len(layers) else lm.model.get_submodule(lm.layout.final_norm)

    def start_here(_module, args, kwargs):
        if args:
            return (resid_BTD.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid_BTD.to(kwargs["hidden_states"].dtype)}

    handle = first.register_forward_pre_hook(start_here, with_kwargs=True, prepend=True)
    setattr(parent, attr, nn.ModuleList(list(layers)[fork:]))
    try:
        yield
    finally:
        setattr(parent, attr, layers)
        handle.remove()


@dataclass
class CleanDistribution:
    """The clean model's next-token distribution p at M positions, as much as KL(p || q) needs.

    Either the unembedding input `head_in_MD` (p is recomputed at each use), or, for an affine
    unembedding z = W h + b, `u_MD = W^T p` and `k_M = u.h - logsumexp(z)`: then
    KL(p || softmax(z')) = k - u.h' + logsumexp(z') for z' = W h' + b (the bias cancels), one
    matmul fewer per use. Both dot products and the logsumexps are float64 (`logsumexp64`: the
    exponentials in float32, within about 1e-7, summed in float64), so the difference carries
    the rounding of `u` times h - h' and about 1e-7 from the exponentials.
    """

    head_in_MD: Tensor | None = None
    u_MD: Tensor | None = None
    k_M: Tensor | None = None


def clean_losses(
    forked: ForkedModel, head_in_MD: Tensor, targets_M: Tensor
) -> tuple[Tensor, CleanDistribution]:
    """The clean model's next-token CE `[M]` and its distribution for later KLs (the compact
    form when the unembedding is affine and the model float32 or float64)."""
    weight_VD = forked.affine_head()
    if weight_VD is None:
        return token_losses(forked, head_in_MD, targets_M)[0], CleanDistribution(head_in_MD)
    weight_VD = weight_VD.float()
    ce, u, k = [], [], []
    for part in _chunks(forked, targets_M.shape[0]):
        logits_CV = forked.logits(head_in_MD[part]).float()
        lse_C = logsumexp64(logits_CV)
        ce.append((lse_C - logits_CV.gather(1, targets_M[part, None]).squeeze(1)).float())
        u_CD = logits_CV.sub_(lse_C.float()[:, None]).exp_() @ weight_VD
        u.append(u_CD)
        k.append(_dot(u_CD, head_in_MD[part]) - lse_C)
    width = weight_VD.shape[1]
    return _cat(ce, head_in_MD), CleanDistribution(
        None, _cat(u, head_in_MD, width), _cat(k, head_in_MD).double()
    )


def token_losses(
    forked: ForkedModel,
    head_in_ND: Tensor,
    targets_M: Tensor,
    clean: CleanDistribution | None = None,
    index_M: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Next-token CE `[M]` of the logits from the unembedding inputs against `targets_M`, and,
    given the clean distribution, KL(clean || these) `[M]`; both float32, computed a chunk of
    rows at a time. Token m reads row `index_M[m]` of `head_in_ND` (default: row m), so tokens
    that share an input (identical rows of a deduplicated forward) are unembedded once."""
    rows_in = head_in_ND.shape[0]
    if index_M is None:
        if rows_in != targets_M.shape[0]:
            raise ValueError(f"{rows_in} unembedding inputs for {targets_M.shape[0]} targets")
        index_M = torch.arange(rows_in, device=targets_M.device)
    index_M = index_M.to(targets_M.device)
    if index_M.shape != targets_M.shape or (
        index_M.numel() and not 0 <= int(index_M.min()) <= int(index_M.max()) < rows_in
    ):
        raise ValueError(f"index_M must give each of the {targets_M.shape[0]} targets one of "
                         f"the {rows_in} input rows")  # fmt: skip
    compact = clean is not None and clean.u_MD is not None
    ce_M = torch.empty(targets_M.shape, dtype=torch.float32, device=head_in_ND.device)
    kl_M = None if clean is None else torch.empty_like(ce_M)
    order_M = torch.argsort(index_M, stable=True)  # tokens grouped by the row they read
    bounds = torch.searchsorted(index_M[order_M], torch.arange(rows_in + 1, device=index_M.device))
    rows = max(1, CHUNK_ELEMENTS // forked.vocab)
    for part in _chunks(forked, rows_in):
        logits_CV = forked.logits(head_in_ND[part]).float()
        lse_C = logsumexp64(logits_CV) if compact else logits_CV.logsumexp(dim=-1)
        first, last = int(bounds[part.start]), int(bounds[min(part.stop, len(bounds) - 1)])
        for start in range(first, last, rows):
            tok = order_M[start : min(start + rows, last)]  # the tokens reading this chunk
            row = index_M[tok] - part.start
            z_target = logits_CV[row, targets_M[tok]]
            ce_M[tok] = (lse_C[row] - z_target).float()
            if clean is None:
                continue
            if compact:
                assert clean.u_MD is not None and clean.k_M is not None
                dot = _dot(clean.u_MD[tok], head_in_ND[part][row])
                kl_M[tok] = (clean.k_M[tok].double() - dot + lse_C[row]).float()
            else:
                assert clean.head_in_MD is not None
                clean_logp_CV = forked.logits(clean.head_in_MD[tok]).float().log_softmax(dim=-1)
                logp_CV = logits_CV[row] - lse_C[row, None]
                kl_M[tok] = (clean_logp_CV.exp() * (clean_logp_CV - logp_CV)).sum(dim=-1)
    return ce_M, kl_M


def logsumexp64(logits_CV: Tensor) -> Tensor:
    """`logits.logsumexp(-1)` as float64: the exponentials (of float32 logits less their row
    maximum) in float32, within about 1e-7 of their float64 values, summed in float64."""
    max_C1 = logits_CV.amax(dim=-1, keepdim=True)
    total_C = (logits_CV - max_C1).exp_().sum(dim=-1, dtype=torch.float64)
    return max_C1.squeeze(1).double() + total_C.log()


def _dot(a_CD: Tensor, b_CD: Tensor) -> Tensor:
    return (a_CD.double() * b_CD.double()).sum(dim=-1)


def _chunks(forked: ForkedModel, n: int) -> list[slice]:
    rows = max(1, CHUNK_ELEMENTS // forked.vocab)
    return [slice(start, start + rows) for start in range(0, n, rows)]


def _cat(parts: list[Tensor], like: Tensor, *width: int) -> Tensor:
    return torch.cat(parts) if parts else like.new_zeros((0, *width), dtype=torch.float32)
