// one_hot: labels to one-hot rows on the device, so integer labels are all that crosses the bus.
//   Y[r, c] <- (labels[r] == c) ? 1 : 0      Y: (rows, classes) C-contiguous, labels: (rows,) int64
// Labels are checked to lie in [0, classes) on the host before they are uploaded.
// NumPy reference: gpubp.reference.one_hot.
// Launch: 1-D grid-stride over rows*classes, block 256.
// Tolerance: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (exact)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   one_hot_f32                       26 regs      0 B smem 100% occupancy (threads)
//   one_hot_f64                       26 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void one_hot(T* __restrict__ Y, const long long* __restrict__ labels,
                                        long long rows, long long classes) {
    GPUBP_GRID_STRIDE(i, rows * classes) { Y[i] = labels[i / classes] == i % classes ? T(1) : T(0); }
}

GPUBP_EXPORT(one_hot, one_hot,
             (T* __restrict__ Y, const long long* __restrict__ labels, long long rows, long long classes),
             (Y, labels, rows, classes))
