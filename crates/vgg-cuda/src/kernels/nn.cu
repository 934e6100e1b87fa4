// The layers' fused kernels: biases, softmax and cross-entropy, pooling, optimiser steps.

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


// Average of each window; one thread per output.
extern "C" __global__ void avg_pool2d(const float* x, float* y, i64 planes, i64 in_h, i64 in_w,
                                      i64 out_h, i64 out_w, i64 kernel, i64 stride) {
    float inv = 1.0f / (float)(kernel * kernel);
    GRID_STRIDE(i, planes * out_h * out_w) {
        i64 ow = i % out_w;
        i64 oh = (i / out_w) % out_h;
        const float* p = x + (i / (out_w * out_h)) * in_h * in_w;
        float sum = 0.0f;
        for (i64 ky = 0; ky < kernel; ++ky)
            for (i64 kx = 0; kx < kernel; ++kx) sum += p[(oh * stride + ky) * in_w + ow * stride + kx];
        y[i] = sum * inv;
    }
}

// Each input gathers the shares of the windows covering it (no atomics: deterministic).
extern "C" __global__ void avg_pool2d_backward(const float* dy, float* dx, i64 planes, i64 in_h,
                                               i64 in_w, i64 out_h, i64 out_w, i64 kernel,
                                               i64 stride) {
    float inv = 1.0f / (float)(kernel * kernel);
    GRID_STRIDE(i, planes * in_h * in_w) {
        i64 iw = i % in_w;
        i64 ih = (i / in_w) % in_h;
        const float* d = dy + (i / (in_w * in_h)) * out_h * out_w;
        i64 oh_lo = ih >= kernel ? (ih - kernel) / stride + 1 : 0;
        i64 ow_lo = iw >= kernel ? (iw - kernel) / stride + 1 : 0;
        i64 oh_hi = ih / stride < out_h - 1 ? ih / stride : out_h - 1;
        i64 ow_hi = iw / stride < out_w - 1 ? iw / stride : out_w - 1;
        float sum = 0.0f;
        for (i64 oh = oh_lo; oh <= oh_hi; ++oh)
            for (i64 ow = ow_lo; ow <= ow_hi; ++ow) sum += d[oh * out_w + ow];
        dx[i] = sum * inv;
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
