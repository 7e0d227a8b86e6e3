// cost.cuh: a cost's value over a batch, summed into a float64 total on the device, so that a whole
// data set's cost (and accuracy) comes back to the host in one copy (gpubp.network.Network.measure):
//   total[0] += sum over rows r, columns c of Term::c(A[r, c], Y[r, c])       (in double precision)
// Each thread sums its rows in double and adds each row with one atomicAdd; the order of those adds
// varies, so totals agree with a float64 sum to a few units in the last place, not bit for bit.
// Double on purpose, in the float kernels too: a float32 sum over 50,000 rows would lose ~4 digits.
#ifndef GPUBP_COST_CUH
#define GPUBP_COST_CUH
#include "gpubp.cuh"

// A saturated wrong answer costs -ln(CLIP) = 27.6 per output rather than inf (network2 used nan_to_num).
#define GPUBP_COST_CLIP 1e-12

template <class Term, typename T>
__device__ __forceinline__ void cost_value(double* total, const T* __restrict__ A, const T* __restrict__ Y,
                                           long long rows, long long cols) {
    GPUBP_GRID_STRIDE(r, rows) {
        double s = 0.0;
        for (long long c = 0; c < cols; ++c) s += Term::c((double)A[r * cols + c], (double)Y[r * cols + c]);
        atomicAdd(total, s);
    }
}

#define GPUBP_COST_VALUE(NAME, TERM)                                                                      \
    GPUBP_EXPORT(NAME##_cost, (cost_value<TERM, T>),                                                      \
                 (double* total, const T* __restrict__ A, const T* __restrict__ Y, long long rows,        \
                  long long cols),                                                                        \
                 (total, A, Y, rows, cols))

#endif  // GPUBP_COST_CUH
