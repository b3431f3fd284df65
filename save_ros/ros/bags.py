"""Reading and writing rclpy messages in rosbag2 folders with `rosbags`.

rosbag2 stores messages as CDR, which is exactly what `rclpy.serialization` produces, so a bag
message becomes an rclpy message with `deserialize_message` and back, with no second type system
in the way. `rosbags` only supplies the message definitions that rosbag2 metadata records. The
node reads calibration inputs with it; the tools (`save_ros.tools`) replay and record bags with it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from save_ros.errors import UserError


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
