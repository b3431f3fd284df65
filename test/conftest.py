"""Shared test settings: a ROS domain of our own, so parallel sessions on one host never meet."""

import os
import random

# Set before any test imports rclpy or starts a node process (children inherit it).
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 199)))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
