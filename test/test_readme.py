"""The README's Python snippet runs as written, and the status fields it names exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from save_ros.core.verify import FaultStatus

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_python_snippet_runs_and_names_real_status_fields() -> None:
    code = _first_python_block(README.read_text())
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (our own README)
    result = scope["result"]
    assert result.status.verified and result.status.repaired == {}
    named = re.search(r"result\.status\.(\w+)((?:, \.\w+)*)", code)
    assert named, "the snippet's comment names the status fields"
    names = [named.group(1), *re.findall(r"\.(\w+)", named.group(2))]
    assert set(names) <= {f.name for f in fields(FaultStatus)}, names
    assert "repaired" in names
