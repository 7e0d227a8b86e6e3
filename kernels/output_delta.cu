// output_delta: the output error delta^L of each cost (BP1), scaled by `scale` (= 1/m, so every
// gradient built from it is the gradient of the MEAN cost over the m rows).
//   quadratic:      D = scale * (A - Y) * A * (1 - A)      (a - y) (.) sigma'(z^L), sigma' from a
//   cross-entropy:  D = scale * (A - Y)                     sigma' cancels against the cost
// A, Y, D: (rows, n_out) C-contiguous, n = rows*n_out elements. D may not alias A or Y.
// NumPy reference: gpubp.kernels.output_delta.
// Launch: 1-D grid-stride over n, block 256.
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void output_delta_quadratic(T* __restrict__ D, const T* __restrict__ A,
                                                       const T* __restrict__ Y, long long n, T scale) {
    GPUBP_GRID_STRIDE(i, n) { D[i] = scale * (A[i] - Y[i]) * gpubp_sigmoid_prime_from_a(A[i]); }
}

template <typename T>
__device__ __forceinline__ void output_delta_cross_entropy(T* __restrict__ D, const T* __restrict__ A,
                                                           const T* __restrict__ Y, long long n, T scale) {
    GPUBP_GRID_STRIDE(i, n) { D[i] = scale * (A[i] - Y[i]); }
}

extern "C" __global__ void output_delta_quadratic_f32(float* __restrict__ D, const float* __restrict__ A,
                                                      const float* __restrict__ Y, long long n, float scale) {
    output_delta_quadratic(D, A, Y, n, scale);
}

extern "C" __global__ void output_delta_quadratic_f64(double* __restrict__ D, const double* __restrict__ A,
                                                      const double* __restrict__ Y, long long n, double scale) {
    output_delta_quadratic(D, A, Y, n, scale);
}

extern "C" __global__ void output_delta_cross_entropy_f32(float* __restrict__ D, const float* __restrict__ A,
                                                          const float* __restrict__ Y, long long n, float scale) {
    output_delta_cross_entropy(D, A, Y, n, scale);
}

extern "C" __global__ void output_delta_cross_entropy_f64(double* __restrict__ D, const double* __restrict__ A,
                                                          const double* __restrict__ Y, long long n, double scale) {
    output_delta_cross_entropy(D, A, Y, n, scale);
}
