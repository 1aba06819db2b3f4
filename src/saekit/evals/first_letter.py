"""The first-letter task of SAEBench's absorption eval: words, prompts, activations, probes.

Words are the model's own vocabulary: tokens that are letters only (after an optional
leading space). They are split 80/20 into train and test words. A word is shown in an
in-context prompt, SAEBench's template `{word} has the first letter:` followed by the
answer (` C` for "cat"), and the activation at the hook is read at the word's last token.

`words_per_prompt=1` builds SAEBench's prompts exactly: `n_icl` random examples from the
same split, then the word. Larger values pack several query words into one prompt after the
`n_icl` examples (each query then also sees the earlier queries as examples), which cuts
the tokens per word several times on a CPU.

The ground-truth probe is a one-vs-rest logistic regression per letter on the residual
stream, trained as SAEBench trains it (`train_probe`); a letter counts when
the probe's F1 on the test words (score > 0) exceeds `min_probe_f1` (SAEBench: 0.6).
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

LETTERS = string.ascii_lowercase
TEMPLATE = "{word} has the first letter:"


def alpha_vocab(tokenizer) -> list[str]:
    """Vocabulary tokens, as text, made only of ASCII letters after an optional leading space."""
    words = set()
    for token in tokenizer.get_vocab():
        text = tokenizer.convert_tokens_to_string([token])
        bare = text[1:] if text.startswith(" ") else text
        if bare and all(ch in string.ascii_letters for ch in bare):
            words.add(text)
    return sorted(words)


def first_letter_index(word: str) -> int:
    """0..25: the word's first letter."""
    return LETTERS.index(word.strip()[0].lower())


def answer(word: str) -> str:
    """SAEBench's answer format: a space and the capitalised first letter."""
    return " " + word.strip()[0].upper()


def build_prompt(queries: list[str], examples: list[str]) -> tuple[str, list[int]]:
    """Prompt text and, per query word, the character offset where the word ends."""
    text, ends = "", []
    for i, word in enumerate(examples + queries):
        text += "\n" + TEMPLATE.format(word=word)
        if i >= len(examples):
            ends.append(len(text) - len(TEMPLATE.format(word="")))
        if i < len(examples) + len(queries) - 1:
            text += answer(word)
    return text, ends


def make_prompts(
    words: list[str], n_icl: int, words_per_prompt: int, rng: random.Random
) -> list[tuple[str, list[int], list[str]]]:
    """`(prompt, word end offsets, query words)` covering every word once."""
    prompts = []
    per_prompt = max(1, min(words_per_prompt, len(words) - n_icl))  # leave n_icl examples
    for start in range(0, len(words), per_prompt):
        queries = words[start : start + per_prompt]
        taken = set(queries)
        candidates = [w for w in words if w not in taken]
        if len(candidates) < n_icl:
            raise ValueError(f"n_icl={n_icl} examples wanted but only {len(candidates)} words left")
        examples = rng.sample(candidates, n_icl)
        text, ends = build_prompt(queries, examples)
        prompts.append((text, ends, queries))
    return prompts


def word_token_positions(tokenizer, text: str, ends: list[int]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and the index of the last token of each word ending at `ends`."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    positions = [max(i for i, s in enumerate(starts) if s < end) for end in ends]
    return enc["input_ids"], positions


@dataclass
class FirstLetterData:
    """Activations at each word's last token, for the train and the test words."""

    train_words: list[str]
    test_words: list[str]
    train_acts_ND: Tensor
    test_acts_MD: Tensor

    @property
    def train_letters(self) -> np.ndarray:
        return np.array([first_letter_index(w) for w in self.train_words])

    @property
    def test_letters(self) -> np.ndarray:
        return np.array([first_letter_index(w) for w in self.test_words])


@torch.no_grad()
def collect_first_letter(
    lm,
    hook: str,
    *,
    n_words: int | None = 3000,
    train_fraction: float = 0.8,
    n_icl: int = 10,
    words_per_prompt: int = 8,
    prepend_bos: bool = True,
    batch_rows: int = 16,
    seed: int = 42,
    progress: bool = False,
) -> FirstLetterData:
    """Split the vocabulary's alphabetic tokens (a seeded sample of `n_words`) and read acts."""
    vocab = alpha_vocab(lm.tokenizer)
    rng = random.Random(seed)
    rng.shuffle(vocab)
    if n_words is not None:
        vocab = vocab[:n_words]
    if len(vocab) < 2 * (n_icl + 1):
        raise ValueError(f"only {len(vocab)} alphabetic tokens in the vocabulary; need more")
    split = int(len(vocab) * train_fraction)
    acts = []
    for words in (vocab[:split], vocab[split:]):
        prompts = make_prompts(words, n_icl, words_per_prompt, rng)
        acts.append(_read_word_acts(lm, hook, prompts, prepend_bos, batch_rows, progress))
    return FirstLetterData(vocab[:split], vocab[split:], acts[0], acts[1])


def _read_word_acts(lm, hook, prompts, prepend_bos, batch_rows, progress) -> Tensor:
    bos = [lm.bos_token_id] if prepend_bos and lm.bos_token_id is not None else []
    encoded = []
    for text, ends, _ in prompts:
        ids, positions = word_token_positions(lm.tokenizer, text, ends)
        encoded.append((bos + ids, [p + len(bos) for p in positions]))
    pad = lm.tokenizer.pad_token_id or 0
    out = []
    for start in tqdm(
        range(0, len(encoded), batch_rows), desc="first letter", disable=not progress
    ):
        batch = encoded[start : start + batch_rows]
        width = max(len(ids) for ids, _ in batch)
        input_ids_BT = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_BT = torch.zeros_like(input_ids_BT)
        for b, (ids, _) in enumerate(batch):
            input_ids_BT[b, : len(ids)] = torch.tensor(ids)
            attention_BT[b, : len(ids)] = 1
        acts_BTD = lm.run_to_hooks(input_ids_BT, [hook], attention_mask=attention_BT)[hook]
        for b, (_, positions) in enumerate(batch):
            out.append(acts_BTD[b, positions].float().cpu())
    return torch.cat(out)


@dataclass
class LetterProbe:
    """One linear probe per letter on the residual stream: score = x @ W.T + b."""

    W_LD: Tensor
    b_L: Tensor

    def scores(self, x_ND: Tensor) -> Tensor:
        return x_ND.float() @ self.W_LD.T + self.b_L


def train_probe(
    x_NX: Tensor, letters_N: np.ndarray, *, l1_decay: float = 0.0, weight_decay: float = 1e-4,
    epochs: int = 50, batch_size: int = 64, lr: float = 0.01, end_lr: float = 1e-5,
    seed: int = 42,
) -> LetterProbe:  # fmt: skip
    """SAEBench's one-vs-rest probe trainer: one logit per letter, BCE with `pos_weight =
    negatives / positives`, Adam whose learning rate decays exponentially `lr -> end_lr`,
    plus `l1_decay` times the mean over letters of the weights' L1 norm. Seeded, and
    independent of the global random state."""
    generator = torch.Generator().manual_seed(seed)
    x_NX = x_NX.float()
    y_NL = torch.nn.functional.one_hot(torch.as_tensor(letters_N), len(LETTERS)).float()
    pos_L = y_NL.sum(dim=0).clamp_min(1)
    probe = torch.nn.Linear(x_NX.shape[1], len(LETTERS))
    with torch.no_grad():
        bound = 1 / math.sqrt(x_NX.shape[1])
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(y_NL) - pos_L) / pos_L)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gamma = math.exp(math.log(end_lr / lr) / epochs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x_NX), generator=generator)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                loss = loss_fn(probe(x_NX[rows]), y_NL[rows])
                if l1_decay:
                    loss = loss + l1_decay * probe.weight.abs().sum(dim=-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
    return LetterProbe(probe.weight.detach().clone(), probe.bias.detach().clone())


def train_letter_probe(x_ND: Tensor, letters_N: np.ndarray, seed: int = 42) -> LetterProbe:
    """The ground-truth probe on the residual stream, with SAEBench's settings
    (50 epochs, batch 64, lr 0.01 -> 1e-5, weight decay 1e-4)."""
    return train_probe(x_ND, letters_N, seed=seed)


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Binary F1 (0 when there are no true or predicted positives)."""
    tp = float(np.sum(y_true & y_pred))
    denominator = float(np.sum(y_true)) + float(np.sum(y_pred))
    return 0.0 if denominator == 0 else 2 * tp / denominator


def letter_f1(scores_NL: Tensor, letters_N: np.ndarray) -> np.ndarray:
    """Per letter, F1 of `score > 0` against the true first letter."""
    pred = (scores_NL > 0).numpy()
    return np.array([f1_score(letters_N == i, pred[:, i]) for i in range(len(LETTERS))])
