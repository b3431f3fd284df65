"""The package's bundled data: the committed bags, their topics, and how they are made.

Where config/ and bags/ are is `save_ros.ros.share` (the node needs it); re-exported here.

`save-ros maintainer bags` writes the committed bags under `bags/`:
- `bags/digits_mono8`: digits test images as 64x64 mono8 sensor_msgs/Image (each 8x8 pixel
  is an 8x8 block) at 30 Hz on `/camera/image`; the node area-averages them back to 8x8.
- `bags/cartpole_states`: CartPole-v1 states of held-out rollouts as sensor_msgs/JointState at
  50 Hz on `/cartpole/joint_states` (names = the state components).
- `bags/cartpole_array`: the same states as std_msgs/Float32MultiArray (4 values, no header) at
  50 Hz on `/cartpole/state`, for a node with `input_type: float32_multi_array`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Header

from save_ros.argtypes import standalone
from save_ros.ros.bags import BagWriter, topics
from save_ros.ros.share import BAGS_DIR as BAGS_DIR  # re-exported: the tools find bags here
from save_ros.ros.share import CONFIG_DIR as CONFIG_DIR

DIGITS_BAG, CARTPOLE_BAG, CARTPOLE_ARRAY_BAG = "digits_mono8", "cartpole_states", "cartpole_array"
DIGITS_TOPIC, CARTPOLE_TOPIC = "/camera/image", "/cartpole/joint_states"
CARTPOLE_ARRAY_TOPIC = "/cartpole/state"
CARTPOLE_JOINTS = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
T0_NS = 1_700_000_000 * 10**9  # a fixed start stamp, so the bags are byte-reproducible


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `save-ros maintainer bags`."""
    parser.add_argument("--out-dir", type=Path, default=BAGS_DIR,
                        help=f"where the bags go (default {BAGS_DIR})")
    parser.add_argument("--force", action="store_true", help="replace existing bags")


def run(args: argparse.Namespace) -> int:
    """Write the committed bags (replacing them with --force)."""
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


main = standalone(add_arguments, run, __doc__, prog="python -m save_ros.tools.bundled")


if __name__ == "__main__":
    sys.exit(main())
