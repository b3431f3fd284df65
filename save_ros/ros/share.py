"""Where the package's shared folders are: config/ (node configs) and bags/ (the committed bags).

The node needs them at run time (`save_node --help` lists the configs); the tools around a node
(`save_ros.tools`) find the bundled bags here too.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_dir(name: str) -> Path:
    """The folder `name` of the package: the source tree's (checkout, editable install), else the
    ament share directory (colcon install), else `<prefix>/share/save_ros/<name>` (pip install)."""
    here = _SOURCE_ROOT / name
    if here.is_dir():
        return here
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            return Path(get_package_share_directory("save_ros")) / name
        except PackageNotFoundError:
            pass
    except ImportError:  # no ament index on this machine
        pass
    return Path(sys.prefix) / "share" / "save_ros" / name


CONFIG_DIR = share_dir("config")
BAGS_DIR = share_dir("bags")
