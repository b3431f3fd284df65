"""The ROS 2 node of save_ros and what it needs at run time (with `save_ros.tools`, the only
packages that import rclpy).

`node` (the save_node entry point: signals, executor, shutdown), `save_node` (the managed
lifecycle node: transitions, services, runtime parameters), `pipeline` (intake -> inference ->
publish), `intake` (the input queue), `convert` (messages <-> tensors; the maths is in
`save_ros.preprocess`), `outputs` (~/output message choice), `params` (declared parameters),
`paramfile` (params-file checks), `health` (/diagnostics), `sync` (approximate-time matching of
several input streams), `policy_io` (a policy's input topics and action-chunk output),
`policy_params` (their parameters), `policy_model` (a policy's inputs: zoo or import path),
`model_source` (bundled, package.module:factory, .pt2, TorchScript, state dict), `calibration`,
`bags` (rosbag2 reading and writing), `share` (where config/ and bags/ are), `usage`
(`save_node --help`), `backend/` (what inputs run through: bare, SAVE, SAVE in worker
processes).
The users' tools around a node process (replay, watch, demo, ROS benchmarks, hostile inputs) are
`save_ros.tools`, one layer up: nothing here imports them.
Some of these modules (intake, sync, paramfile, model_source, policy_model, calibration) import
no ROS and are tested without it.
"""
