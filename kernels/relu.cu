// relu: the rectified linear activation for hidden layers (He initialisation by default).
//   bias_relu:   Z <- max(Z + b, 0)             a NaN stays NaN, so divergence is still seen
//   bias_relu_models: the same for K stacked models, each row block with its model's b (activation.cuh)
//   relu_delta:  G <- G * (a > 0 ? 1 : 0)      relu'(z) from the stored a = max(z, 0); 0 at z = 0
// NumPy reference: gpubp.reference.layer_forward_*, gpubp.reference.layer_delta_*, gpubp.reference.bias_relu, gpubp.reference.bias_relu_models, gpubp.reference.relu_delta.
// Dropout (dropout.cuh): bias_relu_drop, relu_delta_drop, layer_forward_relu_drop_{s,l},
// layer_delta_relu_drop_{s,l}, the same with each hidden output times its factor r (BP2: f' from the
// undropped a / r, times r); NumPy reference: gpubp.reference.bias_relu_drop etc.; tolerances: the plain
// kernel's, atol times r, and the products by r (tests/test_dropout.py).
// Launch: bias_, bias_..._models and _delta 1-D grid-stride, block 256; layer_forward_/layer_delta_ _s and _l a 2-D grid of
// 256-thread blocks, one per TileSmall or TileLarge tile (layer.cuh).
// Tolerance bias_relu* vs a float64 max(Z+b, 0), |x - ref| <= atol + rtol*|ref|: float32 atol=1e-30 rtol=6e-8; float64 atol=1e-300 rtol=1.2e-16
// (one rounding, of the sum).
// Tolerance relu_delta*: float32 atol=0 rtol=0; float64 atol=0 rtol=0 (a product by 1 or 0 is exact)
// Tolerance layer_*: vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b| of the element's
// product (the accumulation error grows with it; the activation adds atol): float32 atol=1e-6 rtol=1e-5;
// float64 atol=1e-15 rtol=2e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   bias_relu_drop_f32                20 regs      0 B smem 100% occupancy (threads)
//   bias_relu_drop_f64                26 regs      0 B smem 100% occupancy (threads)
//   bias_relu_f32                     24 regs      0 B smem 100% occupancy (threads)
//   bias_relu_f64                     26 regs      0 B smem 100% occupancy (threads)
//   bias_relu_models_f32              40 regs      0 B smem  75% occupancy (registers)
//   bias_relu_models_f64              40 regs      0 B smem  75% occupancy (registers)
//   layer_delta_relu_drop_l_f32       64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_relu_drop_l_f64       78 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_relu_drop_s_f32       56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_relu_drop_s_f64       56 regs  12800 B smem  50% occupancy (registers)
//   layer_delta_relu_l_f32            64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_relu_l_f64            80 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_relu_s_f32            56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_relu_s_f64            56 regs  12800 B smem  50% occupancy (registers)
//   layer_forward_relu_drop_l_f32     62 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_relu_drop_l_f64     72 regs  16640 B smem  38% occupancy (registers)
//   layer_forward_relu_drop_s_f32     48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_relu_drop_s_f64     48 regs  12800 B smem  62% occupancy (registers)
//   layer_forward_relu_l_f32          55 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_relu_l_f64          82 regs  16640 B smem  25% occupancy (registers)
//   layer_forward_relu_s_f32          48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_relu_s_f64          48 regs  12800 B smem  62% occupancy (registers)
//   relu_delta_drop_f32               24 regs      0 B smem 100% occupancy (threads)
//   relu_delta_drop_f64               32 regs      0 B smem 100% occupancy (threads)
//   relu_delta_f32                    30 regs      0 B smem 100% occupancy (threads)
//   relu_delta_f64                    30 regs      0 B smem 100% occupancy (threads)
#include "activation.cuh"

struct Relu {
    template <typename T>
    __host__ __device__ static T f(T z) { return z < T(0) ? T(0) : z; }  // NaN passes, as numpy.maximum
    template <typename T>
    __host__ __device__ static T prime_from_output(T a) { return a > T(0) ? T(1) : T(0); }
};

GPUBP_ACTIVATION(relu, Relu)
