"""The users' tools around a save_node process (not the node itself): try it, replay a bag
through it, watch it, benchmark it, feed it hostile inputs.

This package sits above `save_ros.ros` (it imports ROS and the node's parts; the node never
imports it) and below the `save-ros` command.

`process` (start a node as a process with `--ros-args`), `client` (publish inputs, collect
outputs and statuses over DDS), `replay_result` (what a replay saw, compared), `replay` (the
`save-ros replay` verb), `watch` and `watch_view` (`save-ros watch`), `demo` (`save-ros demo`),
`bundled` (the committed bags and how they are made), `bench_node`, `bench_stream`,
`bench_failover`, `bench_services` (`save-ros bench ros | ros-stream | ros-failover |
ros-services`), `fuzz`, `hostile` and `hostile_suite` (malformed and adversarial inputs, and the
promises the node keeps under them), `hostile_cli` (`save-ros robustness hostile`; the bag alone
is `robustness hostile-bag`).
"""
