"""The bundled digits ONNX graph rebuilt in torch from its own weights (for white-box attacks).

The exported graph (``serving/encoders/models/digits_classifier.onnx``) has its batch norms
folded into the convolutions: Div(16) → Reshape(1×8×8) → [Conv3×3 → ReLU] ×2 → MaxPool2 →
Conv3×3 → ReLU → mean → Linear, once for the classifier (then ReLU = ``penultimate``, Linear =
``logits``) and once for the SSL encoder (``embedding``). :func:`load_torch_digits` copies the
initializers into the same torch layers; :func:`check_agreement` compares with onnxruntime.
Attacks work on inputs in [0, 1]; the modules here take [0, 1] and scale by 16 themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
ONNX_PATH = ROOT / "serving" / "encoders" / "models" / "digits_classifier.onnx"
PIXEL_MAX = 16.0


class Trunk(nn.Module):
    """Conv trunk of one branch (batch norms already folded into the convs)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(1, 24, 3, padding=1)
        self.c3 = nn.Conv2d(24, 48, 3, padding=1)
        self.c7 = nn.Conv2d(48, 48, 3, padding=1)
        self.out = nn.Linear(48, 32)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = x01.reshape(-1, 1, 8, 8)  # already divided: inputs are on [0, 1]
        x = torch.relu(self.c3(torch.relu(self.c0(x))))
        x = torch.relu(self.c7(nn.functional.max_pool2d(x, 2)))
        return self.out(x.mean(dim=(2, 3)))  # type: ignore[no-any-return]


class DigitsTorch(nn.Module):
    """``forward(x01) -> logits``; :meth:`views` gives logits, SSL embedding, penultimate."""

    def __init__(self) -> None:
        super().__init__()
        self.clf = Trunk()
        self.head = nn.Linear(32, 8)
        self.ssl = Trunk()

    def penultimate(self, x01: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.clf(x01))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.penultimate(x01))  # type: ignore[no-any-return]

    def views(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.penultimate(x01)
        return self.head(feats), self.ssl(x01), feats


def load_torch_digits(path: Path = ONNX_PATH) -> DigitsTorch:
    """Copy the ONNX initializers into :class:`DigitsTorch` (eval mode, no gradients kept)."""
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    if float(init["classifier.trunk.std"]) != PIXEL_MAX:
        raise RuntimeError(f"expected the graph to divide by {PIXEL_MAX}")
    model = DigitsTorch()
    pairs = {
        "clf": "classifier.trunk.backbone.", "ssl": "encoder.backbone.",
    }
    with torch.no_grad():
        for attr, prefix in pairs.items():
            trunk: Trunk = getattr(model, attr)
            for layer, idx in (("c0", "0"), ("c3", "3"), ("c7", "7")):
                conv: nn.Conv2d = getattr(trunk, layer)
                conv.weight.copy_(torch.from_numpy(init[f"{prefix}features.{idx}.weight"]))
                conv.bias.copy_(torch.from_numpy(init[f"{prefix}features.{idx}.bias"]))
            trunk.out.weight.copy_(torch.from_numpy(init[f"{prefix}out.weight"]))
            trunk.out.bias.copy_(torch.from_numpy(init[f"{prefix}out.bias"]))
        model.head.weight.copy_(torch.from_numpy(init["classifier.head.weight"]))
        model.head.bias.copy_(torch.from_numpy(init["classifier.head.bias"]))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class OnnxDigits:
    """The ONNX model on onnxruntime, fed inputs on [0, 1] (scaled by 16 here)."""

    def __init__(self, path: Path = ONNX_PATH) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def views(self, x01: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
        """``(logits, embedding, penultimate)`` of inputs on [0, 1], shape (n, 64)."""
        x = (np.asarray(x01, dtype=np.float32).reshape(-1, 64) * PIXEL_MAX).astype(np.float32)
        out = self.session.run(["logits", "embedding", "penultimate"], {"input": x})
        return out[0], out[1], out[2]

    def logits(self, x01: NDArray[Any]) -> NDArray[Any]:
        return self.views(x01)[0]


def check_agreement(model: DigitsTorch, onnx_model: OnnxDigits, X01: NDArray[Any]) -> float:
    """Largest absolute difference of logits, embedding and penultimate (torch vs ONNX)."""
    with torch.no_grad():
        t = [v.numpy() for v in model.views(torch.from_numpy(X01.astype(np.float32)))]
    o = onnx_model.views(X01)
    return float(max(np.abs(a - b).max() for a, b in zip(t, o, strict=True)))
