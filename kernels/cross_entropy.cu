// cross_entropy: the cross-entropy cost with sigmoid outputs (Nielsen ch. 3):
//   C = -sum [y ln a + (1 - y) ln(1 - a)];  delta^L = a - y (difference_delta.cu: sigma' cancels)
//   layer_output_cross_entropy: the own route's output layer, A = sigma(A_in W^T + b) and
//   D = scale*(A - Y), in one launch (layer.cuh, TileOutput).
//   cross_entropy_cost: total[0] += C over a batch, a clipped to [1e-12, 1 - 1e-12], in double (cost.cuh).
// NumPy reference: gpubp.reference.layer_output_cross_entropy, gpubp.reference.cross_entropy_cost.
// Launch: layer_output_ a 2-D grid of 256-thread blocks, one per TileOutput tile (layer.cuh); the cost
// 1-D grid-stride over rows, block 256.
// Double on purpose: cross_entropy_cost (cost.cuh).
// Tolerance layer_output_*: A_out and D/scale vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b|
// (sigma' is at most 1/4): float32 atol=1e-6 rtol=1e-5; float64 atol=1e-15 rtol=2e-14
// Tolerance cross_entropy_cost vs a float64 sum: float32 atol=1e-9 rtol=1e-12; float64 atol=1e-9 rtol=1e-12
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   cross_entropy_cost_f32            32 regs      0 B smem 100% occupancy (threads)
//   cross_entropy_cost_f64            32 regs      0 B smem 100% occupancy (threads)
//   layer_output_cross_entropy_f32    56 regs   6272 B smem  50% occupancy (registers)
//   layer_output_cross_entropy_f64    64 regs  12544 B smem  50% occupancy (registers)
#include "cost.cuh"
#include "gpubp.cuh"
#include "layer.cuh"

GPUBP_OUTPUT_KERNEL(cross_entropy, Sigmoid, DifferenceDelta)

struct CrossEntropyTerm {
    __host__ __device__ static double c(double a, double y) {
        a = a < GPUBP_COST_CLIP ? GPUBP_COST_CLIP : (a > 1.0 - GPUBP_COST_CLIP ? 1.0 - GPUBP_COST_CLIP : a);
        return -(y * log(a) + (1.0 - y) * log(1.0 - a));
    }
};
GPUBP_COST_VALUE(cross_entropy, CrossEntropyTerm)
