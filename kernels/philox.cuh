// philox.cuh: the counter-based generator every random draw of training comes from, so that every
// backend (CUDA, native, emulated, NumPy) draws the same numbers from the same (seed, epoch, step,
// element), in any order, on any number of threads, and a resumed run draws what it would have drawn.
//
// Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC11;
// Random123's philox.h): a 128-bit counter c = (c0, c1, c2, c3) and a 64-bit key k = (k0, k1) give
// four 32-bit words through ten rounds of
//   (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2     (32 x 32 -> 64-bit products)
//   c <- (hi1 ^ c1 ^ k0,  lo1,  hi0 ^ c3 ^ k1,  lo0),   then k <- (k0 + W0, k1 + W1) between rounds,
// M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85. Checked against Random123's
// published known-answer vectors (kat_vectors) in tests/test_augment.py.
//
// How gpubp maps its draws onto counter and key (one table, so no two uses ever share a counter):
//   key  = (seed mod 2^32, seed div 2^32)                   seed: the run's seed, 0 <= seed < 2^64
//   dropout, one word per element:   c = (e div 4, step, epoch, GPUBP_PHILOX_DROPOUT + 256 * layer),
//       word e mod 4, where e is the element's index in layer `layer`'s (m, n_l) activations of the
//       mini-batch `step` of epoch `epoch` (layer 0 = the input), row-major; step counts from 0 in
//       each epoch. Four neighbouring elements share one call: a kernel that handles them together
//       draws once, one that handles a single element draws the same word.
//   augmentation, per epoch and image (row r of the data set):
//       affine parameters:  c = (j, r, epoch, GPUBP_PHILOX_AFFINE), j = 0: rotation, scale, shear,
//                           x shift; j = 1: y shift (and three unused words)
//       elastic noise:      c = ((f * w + x) * ceil(h / 4) + y div 4, r, epoch, GPUBP_PHILOX_ELASTIC),
//                           word y mod 4: field f (0: x displacement, 1: y), pixel (y, x) of an h x w
//                           image, drawn column by column (each column starts a new call)
// Words become numbers by their top 24 bits, which float and double hold exactly, so the float32
// and float64 draws are the same numbers:
//   uniform01(u)  = (u >> 8) * 2^-24                 in [0, 1)
//   uniform_pm1(u) = (2 * (u >> 8) + 1 - 2^24) * 2^-24  in (-1, 1), symmetric about 0
// Inverted dropout keeps an element when uniform01 < 1 - p (computed in T) and scales it by
// 1 / (1 - p) (in T): gpubp_dropout_factor below.
// NumPy reference: gpubp.reference.philox4x32_10, uniform01, uniform_pm1, dropout_factor.
#ifndef GPUBP_PHILOX_CUH
#define GPUBP_PHILOX_CUH

#define GPUBP_PHILOX_DROPOUT 1u
#define GPUBP_PHILOX_ELASTIC 2u
#define GPUBP_PHILOX_AFFINE 3u

// Four 32-bit words: a counter going in, the random words coming out.
struct Philox4 {
    unsigned int w[4];
};

// One Philox round on c with key (k0, k1).
__host__ __device__ __forceinline__ void gpubp_philox_round(Philox4& c, unsigned int k0, unsigned int k1) {
    const unsigned long long p0 = (unsigned long long)0xD2511F53u * c.w[0];
    const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c.w[2];
    const unsigned int c1 = c.w[1], c3 = c.w[3];
    c.w[0] = (unsigned int)(p1 >> 32) ^ c1 ^ k0;
    c.w[1] = (unsigned int)p1;
    c.w[2] = (unsigned int)(p0 >> 32) ^ c3 ^ k1;
    c.w[3] = (unsigned int)p0;
}

// Philox4x32-10 of counter c under key (k0, k1).
__host__ __device__ __forceinline__ Philox4 gpubp_philox4x32_10(Philox4 c, unsigned int k0, unsigned int k1) {
    gpubp_philox_round(c, k0, k1);
    for (int r = 1; r < 10; ++r) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
        gpubp_philox_round(c, k0, k1);
    }
    return c;
}

__host__ __device__ __forceinline__ Philox4 gpubp_philox_counter(unsigned int c0, unsigned int c1, unsigned int c2,
                                                                 unsigned int c3) {
    Philox4 c;
    c.w[0] = c0;
    c.w[1] = c1;
    c.w[2] = c2;
    c.w[3] = c3;
    return c;
}

// Word i (0..3) of r, by selects rather than an indexed load, so r stays in registers on a GPU.
__host__ __device__ __forceinline__ unsigned int gpubp_philox_word(const Philox4& r, unsigned int i) {
    return i & 2u ? (i & 1u ? r.w[3] : r.w[2]) : (i & 1u ? r.w[1] : r.w[0]);
}

// A word's top 24 bits as a number in [0, 1), exactly.
template <typename T>
__host__ __device__ __forceinline__ T gpubp_uniform01(unsigned int u) {
    return T((int)(u >> 8)) * T(5.9604644775390625e-8f);  // 2^-24
}

// A word's top 24 bits as a number in (-1, 1), exactly: odd multiples of 2^-24, symmetric about 0.
template <typename T>
__host__ __device__ __forceinline__ T gpubp_uniform_pm1(unsigned int u) {
    return T(2 * (int)(u >> 8) + 1 - (1 << 24)) * T(5.9604644775390625e-8f);
}

// Inverted dropout's factor for one element: 1 / (1 - p) when it is kept (probability 1 - p), else 0.
// element: its index in layer `layer`'s (m, n_l) activations of mini-batch `step` of epoch `epoch`.
template <typename T>
__host__ __device__ __forceinline__ T gpubp_dropout_factor(unsigned long long seed, unsigned int epoch,
                                                           unsigned int step, unsigned int layer,
                                                           unsigned long long element, T p) {
    const Philox4 r = gpubp_philox4x32_10(
        gpubp_philox_counter((unsigned int)(element >> 2), step, epoch, GPUBP_PHILOX_DROPOUT + 256u * layer),
        (unsigned int)seed, (unsigned int)(seed >> 32));
    const T keep = T(1) - p;
    return gpubp_uniform01<T>(gpubp_philox_word(r, (unsigned int)element & 3u)) < keep ? T(1) / keep : T(0);
}

#endif  // GPUBP_PHILOX_CUH
