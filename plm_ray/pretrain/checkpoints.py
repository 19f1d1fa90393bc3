"""Pre-training checkpoints in the store: names, completeness, and which one a resume starts from.

Ray Train merges every rank's checkpoint directory into one folder of the store, copying files in
no set order, and a crash can stop it half-way. So each rank writes a manifest of its own files and
their sizes into the directory it reports; a checkpoint is complete only when the manifests of all
ranks are there and every file they list has the listed size. A resume takes the newest complete
checkpoint and warns about each newer one it passes over, saying what is wrong with it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from plm_ray.config import ConfigError, resolve_zero_stage
from plm_ray.store import Store

log = logging.getLogger(__name__)

STAGE = "pretrain"
NAME = re.compile(r"checkpoint_step(\d{9})_(\d{8}-\d{6})")
MANIFEST = "manifest-rank{rank}.json"
STATE = "plm_ray.json"  # rank 0: step, run, and the configuration the checkpoint was made with
# Keys a resumed run may change: they alter cadence and patience, not what is trained.
RESUMABLE_CHANGES = {
    "pretrain": {
        "max_failures",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "comm_timeout_s",
    },
}
COMPARED_SECTIONS = ("data", "tokenizer", "masking", "model", "pretrain", "optimizer")


def checkpoint_name(step: int, attempt: str) -> str:
    """Unique per attempt, so a step reached again after a fallback never lands in a broken folder."""
    return f"checkpoint_step{step:09d}_{attempt}"


def write_manifest(directory: Path, rank: int, world_size: int, step: int) -> None:
    files = {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = {"rank": rank, "world_size": world_size, "step": step, "files": files}
    (directory / MANIFEST.format(rank=rank)).write_text(json.dumps(manifest, indent=1))


def _read_json(fs: pafs.FileSystem, path: str) -> Any:
    """The parsed file, or None where it cannot be read or parsed (a copy cut short)."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return None


def problem(store: Store, path: str) -> str | None:
    """What makes the checkpoint at `path` (inside the store's filesystem) incomplete; None if nothing."""
    infos = store.fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    sizes = {i.path[len(path) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}
    world_size = 1
    rank = 0
    while rank < world_size:
        name = MANIFEST.format(rank=rank)
        manifest = _read_json(store.fs, f"{path}/{name}") if name in sizes else None
        if manifest is None:
            what = "unreadable" if name in sizes else "missing"
            return f"rank {rank}'s manifest is {what} (the checkpoint was still being written)"
        world_size = manifest["world_size"]
        for file, size in manifest["files"].items():
            if file not in sizes:
                return f"{file} is missing"
            if sizes[file] != size:
                return f"{file} has {sizes[file]} bytes, the manifest says {size}"
        rank += 1
    return None


def latest_complete(store: Store, run: str) -> str | None:
    """Name of the newest complete checkpoint of the run's pre-training, warning about newer broken ones."""
    names = sorted((n for n in store.list_dir(run, STAGE) if NAME.fullmatch(n)), reverse=True)
    for name in names:
        issue = problem(store, store.path(run, STAGE, name))
        if issue is None:
            return name
        uri = store.uri(run, STAGE, name)
        log.warning("checkpoint %s is incomplete: %s; falling back to the one before it", uri, issue)
    return None


def read_state(store: Store, run: str, name: str) -> dict[str, Any]:
    with store.fs.open_input_stream(store.path(run, STAGE, name, STATE)) as f:
        return json.loads(f.read().decode())


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """A resume must train the same thing: refuse, naming the key, where the configuration changed."""
    saved, current = _stage_resolved(saved), _stage_resolved(current)
    for section in COMPARED_SECTIONS:
        for key, value in current[section].items():
            if key in RESUMABLE_CHANGES.get(section, set()):
                continue
            old = saved.get(section, {}).get(key, "(not set)")
            if old != value:
                raise ConfigError(
                    f"config key '{section}.{key}' = {value!r}, but the checkpoint {where} was made with "
                    f"{old!r}; resume with the same configuration, or start over with --overwrite or another run.name"
                )


def _stage_resolved(config: dict[str, Any]) -> dict[str, Any]:
    """The ZeRO stage as run, not as written: a checkpoint saved with an explicit stage resumes under
    auto (and the other way round) when both come to the same stage on the same workers."""
    p = config["pretrain"]
    stage = resolve_zero_stage(p["zero_stage"], p["num_workers"], p["offload"])
    return {**config, "pretrain": {**p, "zero_stage": stage}}
