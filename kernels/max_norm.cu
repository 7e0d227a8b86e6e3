// max_norm: Srivastava et al.'s (JMLR 2014) constraint after an update: every unit's incoming weight
// vector (a row of W^l) scaled back onto the ball of radius c when it has left it.
//   W[j, :] <- W[j, :] * (c / ||W[j, :]||)   when ||W[j, :]|| > c;  unchanged (bit for bit) otherwise
// W: (rows, cols) C-contiguous = (n_l, n_{l-1}), one hidden layer's weights (a view into the flat
// parameter buffer); c > 0. The biases are not constrained.
// Double on purpose: max_norm (the squared norm sums in double, so a float row's norm is exact to
// float rounding whatever its length, and the scale c/||w|| is rounded once, to T).
// NumPy reference: gpubp.reference.max_norm.
// Launch: 1-D grid-stride over rows, block 256 (a thread walks its row twice: the norm, the scale;
// a layer has hundreds to thousands of rows, run once per step).
// Tolerance vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-30 rtol=2.4e-7;
// float64 atol=1e-300 rtol=4e-15 (a double row's squares summed in double: its length times eps at worst)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   max_norm_f32                      32 regs      0 B smem 100% occupancy (threads)
//   max_norm_f64                      32 regs      0 B smem 100% occupancy (threads)
#include "gpubp.cuh"

template <typename T>
__device__ __forceinline__ void max_norm(T* __restrict__ W, long long rows, long long cols, T c) {
    GPUBP_GRID_STRIDE(j, rows) {
        T* __restrict__ w = W + j * cols;
        double squares = 0.0;
        for (long long k = 0; k < cols; ++k) squares += (double)w[k] * (double)w[k];
        const double cc = (double)c;
        if (squares > cc * cc) {
            const T shrink = T(cc / sqrt(squares));
            for (long long k = 0; k < cols; ++k) w[k] *= shrink;
        }
    }
}

GPUBP_EXPORT(max_norm, max_norm, (T* __restrict__ W, long long rows, long long cols, T c), (W, rows, cols, c))
