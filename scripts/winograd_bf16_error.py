#!/usr/bin/env python3
"""How much Winograd loses when its products take bf16 operands (issue 29), against the direct
method in float64 on the same f32 input and weights.

    python3 scripts/winograd_bf16_error.py        (numpy only: the peers venv has it)

For three of VGG-16's channel counts (spatial sizes reduced), a post-ReLU-like input and He-scaled
weights, prints the norm-relative error ||y - y64|| / ||y64|| of:

    bf16 direct            operands rounded to bf16, products summed exactly (what the bf16 mode's
                           im2col and direct convolutions compute, up to their f32 sums)
    F(2x2) / F(4x4) f32    Winograd with f32 transformed values
    ... bf16 after         the transformed input and weights rounded to bf16 (what bf16 products
                           on the transformed values compute)
    F(2x2) bf16 before+after
                           the input and weights rounded first, then the transformed values too

The transforms are Lavin & Gray's (F(4x4): points 0, +-1, +-2, infinity, as crates/vgg-ndarray's
winograd module; F(2x2): 0, +-1, infinity). Rounding is to nearest even, as `bf16::round`.
"""
import numpy as np


def bf16(a):
    """a rounded to bf16 (nearest, ties to even), as float64."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def exact(a):
    return a


F2 = (
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], float),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float),
)
F4 = (
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        float,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        float,
    ),
    np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        float,
    ),
)


def direct(x, w):
    """3x3 convolution, padding 1, summed in float64."""
    c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    y = np.zeros((w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("kc,chw->khw", w[:, :, i, j], padded[:, i : i + h, j : j + wd])
    return y


def winograd(x, w, transforms, round_operands, round_transformed):
    """Winograd F(m x m, 3x3), padding 1: operands rounded by round_operands, transformed
    values by round_transformed, products and output transform in float64."""
    bt, g, at = transforms
    m, a = at.shape[0], bt.shape[0]
    c, h, wd = x.shape
    tiles_h, tiles_w = -(-h // m), -(-wd // m)
    padded = np.zeros((c, tiles_h * m + 2, tiles_w * m + 2))
    padded[:, 1 : h + 1, 1 : wd + 1] = round_operands(x)
    u = round_transformed(np.einsum("ai,kcij,bj->kcab", g, round_operands(w), g))
    y = np.zeros((w.shape[0], tiles_h * m, tiles_w * m))
    for ty in range(tiles_h):
        for tx in range(tiles_w):
            d = padded[:, ty * m : ty * m + a, tx * m : tx * m + a]
            v = round_transformed(np.einsum("ai,cij,bj->cab", bt, d, bt))
            products = np.einsum("kcab,cab->kab", u, v)
            y[:, ty * m : ty * m + m, tx * m : tx * m + m] = np.einsum(
                "ia,kab,jb->kij", at, products, at
            )
    return y[:, :h, :wd]


def main():
    rng = np.random.default_rng(0)
    for c, k, side in [(64, 64, 32), (256, 256, 16), (512, 512, 8)]:
        x = f32(np.maximum(rng.standard_normal((c, side, side)), 0))
        w = f32(rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c)))
        want = direct(x, w)
        rows = [
            ("bf16 direct", direct(bf16(x), bf16(w))),
            ("F(2x2) f32", winograd(x, w, F2, exact, f32)),
            ("F(2x2) bf16 after", winograd(x, w, F2, exact, bf16)),
            ("F(2x2) bf16 before+after", winograd(x, w, F2, bf16, bf16)),
            ("F(4x4) f32", winograd(x, w, F4, exact, f32)),
            ("F(4x4) bf16 after", winograd(x, w, F4, exact, bf16)),
        ]
        print(f"{c} -> {k} channels, {side}x{side}:")
        for name, got in rows:
            error = np.linalg.norm(got - want) / np.linalg.norm(want)
            print(f"  {name:26} {error:.2e}")


if __name__ == "__main__":
    main()
