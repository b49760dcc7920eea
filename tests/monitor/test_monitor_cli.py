"""``repwatch reference fit`` from an array file and from a range of the records topic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.cli import main
from monitor.config import dump_config
from monitor.reference import load_reference


def _config_file(tmp_path: Path, config) -> Path:
    path = tmp_path / "repwatch.yaml"
    path.write_text(dump_config(config))
    return path


def test_reference_fit_from_an_array_file(tmp_path: Path, capsys) -> None:
    from monitor.config import Config

    arr = tmp_path / "ref.npz"
    np.savez(arr, X=np.random.default_rng(0).normal(size=(300, 6)))
    cfg = Config.model_validate({"models": [{"name": "digits", "embedding_dim": 6, "detectors": [
        {"name": "drift.mmd", "params": {"n_permutations": 50}},
        {"name": "ood.knn", "params": {"fpr": 0.05}}]}]})
    out = tmp_path / "refdir"
    args = ["reference", "fit", "--config", str(_config_file(tmp_path, cfg)), "--model",
            "digits", "--out", str(out), "--array", str(arr)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 300 and printed["detectors"] == ["drift.mmd", "ood.knn"]
    ref = load_reference(cfg.models[0], out)
    assert ref.dim == 6 and ref.source == f"array:{arr}"
    assert main([*args[:-2], "--array", str(tmp_path / "ref.txt")]) == 2
    assert "must be .npy or .npz" in capsys.readouterr().err


def test_reference_fit_rejects_an_unknown_model(tmp_path: Path, capsys) -> None:
    from monitor.config import Config

    path = _config_file(tmp_path, Config())
    assert main(["reference", "fit", "--config", str(path), "--model", "nope", "--out",
                 str(tmp_path / "o"), "--array", "x.npy"]) == 2
    assert "not configured" in capsys.readouterr().err


@pytest.mark.integration
def test_reference_fit_from_an_offset_range_of_the_records_topic(mon, tmp_path: Path,
                                                                  capsys) -> None:
    config = mon.config([{"name": "ood.knn", "params": {"k": 5, "fpr": 0.05}}])
    first = mon.make("digits", 300)
    mon.produce(first + mon.make("digits", 100, start=300, shift=5.0))
    mon.produce(mon.make("other", 50))
    out = tmp_path / "from-topic"
    assert main(["reference", "fit", "--config", str(_config_file(tmp_path, config)),
                 "--model", "digits", "--out", str(out), "--from-topic",
                 "--start-offset", "0", "--end-offset", "300"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 300  # only digits, only 0..299
    ref = load_reference(config.models[0], out)
    expected = np.stack([r.embedding for r in first]).astype(np.float64)
    assert np.allclose(ref.mean, expected.mean(axis=0))


@pytest.mark.integration
def test_reference_fit_from_a_time_range_of_the_records_topic(mon, tmp_path: Path,
                                                               capsys) -> None:
    from kafka import KafkaProducer

    from monitor import records as R

    config = mon.config([{"name": "ood.knn", "params": {"k": 5, "fpr": 0.05}}])
    recs = mon.make("digits", 400)
    t0 = 1_790_000_000_000
    p = KafkaProducer(bootstrap_servers=mon.broker)
    for i, r in enumerate(recs):  # one record per second of broker time
        p.send(mon.records_topic, key=b"digits", value=R.encode(r), timestamp_ms=t0 + i * 1000)
    p.flush(15)
    p.close()
    out = tmp_path / "from-time"
    start, end = str(t0 + 100_000), "2026-09-21T14:18:20Z"  # epoch ms, and ISO for t0 + 300 s
    assert main(["reference", "fit", "--config", str(_config_file(tmp_path, config)),
                 "--model", "digits", "--out", str(out), "--from-topic",
                 "--start", start, "--end", end]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 200  # records 100..299
    expected = np.stack([r.embedding for r in recs[100:300]]).astype(np.float64)
    assert np.allclose(load_reference(config.models[0], out).mean, expected.mean(axis=0))


def _parsers(parser, path=("repwatch",)):
    """Every parser of the command line with its command path, depth first."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert listed.get(name), f"{' '.join(path)} {name} has no help in the listing"
                yield from _parsers(sub, (*path, name))


def test_every_command_has_a_description_and_every_option_help_and_its_default() -> None:
    import argparse

    from monitor.cli import build_parser

    seen = 0
    for path, parser in _parsers(build_parser()):
        command = " ".join(path)
        assert parser.description, f"{command} has no description"
        formatter = parser._get_formatter()
        one_of = {id(a) for g in parser._mutually_exclusive_groups if g.required
                  for a in g._group_actions}  # one of them must be given: no default
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{command} {name} has no help"
            optional = action.option_strings and not action.required and id(action) not in one_of
            if optional and action.nargs != 0:  # flags are off unless given
                shown = formatter._get_help_string(action) % {"default": action.default}
                assert "default" in shown, f"{command} {name} shows no default: {shown!r}"
            seen += 1
    assert seen > 40  # the walk reached the sub-commands' options


def test_help_shows_defaults_and_version_prints_the_installed_version(capsys) -> None:
    from monitor.cli import main
    from monitor.version import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"repwatch {version()}" != "repwatch 0+unknown"
    with pytest.raises(SystemExit):
        main(["reference", "fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 200000)" in out and "Fit a model's configured detectors" in out
    with pytest.raises(SystemExit):
        main(["encoder", "train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "most epochs to train (default: 100)" in out and "(default: simclr)" in out


def test_help_builds_without_importing_numpy_or_detectors() -> None:
    """Issue 11 item 9: `repwatch --help` must not pay for numpy or the detectors."""
    import subprocess
    import sys

    code = (
        "import sys, monitor.cli\n"
        "try:\n    monitor.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'detectors'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
