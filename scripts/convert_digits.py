#!/usr/bin/env python3
"""Writes scikit-learn's bundled `digits` data set as .npy files for `vgg train --dataset digits`.

    python3 scripts/convert_digits.py data/digits

digits-images.npy: float32 [1797, 1, 8, 8], grey levels 0..16 as in the data set;
digits-labels.npy: float32 [1797], the digit of each image (0..9).
Needs scikit-learn and numpy. The data's licence is in data/digits/LICENSE.md.
"""
import os
import sys

import numpy as np
from sklearn.datasets import load_digits

out = sys.argv[1] if len(sys.argv) > 1 else "data/digits"
os.makedirs(out, exist_ok=True)
digits = load_digits()
np.save(os.path.join(out, "digits-images.npy"), digits.images.astype(np.float32).reshape(-1, 1, 8, 8))
np.save(os.path.join(out, "digits-labels.npy"), digits.target.astype(np.float32))
print(f"wrote {out}: {digits.images.shape[0]} images, classes {sorted(set(digits.target.tolist()))}")
