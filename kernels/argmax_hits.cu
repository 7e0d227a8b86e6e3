// argmax_hits: per row, does the network's answer (argmax of the output row) equal the label?
//   hits[r] <- (argmax_c A[r, c] == labels[r]) ? 1 : 0    A: (rows, cols) C-contiguous,
//   labels: (rows,) int64, hits: (rows,) int32; the sum of hits is the number correct.
// Ties go to the first maximum and a NaN counts as the maximum, exactly as numpy.argmax.
// NumPy reference: gpubp.reference.argmax_hits.
// Launch: 1-D grid-stride over rows (one thread walks one row), block 256.
// Tolerance: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (exact)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   argmax_hits_f32                   32 regs      0 B smem 100% occupancy (threads)
//   argmax_hits_f64                   36 regs      0 B smem  75% occupancy (registers)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void argmax_hits(int* __restrict__ hits, const T* __restrict__ A,
                                            const long long* __restrict__ labels, long long rows,
                                            long long cols) {
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
        hits[r] = arg == labels[r] ? 1 : 0;
    }
}

GPUBP_EXPORT(argmax_hits, argmax_hits,
             (int* __restrict__ hits, const T* __restrict__ A, const long long* __restrict__ labels,
              long long rows, long long cols),
             (hits, A, labels, rows, cols))
