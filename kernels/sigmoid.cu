// sigmoid: the logistic activation of Nielsen's networks (the default for hidden layers, and the
// output layer of the quadratic and cross-entropy costs).
//   bias_sigmoid:   Z <- sigma(Z + b)          sigma(z) = 1/(1+exp(-z)) (gpubp.cuh)
//   bias_sigmoid_models: the same for K stacked models, each row block with its model's b (activation.cuh)
//   sigmoid_delta:  G <- G * a*(1-a)           sigma'(z) from the stored a = sigma(z)
// NumPy reference: gpubp.reference.layer_forward_*, gpubp.reference.layer_delta_*, gpubp.reference.bias_sigmoid, gpubp.reference.bias_sigmoid_models, gpubp.reference.sigmoid_delta.
// Dropout (dropout.cuh): bias_sigmoid_drop, sigmoid_delta_drop, layer_forward_sigmoid_drop_{s,l},
// layer_delta_sigmoid_drop_{s,l}, the same with each hidden output times its factor r (BP2: f' from the
// undropped a / r, times r); NumPy reference: gpubp.reference.bias_sigmoid_drop etc.; tolerances: the plain
// kernel's, atol times r, and the products by r (tests/test_dropout.py).
// Launch: bias_, bias_..._models and _delta 1-D grid-stride, block 256; layer_forward_/layer_delta_ _s and _l a 2-D grid of
// 256-thread blocks, one per TileSmall or TileLarge tile (layer.cuh).
// Tolerance bias_sigmoid* vs a float64 1/(1+exp(-(Z+b))): float32 atol=1e-6 rtol=0; float64 atol=1e-15 rtol=0
// (sigma is bounded, so its error is absolute).
// Tolerance sigmoid_delta* vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
// Tolerance layer_*: vs float64, |x - ref| <= atol + rtol*S with S = sum_k |a_k w_k| + |b| of the element's
// product (the accumulation error grows with it; the activation adds atol): float32 atol=1e-6 rtol=1e-5;
// float64 atol=1e-15 rtol=2e-14
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   bias_sigmoid_drop_f32             24 regs      0 B smem 100% occupancy (threads)
//   bias_sigmoid_drop_f64             26 regs      0 B smem 100% occupancy (threads)
//   bias_sigmoid_f32                  24 regs      0 B smem 100% occupancy (threads)
//   bias_sigmoid_f64                  26 regs      0 B smem 100% occupancy (threads)
//   bias_sigmoid_models_f32           40 regs      0 B smem  75% occupancy (registers)
//   bias_sigmoid_models_f64           34 regs      0 B smem  75% occupancy (registers)
//   layer_delta_sigmoid_drop_l_f32    64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_sigmoid_drop_l_f64    78 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_sigmoid_drop_s_f32    56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_sigmoid_drop_s_f64    56 regs  12800 B smem  50% occupancy (registers)
//   layer_delta_sigmoid_l_f32         64 regs   8320 B smem  50% occupancy (registers)
//   layer_delta_sigmoid_l_f64         80 regs  16640 B smem  38% occupancy (registers)
//   layer_delta_sigmoid_s_f32         56 regs   6400 B smem  50% occupancy (registers)
//   layer_delta_sigmoid_s_f64         56 regs  12800 B smem  50% occupancy (registers)
//   layer_forward_sigmoid_drop_l_f32  64 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_sigmoid_drop_l_f64  72 regs  16640 B smem  38% occupancy (registers)
//   layer_forward_sigmoid_drop_s_f32  48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_sigmoid_drop_s_f64  48 regs  12800 B smem  62% occupancy (registers)
//   layer_forward_sigmoid_l_f32       55 regs   8320 B smem  50% occupancy (registers)
//   layer_forward_sigmoid_l_f64       82 regs  16640 B smem  25% occupancy (registers)
//   layer_forward_sigmoid_s_f32       48 regs   6400 B smem  62% occupancy (registers)
//   layer_forward_sigmoid_s_f64       48 regs  12800 B smem  62% occupancy (registers)
//   sigmoid_delta_drop_f32            24 regs      0 B smem 100% occupancy (threads)
//   sigmoid_delta_drop_f64            32 regs      0 B smem 100% occupancy (threads)
//   sigmoid_delta_f32                 28 regs      0 B smem 100% occupancy (threads)
//   sigmoid_delta_f64                 28 regs      0 B smem 100% occupancy (threads)
#include "activation.cuh"

// The functor Sigmoid is in gpubp.cuh: the output layers of two costs use it too.
GPUBP_ACTIVATION(sigmoid, Sigmoid)
