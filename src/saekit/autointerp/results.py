"""The output format of an autointerp run, and its loader.

A run folder (``saekit explain --out``) holds ``results.jsonl``: one JSON object per line, one
line per feature, appended as each feature is scored (``docs/autointerp.md`` lists every key).
``explanations.jsonl`` holds the explanations alone, appended as each one is written, so a run
in progress can be read before its features are scored. :func:`load_explanations` reads either
(or a folder holding them) into one shape for every reader: dashboards, ``saekit serve``, the
attribution viewer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
EXPLANATIONS_FILE = "explanations.jsonl"


def read_jsonl(path: Path) -> dict[int, dict]:
    """Records by feature (the last line of a feature wins); a line cut short by a killed run,
    or one without an integer ``feature``, is ignored."""
    out: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                out[int(rec["feature"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
    return out


def _as_result(rec: dict[str, Any]) -> dict[str, Any]:
    """An ``explanations.jsonl`` line in the shape of a ``results.jsonl`` one (no scores)."""
    out = {k: v for k, v in rec.items() if k not in ("examples", "raw")}
    out.setdefault("explanation", None)
    if isinstance(rec.get("examples"), list):
        out["examples"] = {"explain": rec["examples"]}
    return out


def load_explanations(path: str | Path) -> dict[int, dict[str, Any]]:
    """Feature id -> its record: ``explanation`` (str, or None with a ``skipped`` reason) and,
    once scored, ``scores``/``shuffled`` (metrics per scorer), ``density``, ``max_activation``,
    ``examples`` (ids per role) and ``answers``.

    ``path``: a run folder, its ``results.jsonl`` or its ``explanations.jsonl``. In a folder,
    scored records win; features explained but not yet scored (a run in progress) come from
    ``explanations.jsonl`` without ``scores``.
    """
    path = Path(path)
    if path.is_dir():
        results, explained = path / RESULTS_FILE, path / EXPLANATIONS_FILE
        if not results.is_file() and not explained.is_file():
            raise FileNotFoundError(
                f"{path}: neither {RESULTS_FILE} nor {EXPLANATIONS_FILE} (run `saekit explain "
                f"--out {path}` first)"
            )
        out = {f: _as_result(r) for f, r in read_jsonl(explained).items()}
        return dict(sorted((out | read_jsonl(results)).items()))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a `saekit explain --out` folder or its "
                                f"{RESULTS_FILE} / {EXPLANATIONS_FILE})")  # fmt: skip
    records = read_jsonl(path)
    if path.name == EXPLANATIONS_FILE or not any("scores" in r for r in records.values()):
        records = {f: r if "scores" in r else _as_result(r) for f, r in records.items()}
    return dict(sorted(records.items()))
