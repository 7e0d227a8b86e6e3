// layer_update: BP3 and BP4 of one layer and the update, in one launch (the own route):
//   W (n_out, n_in) <- beta * W + alpha * D^T A_in        D: (m, n_out), A_in: (m, n_in)
//   b (n_out,)      <- beta_b * b + alpha * sum_rows D
// network2's SGD: alpha = -eta, beta = 1 - eta*lambda/n, beta_b = 1 (no gradient buffer at all);
// the optimizers with state: alpha = 1, beta = beta_b = 0 into the gradient buffer, then their kernel.
// beta = 0 never reads the old value. W and b may be views of one flat buffer; D, A_in are distinct.
// NumPy reference: gpubp.reference.layer_update_s, gpubp.reference.layer_update_l.
// Launch: 2-D grid (ceil(n_in/BN), ceil(n_out/BM)), 256 threads; _s is TileSmall, _l TileLarge (layer.cuh).
// Tolerance vs float64, |x - ref| <= atol + rtol*(|beta*w| + |alpha|*sum_r |d_r a_r|) (a sum of m products):
// float32 atol=1e-30 rtol=2e-6; float64 atol=1e-300 rtol=4e-15
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   layer_update_l_f32                64 regs   8320 B smem  50% occupancy (registers)
//   layer_update_l_f64                80 regs  16640 B smem  38% occupancy (registers)
//   layer_update_s_f32                48 regs   6400 B smem  62% occupancy (registers)
//   layer_update_s_f64                48 regs  12800 B smem  62% occupancy (registers)
#include "gpubp.cuh"
#include "layer.cuh"

GPUBP_UPDATE_KERNELS(layer_update)
