"""Optional torch path for the heavy products of the drift family.

Imported only when a detector is built with ``device=...``; numpy stays the reference
implementation and these functions must return the same numbers (up to float32 rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "device= needs torch; install it (pip install torch==2.13.0) or use device=None"
        ) from exc
    return torch


def quadratic_forms(
    Zx: NDArray[Any], Zy: NDArray[Any], Kxx: NDArray[Any], Kxy: NDArray[Any],
    Kyy: NDArray[Any], device: str,
) -> NDArray[np.float64]:
    torch = _torch()
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
         for k, v in {"zx": Zx, "zy": Zy, "kxx": Kxx, "kxy": Kxy, "kyy": Kyy}.items()}
    left = t["zx"] @ t["kxx"]
    right = 2.0 * (t["zx"] @ t["kxy"]) + t["zy"] @ t["kyy"]
    q = (left.double() * t["zx"].double()).sum(1) + (right.double() * t["zy"].double()).sum(1)
    out: NDArray[np.float64] = q.cpu().numpy()
    return out


def feature_sums(
    Zx: NDArray[Any], Zy: NDArray[Any], phi_x: NDArray[Any], phi_y: NDArray[Any], device: str
) -> NDArray[np.float64]:
    torch = _torch()
    zx, zy, px, py = (torch.from_numpy(np.ascontiguousarray(a)).to(device)
                      for a in (Zx, Zy, phi_x, phi_y))
    out: NDArray[np.float64] = (zx @ px + zy @ py).double().cpu().numpy()
    return out
