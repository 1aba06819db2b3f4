"""Every command of the README's "main commands" block runs as written (token counts shortened),
in order, on the embedded default model: the README cannot drift from what works."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from legacy_files import write_legacy_pt

ROOT = Path(__file__).resolve().parents[1]
# Shorter runs, same flags: appended to (or replacing the counts of) the README's commands.
SHORT_TRAIN = ["--tokens", "4k", "--batch-tokens", "1k", "--buffer-tokens", "4k",
               "--init-tokens", "1k", "--eval-tokens", "0", "--no-progress"]  # fmt: skip
SHORT_COUNTS = {"cache": "4k", "dashboard": "2k", "eval": "1k"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## The main commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.strip().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def shortened(argv: list[str]) -> list[str]:
    """The README's argv with the training and scanning budgets cut for a test."""
    command = argv[1] if len(argv) > 1 else ""
    if command == "train" and "--resume" not in argv:
        return argv + SHORT_TRAIN
    if command in SHORT_COUNTS:
        out = list(argv)
        if "--tokens" in out:
            out[out.index("--tokens") + 1] = SHORT_COUNTS[command]
        else:
            out += ["--tokens", SHORT_COUNTS[command]]
        return out
    return argv


@pytest.mark.integration
@pytest.mark.slow
def test_readme_main_commands_run_as_written(tmp_path, default_lm):
    commands = readme_commands()
    assert len(commands) >= 10 and all(c.split()[0] in ("saekit", "scripts/screenshot_dashboard.sh") for c in commands)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "2"}
    for line in commands:
        argv = shlex.split(line)
        if argv[0].startswith("scripts/"):
            if not shutil.which("chromium"):
                continue  # the screenshot needs Chromium (CI installs it)
            argv[0] = str(ROOT / argv[0])
        if argv[:2] == ["saekit", "convert"]:  # the original release's file, rebuilt small
            write_legacy_pt(tmp_path / argv[2], d_in=16, expansion_factor=4)
        done = subprocess.run(shortened(argv), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, line
    assert (tmp_path / "dash" / "index.html").is_file() and (tmp_path / "sae8" / "cfg.json").is_file()
