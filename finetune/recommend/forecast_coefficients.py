"""The accuracy forecast's fitted numbers: written by benchmarks/recommend/forecast.py
from the oracle tables in benchmarks/recommend/results (do not edit by hand; rerun it).

Per benchmark arm: test accuracy - probe accuracy = coef . (1, headroom, log2_per_class, shift_after_early_adabn);
interval: the 10th-90th percentile of the leave-one-task-out residuals; mae: their mean
absolute value (held out), in accuracy (0-1)."""

FEATURES = ('1', 'headroom', 'log2_per_class', 'shift_after_early_adabn')
SOURCES = ('oracle-100.csv', 'oracle-200-cpu.csv', 'oracle-200-h100-a.csv', 'oracle-200-h100-b.csv', 'oracle-200-s1-h100-a.csv', 'oracle-200-s12-h100-b.csv', 'oracle-400-cpu-s10.csv', 'oracle-400-cpu-s11.csv', 'oracle-400-cpu-s12.csv', 'oracle-400-cpu.csv', 'oracle-60.csv', 'oracle-heldout3-fonts.csv', 'oracle-heldout3-grey-crops.csv', 'oracle-heldout3-photos-pixelate.csv', 'oracle-heldout4-glyphs-lower.csv', 'oracle-heldout4-photos-jpeg.csv', 'oracle-photos-rotation.csv', 'oracle-photos-small-noise.csv', 'oracle-photos-small.csv', 'oracle-s12-heldout.csv', 'oracle-s13-h100-a.csv', 'oracle-s13-h100-b.csv', 'oracle-s13-surgical-pairs.csv', 'oracle-seed1.csv', 'oracle-sweep-h100-a.csv', 'oracle-sweep-h100-b.csv', 'oracle-textures-small.csv', 'oracle.csv')
ARMS = {
    "linear": {"coef": (-0.04096, -0.01853, 0.00612, 0.01733), "interval": (-0.0370, 0.0311), "mae": 0.0251, "cells": 94},
    "lp-ft": {"coef": (-0.04257, 0.01399, 0.00771, 0.02817), "interval": (-0.0326, 0.0515), "mae": 0.0312, "cells": 94},
    "partial-1": {"coef": (-0.05509, 0.00454, 0.00819, 0.01999), "interval": (-0.0534, 0.0488), "mae": 0.0324, "cells": 94},
    "partial-2": {"coef": (-0.07411, 0.00704, 0.01057, 0.03143), "interval": (-0.0559, 0.0523), "mae": 0.0342, "cells": 94},
    "full": {"coef": (-0.10331, -0.01109, 0.01456, -0.00623), "interval": (-0.0506, 0.0645), "mae": 0.0406, "cells": 94},
    "surgical-1": {"coef": (-0.02768, 0.00275, 0.00467, 0.01807), "interval": (-0.0406, 0.0409), "mae": 0.0244, "cells": 94},
}
