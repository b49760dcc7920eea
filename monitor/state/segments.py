"""On-disk format of the keyed state: segment files (arrays only) and the manifest (JSON).

A segment is an uncompressed ``.npz`` (readable by ``np.load(f, allow_pickle=False)``) holding::

    __meta__        uint8 JSON: format, kind (base|delta), seq, keys, tombstones
    keys_blob       uint8      UTF-8 keys concatenated
    keys_offsets    int64      n+1 offsets into keys_blob (key i = blob[o[i]:o[i+1]])
    last_seen       int64      n  last event time per key (ms)
    ticks           int64      n  recency (LRU) clock per key
    tomb_blob, tomb_offsets    keys deleted since the previous segment (deltas only)
    f.<field>       <dtype>    (n, *shape) one array per schema field

Segments are written as a stream (a page of rows at a time, so a checkpoint's memory does not
grow with the number of keys) through a SHA-256 tap, fsync'ed, then renamed into place. The
manifest lists the live segments with their sizes and digests; its atomic replacement is the
commit point of a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from monitor.state.schema import StateSchema, StateStoreCorrupt

FORMAT = 1
KIND = "repwatch.keyed-state"
MANIFEST = "MANIFEST.json"
SEGMENT_RE = re.compile(r"^(base|delta)-(\d{12})\.npz$")
MAX_MANIFEST_BYTES = 1 << 20
MAX_META_BYTES = 64 * 1024
_SMALL = ("__meta__", "keys_blob", "keys_offsets", "last_seen", "ticks", "tomb_blob",
          "tomb_offsets")


@dataclass(frozen=True)
class SegmentRef:
    """One live segment as the manifest lists it."""

    name: str
    kind: str
    seq: int
    bytes: int
    sha256: str
    keys: int
    tombstones: int


@dataclass(frozen=True)
class Manifest:
    seq: int
    offset: int | None
    meta: dict[str, Any]
    watermark_ms: int | None
    tick: int
    schema: list[dict[str, Any]]
    segments: tuple[SegmentRef, ...]
    saved_at: float

    def to_json(self) -> bytes:
        d = {"format": FORMAT, "kind": KIND, "seq": self.seq, "offset": self.offset,
             "meta": self.meta, "watermark_ms": self.watermark_ms, "tick": self.tick,
             "schema": self.schema, "saved_at": self.saved_at,
             "segments": [vars(s) for s in self.segments]}
        return json.dumps(d, indent=1).encode()


def _int(d: dict[str, Any], k: str, path: Path, *, none: bool = False, lo: int = 0) -> Any:
    v = d.get(k)
    if v is None and none:
        return None
    if type(v) is not int or v < lo:
        raise StateStoreCorrupt(path, f"field {k!r} is {v!r}, expected an integer >= {lo}")
    return v


def read_manifest(directory: Path) -> Manifest | None:
    """The committed manifest, validated; ``None`` when the directory holds no checkpoint."""
    path = directory / MANIFEST
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateStoreCorrupt(path, f"cannot be read: {e}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise StateStoreCorrupt(path, f"is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateStoreCorrupt(path, f"is not JSON ({e})") from None
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise StateStoreCorrupt(path, f"is not a {KIND} manifest")
    if d.get("format") != FORMAT:
        raise StateStoreCorrupt(path, f"has format {d.get('format')!r}, this repwatch reads "
                                      f"{FORMAT}")
    seq = _int(d, "seq", path)
    if not isinstance(d.get("meta"), dict) or not isinstance(d.get("schema"), list):
        raise StateStoreCorrupt(path, "'meta' must be an object and 'schema' a list")
    segs = d.get("segments")
    if not isinstance(segs, list):
        raise StateStoreCorrupt(path, "'segments' must be a list")
    refs: list[SegmentRef] = []
    for i, s in enumerate(segs):
        if not isinstance(s, dict) or set(s) != set(SegmentRef.__dataclass_fields__):
            raise StateStoreCorrupt(path, f"segment entry {i} is malformed: {s!r}")
        m = SEGMENT_RE.match(str(s["name"]))
        sha = s["sha256"]
        if m is None or m.group(1) != s["kind"] or int(m.group(2)) != s["seq"]:
            raise StateStoreCorrupt(path, f"segment entry {i} has a bad name/kind/seq: {s!r}")
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise StateStoreCorrupt(path, f"segment entry {i} has a bad sha256: {sha!r}")
        ref = SegmentRef(s["name"], s["kind"], _int(s, "seq", path), _int(s, "bytes", path),
                         sha, _int(s, "keys", path), _int(s, "tombstones", path))
        want_kind = "base" if i == 0 else "delta"
        if ref.kind != want_kind or ref.seq > seq or (refs and ref.seq <= refs[-1].seq):
            raise StateStoreCorrupt(path, f"segment {ref.name} is out of order (a base, then "
                                          f"deltas of increasing seq <= {seq})")
        refs.append(ref)
    saved_at = d.get("saved_at")
    return Manifest(seq, _int(d, "offset", path, none=True, lo=-(2**63)), d["meta"],
                    _int(d, "watermark_ms", path, none=True, lo=-(2**63)), _int(d, "tick", path),
                    d["schema"], tuple(refs), float(saved_at) if isinstance(
                        saved_at, int | float) else 0.0)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Temp file, fsync, rename over the old manifest, fsync the directory: the commit point."""
    data = manifest.to_json()
    tmp = directory / f".tmp-{MANIFEST}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    fsync_dir(directory)


class _HashingWriter:
    """A non-seekable file tap: zipfile then streams (data descriptors) and we hash as we go."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.pos, self.hash = raw, 0, hashlib.sha256()

    def write(self, b: bytes) -> int:
        n = self.raw.write(b)
        self.hash.update(b)
        self.pos += len(b)
        return n

    def tell(self) -> int:
        return self.pos

    def seek(self, *_: Any) -> int:
        raise OSError("not seekable")

    def flush(self) -> None:
        self.raw.flush()


def _encode_keys(keys: list[str]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    enc = [k.encode() for k in keys]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8), offsets


def _write_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype[Any], shape: tuple[int, ...],
                  chunks: Iterable[NDArray[Any]]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    written = 0
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fp:
        np.lib.format.write_array_header_2_0(fp, header)
        for c in chunks:
            c = np.ascontiguousarray(c, dtype=dtype)
            fp.write(c.tobytes())
            written += c.size
    if written != int(np.prod(shape)):
        raise RuntimeError(f"segment member {name}: wrote {written} values for shape {shape}")


def write_segment(directory: Path, kind: str, seq: int, schema: StateSchema, keys: list[str],
                  chunks: list[tuple[NDArray[Any], NDArray[np.intp]]],
                  last_seen: NDArray[np.int64], ticks: NDArray[np.int64],
                  tombstones: list[str]) -> SegmentRef:
    """Write one segment atomically; ``chunks`` are (page, row indices) in ``keys`` order."""
    name = f"{kind}-{seq:012d}.npz"
    tmp = directory / f".tmp-{name}.{os.getpid()}"
    meta = {"format": FORMAT, "kind": kind, "seq": seq, "keys": len(keys),
            "tombstones": len(tombstones)}
    n = len(keys)
    with open(tmp, "wb") as raw:
        tap = _HashingWriter(raw)
        with zipfile.ZipFile(tap, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]
            small: dict[str, NDArray[Any]] = {
                "__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
            small["keys_blob"], small["keys_offsets"] = _encode_keys(keys)
            small["last_seen"], small["ticks"] = last_seen, ticks
            small["tomb_blob"], small["tomb_offsets"] = _encode_keys(tombstones)
            for k in _SMALL:
                _write_member(zf, k, small[k].dtype, small[k].shape, [small[k]])
            for f in schema.fields:
                _write_member(zf, f"f.{f.name}", np.dtype(f.dtype), (n, *f.shape),
                              (page[f.name][rows] for page, rows in chunks))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, directory / name)
    fsync_dir(directory)
    return SegmentRef(name, kind, seq, tap.pos, tap.hash.hexdigest(), n, len(tombstones))


class SegmentData:
    """A validated segment, open for reading its field arrays a chunk of rows at a time."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, schema: StateSchema,
                 keys: list[str], tombstones: list[str], last_seen: NDArray[np.int64],
                 ticks: NDArray[np.int64]) -> None:
        self.path, self._zf, self._schema = path, zf, schema
        self.keys, self.tombstones, self.last_seen, self.ticks = keys, tombstones, last_seen, ticks

    def field_chunks(self, name: str, rows: int) -> Iterator[tuple[int, NDArray[Any]]]:
        """``(first row, array of up to `rows` rows)`` for one field, in order."""
        field = next(f for f in self._schema.fields if f.name == name)
        dt = np.dtype(field.dtype)
        row_bytes = field.nbytes
        with self._zf.open(f"f.{name}.npy") as fp:
            shape, dtype = _read_header(fp, self.path, f"f.{name}")
            if dtype != dt or shape != (len(self.keys), *field.shape):
                raise StateStoreCorrupt(self.path, f"field {name!r} is {dtype}{shape}, the "
                                        f"schema wants {dt}{(len(self.keys), *field.shape)}")
            for start in range(0, len(self.keys), rows):
                k = min(rows, len(self.keys) - start)
                buf = fp.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise StateStoreCorrupt(self.path, f"field {name!r} is truncated")
                yield start, np.frombuffer(buf, dtype=dt).reshape((k, *field.shape))


def _read_header(fp: IO[bytes], path: Path, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"npy version {version}")
    except ValueError as e:
        raise StateStoreCorrupt(path, f"member {name} has a bad array header ({e})") from None
    if fortran or dtype.hasobject:
        raise StateStoreCorrupt(path, f"member {name} is Fortran-ordered or holds objects")
    return tuple(shape), dtype


def _read_small(zf: zipfile.ZipFile, path: Path, name: str, dtype: str,
                n: int | None) -> NDArray[Any]:
    with zf.open(f"{name}.npy") as fp:
        shape, dt = _read_header(fp, path, name)
        if dt != np.dtype(dtype) or len(shape) != 1 or (n is not None and shape[0] != n):
            raise StateStoreCorrupt(path, f"member {name} is {dt}{shape}, expected {dtype}"
                                          f"({n if n is not None else 'n'},)")
        buf = fp.read(shape[0] * dt.itemsize)
        if len(buf) != shape[0] * dt.itemsize:
            raise StateStoreCorrupt(path, f"member {name} is truncated")
        return np.frombuffer(buf, dtype=dt)


def _decode_keys(path: Path, blob: NDArray[np.uint8], off: NDArray[np.int64],
                 what: str) -> list[str]:
    if off[0] != 0 or off[-1] != blob.size or np.any(np.diff(off) < 1):
        raise StateStoreCorrupt(path, f"{what} offsets are not increasing from 0 to the blob size")
    raw = blob.tobytes()
    try:
        keys = [raw[a:b].decode() for a, b in zip(off[:-1].tolist(), off[1:].tolist(),
                                                   strict=True)]
    except UnicodeDecodeError:
        raise StateStoreCorrupt(path, f"{what} are not UTF-8") from None
    if len(set(keys)) != len(keys):
        raise StateStoreCorrupt(path, f"{what} repeat a key")
    return keys


def _sha256(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


def _parse(zf: zipfile.ZipFile, path: Path, ref: SegmentRef,
           schema: StateSchema) -> tuple[list[str], list[str], NDArray[Any], NDArray[Any]]:
    want = {f"{k}.npy" for k in _SMALL} | {f"f.{f.name}.npy" for f in schema.fields}
    infos = {i.filename: i for i in zf.infolist()}
    if set(infos) != want or len(zf.infolist()) != len(want):
        raise StateStoreCorrupt(path, f"holds members {sorted(infos)}, expected {sorted(want)}")
    for i in infos.values():
        if i.compress_type != zipfile.ZIP_STORED or i.file_size > ref.bytes:
            raise StateStoreCorrupt(path, f"member {i.filename} is compressed or oversized")
    try:
        meta = json.loads(_read_small(zf, path, "__meta__", "|u1", None).tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateStoreCorrupt(path, "__meta__ is not JSON") from None
    expect = {"format": FORMAT, "kind": ref.kind, "seq": ref.seq, "keys": ref.keys,
              "tombstones": ref.tombstones}
    if meta != expect:
        raise StateStoreCorrupt(path, f"meta {meta} does not match its manifest entry {expect}")
    n, t = ref.keys, ref.tombstones
    keys = _decode_keys(path, _read_small(zf, path, "keys_blob", "|u1", None),
                        _read_small(zf, path, "keys_offsets", "<i8", n + 1), "keys")
    tomb = _decode_keys(path, _read_small(zf, path, "tomb_blob", "|u1", None),
                        _read_small(zf, path, "tomb_offsets", "<i8", t + 1), "tombstones")
    if ref.kind == "base" and tomb:
        raise StateStoreCorrupt(path, "a base segment carries tombstones")
    return (keys, tomb, _read_small(zf, path, "last_seen", "<i8", n),
            _read_small(zf, path, "ticks", "<i8", n))


_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, zlib.error)


@contextlib.contextmanager
def open_segment(directory: Path, ref: SegmentRef, schema: StateSchema) -> Iterator[SegmentData]:
    """Verify a segment against its manifest entry and open it; raises StateStoreCorrupt."""
    path = directory / ref.name
    try:
        size, digest = _sha256(path)
    except OSError as e:
        raise StateStoreCorrupt(path, f"cannot be read ({e})") from None
    if (size, digest) != (ref.bytes, ref.sha256):
        raise StateStoreCorrupt(path, f"has {size} bytes / sha256 {digest[:12]}…, the manifest "
                                      f"says {ref.bytes} / {ref.sha256[:12]}… (truncated or "
                                      "changed after it was written)")
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        raise StateStoreCorrupt(path, f"is not a readable zip archive ({e})") from None
    with zf:
        try:
            keys, tomb, last_seen, ticks = _parse(zf, path, ref, schema)
        except StateStoreCorrupt:
            raise
        except _READ_ERRORS as e:
            raise StateStoreCorrupt(path, f"cannot be read ({type(e).__name__}: {e})") from None
        try:
            yield SegmentData(path, zf, schema, keys, tomb, last_seen, ticks)
        except StateStoreCorrupt:
            raise
        except _READ_ERRORS as e:
            raise StateStoreCorrupt(path, f"cannot be read ({type(e).__name__}: {e})") from None
