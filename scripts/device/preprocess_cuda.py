"""Smoke: save_ros.preprocess on CUDA equals the CPU result; the node's protect() call on CUDA."""
import numpy as np
import torch

from save_ros.preprocess import ImageOptions, InputSpec, RawImage, Resize, image_to_input

rng = np.random.default_rng(0)
spec = InputSpec((3, 32, 32), (0.0,) * 3, (1.0,) * 3)
for enc, ch, dt in [("rgb8", 3, np.uint8), ("bgra8", 4, np.uint8), ("mono16", 1, np.uint16),
                    ("8UC3", 3, np.uint8)]:
    px = rng.integers(0, np.iinfo(dt).max, (48, 64, ch), dtype=dt)
    raw = RawImage(enc, 48, 64, px.strides[0], px.tobytes())
    for mode in Resize:
        opts = ImageOptions(resize=mode, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
        a = image_to_input(raw, spec, opts, "cpu")
        b = image_to_input(raw, spec, opts, "cuda")
        assert b.device.type == "cuda"
        print(enc, mode.value, "max |cpu-cuda|", float((a - b.cpu()).abs().max()))

import save_ros  # noqa: E402
from save_ros import models  # noqa: E402

net = models.load("digits_cnn").cuda()
x = torch.rand(1, 1, 8, 8, device="cuda")
pm = save_ros.protect(net, x, (torch.zeros(1, 8, 8, device="cuda"), torch.ones(1, 8, 8, device="cuda")),
                      save_ros.ProtectConfig(verifier="external"))
r = pm.infer(x, wait=False)
pm.run_pending_checks(5.0)
st = r.verdict.result(5.0)
print("protect on cuda:", type(pm).__name__, "verified", st.verified, "output device", r.output.device)
pm.close()
