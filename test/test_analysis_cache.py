"""A saved Analysis is keyed by model, box, settings and the Selection code that wrote it: another
checkout or version of save_ros never loads it silently, and the log names the file loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from save_ros.core import analysis as analysis_mod
from save_ros.core.analysis import Analysis, AnalysisFormatError, analysis_key, code_fingerprint
from save_ros.core.select import analyze, key_for

CORE = Path(analysis_mod.__file__).resolve().parent
BOX = (0.0, 1.0)


@pytest.fixture(scope="module")
def net_and_analysis():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    calib = torch.rand(32, 4)
    return net, calib, analyze(net, calib[:1], BOX, calibration=calib)


def _copy_sources(to: Path) -> Path:
    to.mkdir(parents=True)
    shutil.copy(CORE.parent / "__init__.py", to.parent / "__init__.py")  # the version
    for name in analysis_mod.SELECTION_SOURCES:
        src = CORE / name
        if src.is_dir():
            shutil.copytree(src, to / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, to / name)
    return to


def test_fingerprint_follows_the_selection_source(tmp_path) -> None:
    same = _copy_sources(tmp_path / "a" / "core")
    assert code_fingerprint(same) == code_fingerprint()  # the same code elsewhere
    fixed = _copy_sources(tmp_path / "b" / "core")  # another checkout, one line changed
    ranges = fixed / "select" / "ranges.py"
    ranges.write_text(ranges.read_text() + "\n# a fix in another checkout\n")
    assert code_fingerprint(fixed) != code_fingerprint()


def test_key_covers_the_code(net_and_analysis) -> None:
    net, calib, a = net_and_analysis
    assert a.code == code_fingerprint()
    assert a.key == key_for(net, calib[:1], BOX)
    k = analysis_key(net, "arch", BOX, {})
    assert k == analysis_key(net, "arch", BOX, {}, code=code_fingerprint())
    assert k != analysis_key(net, "arch", BOX, {}, code="0" * 16)


def _written_elsewhere(a: Analysis, path: Path) -> Path:
    """`a` as another checkout's Selection code would have saved it."""
    other = Analysis.from_dict(a.to_dict() | {"code": "0" * 16})
    other.key = "f" * 64  # its key, made with its code
    return other.save(path)


def test_an_analysis_from_other_code_is_refused_with_the_reason(net_and_analysis,
                                                                tmp_path) -> None:
    _, _, a = net_and_analysis
    path = _written_elsewhere(a, tmp_path / "cache.json")
    with pytest.raises(AnalysisFormatError, match="other save_ros Selection code "
                       rf"\(code 0000000000000000, this one {code_fingerprint()}"):
        Analysis.load(path, expect_key=a.key)
    assert Analysis.load(a.save(tmp_path / "mine.json"), expect_key=a.key).code == a.code


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))


def test_the_node_says_which_cache_it_loaded_or_why_not(net_and_analysis, tmp_path) -> None:
    pytest.importorskip("rclpy", reason="the node's cache loader lives in save_ros.ros")
    from save_ros.ros.backend.prepare import load_cached

    _, _, a = net_and_analysis
    log = _Log()
    elsewhere = _written_elsewhere(a, tmp_path / "theirs.json")
    assert load_cached(elsewhere, a.key, log) is None
    assert log.lines[-1][0] == "warning" and "other save_ros Selection code" in log.lines[-1][1]
    mine = a.save(tmp_path / "mine.json")
    assert load_cached(mine, a.key, log).key == a.key
    assert log.lines[-1] == ("info", f"analysis loaded from {mine} (key {a.key[:12]}, written "
                                     f"by Selection code {code_fingerprint()})")
