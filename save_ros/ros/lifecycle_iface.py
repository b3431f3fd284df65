"""The lifecycle interface of `SaveNode` (services and `~/transition_event`) with its own QoS.

rclpy's `LifecycleNode` creates `~/change_state`, `~/get_state`, `~/get_available_states`,
`~/get_available_transitions` and `~/get_transition_graph` in C with the default services QoS
(keep last 10). A burst of requests that arrives before the node takes them keeps only the last
10; the others get neither an answer nor an error (issue 19: 11 of 300 `~/get_state` requests
from separate clients answered, 10 of 300 `~/recover`). `SaveNode` turns rclpy's interface off
(`enable_communication_interface=False`) and `attach` offers the same services, answered by the
same rclpy handlers, and the same `~/transition_event` topic, with the QoS of the node's
`services.qos_depth` parameter.
"""

from __future__ import annotations

from lifecycle_msgs.msg import State, Transition, TransitionEvent
from lifecycle_msgs.srv import ChangeState, GetAvailableStates, GetAvailableTransitions, GetState
from rclpy.qos import QoSProfile

# service -> (type, rclpy's handler on LifecycleNodeMixin: a private, name-mangled method)
_SERVICES = {
    "change_state": (ChangeState, "on_change_state"),
    "get_state": (GetState, "on_get_state"),
    "get_available_states": (GetAvailableStates, "on_get_available_states"),
    "get_available_transitions": (GetAvailableTransitions, "on_get_available_transitions"),
    "get_transition_graph": (GetAvailableTransitions, "on_get_transition_graph"),
}


class _Publishing:
    """The rclpy state machine, publishing a TransitionEvent for every step it takes (what
    rcl_lifecycle does itself while its communication interface is on)."""

    def __init__(self, machine, publish) -> None:
        self._machine, self._publish = machine, publish

    def __getattr__(self, name: str):
        return getattr(self._machine, name)

    def _event(self, tid: int, label: str, start: tuple[int, str]) -> None:
        goal = self._machine.current_state
        self._publish(TransitionEvent(transition=Transition(id=tid, label=label),
                                      start_state=State(id=start[0], label=start[1]),
                                      goal_state=State(id=goal[0], label=goal[1])))

    def _transitions(self) -> list:
        return list(self._machine.available_transitions)

    def trigger_transition_by_id(self, tid: int, publish_update: bool) -> None:
        start, known = self._machine.current_state, self._transitions()
        self._machine.trigger_transition_by_id(tid, False)
        self._event(tid, next((t[1] for t in known if t[0] == tid), ""), start)

    def trigger_transition_by_label(self, label: str, publish_update: bool) -> None:
        start, known = self._machine.current_state, self._transitions()
        self._machine.trigger_transition_by_label(label, False)
        self._event(next((t[0] for t in known if t[1] == label), 0), label, start)


def attach(node, depth: int, callback_group) -> None:
    """Offer the lifecycle services and `~/transition_event` on `node` (a LifecycleNode made
    with `enable_communication_interface=False`), requests kept up to `depth`."""
    qos = QoSProfile(depth=depth)  # reliable, volatile: the services' defaults, deeper
    pub = node.create_publisher(TransitionEvent, "~/transition_event", QoSProfile(depth=depth))

    def publish(event: TransitionEvent) -> None:
        event.timestamp = node.get_clock().now().nanoseconds
        pub.publish(event)

    node._state_machine = _Publishing(node._state_machine, publish)
    for name, (srv_type, handler) in _SERVICES.items():
        # rclpy's own handler: `LifecycleNodeMixin.__on_get_state` is `_LifecycleNodeMixin__...`
        node.create_service(srv_type, f"~/{name}",
                            getattr(node, f"_LifecycleNodeMixin__{handler}"),
                            qos_profile=qos, callback_group=callback_group)
