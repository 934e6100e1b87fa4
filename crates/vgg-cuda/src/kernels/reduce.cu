// Reductions, in f64 where they sum, as the CPU backend does.

// One block per channel; f64 accumulation as the CPU backend does.
extern "C" __global__ void channel_bias_grad(const float* dy, float* db, i64 batch, i64 channels,
                                             i64 plane) {
    __shared__ double partial[256];
    i64 c = blockIdx.x;
    double acc = 0.0;
    for (i64 img = 0; img < batch; ++img) {
        const float* p = dy + (img * channels + c) * plane;
        for (i64 j = threadIdx.x; j < plane; j += blockDim.x) acc += (double)p[j];
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[c] = (float)partial[0];
}

// Column sums of [rows, f]: one thread per column, reading rows in order (coalesced across threads).
extern "C" __global__ void sum_rows(const float* x, float* out, i64 rows, i64 f) {
    GRID_STRIDE(j, f) {
        double acc = 0.0;
        for (i64 r = 0; r < rows; ++r) acc += (double)x[r * f + j];
        out[j] = (float)acc;
    }
}

// Sum of x (squared when `square`) times `factor` into out[0], in f64: one block.
extern "C" __global__ void reduce_sum(const float* x, float* out, i64 n, int square, double factor) {
    __shared__ double partial[1024];
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) {
        double v = (double)x[i];
        acc += square ? v * v : v;
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (float)(partial[0] * factor);
}


// vgg_tensor::ReduceOp over each contiguous row of `run` values: one block per row. Sums in f64;
// Max and Min propagate NaN.
extern "C" __global__ void reduce_rows(const float* x, float* out, i64 run, int op) {
    __shared__ double partial[256];
    const float* row = x + (i64)blockIdx.x * run;
    double acc = op == 0 ? 0.0 : (op == 1 ? -(double)inf_f32() : (double)inf_f32());
    bool nan = false;
    for (i64 j = threadIdx.x; j < run; j += blockDim.x) {
        double v = (double)row[j];
        if (isnan(row[j])) nan = true;
        else if (op == 0) acc += v;
        else if (op == 1) acc = v > acc ? v : acc;
        else acc = v < acc ? v : acc;
    }
    partial[threadIdx.x] = nan ? (double)nan_f32() : acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            double a = partial[threadIdx.x], b = partial[threadIdx.x + s];
            double r;
            if (isnan(a) || isnan(b)) r = (double)nan_f32();
            else if (op == 0) r = a + b;
            else if (op == 1) r = a > b ? a : b;
            else r = a < b ? a : b;
            partial[threadIdx.x] = r;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = (float)partial[0];
}
