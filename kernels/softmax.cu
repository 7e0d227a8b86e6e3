// softmax: the output layer of the log-likelihood cost (Nielsen ch. 3), fused with the bias add.
//   Z[r, :] <- softmax(Z[r, :] + b)   softmax(z)_j = exp(z_j - max z) / sum_k exp(z_k - max z)
// Subtracting the row's maximum keeps every exp in (0, 1], so rows of +-1000 stay finite, and the
// sum is at least 1 (gpubp.cuh's gpubp_softmax_row, which layer.cuh and native_layer.h share). Z: (rows, cols) C-contiguous = A W^T from the GEMM, b: (cols,).
//   bias_softmax_models: the same for K stacked models (gpubp.stack): row r adds model
//   r / rows_per_model's bias, b[(r / rows_per_model) * b_stride + j].
// NumPy reference: gpubp.reference.bias_softmax, gpubp.reference.bias_softmax_models.
// Launch: 1-D grid-stride over rows (one thread walks one row four times: bias, max, sum, divide),
// block 256; rows are the batch and cols the 10 classes, so a row is short.
// Tolerance vs a float64 softmax, |x - ref| <= atol + rtol*max_j |z_j + b_j| of the row (the sum z + b is
// rounded before the exp, and exp(z_j - max) passes that rounding on scaled by |z|):
// float32 atol=1e-6 rtol=1.2e-7; float64 atol=1e-15 rtol=2.3e-16
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   bias_softmax_f32                  32 regs      0 B smem 100% occupancy (threads)
//   bias_softmax_f64                  56 regs      0 B smem  50% occupancy (registers)
//   bias_softmax_models_f32           32 regs      0 B smem 100% occupancy (threads)
//   bias_softmax_models_f64           56 regs      0 B smem  50% occupancy (registers)
#include "gpubp.cuh"

// One row z (cols,) <- softmax(z + b): the bias added (and rounded) first, then gpubp.cuh's softmax row.
template <typename T>
__device__ __forceinline__ void softmax_row(T* __restrict__ z, const T* __restrict__ b, long long cols) {
    for (long long c = 0; c < cols; ++c) z[c] = z[c] + b[c];
    gpubp_softmax_row(z, cols);
}

template <typename T>
__device__ __forceinline__ void bias_softmax(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                                             long long cols) {
    GPUBP_GRID_STRIDE(r, rows) { softmax_row(Z + r * cols, b, cols); }
}

template <typename T>
__device__ __forceinline__ void bias_softmax_models(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                                                    long long cols, long long rows_per_model, long long b_stride) {
    GPUBP_GRID_STRIDE(r, rows) { softmax_row(Z + r * cols, b + r / rows_per_model * b_stride, cols); }
}

GPUBP_EXPORT(bias_softmax, bias_softmax,
             (T* __restrict__ Z, const T* __restrict__ b, long long rows, long long cols), (Z, b, rows, cols))
GPUBP_EXPORT(bias_softmax_models, bias_softmax_models,
             (T* __restrict__ Z, const T* __restrict__ b, long long rows, long long cols, long long rows_per_model,
              long long b_stride),
             (Z, b, rows, cols, rows_per_model, b_stride))
