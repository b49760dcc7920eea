"""Execution providers: accelerators first when onnxruntime offers them, and a fallback is
reported (log + metadata), since onnxruntime-gpu silently runs on the CPU without CUDA."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest

from serving.session import ModelSession, choose_providers


def test_choose_providers_order() -> None:
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(
        ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    ) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_missing_accelerator_is_reported(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with caplog.at_level(logging.INFO, "serving.session"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own UserWarning about the provider
        session = ModelSession(tiny_models["model"], "model 'tiny'")
    assert session.providers == ["CPUExecutionProvider"]
    assert "['CUDAExecutionProvider'] did not start" in caplog.text
    assert "with execution providers ['CPUExecutionProvider']" in caplog.text


def test_unloadable_model_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match=r"model 'x': onnxruntime cannot load .*bad\.onnx"):
        ModelSession(bad, "model 'x'")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelSession(tmp_path / "none.onnx", "model 'x'")
