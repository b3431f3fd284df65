"""ament_python package setup; also installs with plain pip into a virtual environment."""

from glob import glob

from setuptools import find_packages, setup

package_name = "save_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={"save_ros.models": ["weights/*.pt", "weights/*.json"], "save_ros": ["data/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
    ]
    # one entry per bag folder: each rosbag2 folder has its own metadata.yaml
    + [(f"share/{package_name}/{d}", glob(f"{d}/*")) for d in sorted(glob("bags/*"))],
    python_requires=">=3.10",
    # torch and ROS come from the platform: rosdep on a robot, scripts/install.sh in a venv.
    # pillow: scikit-learn reads its sample photos with it (save_ros.models.zoo.images)
    install_requires=["numpy", "pyyaml", "scikit-learn", "pillow", "gymnasium", "rosbags"],
    extras_require={
        "test": ["pytest", "ruff"],
        "plot": ["matplotlib"],
        # campaigns sharded over a Ray cluster (save-ros robustness campaign --ray); imported lazily
        "cluster": ["ray>=2.40"],
        # ROS 2 Kilted's core from PyPI, for machines without a sourced ROS 2 distribution.
        "ros-pypi": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-std-msgs",
            "ros-sensor-msgs",
            "ros-std-srvs",
            "ros-diagnostic-msgs",
            "ros-geometry-msgs",
            "ros-trajectory-msgs",  # JointTrajectory: a policy's action chunk on ~/output
        ],
    },
    zip_safe=False,
    maintainer="save_ros developers",
    maintainer_email="dev@save-ros.invalid",
    description="SAVE fault tolerance for neural-network inference as a ROS 2 node",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "save_node = save_ros.ros.node:main",
            "save-ros = save_ros.cli:main",
        ],
    },
)
