"""What the ROS process tests share: a node process with its client, digits frames, parameters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue, SetParametersResult
from rcl_interfaces.srv import SetParameters

from save_ros.ros.bags import read_messages
from save_ros.tools.bundled import BAGS_DIR, DIGITS_BAG
from save_ros.tools.client import ReplayClient
from save_ros.tools.process import NodeProcess


@contextmanager
def running_node(config: str, namespace: str, overrides: dict, tmp_path_factory,
                 **client_options) -> Iterator[tuple[NodeProcess, ReplayClient]]:
    """Start save_node from `config` as a process and yield it with a client that saw it ready."""
    # shared by the test modules of this session: only the first node start runs Selection
    cache = tmp_path_factory.getbasetemp() / "save_ros_analysis" / "digits_cnn.json"
    proc = NodeProcess(config, namespace=namespace,
                       overrides={**overrides, "analysis_cache": str(cache)}).start()
    try:
        with ReplayClient(node_fqn=proc.fqn, input_topic="~/input", input_type="image",
                          **client_options) as client:
            client.wait_for_node(proc, timeout=90.0)
            yield proc, client
    finally:
        proc.stop()


def digits_frames(count: int) -> list:
    """The first `count` Image messages of the bundled digits bag."""
    return [m.msg for m in read_messages(BAGS_DIR / DIGITS_BAG)][:count]


def string_value(s: str) -> ParameterValue:
    """A string parameter value."""
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=s)


def set_parameter(client: ReplayClient, name: str, value: ParameterValue) -> SetParametersResult:
    """Set one parameter on the client's node through its set_parameters service."""
    srv = client.node.create_client(SetParameters, f"{client.fqn}/set_parameters")
    assert srv.wait_for_service(timeout_sec=10.0)
    done = threading.Event()
    future = srv.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name,
                                                                           value=value)]))
    future.add_done_callback(lambda _: done.set())
    assert done.wait(10.0)
    return future.result().results[0]
