"""Token sets over a tokenizer's vocabulary, and token set enrichment analysis (TSEA).

Sets are `{name: set of token ids}` built from the vocabulary's token strings (`Ġ` marks a
leading space in byte-level BPE vocabularies such as GPT-2's and SmolLM2's):

- `regex_sets(vocab, {name: pattern})`: tokens whose string matches (`re.match`).
- `letter_sets(vocab)`: alphabetic tokens by first letter (`a` ... `z`).
- `pos_sets(vocab)`: part-of-speech tags (Penn Treebank names, `pos_NN`, `pos_VBD`, ...) of
  whole-word tokens, from the SPECIALIST lexicon shipped in the `lemminflect` wheel plus
  closed-class word lists here; no model, no download. A word may carry several tags
  (`run`: NN, VB, VBP, VBN): the lexicon gives every reading, not one guess in context.
- `name_sets(vocab, k)`: the `k` most common US first names (1990 census lists shipped by
  the `names` package) as `boys_names` / `girls_names`.
- `word_list_sets(tokenizer, {name: words})`: the tokens of ` word` for each word.

`ks_enrichment(scores_FV, sets)` scores how strongly each feature's ranking of the vocabulary
(e.g. its logit weights) puts a set's tokens first: the running-sum statistic of gene set
enrichment analysis (max |running sum|, hits add 1/|S|, misses subtract 1/(V-|S|)), in [0, 1];
the original logit-lens tutorial plots `-log(1 - score)`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

SPACE = "Ġ"

_CLOSED_CLASSES = {
    "PRP": "i you he she it we they me him her us them myself yourself himself herself itself "
    "ourselves themselves",
    "PRP$": "my your his her its our their",
    "WP": "who whom what whoever whatever", "WP$": "whose",
    "WDT": "which that whichever whatever", "WRB": "where when why how whenever wherever",
    "DT": "the a an this that these those each every some any no another all both either "
    "neither",
    "IN": "of in on at by for with from about into through over under between after before "
    "during without within against among upon since until because although while if than "
    "whether",
    "CC": "and or but nor yet so", "MD": "can could may might must shall should will would",
    "TO": "to", "EX": "there",
}  # fmt: skip
_OPEN_TAGS = {"NOUN": "NN", "VERB": "VB", "AUX": "VB", "ADJ": "JJ", "ADV": "RB"}


def clean(token: str) -> str:
    """A vocabulary string without its leading-space marker."""
    return token.replace(SPACE, " ").strip()


def regex_sets(vocab: Mapping[str, int], patterns: Mapping[str, str]) -> dict[str, set[int]]:
    """`{name: ids of tokens whose vocabulary string matches the pattern}`."""
    compiled = {name: re.compile(p) for name, p in patterns.items()}
    return {name: {i for t, i in vocab.items() if rx.match(t)} for name, rx in compiled.items()}


def letter_sets(vocab: Mapping[str, int]) -> dict[str, set[int]]:
    """Alphabetic tokens by their first letter, lower-cased: `{"a": {...}, ..., "z": {...}}`."""
    sets: dict[str, set[int]] = {c: set() for c in string.ascii_lowercase}
    for token, i in vocab.items():
        word = clean(token)
        if word.isascii() and word.isalpha():
            sets[word[0].lower()].add(i)
    return sets


def pos_tags(word: str) -> set[str]:
    """Penn Treebank tags a word can have (empty if the lexicon does not know it)."""
    import lemminflect

    lower = word.lower()
    tags = {tag for tag, words in _CLOSED_WORDS.items() if lower in words}
    if word.isdigit():
        tags.add("CD")
    if not word.isalpha():
        return tags
    lemmas = lemminflect.getAllLemmas(word) or (lemminflect.getAllLemmas(lower) if word.istitle() else {})
    for upos, forms in lemmas.items():
        for lemma in forms:
            inflected = lemminflect.getAllInflections(lemma, upos)
            tags.update(t for t, words in inflected.items() if lower in {w.lower() for w in words})
            if lemma.lower() == lower and upos in _OPEN_TAGS:
                tags.add(_OPEN_TAGS[upos])
    if len(word) > 1 and word.istitle() and (not lemmas or lower in _first_names()):
        tags.add("NNP")
    return tags


def pos_sets(vocab: Mapping[str, int], prefix: str = "pos_") -> dict[str, set[int]]:
    """`{prefix + tag: ids}` of whole-word tokens (ASCII letters or digits) by tag."""
    sets: dict[str, set[int]] = {}
    cache: dict[str, set[str]] = {}
    for token, i in vocab.items():
        word = clean(token)
        if not word or not word.isascii() or not word.isalnum():
            continue
        if word not in cache:
            cache[word] = pos_tags(word)
        for tag in cache[word]:
            sets.setdefault(prefix + tag, set()).add(i)
    return dict(sorted(sets.items()))


_CLOSED_WORDS = {tag: set(words.split()) for tag, words in _CLOSED_CLASSES.items()}


def first_names(gender: str, k: int | None = None) -> list[str]:
    """The most common US first names ("male" or "female"), most common first, capitalised."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("names")
    if spec is None or spec.origin is None:
        raise ImportError("name lists need the `names` package: pip install names")
    path = Path(spec.origin).parent / f"dist.{gender}.first"
    rows = [line.split()[0].title() for line in path.read_text().splitlines() if line.strip()]
    return rows[:k] if k else rows


def _first_names() -> set[str]:
    if not _NAMES:
        try:
            _NAMES.update(n.lower() for g in ("male", "female") for n in first_names(g, 1000))
        except ImportError:
            _NAMES.add("")
    return _NAMES


_NAMES: set[str] = set()


def name_sets(vocab: Mapping[str, int], k: int = 300) -> dict[str, set[int]]:
    """`boys_names` / `girls_names`: tokens ` Name` of the `k` most common US first names."""
    out = {}
    for name, gender in (("boys_names", "male"), ("girls_names", "female")):
        wanted = {SPACE + n for n in first_names(gender, k)}
        out[name] = {i for t, i in vocab.items() if t in wanted}
    return out


def word_list_sets(tokenizer, lists: Mapping[str, Iterable[str]]) -> dict[str, set[int]]:
    """`{name: every token id of " word" for each word in the list}`."""
    return {
        name: {i for w in words for i in tokenizer.encode(f" {w}", add_special_tokens=False)}
        for name, words in lists.items()
    }


def set_masks(sets: Mapping[str, Iterable[int]], vocab_size: int) -> tuple[list[str], Tensor]:
    """`(names, member_SV)`: one boolean row per non-empty set."""
    names, rows = [], []
    for name, ids in sets.items():
        ids = [i for i in ids if 0 <= i < vocab_size]
        if ids:
            row = torch.zeros(vocab_size, dtype=torch.bool)
            row[ids] = True
            names.append(name)
            rows.append(row)
    if not rows:
        raise ValueError("every token set is empty")
    return names, torch.stack(rows)


@torch.no_grad()
def ks_enrichment(scores_FV: Tensor, member_SV: Tensor, chunk: int = 256) -> Tensor:
    """GSEA running-sum enrichment `[S, F]` of each set in each feature's ranking (module doc)."""
    S, V = member_SV.shape
    size_S1 = member_SV.sum(1, keepdim=True).double()
    hit_S1, miss_S1 = 1.0 / size_S1, 1.0 / (V - size_S1).clamp_min(1)
    out = torch.empty(S, scores_FV.shape[0], dtype=torch.float64)
    member_SV = member_SV.to(scores_FV.device)
    for start in range(0, scores_FV.shape[0], chunk):
        order_CV = scores_FV[start : start + chunk].argsort(dim=1, descending=True)
        for s in range(S):
            hits_CV = member_SV[s][order_CV].double()
            steps_CV = hits_CV * hit_S1[s] - (1 - hits_CV) * miss_S1[s]
            out[s, start : start + chunk] = steps_CV.cumsum(1).abs().amax(1).cpu()
    return out.float()


@torch.no_grad()
def moments(values_FV: Tensor) -> dict[str, Tensor]:
    """`mean`, `std`, `skewness`, `kurtosis` (not excess) of each row, as `[F]` tensors."""
    x_FV = values_FV.double()
    mean_F = x_FV.mean(1)
    centred_FV = x_FV - mean_F[:, None]
    std_F = centred_FV.pow(2).mean(1).sqrt()
    z_FV = centred_FV / std_F.clamp_min(1e-12)[:, None]
    stats = {"mean": mean_F, "std": std_F, "skewness": z_FV.pow(3).mean(1), "kurtosis": z_FV.pow(4).mean(1)}
    return {k: v.float().cpu() for k, v in stats.items()}
