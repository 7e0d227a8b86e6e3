// gather: one epoch's shuffle, done on the device: the rows of X and Y in the order of perm, into the
// buffers the epoch's mini-batches are slices of (so batch k always lives at the same address).
//   Xs[i, :] <- X[perm[i], :]   Xs, X: (rows, cols_x);   Ys[i, :] <- Y[perm[i], :]   Ys, Y: (rows, cols_y)
// X, Y, Xs, Ys C-contiguous; perm: (rows,) int64, a permutation of 0..rows-1 (drawn on the host).
// One launch for both, so an epoch replayed as a CUDA graph starts with one node.
// NumPy reference: gpubp.reference.gather_rows.
// Launch: 1-D grid-stride over rows*(cols_x + cols_y), block 256.
// Tolerance: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (copies are exact)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   gather_rows_f32                   30 regs      0 B smem 100% occupancy (threads)
//   gather_rows_f64                   30 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void take_rows(T* __restrict__ Xs, T* __restrict__ Ys, const T* __restrict__ X,
                                            const T* __restrict__ Y, const long long* __restrict__ perm,
                                            long long rows, long long cols_x, long long cols_y) {
    const long long width = cols_x + cols_y;
    GPUBP_GRID_STRIDE(i, rows * width) {
        const long long r = i / width, c = i % width, src = perm[r];
        if (c < cols_x)
            Xs[r * cols_x + c] = X[src * cols_x + c];
        else
            Ys[r * cols_y + (c - cols_x)] = Y[src * cols_y + (c - cols_x)];
    }
}

// The export, written once with the copy it calls: take_rows above, or, where the translation unit
// defines GPUBP_NATIVE (the native backend's build), gpubp/backends/native_layer.h's copy of whole
// rows, the same parameters; native_layer.h then defines GPUBP_GATHER_KERNEL for itself.
#define GPUBP_GATHER_ENTRY(NAME, TAKE_FN)                                                             \
    GPUBP_EXPORT(NAME, TAKE_FN,                                                                       \
                 (T* __restrict__ Xs, T* __restrict__ Ys, const T* __restrict__ X, const T* __restrict__ Y, \
                  const long long* __restrict__ perm, long long rows, long long cols_x, long long cols_y),  \
                 (Xs, Ys, X, Y, perm, rows, cols_x, cols_y))
#ifndef GPUBP_NATIVE
#define GPUBP_GATHER_KERNEL(NAME) GPUBP_GATHER_ENTRY(NAME, take_rows)
#endif

GPUBP_GATHER_KERNEL(gather_rows)
