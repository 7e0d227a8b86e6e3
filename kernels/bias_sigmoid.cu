// bias_sigmoid: forward activation of one layer, in place (BP eq. a^l = sigma(w^l a^{l-1} + b^l)).
//   Z[r, j] <- sigma(Z[r, j] + b[j])    Z: (rows, cols) C-contiguous = X W^T from the GEMM, b: (cols,)
// NumPy reference: gpubp.kernels.bias_sigmoid.
// Launch: 1-D grid-stride over rows*cols, block 256, grid ceil-div capped to a multiple of the SMs.
// Tolerance vs a float64 evaluation of 1/(1+exp(-(Z+b))): float32 atol=1e-6 rtol=0; float64 atol=1e-15 rtol=0
// (sigma is bounded, so its error is absolute).
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void bias_sigmoid(T* __restrict__ Z, const T* __restrict__ b,
                                             long long rows, long long cols) {
    GPUBP_GRID_STRIDE(i, rows * cols) { Z[i] = gpubp_sigmoid(Z[i] + b[i % cols]); }
}

extern "C" __global__ void bias_sigmoid_f32(float* __restrict__ Z, const float* __restrict__ b,
                                            long long rows, long long cols) {
    bias_sigmoid(Z, b, rows, cols);
}

extern "C" __global__ void bias_sigmoid_f64(double* __restrict__ Z, const double* __restrict__ b,
                                            long long rows, long long cols) {
    bias_sigmoid(Z, b, rows, cols);
}
