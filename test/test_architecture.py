"""The shape of the house: no import cycles, every layer imports only below it, small modules.

The import graph is read from the source with `ast` (nothing is imported): `import x`,
`from x import y` (a submodule when `x.y` is one), relative imports, and imports inside functions
(lazy ones count: a cycle that only closes at run time is still a cycle), plus
`importlib.import_module("save_ros...")` with a literal name. The layers, lowest first:

    errors, argtypes      import nothing of save_ros
    core                  SAVE itself (imports errors only)
    faults                tensors and bits, not SAVE (core.bits only)
    models, preprocess    reference models; camera frames and state vectors -> inputs
    failover              crash-isolated workers (no ROS)
    eval                  campaigns and measurements
    ros                   the node and what it needs at run time (imports ROS)
    tools                 the users' tools around a node process: replay, watch, demo, ROS
                          benchmarks, hostile suites (imports ROS; the node never imports it)
    cli                   the save-ros command

Only `ros` and `tools` import ROS libraries (rclpy, messages, rosbags, launch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "save_ros"
MAX_LINES = 450
# modules allowed past MAX_LINES, with the reason (keep this short)
LONG_MODULES: dict[str, str] = {}
ROS_ROOTS = {"rclpy", "rosbags", "rosidl_runtime_py", "builtin_interfaces", "std_msgs",
             "std_srvs", "sensor_msgs", "diagnostic_msgs", "lifecycle_msgs", "vision_msgs",
             "geometry_msgs", "trajectory_msgs", "launch", "launch_ros", "ament_index_python"}
# package -> the save_ros packages (and modules) it may import besides itself
ALLOWED = {
    "save_ros.errors": set(),
    "save_ros.argtypes": set(),
    "save_ros.core": {"save_ros.errors"},
    "save_ros.faults": {"save_ros.errors", "save_ros.core.bits"},
    "save_ros.models": {"save_ros.errors", "save_ros.argtypes", "save_ros.core.box"},
    "save_ros.preprocess": {"save_ros.errors", "save_ros.core.box"},
    "save_ros.failover": {"save_ros.errors", "save_ros.argtypes", "save_ros.core",
                          "save_ros.faults", "save_ros.models"},
    "save_ros.eval": {"save_ros.errors", "save_ros.argtypes", "save_ros.core", "save_ros.faults",
                      "save_ros.models", "save_ros.failover"},
}
ALLOWED["save_ros.ros"] = {"save_ros.preprocess", "save_ros.eval"} | ALLOWED["save_ros.eval"]
ALLOWED["save_ros.tools"] = {"save_ros.ros"} | ALLOWED["save_ros.ros"]
# the packages that may import ROS libraries
ROS_LAYERS = ("save_ros.ros", "save_ros.tools")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _ours(name: str) -> str | None:
    """The module of ours that importing `name` runs last (its longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(modules of ours it imports, top-level names of other packages it imports)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    other: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] == "save_ros":
            target = _ours(name)
            if target is not None and target != module:
                ours.add(target)
        else:
            other.add(name.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in MODULES else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            add(node.args[0].value)
    return ours, other


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> str:
    """The entry of ALLOWED (or 'save_ros.ros', 'save_ros.cli', ...) a module belongs to."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return ".".join(module.split(".")[:2])


def _within(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_the_whole_package():
    assert {"save_ros.core.protect", "save_ros.core.select", "save_ros.ros.node",
            "save_ros.cli", "save_ros.errors"} <= set(MODULES)
    # the reader finds imports it must find: a lazy one, a relative one, a package's face
    assert "save_ros.core.select" in GRAPH["save_ros.core.runtime"][0]
    assert "save_ros.core.cuda.runtime" in GRAPH["save_ros.core.protect"][0]
    assert "rclpy" in GRAPH["save_ros.ros.node"][1]
    assert "save_ros.ros.share" in GRAPH["save_ros.tools.bundled"][0]
    assert {_layer("save_ros.ros.node"), _layer("save_ros.tools.demo")} == set(ROS_LAYERS)


def test_no_import_cycles():
    assert _cycles() == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_below_it(layer):
    bad = {m: sorted(t for t in ours if _layer(t) != layer and not _within(t, ALLOWED[layer]))
           for m, (ours, _) in GRAPH.items() if _layer(m) == layer}
    assert {m: t for m, t in bad.items() if t} == {}


def test_only_the_ros_layers_import_ros():
    bad = {m: sorted(other & ROS_ROOTS) for m, (_, other) in GRAPH.items()
           if _layer(m) not in ROS_LAYERS and other & ROS_ROOTS}
    assert bad == {}


def test_the_node_does_not_import_its_tools():
    """ros/ holds the node and what it needs; the tools around it live above it."""
    assert {m: sorted(t for t in ours if _layer(t) == "save_ros.tools")
            for m, (ours, _) in GRAPH.items()
            if _layer(m) == "save_ros.ros" and any(_layer(t) == "save_ros.tools" for t in ours)
            } == {}
    assert "save_ros.ros.tools" not in MODULES


def test_no_library_module_imports_the_command_line():
    assert sorted(m for m, (ours, _) in GRAPH.items() if "save_ros.cli" in ours) == []


def test_no_module_past_the_size_limit():
    long = {m: n for m, p in MODULES.items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and m not in LONG_MODULES}
    assert long == {}


def test_every_folder_of_modules_is_a_package():
    """setup.py's find_packages installs only folders with an __init__.py."""
    bare = sorted(str(d.relative_to(PACKAGE.parent)) for d in PACKAGE.rglob("*")
                  if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").is_file())
    assert bare == []
