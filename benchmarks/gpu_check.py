"""The GPU check in one call: CUDA-marked tests, then saekit and SAELens on the same card.

    python benchmarks/gpu_check.py --saelens-python /path/to/peers/bin/python   # on a GPU
    python benchmarks/gpu_check.py --device cpu --tiny                          # the CPU path
    python benchmarks/gpu_check.py --dry-run                                    # commands only

Steps, each a subprocess, in order (a failed step is recorded and the next one still runs):

1. `pytest -m cuda` (the tests that need CUDA; on a CPU they skip);
2. `benchmarks/compare.py --case CASE --systems saekit,saelens --device DEVICE` for the default
   and wide cases (each trainer its own process, quality by saekit's evaluation on the same
   held-back tokens; see compare.py);
3. a Markdown table of the results, written to `benchmarks/gpu_check-DEVICE-DATE.md` (or
   `--table`), with the card's name, torch's version, the load and every command.

`--tiny`: 16,384 training tokens, 2,048 evaluation tokens and a small SAELens buffer, so the
whole path runs in minutes on a CPU. `--dry-run`: print the commands and write the table from
`--results` (a compare.py JSON file) without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("default", "wide")


def commands(args: argparse.Namespace, results: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step."""
    py = sys.executable
    steps = [("cuda tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                             str(HERE.parent / "tests")])]  # fmt: skip
    for case in args.cases.split(","):
        argv = [py, str(HERE / "compare.py"), "--case", case, "--systems", args.systems,
                "--device", args.device, "--saelens-python", args.saelens_python,
                "--out", str(args.out / case), "--json", str(results)]  # fmt: skip
        if args.tiny:
            argv += ["--tokens", "16384", "--eval-tokens", "2048", "--saelens-buffer-batches", "8"]
        steps.append((f"compare {case}", argv))
    return steps


def device_name(device: str) -> str:
    """The card's name (CUDA) or the CPU's model name."""
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        version = torch.__version__
    except ImportError:
        version = "?"
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "CPU")  # fmt: skip
    return f"{model}, {os.cpu_count()} CPUs, torch {version}"


def table(rows: list[dict], header: str, steps: list[dict]) -> str:
    """The results as Markdown: one row per system and case, then the steps run."""
    lines = [header, "",
             "| case | system | training loop | tokens/s (loop) | whole process | peak RSS | EV | "
             "L0 | CE loss rec. | KL | dead |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tokens = r.get("tokens", 0)
        loop = r.get("train_s")
        for name, q in (r.get("quality") or {"-": {}}).items():
            cells = [r.get("case", "?"), f"{r.get('system', '?')} ({name})",
                     f"{loop:.0f} s" if loop else "-",
                     f"{tokens / loop:,.0f}" if loop else "-", f"{r['wall_s']:.0f} s",
                     f"{r['peak_rss_mb']:,.0f} MB"]  # fmt: skip
            for key, fmt in (("explained_variance", ".3f"), ("l0", ".1f"),
                             ("ce_loss_recovered", ".3f"), ("kl_div", ".3f"),
                             ("dead_fraction", ".1%")):  # fmt: skip
                value = q.get(key)
                cells.append(format(value, fmt) if isinstance(value, int | float) else "-")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| step | exit | seconds | load before/after | command |",
        "|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(f"| {s['name']} | {s['rc']} | {s['seconds']:.0f} | "
                     f"{s['load'][0]:.1f}/{s['load'][1]:.1f} | `{s['command']}` |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--saelens-python", default="/work/main/.venv-peers/bin/python",
                        help="python of SAELens's venv")  # fmt: skip
    parser.add_argument("--cases", default=",".join(CASES), help="compare.py cases")
    parser.add_argument("--systems", default="saekit,saelens", help="compare.py systems")
    parser.add_argument("--tiny", action="store_true", help="a few steps per case (CPU path)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--results", type=Path, help="compare.py JSON lines (default: in --out)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/saekit-gpu-check"))
    parser.add_argument("--table", type=Path, help="Markdown file (default: in benchmarks/)")
    args = parser.parse_args(argv)
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.results or args.out / "results.jsonl"
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    steps = []
    for name, cmd in commands(args, results):
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(cmd)}", flush=True)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        rc = 0 if args.dry_run else subprocess.run(cmd, cwd=HERE.parent).returncode
        if name == "cuda tests" and rc == 5:  # pytest: none collected (no CUDA test here)
            rc = 0
        steps.append({"name": name, "rc": rc, "seconds": time.perf_counter() - started,
                      "load": (load, os.getloadavg()[0]), "command": shlex.join(cmd)})  # fmt: skip
    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    )
    header = (f"## GPU check, {stamp}: {device_name(args.device)}\n\n"
              f"`python benchmarks/gpu_check.py {shlex.join(argv if argv is not None else sys.argv[1:])}`")  # fmt: skip
    device_tag = args.device.replace(":", "")
    path = args.table or HERE / f"gpu_check-{device_tag}-{stamp[:10]}.md"
    text = table(rows, header, steps)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(text, flush=True)
    print(f"wrote {path}")
    return max((s["rc"] for s in steps), default=0)


if __name__ == "__main__":
    sys.exit(main())
