"""Hostile inputs for `save_node`: named cases and a seeded fuzz for every input type, as a bag.

Cases (`hostile_cases`) are what a broken driver or a malicious publisher sends: unknown or
misspelt encodings, empty and absurd sizes, steps and data lengths that disagree, NaN/Inf and
finite-but-huge values, big-endian data, duplicate and invalid stamps, oversized strings, and
bursts; each case says whether the node must take it (`accept`), refuse it (`reject`), or may do
either (`any`: a choice of the node, e.g. 8UC1 images or duplicated joint names). The fuzz
(`fuzz_messages`) mutates every field of a valid message with a seeded generator.

The raw message builders and the fuzz are in `fuzz`. The messages target the bundled models:
images for `digits_cnn` (1x8x8, values in [0, 1]), JointState / Float32MultiArray for
`cartpole_policy` (4 values; joints `CARTPOLE_JOINTS`).

`save-ros robustness hostile-bag OUT` writes them as a rosbag2: one topic per input type,
`/hostile/image`, `/hostile/joint_state`, `/hostile/float32_multi_array`; bursts are 1 ns apart in
bag time (a flood under `--pace realtime`), the rest 10 ms apart.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header

from save_ros.argtypes import nonnegative_int, standalone
from save_ros.errors import UserError
from save_ros.ros.bags import BagWriter, read_messages
from save_ros.tools.bundled import BAGS_DIR, CARTPOLE_JOINTS, DIGITS_BAG, T0_NS
from save_ros.tools.fuzz import (
    HUGE,
    INPUT_TYPES,
    U32_MAX,
    fuzz_messages,
    make_array,
    make_header,
    make_image,
    make_joint_state,
)

TOPICS = {t: f"/hostile/{t}" for t in INPUT_TYPES}
ACCEPT, REJECT, ANY = "accept", "reject", "any"
# valid cartpole state (inside the joint box)
STATE = (0.01, -0.02, 0.03, 0.04)


@dataclass
class Case:
    """One hostile case: a name, what the node must do with it, and its messages."""

    name: str
    expect: str
    messages: list
    burst: bool = False  # published back to back (1 ns apart in bag time)


class _Stamps:
    """Distinct, increasing stamps (so only the cases that mean to share one do)."""

    def __init__(self, start: int = T0_NS) -> None:
        self.next = start

    def __call__(self, frame_id: str = "hostile") -> Header:
        self.next += 1_000_000
        return make_header(self.next, frame_id)


def _float_image(header: Header, values: np.ndarray, bigendian: bool = False) -> Image:
    dtype = ">f4" if bigendian else "<f4"
    pixels = np.asarray(values, dtype=np.float32).astype(dtype)
    h, w = pixels.shape
    return make_image(header, "32FC1", h, w, pixels.tobytes(), step=w * 4, bigendian=bigendian)


def _digit_frames(count: int = 3) -> list[Image]:
    """Valid 64x64 mono8 frames from the bundled digits bag."""
    return [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:count]


def _image_cases() -> list[Case]:
    h = _Stamps()
    frames = _digit_frames()
    grey = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    mono8 = bytes(frames[0].data)

    def mono(header: Header, **kw) -> Image:
        return make_image(header, "mono8", 64, 64, mono8, **kw)

    def filled(value: float) -> np.ndarray:
        return np.full((8, 8), value, dtype=np.float32)

    def some(value: float) -> np.ndarray:
        x = grey.copy()
        x[3, 4] = value
        return x

    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], axis=2)
    mono16 = (grey * 65535).astype("<u2")
    cases = [
        Case("valid mono8 64x64", ACCEPT, [_with_header(f, h()) for f in frames]),
        Case("valid rgb8 / bgr8 8x8", ACCEPT,
             [make_image(h(), e, 8, 8, rgb.tobytes()) for e in ("rgb8", "bgr8")]),
        Case("valid rgba8 / bgra8 8x8", ACCEPT,
             [make_image(h(), e, 8, 8, rgba.tobytes()) for e in ("rgba8", "bgra8")]),
        Case("valid mono16 8x8", ACCEPT, [make_image(h(), "mono16", 8, 8, mono16.tobytes())]),
        Case("valid 32FC1 8x8", ACCEPT, [_float_image(h(), grey)]),
        Case("valid padded step", ACCEPT,
             [make_image(h(), "mono8", 8, 8, b"".join(bytes(row) + b"\0" * 4 for row in
                                                   (rgb[..., 0]).tolist()), step=12)]),
        Case("valid 9x9 (area-resampled)", ACCEPT, [make_image(h(), "mono8", 9, 9, bytes(81))]),
        Case("valid big-endian mono16", ACCEPT,
             [make_image(h(), "mono16", 8, 8, mono16.astype(">u2").tobytes(), bigendian=True)]),
        Case("valid big-endian 32FC1", ACCEPT, [_float_image(h(), grey, bigendian=True)]),
        Case("unknown encodings", REJECT,
             [make_image(h(), e, 8, 8, bytes(64 * n), step=8 * n) for e, n in
              (("yuv422", 2), ("bayer_rggb8", 1), ("32FC3", 12), ("64FC1", 8),
               ("", 1), ("MONO8", 1), ("mono8\u00e9", 1), ("x" * 1000, 1))]),
        Case("8UC1 / 16UC1 (mono8 / mono16 aliases)", ANY,
             [make_image(h(), "8UC1", 8, 8, bytes(64)),
              make_image(h(), "16UC1", 8, 8, bytes(128))]),
        # strings end at their first NUL on the wire: the node receives plain mono8
        Case("encoding with an embedded NUL", ANY,
             [make_image(h(), "mono8\x00x", 8, 8, bytes(64))]),
        Case("empty sizes", REJECT,
             [make_image(h(), "mono8", 0, 0, b"", step=0), make_image(h(), "mono8", 0, 64, b""),
              make_image(h(), "mono8", 64, 0, b"", step=0)]),
        # up-scaling is the node's choice (preprocess.resize), refusing them is too
        Case("smaller than the model input", ANY,
             [make_image(h(), "mono8", 1, 1, b"\x80"), make_image(h(), "mono8", 7, 8, bytes(56)),
              make_image(h(), "mono8", 1, 4096, bytes(4096))]),
        Case("absurd sizes without data", REJECT,
             [make_image(h(), "mono8", 65535, 65535, b"", step=65535),
              make_image(h(), "mono8", U32_MAX, U32_MAX, b"", step=U32_MAX),
              make_image(h(), "mono8", 4097, 4096, b"", step=4096),
              make_image(h(), "32FC1", 2**20, 2**20, bytes(64), step=2**22)]),
        Case("steps that disagree with the data", REJECT,
             [mono(h(), step=0), mono(h(), step=63), mono(h(), step=65),
              mono(h(), step=U32_MAX), make_image(h(), "rgb8", 8, 8, rgb.tobytes(), step=8)]),
        Case("data length off", REJECT,
             [make_image(h(), "mono8", 64, 64, mono8[:-1], step=64),
              make_image(h(), "mono8", 64, 64, mono8 + b"\0", step=64),
              make_image(h(), "mono8", 64, 64, b"", step=64),
              make_image(h(), "mono8", 8, 8, bytes(1 << 20), step=8)]),
        Case("NaN / Inf pixels", REJECT,
             [_float_image(h(), some(v)) for v in (np.nan, np.inf, -np.inf)]
             + [_float_image(h(), filled(np.nan)),
                _float_image(h(), np.frombuffer(np.full(64, 0x7FA00000, "<u4").tobytes(),
                                                "<f4").reshape(8, 8))]),
        Case("finite huge pixels (3e38, float32 max)", ANY,
             [_float_image(h(), filled(v)) for v in (HUGE, -HUGE, 3.4028235e38)]
             + [_float_image(h(), some(HUGE))]),
        Case("out-of-range finite pixels", ANY,
             [_float_image(h(), filled(v)) for v in (1e6, -1e6, 1e30, 1e-45, -0.0)]),
        Case("duplicate stamps", ACCEPT, [_with_header(frames[i % 3], make_header(T0_NS))
                                          for i in range(10)]),
        Case("odd stamps", ACCEPT,
             [_with_header(frames[0], make_header(0)),
              _with_header(frames[1], make_header(-(2**31) * 10**9)),
              _with_header(frames[2], _odd_nanosec())]),
        Case("odd frame_ids", ACCEPT,
             [_with_header(frames[0], h("f" * 65536)),
              _with_header(frames[1], h("\u2603\n\t\x7f")), _with_header(frames[2], h(""))]),
        Case("burst of valid frames", ACCEPT, [_with_header(frames[i % 3], h())
                                                for i in range(40)], burst=True),
        Case("burst of bad frames", REJECT, [mono(h(), step=63) for _ in range(20)],
             burst=True),
    ]
    return cases


def _odd_nanosec() -> Header:
    header = make_header(T0_NS)
    header.stamp.nanosec = U32_MAX  # more than 1e9 ns: not a valid time, still a stamp
    return header


def _with_header(frame: Image, header: Header) -> Image:
    msg = Image(header=header, height=frame.height, width=frame.width, encoding=frame.encoding,
                is_bigendian=frame.is_bigendian, step=frame.step)
    msg.data = frame.data
    return msg


def _joint_state_cases() -> list[Case]:
    h = _Stamps()
    names, state = list(CARTPOLE_JOINTS), list(STATE)

    def js(positions=state, names=names, **kw) -> JointState:
        return make_joint_state(h(), names, positions, **kw)

    def with_value(v: float, k: int = 2) -> list[float]:
        out = list(state)
        out[k] = v
        return out

    return [
        Case("valid in order", ACCEPT, [js()]),
        Case("valid reordered", ACCEPT, [js(state[::-1], names[::-1])]),
        Case("valid with extra joints", ACCEPT,
             [js(state + [9.0, -9.0], names + ["wheel", "camera_tilt"])]),
        Case("valid with garbage velocity/effort", ACCEPT,
             [js(velocity=[np.nan] * 7, effort=[np.inf, HUGE])]),
        Case("empty message", REJECT, [js([], [])]),
        Case("names without positions", REJECT, [js([], names)]),
        Case("positions without names", REJECT, [js(state, [])]),
        Case("more positions than names", REJECT, [js(state + [0.5], names)]),
        Case("fewer positions than names", REJECT, [js(state[:3], names)]),
        Case("a joint missing", REJECT, [js(state[:3], names[:3])]),
        Case("duplicated joint name", ANY,
             [js(state + [0.9], names + [names[2]]), js([0.5] + state, names[:1] + names)]),
        Case("odd joint names", REJECT,
             [js(state, ["", "", "", ""]), js(state, ["j" * 10000] * 4),
              js(state, [n.upper() for n in names])]),
        # strings end at their first NUL on the wire: the node receives the plain names
        Case("joint names with an embedded NUL", ANY,
             [js(state, [n + "\x00x" for n in names])]),
        Case("10000 joints (the 4 among them)", ACCEPT,
             [js(state + [0.0] * 9996, names + [f"joint_{i}" for i in range(9996)])]),
        Case("NaN / Inf positions", REJECT,
             [js(with_value(v)) for v in (np.nan, np.inf, -np.inf, 1e39, 1e308, -1e308)]),
        Case("finite huge positions (3e38)", ANY,
             [js(with_value(HUGE)), js(with_value(-HUGE)), js([HUGE] * 4), js(with_value(1e20))]),
        Case("tiny and signed-zero positions", ACCEPT,
             [js(with_value(5e-324)), js(with_value(-0.0)), js(with_value(1e-45))]),
        Case("duplicate stamps", ACCEPT,
             [make_joint_state(make_header(T0_NS), names, with_value(0.01 * i))
              for i in range(10)]),
        Case("odd stamps", ACCEPT,
             [make_joint_state(make_header(0), names, state),
              make_joint_state(_odd_nanosec(), names, state),
              make_joint_state(make_header(-(2**31) * 10**9), names, state)]),
        Case("burst of valid states", ACCEPT, [js(with_value(0.001 * i)) for i in range(40)],
             burst=True),
        Case("burst of bad states", REJECT, [js(state[:3], names[:3]) for _ in range(20)],
             burst=True),
    ]


def _float32_multi_array_cases() -> list[Case]:
    state = list(STATE)

    def with_value(v: float) -> list[float]:
        out = list(state)
        out[1] = v
        return out

    with np.errstate(over="ignore"):
        return [
            Case("valid 4 values", ACCEPT, [make_array(state)]),
            Case("valid with data_offset", ACCEPT, [make_array([7.0, 7.0] + state, offset=2)]),
            Case("valid with a 2x2 layout", ACCEPT,
                 [make_array(state, dims=[("rows", 2, 4), ("cols", 2, 2)])]),
            Case("nonsense layout", ANY,
                 [make_array(state, dims=[("x" * 10000, U32_MAX, U32_MAX)] * 3)]),
            Case("wrong lengths", REJECT,
                 [make_array([]), make_array(state[:3]), make_array(state + [0.0]),
                  make_array([0.0] * 100000)]),
            Case("data_offset past the data", REJECT,
                 [make_array(state, offset=10), make_array(state, offset=U32_MAX),
                  make_array(state, offset=1)]),
            Case("NaN / Inf values", REJECT,
                 [make_array(with_value(v)) for v in (np.nan, np.inf, -np.inf, 1e39)]),
            Case("finite huge values (3e38, float32 max)", ANY,
                 [make_array(with_value(v)) for v in (HUGE, -HUGE, 3.4028235e38)]
                 + [make_array([HUGE] * 4)]),
            Case("tiny and signed-zero values", ACCEPT,
                 [make_array(with_value(v)) for v in (1e-45, -0.0, 1e-38)]),
            Case("burst of valid arrays", ACCEPT,
                 [make_array(with_value(0.001 * i)) for i in range(40)], burst=True),
            Case("burst of bad arrays", REJECT, [make_array(state[:3]) for _ in range(20)],
                 burst=True),
        ]


_CASES: dict[str, Callable[[], list[Case]]] = {
    "image": _image_cases, "joint_state": _joint_state_cases,
    "float32_multi_array": _float32_multi_array_cases}


def hostile_cases(input_type: str) -> list[Case]:
    """The hostile cases for one input type (image, joint_state, float32_multi_array)."""
    if input_type not in _CASES:
        raise ValueError(f"input type {input_type!r}: use one of {', '.join(INPUT_TYPES)}")
    return _CASES[input_type]()


def case_labels(input_type: str) -> list[tuple[str, str]]:
    """(case name, expectation) of every message of `hostile_cases`, in bag order."""
    return [(c.name, c.expect) for c in hostile_cases(input_type) for _ in c.messages]


# -- the bag --------------------------------------------------------------------------------
def write_hostile_bag(out: Path, input_types: tuple[str, ...] = INPUT_TYPES, fuzz: int = 0,
                      seed: int = 0) -> dict[str, int]:
    """Write the hostile cases (then `fuzz` fuzzed messages) per input type; counts by topic."""
    counts: dict[str, int] = {}
    with BagWriter(out) as bag:
        for input_type in input_types:
            t = T0_NS
            topic = TOPICS[input_type]
            messages = [(m, c.burst) for c in hostile_cases(input_type) for m in c.messages]
            messages += [(m, False) for m in fuzz_messages(input_type, fuzz, seed)]
            for msg, burst in messages:
                t += 1 if burst else 10_000_000
                bag.write(topic, msg, t)
            counts[topic] = len(messages)
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `save-ros robustness hostile-bag`."""
    parser.add_argument("out", type=Path, help="new rosbag2 directory")
    parser.add_argument("--types", nargs="+", choices=INPUT_TYPES, default=list(INPUT_TYPES))
    parser.add_argument("--fuzz", type=nonnegative_int, default=0,
                        help="also this many fuzzed messages per input type")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fuzz")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    """Write the hostile-input bag."""
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} exists; --force replaces it, or choose another path")
    if args.out.exists():
        shutil.rmtree(args.out)
    counts = write_hostile_bag(args.out, tuple(args.types), args.fuzz, args.seed)
    for topic, n in counts.items():
        print(f"{args.out}: {n} messages on {topic}")
    return 0


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.hostile")


if __name__ == "__main__":
    sys.exit(main())
