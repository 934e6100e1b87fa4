//! A bounds-checked front to the `gemm` crate's strided f32 GEMM, and the choice between it and
//! the bf16 products (`product`).

use gemm::Parallelism;

/// A strided matrix view into a slice: element (i, j) is at `offset + i*row_stride + j*col_stride`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// The elements' storage.
    pub data: &'a [f32],
    /// Index of element (0, 0).
    pub offset: usize,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Elements between one row and the next.
    pub row_stride: usize,
    /// Elements between one column and the next.
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Mat<'a> {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn last_index(&self) -> usize {
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// A strided mutable destination, laid out like `Mat`.
pub struct MatMut<'a> {
    /// The elements' storage.
    pub data: &'a mut [f32],
    /// Index of element (0, 0).
    pub offset: usize,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Elements between one row and the next (columns are contiguous).
    pub row_stride: usize,
}

/// dst = lhs x rhs, or dst += lhs x rhs when `accumulate`. The destination's columns are contiguous.
pub fn sgemm(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, threads: usize) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert_eq!(
        (lhs.rows, rhs.rows, rhs.cols),
        (m, k, n),
        "sgemm operand shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let dst_last = dst.offset + (m - 1) * dst.row_stride + (n - 1);
    assert!(dst_last < dst.data.len(), "sgemm destination out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                let start = dst.offset + i * dst.row_stride;
                dst.data[start..start + n].fill(0.0);
            }
        }
        return;
    }
    assert!(lhs.last_index() < lhs.data.len(), "sgemm lhs out of bounds");
    assert!(rhs.last_index() < rhs.data.len(), "sgemm rhs out of bounds");
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every index the kernel touches, (i, j) for i < rows and j < cols of each operand,
    // lies at or before the last index checked above; the destination is borrowed mutably and
    // cannot alias the shared operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            1,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A left operand used for many products (a convolution's weights), prepared once for the
/// tuning's arithmetic (`prepare`).
pub(crate) enum Lhs<'a> {
    /// As it is, for f32 products.
    F32(Mat<'a>),
    /// Packed for bf16 products.
    Bf16(crate::bf16::PackedLhs<crate::arena::Memory>),
    /// Packed for bf16 products before, and kept (`Buffer::derived`).
    KeptBf16(crate::bf16::PackedLhs<&'a [f32]>),
}

impl<'a> Lhs<'a> {
    /// `lhs` ready for `tuning`'s products.
    pub fn prepare(lhs: Mat<'a>, tuning: &crate::config::Tuning) -> Lhs<'a> {
        match tuning.bf16 {
            None => Lhs::F32(lhs),
            Some(unit) => Lhs::Bf16(crate::bf16::pack_lhs(unit, lhs, false)),
        }
    }

    /// dst = self x rhs, or dst += self x rhs when `accumulate`.
    pub fn times(&self, dst: MatMut<'_>, rhs: Mat<'_>, accumulate: bool, threads: usize) {
        match self {
            Lhs::F32(lhs) => sgemm(dst, *lhs, rhs, accumulate, threads),
            Lhs::Bf16(lhs) => crate::bf16::gemm_packed(dst, lhs, rhs, accumulate, threads),
            Lhs::KeptBf16(lhs) => crate::bf16::gemm_packed(dst, lhs, rhs, accumulate, threads),
        }
    }
}

/// `sgemm`, or its bf16 counterpart where the tuning asks for bf16 products
/// (`Precision::Bf16`): the one place every convolution and matrix product chooses.
pub fn product(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: usize,
    tuning: &crate::config::Tuning,
) {
    match tuning.bf16 {
        None => sgemm(dst, lhs, rhs, accumulate, threads),
        Some(unit) => crate::bf16::gemm(dst, lhs, rhs, accumulate, threads, unit),
    }
}
