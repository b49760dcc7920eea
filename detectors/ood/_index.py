"""Approximate k-nearest-neighbour index for large references (faiss IVF-Flat, optional).

Exact search costs ``O(n_ref)`` per query; past a few hundred thousand reference rows that no
longer serves a stream. An inverted-file index (IVF) clusters the reference into ``nlist``
cells with k-means and searches only the ``nprobe`` cells nearest to each query, so a query
reads about ``nprobe / nlist`` of the reference. IVF-Flat was chosen over HNSW by
measurement (``benchmarks/results/knn_scale.md``): on 100k x 128 clustered embeddings it
built in 9 s against 49-73 s for HNSW (M = 16/32) and searched faster at the same recall@10
(0.99); HNSW's build alone would take many minutes at 1M rows on one core.

faiss is imported lazily (``pip install 'repwatch[faiss]'``); nothing else in ``detectors``
needs it. The index serialises to faiss's own byte format (:func:`faiss.serialize_index`),
stored as a ``uint8`` array next to :data:`INDEX_FORMAT` and the faiss version; no pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]

#: Version of the stored index layout (bump when the way it is built or read changes).
INDEX_FORMAT = 1
#: k-means sample per cell when training the coarse quantiser (faiss warns below 39).
_TRAIN_PER_CELL = 40


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "the approximate kNN index needs faiss: pip install 'repwatch[faiss]' (faiss-cpu), "
            "or leave approximate_from=None for exact search"
        ) from exc
    return faiss


def default_nlist(n: int) -> int:
    """``2 sqrt(n)`` cells, at least 1.

    faiss's guidance is 4-16 sqrt(n); k-means costs ``O(nlist^2)`` here (40 training rows per
    cell), so 2 sqrt(n) keeps the build of a 1M reference on one core to minutes, and
    ``nprobe`` buys back recall.
    """
    return max(1, int(2 * np.sqrt(n)))


class IVFIndex:
    """An IVF-Flat index (squared L2) over the float32 rows of a reference.

    Parameters
    ----------
    index : faiss.IndexIVFFlat
        A trained and filled index (use :meth:`build` or :meth:`from_bytes`).
    """

    def __init__(self, index: Any) -> None:
        self.index = index

    @classmethod
    def build(cls, R: F32, nlist: int | None, seed: int | None) -> IVFIndex:
        """Train the coarse quantiser on a seeded sample of ``R`` and add every row."""
        faiss = _faiss()
        n, d = R.shape
        cells = default_nlist(n) if nlist is None else int(nlist)
        if not 1 <= cells <= n:
            raise ValueError(f"nlist={cells} must be between 1 and the {n} reference rows")
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, cells, faiss.METRIC_L2)
        index.cp.seed = 0 if seed is None else int(seed) % (2**31)
        m = min(n, _TRAIN_PER_CELL * cells)
        sample = np.random.default_rng(seed).choice(n, m, replace=False) if m < n else slice(None)
        index.cp.min_points_per_centroid = 1  # no warning when n is close to 40 nlist
        index.train(np.ascontiguousarray(R[sample]))
        index.add(R)
        return cls(index)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def search(self, Q: F32, k: int, nprobe: int) -> NDArray[np.int64]:
        """Indices of the ``k`` nearest rows found per query (``-1`` where fewer were found)."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=int(min(max(1, nprobe), self.nlist)))
        _, idx = self.index.search(np.ascontiguousarray(Q, dtype=np.float32), k, params=params)
        out: NDArray[np.int64] = idx
        return out

    def to_bytes(self) -> NDArray[np.uint8]:
        """faiss's own serialisation of the index, as a ``uint8`` array."""
        out: NDArray[np.uint8] = np.asarray(_faiss().serialize_index(self.index), dtype=np.uint8)
        return out

    @classmethod
    def from_bytes(cls, data: NDArray[np.uint8]) -> IVFIndex:
        return cls(_faiss().deserialize_index(np.ascontiguousarray(data, dtype=np.uint8)))

    @staticmethod
    def version() -> str:
        return str(_faiss().__version__)
