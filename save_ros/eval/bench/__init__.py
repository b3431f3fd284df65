"""Measurements of SAVE, each a `save-ros bench` measurement with a `python -m` entry point.

`cpu` (+ `cpu_faults`, `report`): SAVE vs unprotected vs baselines at batch 1 on the bundled
models; `scale` (+ `scale_coverage`, `scale_shard`, `scale_inits`): robot-scale models through
`protect()`, coverage spread over processes or Ray; `failover`: worker
crash to next result, warm vs cold standby; `fx_sites` (`bench fx-sites`): what fx-node fault
sites cost a campaign. The ROS node's measurements need a node process and live in `save_ros.tools`.
"""
