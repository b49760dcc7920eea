"""Checkpoints: per-model pipeline state on disk, written atomically, with the offset it covers.

State is owned per (topic, partition, model) — records are keyed by model, so a model lives in
one partition and moves between workers with it. One file per model and partition::

    <dir>/<topic>/p<partition>/<model>.npz   arrays + "__meta__" JSON (never pickle)

``meta["offset"]`` is the next offset of the partition *not* reflected in the state. The
runtime writes checkpoints before it commits offsets, so the committed offset never runs ahead
of a checkpoint; on restore, records of that model below ``offset`` are skipped (their effect is
already in the state) and later ones are replayed: each record enters detector state once.

Writes go to a temporary file in the same directory, are fsync'ed, then ``os.replace``'d over
the old file: a crash leaves the old checkpoint or the new one, never half of one.

A checkpoint is validated on read (:class:`CheckpointInvalid`): the meta JSON has exactly the
expected keys and types and names the file's own topic, partition and model; every array belongs
to a version and holds numbers or bytes (no object arrays: files are read without pickle). One
that fails is *set aside* (renamed ``<model>.npz.rejected-<unix time>``, logged with the reason)
and the model starts fresh from the committed offset; the runtime also sets aside a checkpoint
whose offset lies past the partition's end (see :mod:`monitor.runtime`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CHECKPOINT_FORMAT = 1
log = logging.getLogger(__name__)
_META_KEYS = {"format", "model", "topic", "partition", "offset", "saved_at", "versions"}
_ARRAY_KINDS = set("biufcSU")  # numbers, bytes, fixed-width text (ids of older checkpoints)
_VERSION_KEY = re.compile(r"^v(\d+)/.+$")


class CheckpointInvalid(ValueError):
    """A checkpoint file failed validation; the message says which check."""


@dataclass
class ModelCheckpoint:
    """State of all pipelines (model versions) of one model in one partition."""

    model: str
    topic: str
    partition: int
    offset: int
    versions: list[tuple[dict[str, NDArray[Any]], dict[str, Any]]]  # Pipeline.get_state()
    saved_at: float = 0.0


class CheckpointStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, topic: str, partition: int, model: str) -> Path:
        return self.dir / topic / f"p{partition}" / f"{model}.npz"

    def save(self, ckpt: ModelCheckpoint) -> Path:
        arrays: dict[str, NDArray[Any]] = {}
        metas = []
        for i, (a, m) in enumerate(ckpt.versions):
            arrays.update({f"v{i}/{k}": v for k, v in a.items()})
            metas.append(m)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "model": ckpt.model,
            "topic": ckpt.topic,
            "partition": ckpt.partition,
            "offset": ckpt.offset,
            "saved_at": time.time(),
            "versions": metas,
        }
        buf = io.BytesIO()
        meta_arr = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(buf, __meta__=meta_arr, **arrays)  # type: ignore[arg-type]
        path = self.path(ckpt.topic, ckpt.partition, ckpt.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.last_bytes = buf.getbuffer().nbytes
        return path

    last_bytes = 0  # size of the last checkpoint written (exported as a metric)
    rejected = 0  # checkpoints set aside so far

    def set_aside(self, path: Path, reason: str) -> Path | None:
        """Move a bad checkpoint out of the way (kept for inspection) and log why."""
        self.rejected += 1
        target = path.with_name(f"{path.name}.rejected-{int(time.time())}")
        try:
            os.replace(path, target)
        except OSError as exc:
            log.error("checkpoint %s is invalid (%s) and cannot be moved aside: %s", path, reason,
                      exc)
            return None
        log.error("checkpoint %s set aside as %s: %s; its model starts fresh from the "
                  "committed offset", path, target.name, reason)
        return target

    def load(self, topic: str, partition: int, model: str) -> ModelCheckpoint | None:
        return self._read(self.path(topic, partition, model))

    def load_partition(self, topic: str, partition: int) -> list[ModelCheckpoint]:
        """Every model checkpoint of one partition (on start and on assignment)."""
        folder = self.dir / topic / f"p{partition}"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.npz")):
            try:
                ckpt = self._read(p)
            except CheckpointInvalid as exc:
                self.set_aside(p, str(exc))
                continue
            if ckpt is not None:
                out.append(ckpt)
        return out

    @staticmethod
    def _read(path: Path) -> ModelCheckpoint | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(f["__meta__"].tobytes().decode())
                arrays = {k: f[k] for k in f.files if k != "__meta__"}
        except CheckpointInvalid:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # ValueError covers object arrays (refused without pickle) and bad JSON
            raise CheckpointInvalid(f"unreadable: {exc}") from None
        _validate(path, meta, arrays)
        versions = []
        for i, m in enumerate(meta["versions"]):
            prefix = f"v{i}/"
            versions.append(
                ({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, m)
            )
        return ModelCheckpoint(
            meta["model"], meta["topic"], int(meta["partition"]), int(meta["offset"]), versions,
            float(meta.get("saved_at", 0.0)),
        )


def _validate(path: Path, meta: Any, arrays: dict[str, NDArray[Any]]) -> None:
    if not isinstance(meta, dict) or set(meta) != _META_KEYS:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointInvalid(f"meta has keys {keys}, expected {sorted(_META_KEYS)}")
    if meta["format"] != CHECKPOINT_FORMAT:
        raise CheckpointInvalid(
            f"format {meta['format']!r}, this repwatch reads {CHECKPOINT_FORMAT}"
        )
    offset, partition = meta["offset"], meta["partition"]
    if type(offset) is not int or offset < 0 or type(partition) is not int:
        raise CheckpointInvalid(f"offset {offset!r} / partition {partition!r} are not offsets")
    if (meta["topic"], f"p{partition}", f"{meta['model']}.npz") != (
        path.parent.parent.name, path.parent.name, path.name
    ):
        raise CheckpointInvalid(
            f"names topic {meta['topic']!r} partition {partition} model {meta['model']!r}, "
            f"but lies at {path.parent.parent.name}/{path.parent.name}/{path.name}"
        )
    versions = meta["versions"]
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        raise CheckpointInvalid("versions must be a list of maps")
    for key, arr in arrays.items():
        m = _VERSION_KEY.match(key)
        if m is None or int(m.group(1)) >= len(versions):
            raise CheckpointInvalid(f"unexpected array {key!r}")
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise CheckpointInvalid(f"array {key!r} has dtype {arr.dtype}, not numbers or bytes")


class ReferenceOverrides:
    """References replaced at run time (admin call), persisted so a restart keeps them."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "reference-overrides.json"

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        data: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        return data

    def set(self, model: str, path: str, actor: str) -> None:
        data = self.read()
        data[model] = {"path": path, "replaced_at": time.time(), "by": actor}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)
