"""Small rosbag2 bags from the bundled data, and reading/writing rclpy messages with `rosbags`.

rosbag2 stores messages as CDR, which is exactly what `rclpy.serialization` produces, so a bag
message becomes an rclpy message with `deserialize_message` and back, with no second type system
in the way. `rosbags` only supplies the message definitions that rosbag2 metadata records.

`python -m save_ros.ros.bags` writes the committed bags under `bags/`:
- `bags/digits_mono8`: digits test images as 64x64 mono8 sensor_msgs/Image (each 8x8 pixel
  is an 8x8 block) at 30 Hz on `/camera/image`; the node area-averages them back to 8x8.
- `bags/cartpole_states`: CartPole-v1 states of held-out rollouts as sensor_msgs/JointState at
  50 Hz on `/cartpole/joint_states` (names = the state components).
- `bags/cartpole_array`: the same states as std_msgs/Float32MultiArray (4 values, no header) at
  50 Hz on `/cartpole/state`, for a node with `input_type: float32_multi_array`.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header

from save_ros.errors import UserError
from save_ros.ros.share import share_dir

BAGS_DIR = share_dir("bags")
DIGITS_BAG, CARTPOLE_BAG, CARTPOLE_ARRAY_BAG = "digits_mono8", "cartpole_states", "cartpole_array"
DIGITS_TOPIC, CARTPOLE_TOPIC = "/camera/image", "/cartpole/joint_states"
CARTPOLE_ARRAY_TOPIC = "/cartpole/state"
CARTPOLE_JOINTS = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
T0_NS = 1_700_000_000 * 10**9  # a fixed start stamp, so the bags are byte-reproducible


class BagError(UserError, RuntimeError):
    """A bag cannot be read or written as asked; the message says why."""


@dataclass
class BagMessage:
    """One message of a bag: topic, type name, receive time (ns) and the rclpy message."""

    topic: str
    msgtype: str
    time_ns: int
    msg: object


def _typestore():
    return get_typestore(Stores.ROS2_KILTED)


class BagWriter:
    """Writes rclpy messages into a new rosbag2 (mcap or sqlite3); a context manager."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists; remove it or choose another output path")
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._typestore = _typestore()
        self._connections: dict[str, object] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, topic: str, msg: object, time_ns: int) -> None:
        """Append one message (its type is taken from the message itself)."""
        msgtype = _type_name(msg)
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[topic] = conn
        self._writer.write(conn, time_ns, serialize_message(msg))


def _type_name(msg: object) -> str:
    """`sensor_msgs/msg/Image` for an rclpy message instance."""
    module = type(msg).__module__.split(".")[0]
    return f"{module}/msg/{type(msg).__name__}"


def message_class(msgtype: str) -> type:
    """The rclpy class of `pkg/msg/Name` (rosidl_runtime_py is not on PyPI, so done by hand)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not installed; install {pkg}") from exc


def read_messages(path: str | Path, topics: tuple[str, ...] = ()) -> Iterator[BagMessage]:
    """Messages of a rosbag2 (sqlite3 or mcap) in time order, as rclpy messages."""
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    with Reader(path) as reader:
        conns = [c for c in reader.connections if not topics or c.topic in topics]
        if topics and not conns:
            have = sorted({c.topic for c in reader.connections})
            raise BagError(f"{path} has no topic {list(topics)}; it has {have}")
        types = {c.msgtype: message_class(c.msgtype) for c in conns}
        for conn, time_ns, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, time_ns,
                             deserialize_message(bytes(raw), types[conn.msgtype]))


def topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a bag."""
    with Reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def digits_image(pixels: np.ndarray, scale: int, stamp_ns: int, frame_id: str) -> Image:
    """One 8x8 digit (values in [0, 1]) as a (8*scale)^2 mono8 Image; each pixel a block."""
    mono = np.rint(np.kron(pixels, np.ones((scale, scale))) * 255).astype(np.uint8)
    msg = Image()
    msg.header = _header(stamp_ns, frame_id)
    msg.height, msg.width = mono.shape
    msg.encoding = "mono8"
    msg.step = mono.shape[1]
    msg.data = mono.tobytes()
    return msg


def _header(stamp_ns: int, frame_id: str) -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return header


def make_digits_bag(out: Path, count: int = 60, scale: int = 8, hz: float = 30.0) -> Path:
    """The first `count` digits test images as mono8 frames at `hz`."""
    from save_ros import models

    x, _ = models.dataset("digits_cnn", "test")
    with BagWriter(out) as bag:
        for i in range(count):
            t = T0_NS + int(i * 1e9 / hz)
            bag.write(DIGITS_TOPIC, digits_image(x[i, 0].numpy(), scale, t, "camera"), t)
    return out


def make_cartpole_bag(out: Path, count: int = 200, hz: float = 50.0) -> Path:
    """The first `count` held-out rollout states as JointState at `hz` (CartPole's 50 Hz)."""
    from save_ros import models

    x, _ = models.dataset("cartpole_policy", "test")
    with BagWriter(out) as bag:
        for i in range(count):
            t = T0_NS + int(i * 1e9 / hz)
            msg = JointState(header=_header(t, "cart"), name=list(CARTPOLE_JOINTS),
                             position=[float(v) for v in x[i]])
            bag.write(CARTPOLE_TOPIC, msg, t)
    return out


def make_cartpole_array_bag(out: Path, count: int = 200, hz: float = 50.0) -> Path:
    """The states of `make_cartpole_bag` as Float32MultiArray (the header-less policy input)."""
    from save_ros import models

    x, _ = models.dataset("cartpole_policy", "test")
    with BagWriter(out) as bag:
        for i in range(count):
            msg = Float32MultiArray()
            msg.data = [float(v) for v in x[i]]
            bag.write(CARTPOLE_ARRAY_TOPIC, msg, T0_NS + int(i * 1e9 / hz))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the committed bags (replacing them with --force)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=BAGS_DIR)
    parser.add_argument("--force", action="store_true", help="replace existing bags")
    args = parser.parse_args(argv)
    for name, make in ((DIGITS_BAG, make_digits_bag), (CARTPOLE_BAG, make_cartpole_bag),
                       (CARTPOLE_ARRAY_BAG, make_cartpole_array_bag)):
        out = args.out_dir / name
        if out.exists() and not args.force:
            print(f"{out}: exists (--force replaces it)")
            continue
        if out.exists():
            shutil.rmtree(out)
        make(out)
        print(f"{out}: {topics(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
