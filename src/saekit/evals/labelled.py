"""Labelled text for probing: class-balanced train/test splits from offline or hub sources.

A spec names the data:

- a builtin built from real text on this machine (prepared once, then cached as JSONL under
  `$SAEKIT_CACHE/evals/datasets/`): `fortunes-topic`, `fortunes-language`, `code-language`,
  `python-docs-topic` (see `saekit.evals.labelled_sources` for what each holds);
- a local `.jsonl` file with `text` and `label` fields;
- one of the hub datasets SAEBench's sparse probing uses (`fancyzhx/ag_news`, ...), read
  with `datasets` (needs the network, or the hub cache).

Every class gets `train_per_class` + `test_per_class` distinct texts, drawn with a seed
that depends only on the seed, the dataset and the class, so every SAE and every baseline
sees the same splits. Classes with too few texts are dropped (and listed), as SAEBench
keeps only classes that fill their quota.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from saekit.paths import cache_root

PREPARED_VERSION = 1  # bump when a builtin's preparation changes (invalidates the cache)


@dataclass
class LabelledDataset:
    """Texts per class for the train and the test split."""

    name: str
    train: dict[str, list[str]]
    test: dict[str, list[str]]
    dropped_classes: dict[str, int] = field(default_factory=dict)
    """Classes left out for having too few texts, with how many they had."""

    @property
    def classes(self) -> list[str]:
        return list(self.train)

    def texts(self) -> tuple[list[str], list[str], list[str]]:
        """All texts once, in a fixed order, with their split and class: (texts, splits, labels)."""
        texts, splits, labels = [], [], []
        for split, data in (("train", self.train), ("test", self.test)):
            for label, items in data.items():
                texts += items
                splits += [split] * len(items)
                labels += [label] * len(items)
        return texts, splits, labels

    def summary(self) -> dict[str, object]:
        """Class names and sizes, for reports."""
        return {
            "dataset_name": self.name,
            "classes": self.classes,
            "train_per_class": len(next(iter(self.train.values()))) if self.train else 0,
            "test_per_class": len(next(iter(self.test.values()))) if self.test else 0,
            "dropped_classes": self.dropped_classes,
        }


def split_by_class(
    name: str,
    rows: Iterable[tuple[str, str]],
    train_per_class: int,
    test_per_class: int,
    *,
    seed: int = 42,
    classes: list[str] | None = None,
) -> LabelledDataset:
    """A `LabelledDataset` from `(text, label)` rows; duplicate texts within a class count once.

    Raises `ValueError` if fewer than two classes have enough texts.
    """
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"train_per_class and test_per_class must be >= 1, got {train_per_class}, "
            f"{test_per_class}"
        )
    by_class: dict[str, dict[str, None]] = {}
    for text, label in rows:
        label = str(label)
        if classes is not None and label not in classes:
            continue
        by_class.setdefault(label, {})[text] = None
    wanted = train_per_class + test_per_class
    train, test, dropped = {}, {}, {}
    for label in classes if classes is not None else sorted(by_class):
        items = sorted(by_class.get(label, {}))  # independent of the rows' order
        if len(items) < wanted:
            dropped[label] = len(items)
            continue
        random.Random(f"{seed}/{name}/{label}").shuffle(items)
        train[label] = items[:train_per_class]
        test[label] = items[train_per_class:wanted]
    if len(train) < 2:
        raise ValueError(
            f"dataset {name!r}: fewer than two classes have {wanted} texts "
            f"(train_per_class={train_per_class} + test_per_class={test_per_class}); "
            f"class sizes: { {k: len(v) for k, v in by_class.items()} }"
        )
    return LabelledDataset(name, train, test, dropped)


def read_jsonl_rows(path: str | Path) -> Iterator[tuple[str, str]]:
    """`(text, label)` rows of a JSONL file whose objects have `text` and `label`."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise ValueError(f"{path}:{number}: each line needs 'text' and 'label' fields")
            if str(row["text"]).strip():
                yield str(row["text"]), str(row["label"])


def write_jsonl_rows(path: Path, rows: Iterable[tuple[str, str]]) -> int:
    """Write `(text, label)` rows as JSONL atomically; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def prepared_path(name: str) -> Path:
    """Where the prepared rows of builtin `name` are cached."""
    return cache_root() / "evals" / "datasets" / f"{name}-v{PREPARED_VERSION}.jsonl"


def builtin_rows(name: str, *, refresh: bool = False) -> Iterator[tuple[str, str]]:
    """The rows of a builtin dataset, prepared from this machine's files on first use."""
    from saekit.evals.labelled_sources import BUILTIN_SOURCES

    if name not in BUILTIN_SOURCES:
        raise ValueError(f"unknown builtin dataset {name!r}; choose from {sorted(BUILTIN_SOURCES)}")
    path = prepared_path(name)
    if refresh or not path.is_file():
        write_jsonl_rows(path, BUILTIN_SOURCES[name]())
    return read_jsonl_rows(path)


DEFAULT_DATASETS = ("fortunes-topic", "fortunes-language", "code-language")
"""The suite's default probing tasks (`python-docs-topic` is available, not run by default)."""
TRAIN_PER_CLASS, TEST_PER_CLASS = 50, 25
"""Default texts per class: the whole suite on one SAE in under 10 minutes on a 2-core CPU
(see docs/evaluation.md, "Time and the default sizes")."""


def load_labelled(
    spec: str,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    *,
    seed: int = 42,
) -> LabelledDataset:
    """A labelled dataset by spec: a builtin name, a `.jsonl` file, or a SAEBench hub id."""
    from saekit.evals.labelled_sources import BUILTIN_SOURCES, HUB_DATASETS, hub_rows

    name = spec.removeprefix("builtin:")
    if name in BUILTIN_SOURCES:
        rows: Iterable[tuple[str, str]] = builtin_rows(name)
    elif Path(spec).expanduser().is_file():
        rows = read_jsonl_rows(Path(spec).expanduser())
        name = Path(spec).stem
    elif spec in HUB_DATASETS:
        rows = hub_rows(spec)
    elif spec.endswith(".jsonl"):
        raise ValueError(f"labelled dataset file {spec!r} does not exist")
    else:
        raise ValueError(
            f"unknown labelled dataset {spec!r}: use a builtin ({', '.join(sorted(BUILTIN_SOURCES))}), "
            f"a .jsonl file with text and label, or a hub id ({', '.join(HUB_DATASETS)})"
        )
    return split_by_class(name, rows, train_per_class, test_per_class, seed=seed)
