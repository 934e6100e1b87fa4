// What every kernel file shares. The files are joined in this order and compiled at run time by
// NVRTC (no nvcc at build time). Each kernel mirrors the CPU backend's op of the same name; sizes
// are 64-bit and loops grid-stride, so any launch size covers any tensor.

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

// Negatives become 0, NaN stays NaN (as in PyTorch and the CPU backend); fmaxf would drop NaN.
__device__ __forceinline__ float relu_value(float v) { return v < 0.0f ? 0.0f : v; }

// NaN and infinities: NVRTC has no math.h.
__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float inf_f32() { return __int_as_float(0x7f800000); }

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

// The largest rank the strided kernels index (vgg_cuda checks it).
#define MAX_RANK 8

// A view of a tensor: element i of a contiguous tensor of `dims` sits at
// offset + sum(index[d] * strides[d]) of the viewed buffer. Mirrors `Strided` in layout.rs.
struct Strided {
    int rank;
    i64 dims[MAX_RANK];
    i64 strides[MAX_RANK];
    i64 offset;
};

__device__ __forceinline__ i64 strided_offset(i64 i, const Strided& s) {
    i64 o = s.offset;
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 idx = i % s.dims[d];
        i /= s.dims[d];
        o += idx * s.strides[d];
    }
    return o;
}

