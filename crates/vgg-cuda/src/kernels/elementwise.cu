// Elementwise kernels: same-shape arithmetic, the op-coded unary and broadcasting binary
// primitives, ReLU and dropout.

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


// vgg_tensor::UnaryOp, by its code in elementwise.rs.
__device__ __forceinline__ float unary_value(int op, float x) {
    switch (op) {
        case 0: return -x;
        case 1: return fabsf(x);
        case 2: return expf(x);
        case 3: return logf(x);
        case 4: return sqrtf(x);
        case 5: return 1.0f / x;
        case 6: return x * x;
        case 7: return tanhf(x);
        case 8: {
            // The logistic function without overflow for large |x|.
            if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
            float e = expf(x);
            return e / (1.0f + e);
        }
        default: return relu_value(x);
    }
}

extern "C" __global__ void unary_op(const float* x, float* out, i64 n, int op) {
    GRID_STRIDE(i, n) out[i] = unary_value(op, x[i]);
}

// vgg_tensor::BinaryOp, by its code in elementwise.rs; Max and Min propagate NaN.
__device__ __forceinline__ float binary_value(int op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return (isnan(a) || isnan(b)) ? nan_f32() : fmaxf(a, b);
        case 5: return (isnan(a) || isnan(b)) ? nan_f32() : fminf(a, b);
        case 6: return a > b ? 1.0f : 0.0f;
        default: return a == b ? 1.0f : 0.0f;
    }
}

// NumPy broadcasting: each operand is read through strides that are 0 on its broadcast axes.
struct Broadcast {
    int rank;
    i64 dims[MAX_RANK];
    i64 a_strides[MAX_RANK];
    i64 b_strides[MAX_RANK];
};

extern "C" __global__ void binary_op(const float* a, const float* b, float* out, i64 n, int op,
                                     Broadcast s) {
    GRID_STRIDE(i, n) {
        i64 rest = i, oa = 0, ob = 0;
        for (int d = s.rank - 1; d >= 0; --d) {
            i64 idx = rest % s.dims[d];
            rest /= s.dims[d];
            oa += idx * s.a_strides[d];
            ob += idx * s.b_strides[d];
        }
        out[i] = binary_value(op, a[oa], b[ob]);
    }
}
