"""Array files and input checks for encoder training (numpy only: safe to import anywhere).

Errors name the problem and the fix, e.g. "X contains NaN (first at row 3)".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ARRAY_SUFFIXES = (".npy", ".npz", ".parquet")


def load_array(path: str | Path, key: str | None = None) -> NDArray[Any]:
    """Read an unlabelled training array from ``.npy``, ``.npz`` or ``.parquet``.

    Parameters
    ----------
    path : str or Path
        The file. ``.npz`` archives must hold one array, or name it with ``key``. Parquet
        files need ``pyarrow``; every column must be numeric and becomes one feature.
    key : str, optional
        Array name inside an ``.npz`` archive.

    Returns
    -------
    ndarray
        The array as stored (validate it with :func:`check_training_array`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.asarray(np.load(path, allow_pickle=False))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
            if key is None:
                if len(names) != 1:
                    raise ValueError(
                        f"{path} holds {len(names)} arrays {names}; name one with --key"
                    )
                key = names[0]
            if key not in names:
                raise ValueError(f"{path} has no array {key!r}; it holds {names}")
            return np.asarray(f[key])
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                "reading parquet needs pyarrow: pip install pyarrow (or convert to .npy)"
            ) from exc
        table = pq.read_table(path)
        cols = []
        for name, col in zip(table.column_names, table.columns, strict=True):
            arr = col.to_numpy(zero_copy_only=False)
            if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
                raise ValueError(
                    f"{path}: column {name!r} has type {col.type}; every column must be numeric"
                )
            cols.append(arr.astype(np.float32))
        if not cols:
            raise ValueError(f"{path} has no columns")
        return np.stack(cols, axis=1)
    raise ValueError(
        f"unsupported array file {path.name!r}: use one of {', '.join(ARRAY_SUFFIXES)}"
    )


def image_shape_of(X: NDArray[Any], image_shape: list[int] | None = None) -> tuple[int, int, int]:
    """``(c, h, w)`` of an image batch: from a 3-D/4-D array, ``image_shape``, or a square ``d``.

    Raises
    ------
    ValueError
        When the shape cannot be read as images, or ``image_shape`` disagrees with the data.
    """
    if image_shape is not None:
        c, h, w = (int(s) for s in image_shape)
        if int(np.prod(X.shape[1:])) != c * h * w:
            raise ValueError(
                f"image_shape {[c, h, w]} has {c * h * w} values, but each sample of X has "
                f"shape {tuple(X.shape[1:])}"
            )
        return c, h, w
    if X.ndim == 4:
        return int(X.shape[1]), int(X.shape[2]), int(X.shape[3])
    if X.ndim == 3:
        return 1, int(X.shape[1]), int(X.shape[2])
    if X.ndim == 2:
        side = math.isqrt(int(X.shape[1]))
        if side * side == X.shape[1]:
            return 1, side, side
        raise ValueError(
            f"X has shape {X.shape}: flat rows of {X.shape[1]} values are not square images; "
            "pass image_shape=[c, h, w] (--image-shape C H W)"
        )
    raise ValueError(f"image data must be 2-D, 3-D or 4-D, got shape {X.shape}")


def check_training_array(
    X: Any,
    *,
    modality: str,
    image_shape: list[int] | None = None,
    min_rows: int = 8,
    name: str = "X",
) -> NDArray[np.float32]:
    """Validate a training array and return it as C-contiguous ``float32``.

    Tabular data must be 2-D ``(n, d)``; image data 2-D (flat, see :func:`image_shape_of`),
    3-D ``(n, h, w)`` or 4-D ``(n, c, h, w)``. Non-numeric dtypes, NaN/inf and too few rows
    are errors that say where the problem is.
    """
    arr = np.asarray(X)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} has complex dtype {arr.dtype}; pass real values")
    if modality == "tabular" and arr.ndim != 2:
        raise ValueError(
            f"tabular {name} must be 2-D (n_samples, n_features), got shape {arr.shape}"
        )
    if modality == "image":
        image_shape_of(arr, image_shape)
    elif modality != "tabular":
        raise ValueError(f"unknown modality {modality!r}; choose 'image' or 'tabular'")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows; at least {min_rows} are needed")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise ValueError(
            f"{name} contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
            "drop or impute non-finite values before training"
        )
    return arr
