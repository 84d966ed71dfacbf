"""Where smelter keeps what outlives a run on this machine: one lookup for every cache folder.

Deliberate choices:
- ``$SMELTER_CACHE_DIR`` wins, then ``$XDG_CACHE_HOME/smelter``, then ``~/.cache/smelter``; every
  kind of cache (``mirrors``, ``github``, ``rootfs``…) is a folder below that one root, so one
  variable moves them all (a CI cache, a bigger disk).
- Read at call time, not import time: tests and workers set the variables after importing.
- Nothing is created here; each user makes its folder when it first writes.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str = "") -> Path:
    """The folder of one kind of cache (``cache_dir("mirrors")``); ``""``: the root itself."""
    root = os.environ.get("SMELTER_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smelter"
    )
    return Path(root) / kind if kind else Path(root)
