// argmax_count: how many rows the network answers right, added to a float64 total on the device:
//   total[0] += #{r : argmax_c A[r, c] == labels[r]}     A: (rows, cols) C-contiguous, labels: (rows,) int64
// Ties go to the first maximum and a NaN counts as the maximum, exactly as numpy.argmax. One thread
// walks one row; a row it gets right adds 1 with atomicAdd (exact: totals stay integers below 2^53).
// NumPy reference: gpubp.reference.argmax_count.
// Launch: 1-D grid-stride over rows, block 256.
// Double on purpose: argmax_count (the total is shared with the costs' float64 sums).
// Tolerance: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (exact)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   argmax_count_f32                  32 regs      0 B smem 100% occupancy (threads)
//   argmax_count_f64                  36 regs      0 B smem  75% occupancy (registers)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void argmax_count(double* total, const T* __restrict__ A,
                                             const long long* __restrict__ labels, long long rows, long long cols) {
    GPUBP_GRID_STRIDE(r, rows) {
        const T* row = A + r * cols;
        T best = row[0];
        long long arg = 0;
        for (long long c = 1; c < cols; ++c) {
            const T v = row[c];
            if (best == best && (v > best || v != v)) {  // a NaN is never replaced
                best = v;
                arg = c;
            }
        }
        if (arg == labels[r]) atomicAdd(total, 1.0);
    }
}

GPUBP_EXPORT(argmax_count, argmax_count,
             (double* total, const T* __restrict__ A, const long long* __restrict__ labels, long long rows,
              long long cols),
             (total, A, labels, rows, cols))
