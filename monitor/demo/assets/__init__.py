"""The security incidents' shipped inputs (``security.npz``), read with numpy alone.

Built once by ``scripts/build_demo_assets.py`` (torch and ART, the ``attacks`` extra) from the
bundled digits models; the demo never imports either. Pixels are on the sidecar's 0..16 scale,
float16. See that script for how each array was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SECURITY = Path(__file__).resolve().parent / "security.npz"


@dataclass(frozen=True)
class SecurityAssets:
    pgd: NDArray[np.float32]  # adversarial inputs (each flips the ONNX model's prediction)
    pgd_label: NDArray[np.int64]  # their true labels
    pgd_src: NDArray[np.int64]  # digits index of the clean image each was made from
    probe_hsj: NDArray[np.float32]  # HopSkipJump's queries, in order, de-duplicated
    probe_square: NDArray[np.float32]  # SquareAttack's queries (five runs), de-duplicated
    flip_idx: NDArray[np.int64]  # digits indices (test split) sent with a wrong label
    flip_label: NDArray[np.int64]
    backdoor: NDArray[np.float32]  # test images with ART's pixel-pattern trigger
    backdoor_src: NDArray[np.int64]  # digits index of the clean image each was made from
    backdoor_label: NDArray[np.int64]  # the target class
    meta: dict[str, Any]


def load_security(path: Path = SECURITY) -> SecurityAssets:
    """The arrays of ``security.npz`` (float32 / int64); OSError when it is missing."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    return SecurityAssets(
        meta=meta,
        **{k: v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64)
           for k, v in arrays.items()},
    )
