"""The ROS 2 side of save_ros (the only package that imports rclpy).

`node` (save_node), `convert` (messages <-> tensors), `params` (declared parameters),
`health` (/diagnostics), `backend`/`protected_backend` (bare or SAVE inference),
`failover_backend` (isolation=process: worker processes with a warm standby), `model_source`
(reference model, TorchScript or state dict), `bags`/`replay`/`client`/`process` (rosbag2 replay
against a node process), `demo`, `bench` and `failover_bench`.
"""
