"""Where saekit keeps derived files it can rebuild: `$SAEKIT_CACHE` (default ~/.cache/saekit)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of saekit's cache (converted models, the python-docs corpus)."""
    return Path(os.environ.get("SAEKIT_CACHE", "~/.cache/saekit")).expanduser()
