"""The toolkit's cache folder: converted packaged weights, verified image-folder scans."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "FINETUNE_CACHE_DIR"


def cache_dir() -> Path:
    """$FINETUNE_CACHE_DIR, else $XDG_CACHE_HOME/finetune, else ~/.cache/finetune."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "finetune"
