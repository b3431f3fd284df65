"""Tools around a save_node process (not the node itself): replay a bag through it, benchmark it,
feed it hostile inputs, run the demo.

`process` (start a node as a process with `--ros-args`), `client` (publish inputs, collect
outputs and statuses over DDS), `replay_result` (what a replay saw, compared), `replay` (the
`save-ros replay` verb), `demo` (`save-ros demo`), `bundled` (where config/ and bags/ are; how
the committed bags are made), `bench_node`, `bench_stream`, `bench_failover` (`save-ros bench
ros | ros-stream | ros-failover`), `hostile` and `hostile_suite` (malformed and adversarial
inputs, and the promises the node keeps under them).
"""
