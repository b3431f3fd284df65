"""Why does a range-only plan raise alarms on this GPU? Print the layers and their bounds."""
import sys

from save_ros.core.protect import ProtectConfig, protect
from save_ros.models import zoo

name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
m = zoo.build(name).cuda()
calib = zoo.images(64, 224, seed=1).cuda()
pm = protect(m, calib[:1], (0.0, 1.0), ProtectConfig(calibration=calib, redundancy_budget=0.0))
cap = pm._program((calib[:1],))  # positional inputs: a tuple
for i in range(2):
    r = pm.infer(calib[i : i + 1])
    prog = cap.program
    pm.infer(calib[i : i + 1], wait=True)
    out, vals = cap.run((calib[i : i + 1],), True)
    fs = prog.failed_slots()
    bad = prog.localize(fs, vals)
    print(i, "flags", [s.label for s in fs], "layers", bad[:8], "notes", r.status.notes[:1],
          flush=True)
    checks = {c.name: c for c in pm._plan.range_batch.checks}
    for b in bad[:4]:
        c = checks.get(b)
        if c is None:
            continue
        v = vals[c.index].float()
        dims = [d for d in range(v.dim()) if d != c.channel_dim] if c.channel_dim else None
        mn = v.amin(dims) if dims else v.min()
        mx = v.amax(dims) if dims else v.max()
        lo, hi = c.range_low.to(v.device), c.range_high.to(v.device)
        over = ((mn < lo) | (mx > hi)).nonzero().flatten()[:4].tolist()
        print("  ", b, c.channel_dim, tuple(v.shape), "over channels", over,
              [(float(mn.reshape(-1)[k]), float(mx.reshape(-1)[k]), float(lo.reshape(-1)[k]),
                float(hi.reshape(-1)[k])) for k in over[:2]])
# the same check, eager, on the saved values
print("eager failures", [c.name for c, _ in pm._plan.range_batch.failures(vals)][:8])
