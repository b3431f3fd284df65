"""The ROS 2 side of save_ros (the only package that imports rclpy).

`node` (the save_node entry point: signals, executor, shutdown), `save_node` (the managed
lifecycle node), `pipeline` (intake -> inference -> publish), `intake` (the input queue),
`convert` (messages <-> tensors; the maths is in `save_ros.preprocess`), `outputs` (~/output
message choice), `params` (declared parameters), `paramfile` (params-file checks), `health`
(/diagnostics), `model_source` (bundled, package.module:factory, .pt2, TorchScript, state dict),
`calibration`, `backend`/`protected_backend` (bare or SAVE inference), `failover_backend`
(isolation=process), `bags`/`replay`/`client`/`process` (rosbag2 replay against a node
process), `demo`, `bench` and `failover_bench`. Some of these modules (intake, paramfile,
model_source, calibration) import no ROS and are tested without it.
"""
