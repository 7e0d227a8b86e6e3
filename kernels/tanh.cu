// tanh: the hyperbolic tangent activation for hidden layers.
//   bias_tanh:   Z <- tanh(Z + b)
//   bias_tanh_models: the same for K stacked models, each row block with its model's b (activation.cuh)
//   tanh_delta:  G <- G * (1 - a)*(1 + a)      tanh'(z) = 1 - tanh(z)^2, from the stored a = tanh(z);
//                written as a product, which does not cancel near |a| = 1 as 1 - a*a would
// NumPy reference: gpubp.reference.layer_forward_*, gpubp.reference.layer_delta_*, gpubp.reference.bias_tanh, gpubp.reference.bias_tanh_models, gpubp.reference.tanh_delta.
// Dropout (dropout.cuh): bias_tanh_drop, tanh_delta_drop, layer_forward_tanh_drop_{s,l},
// layer_delta_tanh_drop_{s,l}, the same with each hidden output times its factor r (BP2: f' from the
// undropped a / r, times r); NumPy reference: gpubp.reference.bias_tanh_drop etc.; tolerances: the plain
// kernel's, atol times r, and the products by r (tests/test_dropout.py).
// Launch: bias_, bias_..._models and _delta 1-D grid-stride, block 256; layer_forward_/layer_delta_ _s and _l a 2-D grid of
// 256-thread blocks, one per TileSmall or TileLarge tile (layer.cuh).
// Tolerance bias_tanh* vs a float64 tanh(Z+b): float32 atol=2e-6 rtol=0; float64 atol=1e-15 rtol=0 (bounded by 1).
// Tolerance tanh_delta* vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
// Tolerance layer_*: vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b| of the element's
// product (the accumulation error grows with it; the activation adds atol): float32 atol=1e-6 rtol=1e-5;
// float64 atol=1e-15 rtol=2e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   bias_tanh_drop_f32                20 regs      0 B smem 100% occupancy (threads)
//   bias_tanh_drop_f64                24 regs      0 B smem 100% occupancy (threads)
//   bias_tanh_f32                     24 regs      0 B smem 100% occupancy (threads)
//   bias_tanh_f64                     28 regs      0 B smem 100% occupancy (threads)
//   bias_tanh_models_f32              44 regs      0 B smem  62% occupancy (registers)
//   bias_tanh_models_f64              34 regs      0 B smem  75% occupancy (registers)
//   layer_delta_tanh_drop_l_f32       64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_tanh_drop_l_f64       78 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_tanh_drop_s_f32       56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_tanh_drop_s_f64       56 regs  12800 B smem  50% occupancy (registers)
//   layer_delta_tanh_l_f32            64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_tanh_l_f64            80 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_tanh_s_f32            56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_tanh_s_f64            56 regs  12800 B smem  50% occupancy (registers)
//   layer_forward_tanh_drop_l_f32     62 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_tanh_drop_l_f64     72 regs  16640 B smem  38% occupancy (registers)
//   layer_forward_tanh_drop_s_f32     48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_tanh_drop_s_f64     48 regs  12800 B smem  62% occupancy (registers)
//   layer_forward_tanh_l_f32          55 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_tanh_l_f64          82 regs  16640 B smem  25% occupancy (registers)
//   layer_forward_tanh_s_f32          48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_tanh_s_f64          48 regs  12800 B smem  62% occupancy (registers)
//   tanh_delta_drop_f32               24 regs      0 B smem 100% occupancy (threads)
//   tanh_delta_drop_f64               32 regs      0 B smem 100% occupancy (threads)
//   tanh_delta_f32                    28 regs      0 B smem 100% occupancy (threads)
//   tanh_delta_f64                    32 regs      0 B smem 100% occupancy (threads)
#include "activation.cuh"

struct Tanh {
    template <typename T>
    __host__ __device__ static T f(T z) { return gpubp_tanh(z); }
    template <typename T>
    __host__ __device__ static T prime_from_output(T a) { return (T(1) - a) * (T(1) + a); }
};

GPUBP_ACTIVATION(tanh, Tanh)
