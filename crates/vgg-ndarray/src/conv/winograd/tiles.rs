//! The tile sizes: F(4x4, 3x3) and F(6x6, 3x3), each as its matrices (Bt, G, At) applied to 16
//! tiles at a time, one per SIMD lane, and as the sizes the passes take at run time.
//!
//! F(6x6, 3x3) (points 0, +-1, +-2, +-1/2) makes each 6x6 block of outputs with 64 products per
//! input-output channel pair, 1.78 per output against F(4x4)'s 2.25, for about twice F(4x4)'s
//! rounding error per layer (scripts/winograd_error.py: 2.7e-6 against 1.3e-6 at 64 input
//! channels, 4.7e-6 against 2.5e-6 at 512; the direct method 2e-7). The gradients keep F(4x4)
//! (`Backward`), whose error the gradient goals were met with.

use vgg_tensor::ConvGeometry;

use super::{Lanes, LANES};

/// A tile size's transforms: `M` x `M` output blocks from `A` x `A` input tiles (A = M + 2).
pub(super) trait Tile<const M: usize, const A: usize> {
    /// This size at run time.
    const SIZE: TileSize;
    /// Bt d for A lane vectors.
    fn bt(d: &[Lanes; A]) -> [Lanes; A];
    /// At s for A lane vectors.
    fn at(s: &[Lanes; A]) -> [Lanes; M];
    /// G g for the 3 lane vectors of a filter's column or row.
    fn g(x: &[Lanes; 3]) -> [Lanes; A];
}

/// The weight gradient's transforms, for the tile sizes it runs on.
pub(super) trait Backward<const M: usize, const A: usize>: Tile<M, A> {
    /// A y for M lane vectors (A = At transposed): an output-gradient block into transform space.
    fn a(y: &[Lanes; M]) -> [Lanes; A];
    /// Gt u for A lane vectors: a weight gradient out of transform space.
    fn gt(u: &[Lanes; A]) -> [Lanes; 3];
}

/// A Winograd tile size at run time: what the chunks, the layouts and the products need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSize {
    /// F(4x4, 3x3): 4x4 output blocks from 6x6 tiles.
    Four,
    /// F(6x6, 3x3): 6x6 output blocks from 8x8 tiles.
    Six,
}

impl TileSize {
    /// Output block side (M).
    pub fn output(self) -> usize {
        match self {
            TileSize::Four => 4,
            TileSize::Six => 6,
        }
    }

    /// Transformed positions per tile (A x A).
    pub(super) fn positions(self) -> usize {
        let a = self.output() + 2;
        a * a
    }

    /// Tiles of one image: (rows, columns) of output blocks, the last ones cropped.
    pub(super) fn grid(self, g: &ConvGeometry) -> (usize, usize) {
        let m = self.output();
        (g.out_h.div_ceil(m), g.out_w.div_ceil(m))
    }
}

/// F(4x4, 3x3), Lavin & Gray's matrices.
pub(super) struct F4;

/// F(6x6, 3x3).
pub(super) struct F6;

#[cfg(test)]
pub(super) mod matrices {
    //! The matrices as tables, which the closed forms are tested against.

    pub(in super::super) const BT4: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];

    pub(in super::super) const G4: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];

    pub(in super::super) const AT4: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];

    pub(in super::super) const BT6: [[f32; 8]; 8] = [
        [1.0, 0.0, -5.25, 0.0, 5.25, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
        [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
        [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
        [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
        [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
    ];

    pub(in super::super) const G6: [[f32; 3]; 8] = [
        [1.0, 0.0, 0.0],
        [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
        [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
        [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0],
        [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0],
        [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0],
        [32.0 / 45.0, -16.0 / 45.0, 8.0 / 45.0],
        [0.0, 0.0, 1.0],
    ];

    pub(in super::super) const AT6: [[f32; 8]; 6] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 0.0],
        [0.0, 1.0, 1.0, 16.0, 16.0, 1.0 / 16.0, 1.0 / 16.0, 0.0],
        [0.0, 1.0, -1.0, 32.0, -32.0, 1.0 / 32.0, -1.0 / 32.0, 1.0],
    ];
}

impl Tile<4, 6> for F4 {
    const SIZE: TileSize = TileSize::Four;

    /// Bt's zeros skipped.
    #[inline(always)]
    fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
        let mut r = [[0.0f32; LANES]; 6];
        for l in 0..LANES {
            let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
            r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
            r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
            r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
            r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
            r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        r
    }

    #[inline(always)]
    fn at(s: &[Lanes; 6]) -> [Lanes; 4] {
        let mut r = [[0.0f32; LANES]; 4];
        for l in 0..LANES {
            let [s0, s1, s2, s3, s4, s5] = [s[0][l], s[1][l], s[2][l], s[3][l], s[4][l], s[5][l]];
            let (p12, m12, p34, m34) = (s1 + s2, s1 - s2, s3 + s4, s3 - s4);
            r[0][l] = s0 + p12 + p34;
            r[1][l] = m12 + 2.0 * m34;
            r[2][l] = p12 + 4.0 * p34;
            r[3][l] = m12 + 8.0 * m34 + s5;
        }
        r
    }

    #[inline(always)]
    fn g(x: &[Lanes; 3]) -> [Lanes; 6] {
        let mut r = [[0.0f32; LANES]; 6];
        for l in 0..LANES {
            let [x0, x1, x2] = [x[0][l], x[1][l], x[2][l]];
            let (outer, middle) = (x0 + x2, x1);
            r[0][l] = x0 * (1.0 / 4.0);
            r[1][l] = -(outer + middle) * (1.0 / 6.0);
            r[2][l] = -(outer - middle) * (1.0 / 6.0);
            r[3][l] = x0 * (1.0 / 24.0) + x1 * (1.0 / 12.0) + x2 * (1.0 / 6.0);
            r[4][l] = x0 * (1.0 / 24.0) - x1 * (1.0 / 12.0) + x2 * (1.0 / 6.0);
            r[5][l] = x2;
        }
        r
    }
}

impl Backward<4, 6> for F4 {
    #[inline(always)]
    fn a(y: &[Lanes; 4]) -> [Lanes; 6] {
        let mut r = [[0.0f32; LANES]; 6];
        for l in 0..LANES {
            let [y0, y1, y2, y3] = [y[0][l], y[1][l], y[2][l], y[3][l]];
            let (even, odd) = (y0 + y2, y1 + y3);
            let (even4, odd2) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
            r[0][l] = y0;
            r[1][l] = even + odd;
            r[2][l] = even - odd;
            r[3][l] = even4 + odd2;
            r[4][l] = even4 - odd2;
            r[5][l] = y3;
        }
        r
    }

    #[inline(always)]
    fn gt(u: &[Lanes; 6]) -> [Lanes; 3] {
        let mut r = [[0.0f32; LANES]; 3];
        for l in 0..LANES {
            let [u0, u1, u2, u3, u4, u5] = [u[0][l], u[1][l], u[2][l], u[3][l], u[4][l], u[5][l]];
            let (p12, m12, p34, m34) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
            r[0][l] = u0 * (1.0 / 4.0) - p12 * (1.0 / 6.0) + p34 * (1.0 / 24.0);
            r[1][l] = m12 * (1.0 / 6.0) + m34 * (1.0 / 12.0);
            r[2][l] = -p12 * (1.0 / 6.0) + p34 * (1.0 / 6.0) + u5;
        }
        r
    }
}

impl Tile<6, 8> for F6 {
    const SIZE: TileSize = TileSize::Six;

    /// Rows 1-6 in pairs that share their even and odd halves.
    #[inline(always)]
    fn bt(d: &[Lanes; 8]) -> [Lanes; 8] {
        let mut r = [[0.0f32; LANES]; 8];
        for l in 0..LANES {
            let [d0, d1, d2, d3, d4, d5, d6, d7] = [
                d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l], d[6][l], d[7][l],
            ];
            r[0][l] = d0 - d6 + 5.25 * (d4 - d2);
            r[7][l] = d7 - d1 + 5.25 * (d3 - d5);
            let (even, odd) = (d2 + d6 - 4.25 * d4, d1 + d5 - 4.25 * d3);
            r[1][l] = even + odd;
            r[2][l] = even - odd;
            let (even, odd) = (0.25 * d2 - 1.25 * d4 + d6, 0.5 * d1 - 2.5 * d3 + 2.0 * d5);
            r[3][l] = even + odd;
            r[4][l] = even - odd;
            let (even, odd) = (4.0 * d2 - 5.0 * d4 + d6, 2.0 * d1 - 2.5 * d3 + 0.5 * d5);
            r[5][l] = even + odd;
            r[6][l] = even - odd;
        }
        r
    }

    #[inline(always)]
    fn at(s: &[Lanes; 8]) -> [Lanes; 6] {
        let mut r = [[0.0f32; LANES]; 6];
        for l in 0..LANES {
            let [s0, s1, s2, s3, s4, s5, s6, s7] = [
                s[0][l], s[1][l], s[2][l], s[3][l], s[4][l], s[5][l], s[6][l], s[7][l],
            ];
            let (p12, m12, p34, m34, p56, m56) =
                (s1 + s2, s1 - s2, s3 + s4, s3 - s4, s5 + s6, s5 - s6);
            r[0][l] = s0 + p12 + p34 + p56;
            r[1][l] = m12 + 2.0 * m34 + 0.5 * m56;
            r[2][l] = p12 + 4.0 * p34 + 0.25 * p56;
            r[3][l] = m12 + 8.0 * m34 + 0.125 * m56;
            r[4][l] = p12 + 16.0 * p34 + (1.0 / 16.0) * p56;
            r[5][l] = m12 + 32.0 * m34 + (1.0 / 32.0) * m56 + s7;
        }
        r
    }

    #[inline(always)]
    fn g(x: &[Lanes; 3]) -> [Lanes; 8] {
        let mut r = [[0.0f32; LANES]; 8];
        for l in 0..LANES {
            let [x0, x1, x2] = [x[0][l], x[1][l], x[2][l]];
            let outer = x0 + x2;
            r[0][l] = x0;
            r[1][l] = -(2.0 / 9.0) * (outer + x1);
            r[2][l] = -(2.0 / 9.0) * (outer - x1);
            let (even, odd) = ((1.0 / 90.0) * x0 + (2.0 / 45.0) * x2, (1.0 / 45.0) * x1);
            r[3][l] = even + odd;
            r[4][l] = even - odd;
            let (even, odd) = ((32.0 / 45.0) * x0 + (8.0 / 45.0) * x2, (16.0 / 45.0) * x1);
            r[5][l] = even + odd;
            r[6][l] = even - odd;
            r[7][l] = x2;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::matrices::*;
    use super::*;
    use vgg_tensor::random;

    /// `T`'s closed forms against the tables `bt`, `g`, `at` on random lane vectors.
    fn closed_forms_are<T: Tile<M, A>, const M: usize, const A: usize>(
        bt: &[[f32; A]; A],
        g: &[[f32; 3]; A],
        at: &[[f32; A]; M],
    ) {
        // The run-time sizes the chunks and layouts take are the type's.
        assert_eq!((T::SIZE.output(), T::SIZE.positions()), (M, A * A));
        let mut x = [[0.0f32; LANES]; A];
        random::fill_normal(x.as_flattened_mut(), 1, 0, 0.0, 1.0);
        let (got_bt, got_at) = (T::bt(&x), T::at(&x));
        let got_g = T::g(&[x[0], x[1], x[2]]);
        let close = |got: f32, want: f32| (got - want).abs() <= 1e-5 * want.abs().max(1.0);
        for l in 0..LANES {
            for a in 0..A {
                let want: f32 = (0..A).map(|i| bt[a][i] * x[i][l]).sum();
                assert!(close(got_bt[a][l], want), "Bt row {a}");
                let want: f32 = (0..3).map(|i| g[a][i] * x[i][l]).sum();
                assert!(close(got_g[a][l], want), "G row {a}");
            }
            for a in 0..M {
                let want: f32 = (0..A).map(|i| at[a][i] * x[i][l]).sum();
                assert!(close(got_at[a][l], want), "At row {a}");
            }
        }
    }

    /// The closed forms are the matrices: Lavin & Gray's for F(4x4), the points 0, +-1, +-2,
    /// +-1/2 for F(6x6); and F(4x4)'s gradient transforms (A, Gt) are At and G transposed.
    #[test]
    fn closed_forms_equal_the_transform_matrices() {
        closed_forms_are::<F4, 4, 6>(&BT4, &G4, &AT4);
        closed_forms_are::<F6, 6, 8>(&BT6, &G6, &AT6);
        let mut y = [[0.0f32; LANES]; 6];
        random::fill_normal(y.as_flattened_mut(), 2, 0, 0.0, 1.0);
        let got_a = F4::a(&[y[0], y[1], y[2], y[3]]);
        let got_gt = F4::gt(&y);
        for l in 0..LANES {
            for i in 0..6 {
                let want: f32 = (0..4).map(|a| AT4[a][i] * y[a][l]).sum();
                assert!((got_a[i][l] - want).abs() < 1e-4, "A row {i}");
            }
            for j in 0..3 {
                let want: f32 = (0..6).map(|a| G4[a][j] * y[a][l]).sum();
                assert!((got_gt[j][l] - want).abs() < 1e-5, "Gt row {j}");
            }
        }
    }

    /// Each size's tables make a correlation: At ((G w Gt) * (Bt d B)) A is the 3x3 filter w
    /// run over the tile d, in f64, to rounding.
    #[test]
    fn the_tables_compute_a_3x3_correlation() {
        fn check<const M: usize, const A: usize>(
            bt: &[[f32; A]; A],
            g: &[[f32; 3]; A],
            at: &[[f32; A]; M],
        ) {
            let mut values = vec![0.0f32; A * A + 9];
            random::fill_normal(&mut values, 3, 0, 0.0, 1.0);
            let d = |i: usize, j: usize| values[i * A + j] as f64;
            let w = |i: usize, j: usize| values[A * A + i * 3 + j] as f64;
            // (F x Ft)[a][b] at every position p = a A + b, for F with `inner` columns.
            let two_sided =
                |f: &dyn Fn(usize, usize) -> f64, inner: usize, x: &dyn Fn(usize, usize) -> f64| {
                    (0..A * A)
                        .map(|p| {
                            let (a, b) = (p / A, p % A);
                            (0..inner)
                                .flat_map(|i| (0..inner).map(move |j| (i, j)))
                                .map(|(i, j)| f(a, i) * x(i, j) * f(b, j))
                                .sum()
                        })
                        .collect::<Vec<f64>>()
                };
            // U = G w Gt, V = Bt d B, then Y = At (U * V) A.
            let u = two_sided(&|a, i| g[a][i] as f64, 3, &w);
            let v = two_sided(&|a, i| bt[a][i] as f64, A, &d);
            for (y0, y1) in (0..M).flat_map(|y0| (0..M).map(move |y1| (y0, y1))) {
                let got: f64 = (0..A * A)
                    .map(|p| at[y0][p / A] as f64 * u[p] * v[p] * at[y1][p % A] as f64)
                    .sum();
                let want: f64 = (0..3)
                    .flat_map(|i| (0..3).map(move |j| (i, j)))
                    .map(|(i, j)| d(y0 + i, y1 + j) * w(i, j))
                    .sum();
                assert!((got - want).abs() < 1e-5, "({y0}, {y1}): {got} vs {want}");
            }
        }
        check::<4, 6>(&BT4, &G4, &AT4);
        check::<6, 8>(&BT6, &G6, &AT6);
    }
}
