"""Which capture layout of the CUDA backend works here: prints one line per variant."""
import os
import sys
import traceback

import torch

from save_ros import models
from save_ros.core.protect import ProtectConfig, protect

x, _ = models.dataset("digits_resnet", "test")
calib, _ = models.dataset("digits_resnet", "calib")
ok = []
for side in ("1", "0"):
    os.environ["SAVE_ROS_SIDE_STREAMS"] = side
    try:
        net = models.load("digits_resnet").cuda()
        pm = protect(net, x[:8].cuda(), (0.0, 1.0), ProtectConfig(calibration=calib.cuda()))
        r = pm.infer(x[:8].cuda())
        print(f"side_streams={side}: OK verified={r.verified}", flush=True)
        ok.append(side)
    except Exception as exc:
        print(f"side_streams={side}: FAIL {type(exc).__name__}: {str(exc).splitlines()[0]}")
        traceback.print_exc(limit=6)
    torch.cuda.synchronize()
print("WORKS=" + (ok[0] if ok else "none"))
sys.exit(0 if ok else 1)
