"""SAVE Selection: value ranges and bit attribution of every weight and activation -> Analysis.

`analyze(model, example_input, input_range, calibration, config=SelectConfig())` (`run`) and
`key_for(...)`, the key of a saved Analysis. Inside: `intervals` (interval arithmetic),
`propagate` (the graph run on intervals), `ranges` (sound and calibration ranges per node),
`sensitivity` (first-order sensitivity of the answer), `attribution` (what one flip does),
`tensors` (one TensorAnalysis per tensor), `config` (the settings).
"""

from save_ros.core.select.config import SelectConfig, SelectConfigError
from save_ros.core.select.run import analyze, key_for

__all__ = ["SelectConfig", "SelectConfigError", "analyze", "key_for"]
