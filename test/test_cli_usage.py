"""The CLI's usage: `--help` on every command and verb, a missing command is a usage error (exit
2), and output paths are checked before the work starts."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from save_ros import cli

HAVE_ROS = importlib.util.find_spec("rclpy") is not None
REPO = Path(__file__).resolve().parents[1]
GROUPS = {name: g for name, g in cli.COMMANDS.items() if isinstance(g, cli.Group)}
GROUPS["maintainer"] = cli.MAINTAINER
# every verb and sub-verb with a module of its own (serve is save_node's help, tested below)
VERBS = [(name,) for name, v in cli.COMMANDS.items() if isinstance(v, cli.Verb) and name != "serve"]
VERBS += [(group, name) for group, g in GROUPS.items() for name in g.verbs]


def _verb(words: tuple[str, ...]) -> cli.Verb:
    return GROUPS[words[0]].verbs[words[1]] if len(words) == 2 else cli.COMMANDS[words[0]]


def _needs_ros(module: str) -> bool:
    return module.startswith(("save_ros.ros.", "save_ros.tools."))


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_prints_its_help_and_exits_0(capsys, verb) -> None:
    if _needs_ros(_verb(verb).module) and not HAVE_ROS:
        pytest.skip("ROS 2 (rclpy) is not installed")
    with pytest.raises(SystemExit) as exc:
        cli.main([*verb, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"usage: save-ros {' '.join(verb)}"), out[:200]
    assert "-h, --help" in out


def test_the_verbs_are_the_users_jobs() -> None:
    """One verb per job; the maintainer's apart; every old name an alias of an existing verb."""
    assert list(cli.COMMANDS) == ["demo", "serve", "analyze", "robustness", "bench", "replay",
                                  "watch"]
    assert set(cli.ROBUSTNESS.verbs) == {"campaign", "demo", "training", "pvf", "hostile",
                                         "hostile-bag"}
    assert set(cli.MAINTAINER.verbs) == {"train", "train-zoo", "zoo-report", "bags"}
    for old, new in cli.ALIASES.items():
        assert old not in cli.COMMANDS
        assert new[1] in GROUPS[new[0]].verbs, (old, new)


def test_bare_save_ros_is_a_usage_error_with_the_command_list(capsys) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: save-ros" in captured.err and "name a COMMAND" in captured.err
    for name in cli.COMMANDS:
        assert name in captured.err


def test_help_lists_the_maintainers_verbs_apart_and_no_alias(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    jobs, _, maintainer = out.partition("maintainer's verbs:")
    for name in cli.COMMANDS:
        assert f"    {name}" in jobs
    for name in cli.MAINTAINER.verbs:
        assert f"maintainer {name}" in maintainer and f"maintainer {name}" not in jobs
    for old in ("campaign-demo", "train-campaign", "pvf "):  # hidden: not offered to newcomers
        assert old not in out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_prints_its_help_and_needs_a_word(capsys, group) -> None:
    assert cli.main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: save-ros {group}")
    for name in GROUPS[group].verbs:
        assert name in out
    assert cli.main([group]) == 2  # the sub-verb is missing
    err = capsys.readouterr().err
    assert f"usage: save-ros {group}" in err and f"save-ros {group}: error: name a" in err


def test_help_is_fast_and_imports_neither_torch_nor_ros() -> None:
    code = ("import sys\nfrom save_ros import cli\ncli.main(['--help'])\n"
            "cli.main(['robustness', '--help'])\n"
            "heavy = {'torch', 'rclpy', 'numpy'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "maintainer's verbs:" in done.stdout


@pytest.mark.parametrize("old", sorted(cli.ALIASES))
def test_an_old_verb_prints_one_deprecation_line_and_does_the_same(capsys, old) -> None:
    new = cli.ALIASES[old]
    with pytest.raises(SystemExit) as exc:
        cli.main([*new, "--help"])
    assert exc.value.code == 0
    expected = capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main([old, "--help"])
    assert exc.value.code == 0
    got = capsys.readouterr()
    assert got.out == expected.out  # the new verb's own help: same options, same prog
    assert got.err == (f"save-ros {old}: deprecated name; use 'save-ros {' '.join(new)}' "
                       "(same arguments)\n")


def test_an_old_verb_refuses_the_same_bad_value(capsys) -> None:
    """The alias runs the new verb: same parser, same one-line error, after the deprecation."""
    for argv in (("robustness", "pvf", "--batch", "0"), ("pvf", "--batch", "0")):
        with pytest.raises(SystemExit) as exc:
            cli.main(list(argv))
        assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and "deprecated name" in lines[1]
    new_err, old_err = lines[0], lines[2]
    assert old_err == new_err
    assert new_err.startswith("save-ros robustness pvf: error: argument --batch")


def _documented_commands() -> list[tuple[str, str]]:
    """(file, the words after `save-ros`) for every `save-ros WORD` in README, docs/, scripts/."""
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted(p for p in (REPO / "scripts").rglob("*") if p.suffix in (".py", ".sh")),
             *sorted((REPO / ".ci").glob("*"))]
    found = []
    for path in files:
        for line in path.read_text().splitlines():
            if " -> " in line:  # a rename note (`save-ros old` -> `save-ros new`) names both
                continue
            found += [(path.name, m) for m in re.findall(r"save[-_]ros(?: |\.cli )([a-z][\w-]*)",
                                                          line)]
    return found


def test_docs_and_scripts_use_the_new_verbs() -> None:
    found = _documented_commands()
    assert len(found) > 30  # the reader finds them
    assert sorted({(f, w) for f, w in found if w in cli.ALIASES}) == []


@pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")
def test_serve_is_save_node(capsys, tmp_path) -> None:
    """`save-ros serve` runs save_node's main: its --help (naming serve), its exit codes."""
    from save_ros.ros.params import SPECS

    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: save-ros serve [-h] [--ros-args")
    assert all(f"  {spec.name} = " in out for spec in SPECS)
    broken = tmp_path / "broken.yaml"
    broken.write_text("save_node: [unclosed\n")
    assert cli.main(["serve", "--ros-args", "--params-file", str(broken)]) == 2  # bad params file
    err = capsys.readouterr().err
    assert "save_node:" in err and str(broken) in err and "Traceback" not in err


@pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")
def test_save_node_help_prints_usage_and_does_not_start_the_node() -> None:
    from save_ros.ros.params import SPECS
    from save_ros.tools.process import node_command

    done = subprocess.run([*node_command(), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("usage: save_node")
    for spec in SPECS:  # every parameter, with its description
        assert f"  {spec.name} = " in out
        assert spec.description.split()[0] in out
    assert "digits_cnn.yaml" in out and "examples:" in out
    assert "[runtime]" in out  # which ones `ros2 param set` may change
    # nothing of a running node: no ROS log lines, no model loaded
    assert "[INFO]" not in done.stderr and "analysis" not in done.stderr


@pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")
def test_replay_refuses_an_existing_out_before_replaying(capsys, tmp_path) -> None:
    """Checked first: with --attach and no node, a late check would wait for the node instead."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out_bag"
    out.mkdir()
    code = cli.main(["replay", str(repo / "bags" / "digits_mono8"), "--config",
                     str(repo / "config" / "digits_cnn.yaml"), "--attach", "--namespace",
                     "/nobody_here", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"save-ros replay: error: --out {out} exists; a rosbag2 is written "
                           "into a new folder: remove it or choose another path")


def test_a_json_path_that_is_a_folder_is_refused_before_the_run(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's error(): exit 2
        cli.main(["robustness", "pvf", "--json", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--json {tmp_path} is a folder; give a file name" in err and "Traceback" not in err
