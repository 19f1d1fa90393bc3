"""DeepSpeed's CPU communication op, built where no interrupted build can hang a later run.

The first CPU engine on a machine JIT-builds DeepSpeed's shared-memory op (torch.utils.cpp_extension,
tens of seconds). torch guards the build with a `lock` file in the op's build folder; a builder killed
mid-way leaves it behind, and every later process then waits on it forever, silently. So plm-ray
builds the op itself, before DeepSpeed asks for it, in a folder of its own per environment (no other
program builds there), under an `flock` that the kernel releases however its holder dies. Every
first build happens under that flock, so a torch lock found while holding it is a dead builder's
(or a live process's version check, which holds it for milliseconds: hence STALE_SECONDS) and is
removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
STALE_SECONDS = 10.0  # older than any live version check's hold on torch's lock


def extensions_dir() -> Path:
    """TORCH_EXTENSIONS_DIR if set, else plm-ray's own folder for this Python environment and torch."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    env = hashlib.sha256(f"{sys.prefix}|{torch.__version__}".encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "plm-ray" / "torch_extensions" / env


def ensure_cpu_ops() -> None:
    """Build (or load) DeepSpeed's shared-memory op for CPU engines, clearing a dead builder's lock."""
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())  # DeepSpeed's own load looks here too
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        return
    from torch.utils.cpp_extension import _get_build_directory

    build = Path(_get_build_directory(builder.NAME, verbose=False))
    with open(build.parent / f".{builder.NAME}.plm-ray-lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stale = build / "lock"
        if stale.exists() and time.time() - stale.stat().st_mtime > STALE_SECONDS:
            log.warning("removing %s, left by a build of %s that was interrupted", stale, builder.NAME)
            stale.unlink()
        builder.load()
