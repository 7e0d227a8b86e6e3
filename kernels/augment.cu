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
//   augment_field(D, Tw, key, g, rows, row0, h, w, radius): D (rows, 2, h, w) <- the two blurred noise
//       fields (x, y displacement) of each image; Tw (rows, 2, (w+2R) h + (h+2R) w) is scratch
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
// fields per pass); augment_pad over rows*(h+4) and augment_resample over rows*h (a thread per row).
// Tolerance vs a float64 formula (scipy.ndimage's gaussian_filter and map_coordinates on the same noise
// and map, in tests/test_augment.py): float32 atol=2e-5 rtol=0; float64 atol=1e-11 rtol=0 (values in
// [0, 1]; a coordinate near 28 rounded by an ulp moves a sample by that times the image's slope)
// sm_90 (nvcc -Xptxas -v, 256-thread blocks): registers, shared memory, occupancy
//   augment_affine_f32                40 regs      0 B smem  75% occupancy (registers)
//   augment_affine_f64                48 regs      0 B smem  62% occupancy (registers)
//   augment_field_f32                 96 regs      0 B smem  25% occupancy (registers)
//   augment_field_f64                164 regs      0 B smem  12% occupancy (registers)
//   augment_pad_f32                   32 regs      0 B smem 100% occupancy (threads)
//   augment_pad_f64                   32 regs      0 B smem 100% occupancy (threads)
//   augment_resample_f32              40 regs      0 B smem  75% occupancy (registers)
//   augment_resample_f64              56 regs      0 B smem  50% occupancy (registers)
#include "gpubp.cuh"
#include "philox.cuh"

__host__ __device__ __forceinline__ float augment_sin(float x) { return sinf(x); }
__host__ __device__ __forceinline__ double augment_sin(double x) { return sin(x); }
__host__ __device__ __forceinline__ float augment_cos(float x) { return cosf(x); }
__host__ __device__ __forceinline__ double augment_cos(double x) { return cos(x); }
__host__ __device__ __forceinline__ float augment_tan(float x) { return tanf(x); }
__host__ __device__ __forceinline__ double augment_tan(double x) { return tan(x); }
__host__ __device__ __forceinline__ float augment_floor(float x) { return floorf(x); }
__host__ __device__ __forceinline__ double augment_floor(double x) { return floor(x); }

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
        const T tan_phi = augment_tan(shear * gpubp_uniform_pm1<T>(u.w[2]));
        const T tx = shift * gpubp_uniform_pm1<T>(u.w[3]), ty = shift * gpubp_uniform_pm1<T>(v.w[0]);
        const T cs = augment_cos(theta), sn = augment_sin(theta);
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

// dst[j] for RUN consecutive j from j0: sum over k (increasing) of g[k] * src[j + k * stride], the RUN
// sums kept in registers while the taps go by (enough independent sums to hide a multiply-add's
// latency on a CPU's vector unit).
template <int RUN, typename T>
__device__ __forceinline__ void augment_blur_run(T* __restrict__ dst, const T* __restrict__ src,
                                                 const T* __restrict__ g, long long j0, long long stride,
                                                 long long taps) {
    T acc[RUN];
    for (int l = 0; l < RUN; ++l) acc[l] = T(0);
    for (long long k = 0; k < taps; ++k) {
        const T weight = g[k];
        const T* __restrict__ s = src + j0 + k * stride;
        for (int l = 0; l < RUN; ++l) acc[l] += weight * s[l];
    }
    for (int l = 0; l < RUN; ++l) dst[j0 + l] = acc[l];
}

// dst[j] = sum over k (increasing) of g[k] * src[j + k * stride], j < n: a blur along the outer axis of a
// (n / stride, stride) array whose src holds radius rows of zeros before and after it, so every tap is
// in range; runs of 64, then 8, then 1 outputs.
template <typename T>
__device__ __forceinline__ void augment_blur_padded(T* __restrict__ dst, const T* __restrict__ src,
                                                    const T* __restrict__ g, long long n, long long stride,
                                                    long long radius) {
    const long long taps = 2 * radius + 1;
    long long j = 0;
    for (; j + 64 <= n; j += 64) augment_blur_run<64>(dst, src, g, j, stride, taps);
    for (; j + 8 <= n; j += 8) augment_blur_run<8>(dst, src, g, j, stride, taps);
    for (; j < n; ++j) augment_blur_run<1>(dst, src, g, j, stride, taps);
}

// One field of one image (rows * 2 of them): its noise, drawn x-major (philox.cuh's table) between
// radius rows of zeros each side, blurred along x into d (w, h), turned y-major (again between rows of
// zeros), blurred along y into d (h, w). Tw holds (w + 2R) h + (h + 2R) w numbers per field for the two.
template <typename T>
__device__ __forceinline__ void augment_field(T* __restrict__ D, T* __restrict__ Tw,
                                              const unsigned int* __restrict__ key, const T* __restrict__ g,
                                              long long rows, long long row0, long long h, long long w,
                                              long long radius) {
    const unsigned int k0 = key[0], k1 = key[1], epoch = key[2];
    const long long quads = (h + 3) / 4, hw = h * w;
    const long long noise_size = (w + 2 * radius) * h, turned_size = (h + 2 * radius) * w;
    GPUBP_GRID_STRIDE(i, rows * 2) {
        const long long r = i / 2, f = i - 2 * r;
        const unsigned int image = (unsigned int)(row0 + r), first = (unsigned int)(f * w * quads);
        T* __restrict__ noise = Tw + i * (noise_size + turned_size);  // (w + 2R, h): x-major
        T* __restrict__ turned = noise + noise_size;                 // (h + 2R, w): y-major
        T* __restrict__ d = D + i * hw;
        for (long long j = 0; j < radius * h; ++j) noise[j] = T(0);
        for (long long j = (radius + w) * h; j < noise_size; ++j) noise[j] = T(0);
        for (long long j = 0; j < radius * w; ++j) turned[j] = T(0);
        for (long long j = (radius + h) * w; j < turned_size; ++j) turned[j] = T(0);
        T* __restrict__ u = noise + radius * h;
        if (h % 4 == 0) {  // the common case, as one loop over whole calls (it vectorises on a CPU)
            for (long long q = 0; q < w * quads; ++q) {
                const Philox4 c = gpubp_philox4x32_10(
                    gpubp_philox_counter(first + (unsigned int)q, image, epoch, GPUBP_PHILOX_ELASTIC), k0, k1);
                for (int j = 0; j < 4; ++j) u[4 * q + j] = gpubp_uniform_pm1<T>(gpubp_philox_word(c, (unsigned int)j));
            }
        } else {
            for (long long x = 0; x < w; ++x)
                for (long long q = 0; q < quads; ++q) {
                    const Philox4 c = gpubp_philox4x32_10(
                        gpubp_philox_counter(first + (unsigned int)(x * quads + q), image, epoch, GPUBP_PHILOX_ELASTIC),
                        k0, k1);
                    for (int j = 0; j < 4 && 4 * q + j < h; ++j)
                        u[x * h + 4 * q + j] = gpubp_uniform_pm1<T>(gpubp_philox_word(c, (unsigned int)j));
                }
        }
        augment_blur_padded(d, noise, g, hw, h, radius);  // along x: d is (w, h) here
        T* __restrict__ v = turned + radius * w;
        for (long long y = 0; y < h; ++y)
            for (long long x = 0; x < w; ++x) v[y * w + x] = d[x * h + y];
        augment_blur_padded(d, turned, g, hw, w, radius);  // along y: d is (h, w)
    }
}

// Xp[r] <- image r of X (h, w) inside a border of AUGMENT_BORDER zeros: (h + 4, w + 4), so that the
// resampling reads its four neighbours without a test (coordinates are clamped to [-1, w] x [-1, h]).
#define AUGMENT_BORDER 2
template <typename T>
__device__ __forceinline__ void augment_pad(T* __restrict__ Xp, const T* __restrict__ X, long long rows, long long h,
                                            long long w) {
    const long long W = w + 2 * AUGMENT_BORDER, H = h + 2 * AUGMENT_BORDER;
    GPUBP_GRID_STRIDE(i, rows * H) {
        const long long r = i / H, y = i - r * H - AUGMENT_BORDER;
        T* __restrict__ p = Xp + i * W;
        const T* __restrict__ src = X + (r * h + y) * w;
        const bool inside = y >= 0 && y < h;
        for (long long x = 0; x < W; ++x) p[x] = T(0);
        if (inside)
            for (long long x = 0; x < w; ++x) p[x + AUGMENT_BORDER] = src[x];
    }
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
        const T x0 = augment_floor(sx), y0 = augment_floor(sy);
        const T ax = sx - x0, ay = sy - y0;
        const T* __restrict__ p = pad + ((int)y0 + AUGMENT_BORDER) * W + (int)x0 + AUGMENT_BORDER;
        const T p00 = p[0], p10 = p[1], p01 = p[W], p11 = p[W + 1];
        const T top = p00 + ax * (p10 - p00), bottom = p01 + ax * (p11 - p01);
        const T v = top + ay * (bottom - top);
        o[x] = v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
    }
}

template <typename T>
__device__ __forceinline__ void augment_resample(T* __restrict__ out, const T* __restrict__ Xp,
                                                 const T* __restrict__ A, const T* __restrict__ D, long long rows,
                                                 long long h, long long w, T alpha) {
    const long long padded = (h + 2 * AUGMENT_BORDER) * (w + 2 * AUGMENT_BORDER);
    GPUBP_GRID_STRIDE(i, rows * h) {
        const long long r = i / h, y = i - r * h;
        const T* __restrict__ dx = D + (r * 2 * h + y) * w;
        if (alpha != T(0))
            augment_resample_row<true>(out + i * w, Xp + r * padded, A + r * 6, dx, dx + h * w, (int)y, (int)h,
                                       (int)w, alpha);
        else
            augment_resample_row<false>(out + i * w, Xp + r * padded, A + r * 6, dx, dx, (int)y, (int)h, (int)w,
                                        alpha);
    }
}

GPUBP_EXPORT(augment_affine, augment_affine,
             (T* __restrict__ A, const unsigned int* __restrict__ key, long long rows, long long row0, long long h,
              long long w, T rotate, T scale, T shear, T shift),
             (A, key, rows, row0, h, w, rotate, scale, shear, shift))
GPUBP_EXPORT(augment_field, augment_field,
             (T* __restrict__ D, T* __restrict__ Tw, const unsigned int* __restrict__ key, const T* __restrict__ g,
              long long rows, long long row0, long long h, long long w, long long radius),
             (D, Tw, key, g, rows, row0, h, w, radius))
GPUBP_EXPORT(augment_pad, augment_pad,
             (T* __restrict__ Xp, const T* __restrict__ X, long long rows, long long h, long long w),
             (Xp, X, rows, h, w))
GPUBP_EXPORT(augment_resample, augment_resample,
             (T* __restrict__ out, const T* __restrict__ Xp, const T* __restrict__ A, const T* __restrict__ D,
              long long rows, long long h, long long w, T alpha),
             (out, Xp, A, D, rows, h, w, alpha))
