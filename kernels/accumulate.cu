// accumulate: the two small kernels around the device-side totals of an evaluation.
//   fill:      x[i] <- value for i < n               (zeroes the totals before an epoch's evaluations)
//   sum_into:  total[0] += sum_i x[i], in double     (the parameters' sum: a NaN or inf in any
//                                                     parameter makes it non-finite, one number to copy)
//   sum_squares_into: total[0] += sum_i x[i]^2, in double   (the L2 term's sum of squared weights)
// Each thread of sum_into sums its grid-stride share in double and adds it with one atomicAdd.
// NumPy reference: gpubp.reference.fill, gpubp.reference.sum_into, gpubp.reference.sum_squares_into.
// Launch: 1-D grid-stride over n, block 256.
// Double on purpose: sum_into, sum_squares_into.
// Tolerance fill: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (exact)
// Tolerance sum_* vs a float64 sum, |x - ref| <= atol + rtol*sum|x|: float32 atol=1e-12 rtol=1e-14;
// float64 atol=1e-12 rtol=1e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   fill_f32                          24 regs      0 B smem 100% occupancy (threads)
//   fill_f64                          24 regs      0 B smem 100% occupancy (threads)
//   sum_into_f32                      28 regs      0 B smem 100% occupancy (threads)
//   sum_into_f64                      32 regs      0 B smem 100% occupancy (threads)
//   sum_squares_into_f32              28 regs      0 B smem 100% occupancy (threads)
//   sum_squares_into_f64              30 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void fill(T* __restrict__ x, long long n, T value) {
    GPUBP_GRID_STRIDE(i, n) { x[i] = value; }
}

template <typename T>
__device__ __forceinline__ void sum_into(double* total, const T* __restrict__ x, long long n) {
    double s = 0.0;
    GPUBP_GRID_STRIDE(i, n) { s += (double)x[i]; }
    atomicAdd(total, s);
}

template <typename T>
__device__ __forceinline__ void sum_squares_into(double* total, const T* __restrict__ x, long long n) {
    double s = 0.0;
    GPUBP_GRID_STRIDE(i, n) { s += (double)x[i] * (double)x[i]; }
    atomicAdd(total, s);
}

GPUBP_EXPORT(fill, fill, (T* __restrict__ x, long long n, T value), (x, n, value))
GPUBP_EXPORT(sum_into, sum_into, (double* total, const T* __restrict__ x, long long n), (total, x, n))
GPUBP_EXPORT(sum_squares_into, sum_squares_into, (double* total, const T* __restrict__ x, long long n),
             (total, x, n))
