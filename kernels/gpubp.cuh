// gpubp.cuh: the one definition of sigma and sigma' that every kernel uses.
//
// NumPy reference: gpubp.kernels.sigmoid / sigmoid_prime_from_activation.
//   sigma(z)  = 1/(1+exp(-z)) = 0.5 + 0.5*tanh(z/2)   (tanh form: no exp to overflow at +-1000)
//   sigma'(z) = sigma(z)*(1-sigma(z)) = a*(1-a)        (from the stored activation a)
// Float code stays float: T(0.5f) and T(1) fold at compile time, tanhf for float.
#ifndef GPUBP_CUH
#define GPUBP_CUH

__host__ __device__ __forceinline__ float gpubp_tanh(float x) { return tanhf(x); }
__host__ __device__ __forceinline__ double gpubp_tanh(double x) { return tanh(x); }

template <typename T>
__host__ __device__ __forceinline__ T gpubp_sigmoid(T z) {
    return T(0.5f) + T(0.5f) * gpubp_tanh(T(0.5f) * z);
}

template <typename T>
__host__ __device__ __forceinline__ T gpubp_sigmoid_prime_from_a(T a) {
    return a * (T(1) - a);
}

// 64-bit grid-stride loop: any grid covers any n, and n may exceed 2^31.
#define GPUBP_GRID_STRIDE(i, n)                                                  \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

#endif  // GPUBP_CUH
