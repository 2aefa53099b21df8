"""Cache helpers shared by the tokenizer and packing stages: content keys and atomic directory publication."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def cache_key(*parts: Any) -> str:
    """A 16-hex-digit key of JSON-serializable ``parts`` (dict keys sorted, other objects by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def staging_dir(final: Path) -> Path:
    """A fresh sibling directory of ``final`` to write into before ``publish_dir``."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` atomically; if another process published ``final`` first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        logger.info("cache entry %s was written by another process; keeping it", final)
        shutil.rmtree(tmp, ignore_errors=True)
