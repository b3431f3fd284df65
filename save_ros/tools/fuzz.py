"""Raw ROS messages that carry any field value, however wrong, and a seeded fuzz of them.

`make_header`, `make_image`, `make_joint_state`, `make_array` build sensor_msgs / std_msgs
messages without checking a field (the hostile cases in `hostile` are made with them);
`fuzz_messages(input_type, count, seed)` mutates every field of a valid message with a seeded
generator: the same seed gives the same messages.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension

from save_ros.tools.bundled import CARTPOLE_JOINTS, T0_NS

INPUT_TYPES = ("image", "joint_state", "float32_multi_array")
U32_MAX = 2**32 - 1
HUGE = 3.0e38  # finite in float32 (max 3.4028235e38), but overflows any sum of a few of them


def make_header(stamp_ns: int = T0_NS, frame_id: str = "hostile") -> Header:
    """A header with any stamp (split into sec / nanosec as given)."""
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return header


def make_image(header: Header, encoding: str, height: int, width: int, data: bytes,
               step: int | None = None, bigendian: bool = False) -> Image:
    """An Image with exactly these fields (step from the data length unless given)."""
    msg = Image(header=header, height=height, width=width, encoding=encoding,
                is_bigendian=int(bigendian))
    msg.step = step if step is not None else (len(data) // height if height else 0)
    msg.data = data
    return msg


def make_joint_state(header: Header, names, positions, velocity=(),
                     effort=()) -> JointState:
    """A JointState with exactly these names and values."""
    return JointState(header=header, name=list(names), position=[float(v) for v in positions],
                      velocity=[float(v) for v in velocity], effort=[float(v) for v in effort])


def make_array(values, offset: int = 0,
               dims: list[tuple[str, int, int]] = ()) -> Float32MultiArray:
    """A Float32MultiArray with these values, data offset and layout dims."""
    msg = Float32MultiArray()
    msg.data = np.asarray(values, dtype=np.float64).astype(np.float32)
    msg.layout.data_offset = offset
    msg.layout.dim = [MultiArrayDimension(label=label, size=size, stride=stride)
                      for label, size, stride in dims]
    return msg


_F32_SPECIALS = (np.nan, np.inf, -np.inf, HUGE, -HUGE, 3.4028235e38, 1e-45, -0.0, 1e20, 1e30)
_F64_SPECIALS = _F32_SPECIALS + (1e39, 1e308, -1e308, 5e-324)
_GOOD_ENCODINGS = {"mono8": (1, 1), "mono16": (1, 2), "rgb8": (3, 1), "bgr8": (3, 1),
                   "rgba8": (4, 1), "bgra8": (4, 1), "32FC1": (1, 4)}
_BAD_ENCODINGS = ("8UC1", "16UC1", "32FC3", "yuv422", "bayer_rggb8", "", "MONO8", "jpeg")
MAX_FUZZ_DATA = 1 << 18  # bytes of one fuzzed image at most (absurd sizes come without data)


def _values(rng: np.random.Generator, n: int, specials: tuple[float, ...],
            p_special: float) -> np.ndarray:
    """n values around 0, each replaced by a special one with probability p_special."""
    out = rng.normal(0.0, 0.05, n)
    mask = rng.random(n) < p_special
    if mask.any():
        out[mask] = rng.choice(np.array(specials), mask.sum())
    return out


class _Fuzzer:
    """Seeded generator of mutated messages of one input type."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.stamps: list[int] = [T0_NS]

    def header(self) -> Header:
        rng = self.rng
        r = rng.random()
        if r < 0.15:  # a stamp seen before
            stamp = int(rng.choice(self.stamps))
        elif r < 0.2:
            stamp = int(rng.integers(-(2**31), 2**31 - 1)) * 10**9
        else:
            stamp = self.stamps[-1] + int(rng.integers(1, 50_000_000))
        self.stamps.append(stamp)
        frame = "fuzz" if rng.random() < 0.9 else "".join(
            chr(int(c)) for c in rng.integers(1, 0x2FFF, int(rng.integers(0, 300))))
        header = make_header(stamp, frame)
        if rng.random() < 0.03:
            header.stamp.nanosec = int(rng.integers(10**9, U32_MAX, endpoint=True))
        return header

    def image(self) -> Image:
        rng = self.rng
        if rng.random() < 0.75:
            encoding = str(rng.choice(list(_GOOD_ENCODINGS)))
        elif rng.random() < 0.7:
            encoding = str(rng.choice(_BAD_ENCODINGS))
        else:
            encoding = "".join(chr(int(c)) for c in rng.integers(32, 127, rng.integers(0, 40)))
        channels, itemsize = _GOOD_ENCODINGS.get(encoding, (1, 1))
        sizes = (0, 1, 7, 8, 8, 8, 9, 16, 64, 64, 65, int(rng.integers(1, 300)), 65535,
                 2**31 - 1, U32_MAX)
        height, width = (int(rng.choice(sizes)) for _ in range(2))
        row = width * channels * itemsize
        step = min(U32_MAX, int(rng.choice([row, row, row, row + int(rng.integers(1, 9)),
                                            max(row - 1, 0), 0, int(rng.integers(0, 4096)),
                                            U32_MAX])))
        size = step * height
        if size > MAX_FUZZ_DATA or rng.random() < 0.15:
            size = int(rng.choice([0, 1, 63, 64, 4096, int(rng.integers(0, 5000))]))
        elif rng.random() < 0.1:
            size += int(rng.choice([-1, 1]))
        size = max(size, 0)
        if encoding == "32FC1" and rng.random() < 0.7:
            values = _values(rng, size // 4, _F32_SPECIALS, float(rng.choice([0.0, 0.01, 0.5])))
            values = np.abs(values) if rng.random() < 0.5 else values
            with np.errstate(over="ignore"):
                data = values.astype(np.float32).tobytes() + bytes(size % 4)
        else:
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        return make_image(self.header(), encoding, height, width, data, step=step,
                      bigendian=bool(rng.random() < 0.1))

    def names(self) -> list[str]:
        rng = self.rng
        names = list(CARTPOLE_JOINTS)
        r = rng.random()
        if r < 0.2:
            names = [str(n) for n in rng.permutation(names)]
        elif r < 0.3:
            names = names[: int(rng.integers(0, 4))]
        elif r < 0.4:
            names = names + [str(rng.choice(names))]  # a duplicate
        elif r < 0.45:
            names = names + [f"extra_{i}" for i in range(int(rng.choice([1, 5, 2000])))]
        elif r < 0.5:
            names = ["".join(chr(int(c)) for c in rng.integers(1, 0x2FFF, rng.integers(0, 50)))
                     for _ in range(4)]
        return names

    def joint_state(self) -> JointState:
        rng = self.rng
        names = self.names()
        n = len(names) if rng.random() < 0.8 else int(rng.integers(0, 10))
        p = float(rng.choice([0.0, 0.0, 0.02, 0.3]))
        return make_joint_state(self.header(), names, _values(rng, n, _F64_SPECIALS, p),
                            velocity=_values(rng, int(rng.integers(0, 6)), _F64_SPECIALS, 0.3),
                            effort=_values(rng, int(rng.integers(0, 6)), _F64_SPECIALS, 0.3))

    def float32_multi_array(self) -> Float32MultiArray:
        rng = self.rng
        offset = int(rng.choice([0, 0, 0, 0, 1, 2, int(rng.integers(0, 20)), U32_MAX]))
        n = 4 + min(offset, 16) if rng.random() < 0.75 else int(
            rng.choice([0, 1, 3, 5, int(rng.integers(0, 64)), 20000]))
        p = float(rng.choice([0.0, 0.0, 0.02, 0.3]))
        dims = [("".join(chr(int(c)) for c in rng.integers(32, 127, rng.integers(0, 20))),
                 int(rng.integers(0, U32_MAX, endpoint=True)),
                 int(rng.integers(0, U32_MAX, endpoint=True)))
                for _ in range(int(rng.integers(0, 4)))]
        with np.errstate(over="ignore"):
            return make_array(_values(rng, n, _F32_SPECIALS, p), offset=offset, dims=dims)


def fuzz_messages(input_type: str, count: int, seed: int = 0) -> list:
    """`count` seeded mutations of valid messages of `input_type` (same seed, same messages)."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input type {input_type!r}: use one of {', '.join(INPUT_TYPES)}")
    make = getattr(_Fuzzer(seed), input_type)
    return [make() for _ in range(count)]
