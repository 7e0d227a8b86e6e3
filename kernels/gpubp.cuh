// gpubp.cuh: what every kernel shares: each formula written once (sigma, the softmax row, the
// delta^L functors, the update epilogue, the bias column sum: __host__ __device__, so the GPU, the
// emulator and the native backend run the same lines), the overloads that keep float code in
// float, the 64-bit grid-stride loop, and GPUBP_EXPORT, which makes a kernel's float and double
// entry points from one template.
//
// NumPy reference: gpubp.reference.sigmoid / sigmoid_prime_from_output, softmax, quadratic_delta,
// difference_delta, layer_update_s (the epilogue and the bias column sum).
//   sigma(z)  = 1/(1+exp(-z))   (IEEE keeps it whole at +-1000: exp(1000) = inf gives 1/inf = 0, exp(-1000)
//                                = 0 gives 1; one exp and a division: on a CPU expf costs a fifth of tanhf)
//   sigma'(z) = sigma(z)*(1-sigma(z)) = a*(1-a)        (from the stored activation a)
// Float code stays float: T(1) folds at compile time, tanhf/expf/sqrtf for float.
#ifndef GPUBP_CUH
#define GPUBP_CUH

__host__ __device__ __forceinline__ float gpubp_tanh(float x) { return tanhf(x); }
__host__ __device__ __forceinline__ double gpubp_tanh(double x) { return tanh(x); }
__host__ __device__ __forceinline__ float gpubp_exp(float x) { return expf(x); }
__host__ __device__ __forceinline__ double gpubp_exp(double x) { return exp(x); }
__host__ __device__ __forceinline__ float gpubp_sqrt(float x) { return sqrtf(x); }
__host__ __device__ __forceinline__ double gpubp_sqrt(double x) { return sqrt(x); }
__host__ __device__ __forceinline__ float gpubp_expm1(float x) { return expm1f(x); }
__host__ __device__ __forceinline__ double gpubp_expm1(double x) { return expm1(x); }
__host__ __device__ __forceinline__ float gpubp_log1p(float x) { return log1pf(x); }
__host__ __device__ __forceinline__ double gpubp_log1p(double x) { return log1p(x); }
__host__ __device__ __forceinline__ float gpubp_sin(float x) { return sinf(x); }
__host__ __device__ __forceinline__ double gpubp_sin(double x) { return sin(x); }
__host__ __device__ __forceinline__ float gpubp_cos(float x) { return cosf(x); }
__host__ __device__ __forceinline__ double gpubp_cos(double x) { return cos(x); }
__host__ __device__ __forceinline__ float gpubp_tan(float x) { return tanf(x); }
__host__ __device__ __forceinline__ double gpubp_tan(double x) { return tan(x); }
__host__ __device__ __forceinline__ float gpubp_floor(float x) { return floorf(x); }
__host__ __device__ __forceinline__ double gpubp_floor(double x) { return floor(x); }

// x rounded to TF32 (the 10 mantissa bits tensor cores read; to nearest, ties to even; NaN and inf
// kept): the layer kernels' operands under --tf32. TF32 is a float32 format: a double is kept as is.
__host__ __device__ __forceinline__ float gpubp_tf32(float x) {
    union {
        float f;
        unsigned int u;
    } v;
    v.f = x;
    if ((v.u & 0x7f800000u) != 0x7f800000u) v.u = (v.u + 0x0fffu + ((v.u >> 13) & 1u)) & 0xffffe000u;
    return v.f;
}
__host__ __device__ __forceinline__ double gpubp_tf32(double x) { return x; }

template <typename T>
__host__ __device__ __forceinline__ T gpubp_sigmoid(T z) {
    return T(1) / (T(1) + gpubp_exp(-z));
}

template <typename T>
__host__ __device__ __forceinline__ T gpubp_sigmoid_prime_from_a(T a) {
    return a * (T(1) - a);
}

// The sigmoid activation as a functor (activation.cuh, layer.cuh): every hidden-layer
// activation and the output layers' have f(z) and f'(z) from the stored output a = f(z).
struct Sigmoid {
    static constexpr bool row_wise = false;
    template <typename T>
    __host__ __device__ static T f(T z) { return gpubp_sigmoid(z); }
    template <typename T>
    __host__ __device__ static T prime_from_output(T a) { return gpubp_sigmoid_prime_from_a(a); }
};

// softmax(z)_j = exp(z_j - max z) / sum_k exp(z_k - max z) of one row z (cols,): every exp in (0, 1],
// so rows of +-1000 stay finite and the sum is at least 1. In two steps, so that a block can share
// the first: gpubp_softmax_norm finds the row's max (top) and inv = 1 / sum_k exp(z_k - top) (z:
// anything indexable, so a row of a __shared__ array fits too), gpubp_softmax_at gives element j.
template <typename T, class Row>
__host__ __device__ __forceinline__ void gpubp_softmax_norm(const Row& z, long long cols, T& top, T& inv) {
    T hi = z[0];
    for (long long c = 1; c < cols; ++c) hi = z[c] > hi ? z[c] : hi;
    T s = T(0);
    for (long long c = 0; c < cols; ++c) s += gpubp_exp(z[c] - hi);
    top = hi;
    inv = T(1) / s;
}

template <typename T>
__host__ __device__ __forceinline__ T gpubp_softmax_at(T z, T top, T inv) {
    return gpubp_exp(z - top) * inv;
}

// z (cols,) <- softmax(z), in place.
template <typename T>
__host__ __device__ __forceinline__ void gpubp_softmax_row(T* z, long long cols) {
    T top, inv;
    gpubp_softmax_norm(z, cols, top, inv);
    for (long long c = 0; c < cols; ++c) z[c] = gpubp_softmax_at(z[c], top, inv);
}

// The output layer's delta^L functors (BP1), for the elementwise kernels (quadratic.cu,
// difference_delta.cu: D = Delta::d(a, y, scale)) and the own route's output layers (layer.cuh,
// native_layer.h: D = scale * Delta::d(a, y)). s multiplies a - y before sigma' does, as the
// elementwise kernels always have; s = 1 is exact, so the fused layers' scale * ((a - y) sigma')
// keeps its own rounding too.
struct QuadraticDelta {  // (a - y) sigma'(z), sigma' from a: the quadratic cost with sigmoid outputs
    template <typename T>
    __host__ __device__ static T d(T a, T y, T s = T(1)) { return s * (a - y) * gpubp_sigmoid_prime_from_a(a); }
};
struct DifferenceDelta {  // a - y: cross-entropy with sigmoid, log-likelihood with softmax
    template <typename T>
    __host__ __device__ static T d(T a, T y, T s = T(1)) { return s * (a - y); }
};

// The update epilogue of BP3/BP4 (layer.cuh's layer_update, native_layer.h's):
//   new = beta * old + alpha * c,  or alpha * c when beta == 0
// old() is called only when beta != 0, so a poisoned (NaN) buffer is overwritten, not propagated.
// V is T, or a SIMD vector of T (native_layer.h).
template <typename T, typename V, class Old>
__host__ __device__ __forceinline__ V gpubp_update(T alpha, V c, T beta, Old old) {
    return beta == T(0) ? alpha * c : beta * old() + alpha * c;
}

// sum over rows r of D[r, i] (D: (rows, cols) row-major), in row order: BP3's bias gradient.
template <typename T>
__host__ __device__ __forceinline__ T gpubp_column_sum(const T* __restrict__ D, long long rows, long long cols,
                                                       long long i) {
    T s = T(0);
    for (long long r = 0; r < rows; ++r) s += D[r * cols + i];
    return s;
}

// 64-bit grid-stride loop: any grid covers any n, and n may exceed 2^31.
#define GPUBP_GRID_STRIDE(i, n)                                                  \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// GPUBP_EXPORT(NAME, CALLEE, PARAMS, ARGS) defines the entry points NAME_f32 and NAME_f64:
// PARAMS is the parameter list with T standing for the floating type, CALLEE the template it
// calls (in parentheses when it holds a comma) and ARGS the call's arguments. Each entry point
// lives in a namespace of its own, where T is float or double, and is brought out by name;
// extern "C" keeps the name unmangled for cuModuleGetFunction and the emulator alike.
#define GPUBP_EXPORT_AS(NAME, SFX, TYPE, CALLEE, PARAMS, ARGS)   \
    namespace gpubp_##NAME##SFX {                                \
    typedef TYPE T;                                              \
    extern "C" __global__ void NAME##SFX PARAMS { CALLEE ARGS; } \
    }                                                            \
    using gpubp_##NAME##SFX::NAME##SFX;
#define GPUBP_EXPORT(NAME, CALLEE, PARAMS, ARGS)               \
    GPUBP_EXPORT_AS(NAME, _f32, float, CALLEE, PARAMS, ARGS) \
    GPUBP_EXPORT_AS(NAME, _f64, double, CALLEE, PARAMS, ARGS)

#endif  // GPUBP_CUH
