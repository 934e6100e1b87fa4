// Moving elements: one gather and one scatter through a strided view serve permute, slice and
// concat (see layout.rs).

// out (contiguous, n elements) = the viewed elements of x.
extern "C" __global__ void gather_strided(const float* x, float* out, i64 n, Strided s) {
    GRID_STRIDE(i, n) out[i] = x[strided_offset(i, s)];
}

// The viewed elements of out = x (contiguous, n elements).
extern "C" __global__ void scatter_strided(const float* x, float* out, i64 n, Strided s) {
    GRID_STRIDE(i, n) out[strided_offset(i, s)] = x[i];
}
