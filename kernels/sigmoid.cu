// sigmoid: the logistic activation of Nielsen's networks (the default for hidden layers, and the
// output layer of the quadratic and cross-entropy costs).
//   bias_sigmoid:   Z <- sigma(Z + b)          sigma(z) = 0.5 + 0.5*tanh(z/2) (gpubp.cuh)
//   sigmoid_delta:  G <- G * a*(1-a)           sigma'(z) from the stored a = sigma(z)
// NumPy reference: gpubp.reference.bias_sigmoid, gpubp.reference.sigmoid_delta.
// Launch: 1-D grid-stride, block 256 (activation.cuh).
// Tolerance bias_sigmoid vs a float64 1/(1+exp(-(Z+b))): float32 atol=1e-6 rtol=0; float64 atol=1e-15 rtol=0
// (sigma is bounded, so its error is absolute).
// Tolerance sigmoid_delta vs float64, |x - ref| <= atol + rtol*|ref|: float32 atol=1e-12 rtol=1e-6; float64 atol=1e-30 rtol=1e-14
#include "activation.cuh"

struct Sigmoid {
    template <typename T>
    __host__ __device__ static T f(T z) { return gpubp_sigmoid(z); }
    template <typename T>
    __host__ __device__ static T prime_from_output(T a) { return gpubp_sigmoid_prime_from_a(a); }
};

GPUBP_ACTIVATION(sigmoid, Sigmoid)
