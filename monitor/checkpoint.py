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
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CHECKPOINT_FORMAT = 1


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
        return path

    def load(self, topic: str, partition: int, model: str) -> ModelCheckpoint | None:
        return self._read(self.path(topic, partition, model))

    def load_partition(self, topic: str, partition: int) -> list[ModelCheckpoint]:
        """Every model checkpoint of one partition (on start and on assignment)."""
        folder = self.dir / topic / f"p{partition}"
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.glob("*.npz")):
            ckpt = self._read(p)
            if ckpt is not None:
                out.append(ckpt)
        return out

    @staticmethod
    def _read(path: Path) -> ModelCheckpoint | None:
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(f["__meta__"].tobytes().decode())
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(
                    f"checkpoint {path} has format {meta.get('format')!r}, this repwatch reads "
                    f"{CHECKPOINT_FORMAT}; move it away to start that model fresh"
                )
            arrays = {k: f[k] for k in f.files if k != "__meta__"}
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
