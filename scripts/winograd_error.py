#!/usr/bin/env python3
"""The f32 error of Winograd F(2x2, 3x3), F(4x4, 3x3) and F(6x6, 3x3) against the direct method, in a
numpy model of a 3x3 convolution layer (not our kernels: their transforms and sums differ in order).

Each algorithm's matrices come from its interpolation points (Cook-Toom; the points below are the usual
ones, those of Lavin & Gray and of ncnn): At and G from the points, Bt solved exactly so that
At [(G g) * (Bt d)] is the correlation of d with g. Input: a ReLU'd standard normal image, weights
with He's scale; the error is the norm of the difference from a float64 direct convolution over the
reference's norm, for f32 arithmetic throughout (the transforms, and the products summed over the
input channels by numpy's f32 matrix product).

    python3 scripts/winograd_error.py [--channels 64,256,512] [--seed 0]
"""
import argparse

import numpy as np

POINTS = {
    "F(2x2, 3x3)": (2, [0, 1, -1]),
    "F(4x4, 3x3)": (4, [0, 1, -1, 2, -2]),
    "F(6x6, 3x3)": (6, [0, 1, -1, 2, -2, 0.5, -0.5]),
}


def matrices(points, m, r=3):
    """At (m x n), G (n x r), Bt (n x n) for F(m, r) on the finite `points` and infinity."""
    n = m + r - 1
    p = np.array(points, dtype=np.float64)
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, pj in enumerate(p):
        at[:, j] = pj ** np.arange(m)
        g[j, :] = pj ** np.arange(r) / np.prod([pj - pl for l, pl in enumerate(p) if l != j])
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1.0
    # sum_j At[i][j] G[j][k] Bt[j][l] = [l == i + k] for every i, k, l: linear in Bt.
    system = np.zeros((m * r * n, n * n))
    want = np.zeros(m * r * n)
    for row, (i, k, l) in enumerate((i, k, l) for i in range(m) for k in range(r) for l in range(n)):
        for j in range(n):
            system[row, j * n + l] = at[i, j] * g[j, k]
        want[row] = float(l == i + k)
    bt = np.linalg.lstsq(system, want, rcond=None)[0]
    assert np.allclose(system @ bt, want, atol=1e-9), "the points admit no exact Bt"
    return at, g, bt.reshape(n, n)


def winograd(x, w, mats, dtype):
    """Valid 3x3 correlation of x [c, H, W] with w [k, c, 3, 3] by F(m, 3) in `dtype`."""
    at, g, bt = (a.astype(dtype) for a in mats)
    m, n = at.shape
    c, h, wd = x.shape
    th, tw = (h - 2) // m, (wd - 2) // m
    u = np.einsum("ab,kcbd,ed->aekc", g, w.astype(dtype), g).astype(dtype)
    tiles = np.stack(
        [x[:, i * m : i * m + n, j * m : j * m + n] for i in range(th) for j in range(tw)], 1
    ).astype(dtype)
    v = np.einsum("ab,ctbd,ed->aect", bt, tiles, bt).astype(dtype)
    products = np.matmul(u, v).astype(dtype)  # [n, n, k, tiles]: one product per position
    y = np.einsum("ab,bdkt,ed->ktae", at, products, at).astype(dtype)
    k = w.shape[0]
    return y.reshape(k, th, tw, m, m).transpose(0, 1, 3, 2, 4).reshape(k, th * m, tw * m)


def direct(x, w, dtype):
    c, h, wd = x.shape
    k = w.shape[0]
    cols = np.stack([x[:, i : i + h - 2, j : j + wd - 2] for i in range(3) for j in range(3)], 1)
    cols = cols.astype(dtype).reshape(c * 9, -1)
    return np.matmul(w.reshape(k, c * 9).astype(dtype), cols).reshape(k, h - 2, wd - 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="64,256,512")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    mats = {name: matrices(points, m) for name, (m, points) in POINTS.items()}
    side = 24 + 2  # 24 outputs: whole tiles for every m
    print("input channels | direct f32 | " + " | ".join(f"{name} f32" for name in mats))
    for c in map(int, args.channels.split(",")):
        x = np.maximum(rng.standard_normal((c, side, side)), 0).astype(np.float32)
        w = (rng.standard_normal((64, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
        reference = direct(x.astype(np.float64), w.astype(np.float64), np.float64)

        def error(y):
            return np.linalg.norm(y - reference) / np.linalg.norm(reference)

        for name, m in mats.items():  # the construction itself, in f64
            assert error(winograd(x, w, m, np.float64)) < 1e-12, name
        row = [error(direct(x, w, np.float32))] + [error(winograd(x, w, m, np.float32)) for m in mats.values()]
        print(f"{c} | " + " | ".join(f"{e:.2e}" for e in row))


if __name__ == "__main__":
    main()
