// The CUDA backend's own kernels, compiled at run time by NVRTC (no nvcc at build time).
// Each mirrors the CPU backend's op of the same name; sizes are 64-bit and loops grid-stride, so
// any launch size covers any tensor.

typedef unsigned long long u64;
typedef long long i64;

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// vgg_tensor::random: SplitMix64's finaliser, the same bits for element i on every backend.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float uniform01(u64 seed, u64 index) {
    u64 b = mix64(mix64(seed ^ 0x9e3779b97f4a7c15ULL) + index * 0x9e3779b97f4a7c15ULL);
    return (float)(b >> 40) * (1.0f / 16777216.0f);
}

extern "C" __global__ void fill(float* out, i64 n, float value) {
    GRID_STRIDE(i, n) out[i] = value;
}

extern "C" __global__ void add(const float* a, const float* b, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
extern "C" __global__ void sub(const float* a, const float* b, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] - b[i];
}
extern "C" __global__ void mul(const float* a, const float* b, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}
extern "C" __global__ void scale(const float* x, float* out, i64 n, float alpha) {
    GRID_STRIDE(i, n) out[i] = x[i] * alpha;
}
// The scalar lives on the device: no round trip to the host.
extern "C" __global__ void mul_scalar(const float* x, const float* s, float* out, i64 n) {
    float v = s[0];
    GRID_STRIDE(i, n) out[i] = x[i] * v;
}
extern "C" __global__ void broadcast_scalar(const float* s, float* out, i64 n) {
    float v = s[0];
    GRID_STRIDE(i, n) out[i] = v;
}
extern "C" __global__ void axpy(float* y, const float* x, i64 n, float alpha) {
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

// Negatives become 0, NaN stays NaN (as in PyTorch and the CPU backend); fmaxf would drop NaN.
__device__ __forceinline__ float relu_value(float v) { return v < 0.0f ? 0.0f : v; }

extern "C" __global__ void relu(const float* x, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = relu_value(x[i]);
}
extern "C" __global__ void relu_backward(const float* dy, const float* y, float* out, i64 n) {
    GRID_STRIDE(i, n) out[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

extern "C" __global__ void dropout(const float* x, float* out, i64 n, float keep_prob, u64 seed) {
    float s = 1.0f / keep_prob;
    GRID_STRIDE(i, n) out[i] = uniform01(seed, (u64)i) < keep_prob ? x[i] * s : 0.0f;
}

// NCHW: channel of element i is (i / plane) % channels.
extern "C" __global__ void add_channel_bias(const float* x, const float* b, float* out, i64 n,
                                            i64 plane, i64 channels, int relu) {
    GRID_STRIDE(i, n) {
        float v = x[i] + b[(i / plane) % channels];
        out[i] = relu ? relu_value(v) : v;
    }
}

// The same on a fresh convolution output, in place: one pass over it.
extern "C" __global__ void bias_act_in_place(float* y, const float* b, i64 n, i64 plane,
                                             i64 channels, int relu) {
    GRID_STRIDE(i, n) {
        float v = y[i] + b[(i / plane) % channels];
        y[i] = relu ? relu_value(v) : v;
    }
}

extern "C" __global__ void add_row_bias(const float* x, const float* b, float* out, i64 n, i64 f) {
    GRID_STRIDE(i, n) out[i] = x[i] + b[i % f];
}

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

// Block-wide max and f64 sum over 256 threads.
__device__ float block_max(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}
__device__ double block_sum(double v, double* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    double r = shared[0];
    __syncthreads();
    return r;
}

// Softmax of row blockIdx.x (one block per row); returns the row's log(sum exp(x - max)) + max.
__device__ double softmax_row(const float* x, float* y, i64 f) {
    __shared__ float smax[256];
    __shared__ double ssum[256];
    const float* row = x + (i64)blockIdx.x * f;
    float* out = y + (i64)blockIdx.x * f;
    float m = -__int_as_float(0x7f800000);  // -inf: NVRTC has no math.h
    for (i64 j = threadIdx.x; j < f; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_max(m, smax);
    double acc = 0.0;
    for (i64 j = threadIdx.x; j < f; j += blockDim.x) {
        float e = expf(row[j] - m);
        out[j] = e;
        acc += (double)e;
    }
    double sum = block_sum(acc, ssum);
    float inv = (float)(1.0 / sum);
    for (i64 j = threadIdx.x; j < f; j += blockDim.x) out[j] *= inv;
    return log(sum) + (double)m;
}

extern "C" __global__ void softmax_rows(const float* x, float* y, i64 f) {
    softmax_row(x, y, f);
}

// Softmax and each row's cross-entropy against its label.
extern "C" __global__ void softmax_cross_entropy(const float* x, float* y, i64 f, const int* labels,
                                                 double* row_loss) {
    double log_sum = softmax_row(x, y, f);
    if (threadIdx.x == 0) {
        row_loss[blockIdx.x] = log_sum - (double)x[(i64)blockIdx.x * f + labels[blockIdx.x]];
    }
}

// dx = y (dy - sum(dy y)) per row; one block per row.
extern "C" __global__ void softmax_rows_backward(const float* dy, const float* y, float* dx, i64 f) {
    __shared__ double ssum[256];
    i64 base = (i64)blockIdx.x * f;
    double acc = 0.0;
    for (i64 j = threadIdx.x; j < f; j += blockDim.x) acc += (double)dy[base + j] * (double)y[base + j];
    float dot = (float)block_sum(acc, ssum);
    for (i64 j = threadIdx.x; j < f; j += blockDim.x) dx[base + j] = y[base + j] * (dy[base + j] - dot);
}

// Mean of the per-row losses into out[0]: one block.
extern "C" __global__ void mean_rows(const double* row_loss, float* out, i64 rows) {
    __shared__ double ssum[256];
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < rows; i += blockDim.x) acc += row_loss[i];
    double sum = block_sum(acc, ssum);
    if (threadIdx.x == 0) out[0] = (float)(sum / (double)rows);
}

// g (p - onehot) / N, with the upstream scalar g on the device.
extern "C" __global__ void cross_entropy_backward(const float* probs, const int* labels,
                                                  const float* g, float* out, i64 rows, i64 f) {
    float s = g[0] / (float)rows;
    GRID_STRIDE(i, rows * f) {
        i64 r = i / f;
        float v = probs[i];
        if ((i % f) == labels[r]) v -= 1.0f;
        out[i] = v * s;
    }
}

// First maximum of each window wins; NaN wins so it propagates (as the CPU backend).
extern "C" __global__ void max_pool2d(const float* x, float* y, int* arg, i64 planes, i64 in_h,
                                      i64 in_w, i64 out_h, i64 out_w, i64 kernel, i64 stride) {
    GRID_STRIDE(i, planes * out_h * out_w) {
        i64 ow = i % out_w;
        i64 oh = (i / out_w) % out_h;
        i64 plane = i / (out_w * out_h);
        const float* p = x + plane * in_h * in_w;
        float best = 0.0f;
        i64 at = -1;
        for (i64 ky = 0; ky < kernel; ++ky) {
            for (i64 kx = 0; kx < kernel; ++kx) {
                i64 idx = (oh * stride + ky) * in_w + ow * stride + kx;
                float v = p[idx];
                if (at < 0 || v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    at = idx;
                }
            }
        }
        y[i] = best;
        arg[i] = (int)at;
    }
}

// dx must start zeroed; overlapping windows (stride < kernel) add up.
extern "C" __global__ void max_pool2d_backward(const float* dy, const int* arg, float* dx,
                                               i64 planes, i64 in_plane, i64 out_plane) {
    GRID_STRIDE(i, planes * out_plane) {
        i64 plane = i / out_plane;
        atomicAdd(dx + plane * in_plane + arg[i], dy[i]);
    }
}

extern "C" __global__ void sgd_step(float* p, float* v, const float* g, i64 n, float lr,
                                    float momentum, float weight_decay) {
    GRID_STRIDE(i, n) {
        float vi = momentum * v[i] + g[i] + weight_decay * p[i];
        v[i] = vi;
        p[i] -= lr * vi;
    }
}

extern "C" __global__ void adam_step(float* p, float* m, float* v, const float* g, i64 n, float lr,
                                     float beta1, float beta2, float eps, float weight_decay,
                                     float correction1, float correction2) {
    GRID_STRIDE(i, n) {
        float gi = g[i] + weight_decay * p[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi / correction1) / (sqrtf(vi / correction2) + eps);
    }
}
