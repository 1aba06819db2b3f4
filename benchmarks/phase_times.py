"""Where the time of a `saekit` command goes: runs the CLI with timers around its phases.

    python benchmarks/phase_times.py train                 # `saekit train`, no flags
    python benchmarks/phase_times.py eval SAE_FOLDER --json

Wraps (without changing them) the model load, the training loop (`Trainer.fit`), saving the
SAEs, the evaluation's baseline and spliced passes, its reconstruction-only pass, and the
reports, then prints each phase's wall seconds, the rest of the process (imports, data set
preparation, the initialisation sample), and the whole, as one JSON line on stderr
(and appended to `$PHASE_TIMES_JSON` when set). Memory: the resident set size after each
phase's first call and the process's peak at its end (`rss_after_mb`, `peak_rss_mb`), so the
peak can be read against what the model alone holds.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from collections import defaultdict

STARTED = time.perf_counter()
SECONDS: dict[str, float] = defaultdict(float)
RSS_AFTER: dict[str, float] = {}
_DEPTH = [0]


def rss_mb() -> float:
    """The current resident set size in MB (from /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _timed(owner, attr: str, phase: str) -> None:
    """Replace `owner.attr` by a wrapper adding its wall time to `SECONDS[phase]` (outermost
    call only, so a phase calling itself is not counted twice)."""
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if _DEPTH[0]:
            return original(*args, **kwargs)
        _DEPTH[0] += 1
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[phase] += time.perf_counter() - start
            RSS_AFTER.setdefault(phase, round(rss_mb()))
            _DEPTH[0] -= 1

    setattr(owner, attr, wrapper)


def install() -> None:
    """Wrap the phases of saekit's modules that exist in the tree on `sys.path`."""
    import saekit.evals.baseline as baseline
    import saekit.evals.evaluate as evaluate
    import saekit.models as models
    import saekit.training.data as data
    import saekit.training.run as run
    import saekit.training.trainer as trainer

    _timed(data, "load_model", "model load")
    _timed(models, "load_model", "model load")
    _timed(trainer.Trainer, "fit", "training loop")
    _timed(run, "_save_saes", "save SAEs")
    _timed(run, "_write_reports", "reports and plots")
    _timed(evaluate, "compute_baseline", "eval: baseline")
    _timed(evaluate, "_spliced_pass", "eval: spliced")
    _timed(evaluate, "_reconstruction_pass", "eval: reconstruction only")
    _timed(baseline.BaselineStore, "get", "eval: cache read")
    _timed(baseline.BaselineStore, "put", "eval: cache write")
    _timed(evaluate, "eval_windows", "eval: token windows")


def report() -> None:
    whole = time.perf_counter() - STARTED
    phases = {k: round(v, 1) for k, v in SECONDS.items()}
    loop = SECONDS.get("training loop", 0.0)
    row = {
        "argv": sys.argv[1:], "whole_s": round(whole, 1), "phases_s": phases,
        "other_s": round(whole - sum(SECONDS.values()), 1),
        "whole_over_loop": round(whole / loop, 3) if loop else None,
        "rss_after_mb": RSS_AFTER,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(row), file=sys.stderr, flush=True)
    if os.environ.get("PHASE_TIMES_JSON"):
        with open(os.environ["PHASE_TIMES_JSON"], "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main() -> int:
    install()
    from saekit.cli import main as saekit_main

    try:
        return saekit_main(sys.argv[1:]) or 0
    finally:
        report()


if __name__ == "__main__":
    sys.exit(main())
