// log_likelihood: the log-likelihood cost with softmax outputs (Nielsen ch. 3):
//   C = -sum y ln a  (-ln of the right class's probability);  delta^L = a - y (difference_delta.cu)
//   layer_output_log_likelihood: the own route's output layer, A = softmax(A_in W^T + b), the row's
//   max and sum from a copy of the row in shared memory (so n_out <= TileOutput's 32 columns), and
//   D = scale*(A - Y), in one launch (layer.cuh).
//   log_likelihood_cost: total[0] += C over a batch, a clipped to [1e-12, 1], in double (cost.cuh).
// The softmax of the blas route is bias_softmax (softmax.cu).
// NumPy reference: gpubp.reference.layer_output_log_likelihood, gpubp.reference.log_likelihood_cost.
// Launch: layer_output_ a 2-D grid of 256-thread blocks, one per TileOutput tile (layer.cuh); the cost
// 1-D grid-stride over rows, block 256.
// Double on purpose: log_likelihood_cost (cost.cuh).
// Tolerance layer_output_*: A_out and D/scale vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b|
// (the softmax's derivative is at most 1/2): float32 atol=1e-6 rtol=1e-5; float64 atol=1e-15 rtol=2e-14
// Tolerance log_likelihood_cost vs a float64 sum: float32 atol=1e-9 rtol=1e-12; float64 atol=1e-9 rtol=1e-12
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   layer_output_log_likelihood_f32   48 regs  15232 B smem  62% occupancy (registers)
//   layer_output_log_likelihood_f64   58 regs  30464 B smem  50% occupancy (registers)
//   log_likelihood_cost_f32           38 regs      0 B smem  75% occupancy (registers)
//   log_likelihood_cost_f64           38 regs      0 B smem  75% occupancy (registers)
#include "cost.cuh"
#include "gpubp.cuh"
#include "layer.cuh"

GPUBP_OUTPUT_KERNEL(log_likelihood, Softmax, DifferenceDelta)

struct LogLikelihoodTerm {
    __host__ __device__ static double c(double a, double y) {
        return -y * log(a < GPUBP_COST_CLIP ? GPUBP_COST_CLIP : a);
    }
};
GPUBP_COST_VALUE(log_likelihood, LogLikelihoodTerm)
