// augment: the distortions of gpubp.Augment, new every epoch, drawn from Philox (philox.cuh) by
// (seed, epoch, image row), so every backend makes the same images. For image r (h x w pixels, a row
// of X) and output pixel (x, y), one bilinear sample of the source image at
//   (sx, sy) = A_r (x, y) + e_r  +  alpha * (dx, dy)(x, y)
// where A_r, e_r are image r's affine map (rotation, scale, shear about the centre, then a shift) and
// dx, dy Simard's elastic field: per-pixel uniform(-1, 1) noise blurred by a Gaussian of standard
// deviation sigma, separably (along x, then y), truncated at radius R = min(floor(3 sigma + 0.5),
// max(h, w) - 1) pixels (weights g[0..2R] from the host, normalised to sum 1), pixels beyond the image
// counting as 0. Pixels sampled outside the image are 0 too, and the result is clamped to [0, 1].
//   augment_affine(A, key, rows, row0, h, w, rotate, scale, shear, shift): A (rows, 6) <- (a, b, ex, c, d, ey),
//       sx = a x + b y + ex, sy = c x + d y + ey: the map (1/s) R(theta) [1 tan(phi); 0 1] about the centre
//       ((w-1)/2, (h-1)/2), theta = rotate*v0, s = 1 + scale*v1, phi = shear*v2 (radians), then the shift
//       (shift*v3, shift*v4); v: uniform(-1, 1) words of Philox, as philox.cuh's table says
//   augment_field(D, Tw, key, t, rows, row0, h, w, radius): D (rows, 2, h, w) <- the two blurred noise
//       fields (x, y displacement) of each image, each pass of the blur a product with the taps' band
//       matrix, read from t (2E + 1,): t[E + k] = g[R - k] between zeros, E = max(h, w) + 32 (Augment.band);
//       Tw (rows, 2, h w + h wc) is scratch, wc = w rounded up to a multiple of 32
//   augment_pad(Xp, X, rows, h, w): Xp (rows, (h+4)(w+4)) <- each image inside a border of 2 zeros
//   augment_resample(out, Xp, A, D, rows, h, w, alpha): out (rows, h*w) <- the sample above, from Xp;
//       alpha = 0 reads no field (D may be any array then)
// key: (3,) uint32 = (seed mod 2^32, seed div 2^32, epoch), read on the device, so an epoch's launches
// can be captured once and replayed with the next epoch's key uploaded. row0: the first image's row in
// the data set (X, out and the workspaces are one pass's slices). Sums run in the reference's order
// (increasing source pixel), so the backends differ only by rounding (fused multiply-adds, sin/cos).
// Double on purpose: augment_affine (only inside CUDA's sinf, cosf and tanf: their reduction of huge
// arguments, which angles within +-pi never reach)
// NumPy reference: gpubp.reference.augment_affine, augment_field, augment_pad, augment_resample.
// Launch: 1-D grid-stride, block 256: augment_affine over rows; augment_field over rows*2 (a thread per
// field: its loops run over the whole field, contiguous, which a CPU vectorises; a GPU has thousands of
// fields per pass); augment_pad over rows (a thread per image) and augment_resample over rows*h (a thread
// per row; the native backend's AVX-512 path takes the rows of an image in turn).
// Tolerance vs a float64 formula (scipy.ndimage's gaussian_filter and map_coordinates on the same noise
// and map, in tests/test_augment.py): float32 atol=2e-5 rtol=0; float64 atol=1e-11 rtol=0 (values in
// [0, 1]; a coordinate near 28 rounded by an ulp moves a sample by that times the image's slope)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   augment_affine_f32                40 regs      0 B smem  75% occupancy (registers)
//   augment_affine_f64                48 regs      0 B smem  62% occupancy (registers)
//   augment_field_f32                 80 regs      0 B smem  38% occupancy (registers)
//   augment_field_f64                126 regs      0 B smem  25% occupancy (registers)
//   augment_pad_f32                   32 regs      0 B smem 100% occupancy (threads)
//   augment_pad_f64                   32 regs      0 B smem 100% occupancy (threads)
//   augment_resample_f32              40 regs      0 B smem  75% occupancy (registers)
//   augment_resample_f64              56 regs      0 B smem  50% occupancy (registers)
#include "gpubp.cuh"
#include "philox.cuh"
// The native backend (GPUBP_NATIVE) on an AVX-512 CPU (-march=native) draws the noise and resamples in
// float with the vector unit's own instructions (the *_avx512 functions): the same numbers, bit for bit
// for the noise; GCC vectorises neither loop well by itself. CUDA and the emulator never see them.
#if defined(GPUBP_NATIVE) && defined(__AVX512F__) && !defined(__CUDACC__)
#include <immintrin.h>
#define AUGMENT_AVX512 1
#else
#define AUGMENT_AVX512 0
#endif

// The blur's register blocks (augment_rows): AUGMENT_BLOCK_ROWS rows x AUGMENT_RUN columns of sums. The
// native build's vector unit takes 4 x 32 (two AVX-512 vectors a row); a GPU thread, 2 x 8 in registers,
// and so does the emulator, which runs the GPU's code. The blocks change which sums go together, never a
// sum's terms or their order.
#if defined(GPUBP_NATIVE) && !defined(__CUDACC__)
#define AUGMENT_BLOCK_ROWS 4
#define AUGMENT_RUN 32
#else
#define AUGMENT_BLOCK_ROWS 2
#define AUGMENT_RUN 8
#endif
#define AUGMENT_ROW_PAD 32  // the blur's intermediate rows, padded to whole runs (a multiple of AUGMENT_RUN)

// augment_each(n, grab, f): f(i) for every item i < n of a kernel. On CUDA and in the emulator it is the
// grid-stride loop. The native backend (GPUBP_NATIVE, with OpenMP: launched as one thread) splits the items
// between the calling thread and one helper per other core (omp_get_max_threads() in all), `grab` items
// at a time from a shared counter, and nobody spins: the caller takes whatever the helpers have not
// taken, then sleeps until the grabs in flight are done. A core that the machine's other work holds up
// so costs at most one grab; an OpenMP loop's closing barrier spins, which on a loaded machine cost more
// CPU than the split saved. Every image is one thread's work, so the results do not depend on the split.
#if defined(GPUBP_NATIVE) && defined(_OPENMP) && !defined(__CUDACC__)
#define AUGMENT_THREADS 1
#include <omp.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

struct AugmentJob {
    void (*run)(void* body, long long begin, long long end);
    void* body;
    long long n, grab;
    std::atomic<long long> next{0};
};

// The helpers and the job they share: made on first use and never freed (a helper may still be waiting
// on them when the process exits).
struct AugmentTeam {
    std::mutex owner;  // one job at a time: a second caller meanwhile runs its items itself
    std::mutex m;
    std::condition_variable wake, done;
    AugmentJob* job = nullptr;  // the open job, or null once its caller has closed it
    unsigned long long generation = 0;
    int active = 0, helpers = 0;  // helpers inside a job; helpers started
};

inline void augment_work(AugmentJob* j) {
    for (long long b = j->next.fetch_add(j->grab); b < j->n; b = j->next.fetch_add(j->grab))
        j->run(j->body, b, b + j->grab < j->n ? b + j->grab : j->n);
}

inline AugmentTeam& augment_team() {
    static AugmentTeam* team = [] {
        AugmentTeam* t = new AugmentTeam;
        t->helpers = omp_get_max_threads() - 1;
        for (int h = 0; h < t->helpers; ++h)
            std::thread([t] {
                unsigned long long seen = 0;
                std::unique_lock<std::mutex> lock(t->m);
                for (;;) {
                    t->wake.wait(lock, [&] { return t->job != nullptr && t->generation != seen; });
                    seen = t->generation;
                    AugmentJob* j = t->job;
                    ++t->active;
                    lock.unlock();
                    augment_work(j);
                    lock.lock();
                    if (--t->active == 0) t->done.notify_all();
                }
            }).detach();
        return t;
    }();
    return *team;
}

template <class Body>
inline void augment_split(long long n, long long grab, Body& body) {
    AugmentTeam& t = augment_team();
    std::unique_lock<std::mutex> owner(t.owner, std::try_to_lock);
    if (t.helpers < 1 || n <= grab || !owner.owns_lock()) {
        body(0, n);
        return;
    }
    AugmentJob j;
    j.run = [](void* b, long long begin, long long end) { (*static_cast<Body*>(b))(begin, end); };
    j.body = &body;
    j.n = n;
    j.grab = grab;
    {
        std::lock_guard<std::mutex> lock(t.m);
        t.job = &j;
        ++t.generation;
    }
    t.wake.notify_all();
    augment_work(&j);
    std::unique_lock<std::mutex> lock(t.m);
    t.job = nullptr;  // closed: no helper joins it now
    t.done.wait(lock, [&] { return t.active == 0; });
}
#else
#define AUGMENT_THREADS 0
#endif

template <class F>
__device__ __forceinline__ void augment_each(long long n, long long grab, F f) {
#if AUGMENT_THREADS
    auto range = [&](long long begin, long long end) {
        for (long long i = begin; i < end; ++i) f(i);
    };
    augment_split(n, grab, range);
#else
    (void)grab;
    GPUBP_GRID_STRIDE(i, n) f(i);
#endif
}


template <typename T>
__device__ __forceinline__ void augment_affine(T* __restrict__ A, const unsigned int* __restrict__ key, long long rows,
                                               long long row0, long long h, long long w, T rotate, T scale, T shear,
                                               T shift) {
    const unsigned int k0 = key[0], k1 = key[1], epoch = key[2];
    GPUBP_GRID_STRIDE(r, rows) {
        const unsigned int image = (unsigned int)(row0 + r);
        const Philox4 u = gpubp_philox4x32_10(gpubp_philox_counter(0u, image, epoch, GPUBP_PHILOX_AFFINE), k0, k1);
        const Philox4 v = gpubp_philox4x32_10(gpubp_philox_counter(1u, image, epoch, GPUBP_PHILOX_AFFINE), k0, k1);
        const T theta = rotate * gpubp_uniform_pm1<T>(u.w[0]);
        const T inv_s = T(1) / (T(1) + scale * gpubp_uniform_pm1<T>(u.w[1]));
        const T tan_phi = gpubp_tan(shear * gpubp_uniform_pm1<T>(u.w[2]));
        const T tx = shift * gpubp_uniform_pm1<T>(u.w[3]), ty = shift * gpubp_uniform_pm1<T>(v.w[0]);
        const T cs = gpubp_cos(theta), sn = gpubp_sin(theta);
        const T a = inv_s * cs, b = inv_s * (cs * tan_phi - sn);
        const T c = inv_s * sn, d = inv_s * (sn * tan_phi + cs);
        const T cx = T(0.5f) * T(w - 1), cy = T(0.5f) * T(h - 1);
        T* out = A + r * 6;
        out[0] = a;
        out[1] = b;
        out[2] = (cx + tx) - (a * cx + b * cy);
        out[3] = c;
        out[4] = d;
        out[5] = (cy + ty) - (c * cx + d * cy);
    }
}

// out[r][o] = sum over s (increasing) of a[r + s * a_step] * b[o + s * b_step], for rows r0 .. r0+RB-1 and
// the RUN columns o0 .. o0+RUN-1 (those below cols stored), over the sources s in [s0, s1): RB x RUN sums
// kept in registers while the sources go by, each source's RUN b's (contiguous) feeding RB of them.
template <int RB, int RUN, typename T>
__device__ __forceinline__ void augment_rows_block(T* __restrict__ out, long long out_stride, long long r0,
                                                   long long o0, long long cols, long long s0, long long s1,
                                                   const T* __restrict__ a, long long a_step,
                                                   const T* __restrict__ b, long long b_step) {
    T acc[RB][RUN];
    for (int r = 0; r < RB; ++r)
        for (int l = 0; l < RUN; ++l) acc[r][l] = T(0);
    for (long long s = s0; s < s1; ++s) {
        const T* __restrict__ v = b + o0 + s * b_step;
        const T* __restrict__ c = a + r0 + s * a_step;
        for (int r = 0; r < RB; ++r)
            for (int l = 0; l < RUN; ++l) acc[r][l] += c[r] * v[l];
    }
    for (int r = 0; r < RB; ++r) {
        T* __restrict__ o = out + (r0 + r) * out_stride + o0;
        for (int l = 0; l < RUN; ++l)
            if (o0 + l < cols) o[l] = acc[r][l];
    }
}

// One pass of the separable blur as a product with the band matrix of the taps: out (rows, cols; row
// stride out_stride) = sum over s of a(r, s) b(s, o) as above, where one of the two factors is the band
// (a weight 0 beyond `radius` of the diagonal): Band::Rows when it is a (a source s beyond radius of
// every row of a block adds nothing, so the block skips it), Band::Columns when it is b (likewise for a
// block of columns). The skipped terms are exact zeros, so the sums are those of the reference.
enum class AugmentBand { Rows, Columns };
template <AugmentBand Band, int RB, int RUN, typename T>
__device__ __forceinline__ void augment_rows(T* __restrict__ out, long long out_stride, long long rows,
                                             long long cols, long long sources, long long radius,
                                             const T* __restrict__ a, long long a_step, const T* __restrict__ b,
                                             long long b_step) {
    for (long long o0 = 0; o0 < cols; o0 += RUN) {
        for (long long r0 = 0; r0 < rows;) {
            const long long n = rows - r0 < RB ? 1 : RB;  // the last rows one at a time
            const long long lo = Band == AugmentBand::Rows ? r0 : o0;
            const long long hi = Band == AugmentBand::Rows ? r0 + n : o0 + RUN;
            const long long s0 = lo - radius > 0 ? lo - radius : 0;
            const long long s1 = hi + radius < sources ? hi + radius : sources;
            if (n == RB)
                augment_rows_block<RB, RUN>(out, out_stride, r0, o0, cols, s0, s1, a, a_step, b, b_step);
            else
                augment_rows_block<1, RUN>(out, out_stride, r0, o0, cols, s0, s1, a, a_step, b, b_step);
            r0 += n;
        }
    }
}

#if AUGMENT_AVX512
// Philox4x32-10 (philox.cuh) of 16 counters at once, lane l's words in x0..x3 [l]: a round's two 32 x 32
// -> 64-bit products of the even lanes, then of the odd ones shifted down, their halves blended back.
inline void augment_philox16(__m512i& x0, __m512i& x1, __m512i& x2, __m512i& x3, unsigned int k0, unsigned int k1) {
    const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
    for (int round = 0; round < 10; ++round) {
        const __m512i p0e = _mm512_mul_epu32(x0, m0), p0o = _mm512_mul_epu32(_mm512_srli_epi64(x0, 32), m0);
        const __m512i p1e = _mm512_mul_epu32(x2, m1), p1o = _mm512_mul_epu32(_mm512_srli_epi64(x2, 32), m1);
        const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p0e, 32), p0o);
        const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, p0e, _mm512_slli_epi64(p0o, 32));
        const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(p1e, 32), p1o);
        const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, p1e, _mm512_slli_epi64(p1o, 32));
        x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32((int)k0), 0x96);  // hi1 ^ c1 ^ k0
        x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32((int)k1), 0x96);  // hi0 ^ c3 ^ k1
        x1 = lo1;
        x3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// gpubp_uniform_pm1 of 16 words: (2 (u >> 8) + 1 - 2^24) 2^-24, exactly.
inline __m512 augment_uniform_pm1_16(__m512i u) {
    const __m512i twice = _mm512_slli_epi32(_mm512_srli_epi32(u, 8), 1);
    const __m512i odd = _mm512_sub_epi32(_mm512_add_epi32(twice, _mm512_set1_epi32(1)), _mm512_set1_epi32(1 << 24));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(odd), _mm512_set1_ps(5.9604644775390625e-8f));
}

// u[4 q + j] = uniform_pm1(word j of Philox at (first + q, image, epoch, ELASTIC)), q < calls: the
// portable loop of augment_field, 16 calls at a time, their four words interleaved back into call order.
inline void augment_noise_avx512(float* __restrict__ u, unsigned int first, unsigned int image, unsigned int epoch,
                                 unsigned int k0, unsigned int k1, long long calls) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    long long q = 0;
    for (; q + 16 <= calls; q += 16) {
        __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32((int)(first + (unsigned int)q)), iota);
        __m512i x1 = _mm512_set1_epi32((int)image), x2 = _mm512_set1_epi32((int)epoch);
        __m512i x3 = _mm512_set1_epi32((int)GPUBP_PHILOX_ELASTIC);
        augment_philox16(x0, x1, x2, x3, k0, k1);
        const __m512 f0 = augment_uniform_pm1_16(x0), f1 = augment_uniform_pm1_16(x1);
        const __m512 f2 = augment_uniform_pm1_16(x2), f3 = augment_uniform_pm1_16(x3);
        // a 4 x 16 transpose: r0 holds calls 0, 4, 8, 12 (four words each, a 128-bit lane per call), r1
        // calls 1, 5, 9, 13, ...; then the lanes gathered in call order
        const __m512d a = _mm512_castps_pd(_mm512_unpacklo_ps(f0, f1)), b = _mm512_castps_pd(_mm512_unpacklo_ps(f2, f3));
        const __m512d c = _mm512_castps_pd(_mm512_unpackhi_ps(f0, f1)), d = _mm512_castps_pd(_mm512_unpackhi_ps(f2, f3));
        const __m512 r0 = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), r1 = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        const __m512 r2 = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), r3 = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
        const __m512 t0 = _mm512_shuffle_f32x4(r0, r1, 0x44), t1 = _mm512_shuffle_f32x4(r2, r3, 0x44);
        const __m512 t2 = _mm512_shuffle_f32x4(r0, r1, 0xEE), t3 = _mm512_shuffle_f32x4(r2, r3, 0xEE);
        float* __restrict__ o = u + 4 * q;
        _mm512_storeu_ps(o, _mm512_shuffle_f32x4(t0, t1, 0x88));
        _mm512_storeu_ps(o + 16, _mm512_shuffle_f32x4(t0, t1, 0xDD));
        _mm512_storeu_ps(o + 32, _mm512_shuffle_f32x4(t2, t3, 0x88));
        _mm512_storeu_ps(o + 48, _mm512_shuffle_f32x4(t2, t3, 0xDD));
    }
    for (; q < calls; ++q) {
        const Philox4 p = gpubp_philox4x32_10(
            gpubp_philox_counter(first + (unsigned int)q, image, epoch, GPUBP_PHILOX_ELASTIC), k0, k1);
        for (int j = 0; j < 4; ++j) u[4 * q + j] = gpubp_uniform_pm1<float>(gpubp_philox_word(p, (unsigned int)j));
    }
}
#endif

// One field of one image (rows * 2 of them): its noise u, drawn x-major (philox.cuh's table), blurred
// along x into c (h, wc) (row stride wc: w rounded up to AUGMENT_ROW_PAD) and along y into d (h, w):
//   c[y][o] = sum over s of u[s][y] t[E + o - s],   d[y][o] = sum over s of t[E + y - s] c[s][o]
// where t[E + k] = g[R - k] is the band's table (AugmentPlan's taps: the 2R+1 weights g between zeros,
// E = max(h, w) + AUGMENT_ROW_PAD). Tw holds h w + h wc numbers per field for u and c.
template <typename T>
__device__ __forceinline__ void augment_field(T* __restrict__ D, T* __restrict__ Tw,
                                              const unsigned int* __restrict__ key, const T* __restrict__ t,
                                              long long rows, long long row0, long long h, long long w,
                                              long long radius) {
    const unsigned int k0 = key[0], k1 = key[1], epoch = key[2];
    const long long quads = (h + 3) / 4, hw = h * w;
    const long long wc = (w + AUGMENT_ROW_PAD - 1) / AUGMENT_ROW_PAD * AUGMENT_ROW_PAD;
    const T* __restrict__ band = t + (h > w ? h : w) + AUGMENT_ROW_PAD;  // t[E]
    augment_each(rows * 2, 8, [&](long long i) {
        const long long r = i / 2, f = i - 2 * r;
        const unsigned int image = (unsigned int)(row0 + r), first = (unsigned int)(f * w * quads);
        T* __restrict__ u = Tw + i * (hw + h * wc);  // (w, h): x-major
        T* __restrict__ c = u + hw;                  // (h, wc)
        T* __restrict__ d = D + i * hw;              // (h, w)
        if (h % 4 == 0) {  // the common case, as one loop over whole calls (it vectorises on a CPU)
#if AUGMENT_AVX512
            if constexpr (sizeof(T) == sizeof(float)) {
                augment_noise_avx512(u, first, image, epoch, k0, k1, w * quads);
            } else
#endif
            for (long long q = 0; q < w * quads; ++q) {
                const Philox4 p = gpubp_philox4x32_10(
                    gpubp_philox_counter(first + (unsigned int)q, image, epoch, GPUBP_PHILOX_ELASTIC), k0, k1);
                for (int j = 0; j < 4; ++j) u[4 * q + j] = gpubp_uniform_pm1<T>(gpubp_philox_word(p, (unsigned int)j));
            }
        } else {
            for (long long x = 0; x < w; ++x)
                for (long long q = 0; q < quads; ++q) {
                    const Philox4 p = gpubp_philox4x32_10(
                        gpubp_philox_counter(first + (unsigned int)(x * quads + q), image, epoch, GPUBP_PHILOX_ELASTIC),
                        k0, k1);
                    for (int j = 0; j < 4 && 4 * q + j < h; ++j)
                        u[x * h + 4 * q + j] = gpubp_uniform_pm1<T>(gpubp_philox_word(p, (unsigned int)j));
                }
        }
        augment_rows<AugmentBand::Columns, AUGMENT_BLOCK_ROWS, AUGMENT_RUN>(c, wc, h, wc, w, radius, u, h, band, -1);
        augment_rows<AugmentBand::Rows, AUGMENT_BLOCK_ROWS, AUGMENT_RUN>(d, w, h, w, h, radius, band, -1, c, wc);
    });
}

// Xp[r] <- image r of X (h, w) inside a border of AUGMENT_BORDER zeros: (h + 4, w + 4), so that the
// resampling reads its four neighbours without a test (coordinates are clamped to [-1, w] x [-1, h]).
#define AUGMENT_BORDER 2
template <typename T>
__device__ __forceinline__ void augment_pad(T* __restrict__ Xp, const T* __restrict__ X, long long rows, long long h,
                                            long long w) {
    const long long W = w + 2 * AUGMENT_BORDER, H = h + 2 * AUGMENT_BORDER;
    augment_each(rows, 16, [&](long long r) {  // an image a thread: no division per row (a CPU's is slow)
        T* __restrict__ p = Xp + r * H * W;
        const T* __restrict__ src = X + r * h * w;
        for (long long j = 0; j < AUGMENT_BORDER * W; ++j) p[j] = T(0);
        for (long long y = 0; y < h; ++y) {
            T* __restrict__ q = p + (y + AUGMENT_BORDER) * W;
            for (long long x = 0; x < AUGMENT_BORDER; ++x) q[x] = q[w + AUGMENT_BORDER + x] = T(0);
            for (long long x = 0; x < w; ++x) q[x + AUGMENT_BORDER] = src[y * w + x];
        }
        for (long long j = (h + AUGMENT_BORDER) * W; j < H * W; ++j) p[j] = T(0);
    });
}

// Row y of one image: each pixel's bilinear sample of the padded image pad at its affine map m (6,) plus
// alpha times the field (dx, dy) (w,) each when Elastic. Beyond [-1, w] every neighbour is 0, so clamping
// the coordinate there changes nothing and keeps the index inside the border.
template <bool Elastic, typename T>
__device__ __forceinline__ void augment_resample_row(T* __restrict__ o, const T* __restrict__ pad,
                                                     const T* __restrict__ m, const T* __restrict__ dx,
                                                     const T* __restrict__ dy, int y, int h, int w, T alpha) {
    const int W = w + 2 * AUGMENT_BORDER;
    const T lo = T(-1), hi_x = T(w), hi_y = T(h), fy = T(y);
    const T m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5];
    for (int x = 0; x < w; ++x) {
        const T fx = T(x);
        T sx = m0 * fx + m1 * fy + m2, sy = m3 * fx + m4 * fy + m5;
        if (Elastic) {
            sx += alpha * dx[x];
            sy += alpha * dy[x];
        }
        sx = sx < lo ? lo : (sx > hi_x ? hi_x : sx);
        sy = sy < lo ? lo : (sy > hi_y ? hi_y : sy);
        const T x0 = gpubp_floor(sx), y0 = gpubp_floor(sy);
        const T ax = sx - x0, ay = sy - y0;
        const T* __restrict__ p = pad + ((int)y0 + AUGMENT_BORDER) * W + (int)x0 + AUGMENT_BORDER;
        const T p00 = p[0], p10 = p[1], p01 = p[W], p11 = p[W + 1];
        const T top = p00 + ax * (p10 - p00), bottom = p01 + ax * (p11 - p01);
        const T v = top + ay * (bottom - top);
        o[x] = v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
    }
}

#if AUGMENT_AVX512
// The native backend on an AVX-512 CPU, in float: augment_resample_row's formula 16 pixels at a time, the
// four neighbours fetched by the vector unit's gathers, two at a time (GCC does not emit gathers for its
// generic tuning, and this loop, 28 pixels a row for MNIST, spent most of its time fetching them one by
// one). Lanes past the row's end compute a clamped coordinate too (inside the border) but store nothing.
template <bool Elastic>
inline void augment_resample_row_avx512(float* __restrict__ o, const float* __restrict__ pad,
                                        const float* __restrict__ m, const float* __restrict__ dx,
                                        const float* __restrict__ dy, int y, int h, int w, float alpha) {
    const __m512 lo = _mm512_set1_ps(-1.0f), hi_x = _mm512_set1_ps((float)w), hi_y = _mm512_set1_ps((float)h);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), a = _mm512_set1_ps(alpha);
    const __m512 fy = _mm512_set1_ps((float)y);
    const __m512 my_x = _mm512_mul_ps(_mm512_set1_ps(m[1]), fy), my_y = _mm512_mul_ps(_mm512_set1_ps(m[4]), fy);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i W = _mm512_set1_epi32(w + 2 * AUGMENT_BORDER), border = _mm512_set1_epi32(AUGMENT_BORDER);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const float* __restrict__ below = pad + w + 2 * AUGMENT_BORDER;
    for (int x0 = 0; x0 < w; x0 += 16) {
        const __mmask16 k = w - x0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - x0)) - 1u);
        const __m512 fx = _mm512_add_ps(_mm512_set1_ps((float)x0), iota);
        __m512 sx = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(m[0]), fx, my_x), _mm512_set1_ps(m[2]));
        __m512 sy = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(m[3]), fx, my_y), _mm512_set1_ps(m[5]));
        if (Elastic) {
            sx = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(k, dx + x0), sx);
            sy = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(k, dy + x0), sy);
        }
        sx = _mm512_min_ps(_mm512_max_ps(sx, lo), hi_x);
        sy = _mm512_min_ps(_mm512_max_ps(sy, lo), hi_y);
        const __m512 x0f = _mm512_floor_ps(sx), y0f = _mm512_floor_ps(sy);
        const __m512 ax = _mm512_sub_ps(sx, x0f), ay = _mm512_sub_ps(sy, y0f);
        const __m512i at = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(y0f), border), W),
                                            _mm512_add_epi32(_mm512_cvttps_epi32(x0f), border));
        // each neighbour pair (p00, p10) and (p01, p11) is one 64-bit element: 8 lanes a gather
        const __m256i at_lo = _mm512_castsi512_si256(at), at_hi = _mm512_extracti64x4_epi64(at, 1);
        const __m512 top_lo = _mm512_castsi512_ps(_mm512_i32gather_epi64(at_lo, pad, 4));
        const __m512 top_hi = _mm512_castsi512_ps(_mm512_i32gather_epi64(at_hi, pad, 4));
        const __m512 bottom_lo = _mm512_castsi512_ps(_mm512_i32gather_epi64(at_lo, below, 4));
        const __m512 bottom_hi = _mm512_castsi512_ps(_mm512_i32gather_epi64(at_hi, below, 4));
        const __m512 p00 = _mm512_permutex2var_ps(top_lo, even, top_hi);
        const __m512 p10 = _mm512_permutex2var_ps(top_lo, odd, top_hi);
        const __m512 p01 = _mm512_permutex2var_ps(bottom_lo, even, bottom_hi);
        const __m512 p11 = _mm512_permutex2var_ps(bottom_lo, odd, bottom_hi);
        const __m512 top = _mm512_fmadd_ps(ax, _mm512_sub_ps(p10, p00), p00);
        const __m512 bottom = _mm512_fmadd_ps(ax, _mm512_sub_ps(p11, p01), p01);
        const __m512 v = _mm512_fmadd_ps(ay, _mm512_sub_ps(bottom, top), top);
        _mm512_mask_storeu_ps(o + x0, k, _mm512_min_ps(_mm512_max_ps(v, zero), one));
    }
}
#endif

template <typename T>
__device__ __forceinline__ void augment_resample(T* __restrict__ out, const T* __restrict__ Xp,
                                                 const T* __restrict__ A, const T* __restrict__ D, long long rows,
                                                 long long h, long long w, T alpha) {
    const long long padded = (h + 2 * AUGMENT_BORDER) * (w + 2 * AUGMENT_BORDER);
#if AUGMENT_AVX512
    if constexpr (sizeof(T) == sizeof(float)) {  // an image at a time, its rows 16 pixels at a time
        augment_each(rows, 4, [&](long long r) {
            const T* __restrict__ dx = D + r * 2 * h * w;
            for (long long y = 0; y < h; ++y) {
                if (alpha != T(0))
                    augment_resample_row_avx512<true>(out + (r * h + y) * w, Xp + r * padded, A + r * 6, dx + y * w,
                                                      dx + (h + y) * w, (int)y, (int)h, (int)w, alpha);
                else
                    augment_resample_row_avx512<false>(out + (r * h + y) * w, Xp + r * padded, A + r * 6, dx, dx,
                                                       (int)y, (int)h, (int)w, alpha);
            }
        });
        return;
    }
#endif
    augment_each(rows * h, 64, [&](long long i) {
        const long long r = i / h, y = i - r * h;
        const T* __restrict__ dx = D + (r * 2 * h + y) * w;
        if (alpha != T(0))
            augment_resample_row<true>(out + i * w, Xp + r * padded, A + r * 6, dx, dx + h * w, (int)y, (int)h,
                                       (int)w, alpha);
        else
            augment_resample_row<false>(out + i * w, Xp + r * padded, A + r * 6, dx, dx, (int)y, (int)h, (int)w,
                                        alpha);
    });
}

GPUBP_EXPORT(augment_affine, augment_affine,
             (T* __restrict__ A, const unsigned int* __restrict__ key, long long rows, long long row0, long long h,
              long long w, T rotate, T scale, T shear, T shift),
             (A, key, rows, row0, h, w, rotate, scale, shear, shift))
GPUBP_EXPORT(augment_field, augment_field,
             (T* __restrict__ D, T* __restrict__ Tw, const unsigned int* __restrict__ key, const T* __restrict__ t,
              long long rows, long long row0, long long h, long long w, long long radius),
             (D, Tw, key, t, rows, row0, h, w, radius))
GPUBP_EXPORT(augment_pad, augment_pad,
             (T* __restrict__ Xp, const T* __restrict__ X, long long rows, long long h, long long w),
             (Xp, X, rows, h, w))
GPUBP_EXPORT(augment_resample, augment_resample,
             (T* __restrict__ out, const T* __restrict__ Xp, const T* __restrict__ A, const T* __restrict__ D,
              long long rows, long long h, long long w, T alpha),
             (out, Xp, A, D, rows, h, w, alpha))
