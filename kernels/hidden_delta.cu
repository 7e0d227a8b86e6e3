// hidden_delta: the error of a hidden layer (BP2), in place on the GEMM result.
//   G = delta^{l+1} W^{l+1}   (the GEMM, done by cuBLAS)     G, A: (rows, n_l) C-contiguous
//   G[i] <- G[i] * A[i] * (1 - A[i])                       (.) sigma'(z^l), sigma' from stored a^l
// NumPy reference: gpubp.kernels.hidden_delta.
// Launch: 1-D grid-stride over n = rows*n_l, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void hidden_delta(T* __restrict__ G, const T* __restrict__ A, long long n) {
    GPUBP_GRID_STRIDE(i, n) { G[i] = G[i] * gpubp_sigmoid_prime_from_a(A[i]); }
}

extern "C" __global__ void hidden_delta_f32(float* __restrict__ G, const float* __restrict__ A, long long n) {
    hidden_delta(G, A, n);
}

extern "C" __global__ void hidden_delta_f64(double* __restrict__ G, const double* __restrict__ A, long long n) {
    hidden_delta(G, A, n);
}
