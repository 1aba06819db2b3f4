"""`saekit train` with no flags, end to end against its training loop, for several source trees.

    python benchmarks/whole_run.py --src old=/path/to/main/src --src new=src --out /tmp/whole

Each tree runs `python -m saekit train` (no flags) as its own process, one after the other,
in a fresh working folder under `--out` (so the run lands in `runs/saekit` there), with
`SAEKIT_EVAL_CACHE` pointing at an empty folder (the first evaluation of a model, hook and
tokens: no cached baseline). It records the whole process's wall time and peak RSS
(`os.wait4`), the training loop's time from the run's `summary.txt`, their ratio, the final
metrics, and the load average before and after. With `--warm-eval`, it then times `saekit eval`
on the run's SAE (the same held-back tokens, so a tree that caches baselines reuses the run's).
One JSON line per run goes to `--json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

SAE = "runs/saekit/blocks.15.hook_resid_pre"


def timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run `argv`; (wall seconds, peak RSS in MB) of the process tree's main process."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed; see {log}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", required=True, help="NAME=PATH to a src tree")
    parser.add_argument("--out", required=True, help="folder for the working folders and logs")
    parser.add_argument("--warm-eval", action="store_true", help="then time `saekit eval`")
    parser.add_argument("--json", help="append one JSON line per run to this file")
    args = parser.parse_args()

    for spec in args.src:
        name, src = spec.split("=", 1)
        work = Path(args.out) / name
        work.mkdir(parents=True, exist_ok=False)
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        env["SAEKIT_EVAL_CACHE"] = str(work / "eval-cache")
        row = {
            "name": name, "src": src, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {os.cpu_count()} CPUs", "command": "saekit train",
            "load_before": os.getloadavg(),
        }  # fmt: skip
        wall, rss = timed([sys.executable, "-m", "saekit", "train"], work, env, work / "train.log")
        summary = (work / "runs/saekit/summary.txt").read_text()
        loop = float(re.search(r"tokens in (\d+) s", summary).group(1))  # type: ignore[union-attr]
        row.update(whole_s=round(wall, 1), loop_s=loop, ratio=round(wall / loop, 3),
                   peak_rss_mb=round(rss), load_after=os.getloadavg(), summary=summary)  # fmt: skip
        if args.warm_eval:
            argv = [sys.executable, "-m", "saekit", "eval", SAE, "--json"]
            eval_wall, _ = timed(argv, work, env, work / "eval.log")
            row.update(warm_eval_s=round(eval_wall, 1), load_after_eval=os.getloadavg())
        print(json.dumps(row, indent=1), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
