"""Augment: the affine and elastic distortions of Simard, Steinkraus & Platt (2003), made on the device,
new every epoch.

``aug = Augment(shift=2, rotate=15, scale=0.15, shear=0, elastic_alpha=34, elastic_sigma=4)`` and
``aug(X, seed=1, epoch=0, backend="native")`` returns the distorted rows of X (m, h*w): for each image,
one bilinear sample of the original at

    source(x, y) = A (x, y) + e  +  alpha * (dx, dy)(x, y)

where A, e rotate by up to ``rotate`` degrees, scale by 1 +- ``scale``, shear by up to ``shear`` degrees
(about the centre) and shift by up to ``shift`` pixels, each drawn uniformly, and (dx, dy) is Simard's
elastic field: per-pixel uniform(-1, 1) displacements blurred by a Gaussian of standard deviation
``elastic_sigma`` (separably, truncated at R = min(floor(3 sigma + 0.5), max(h, w) - 1) pixels; pixels
outside the image count as 0), scaled by ``elastic_alpha``. Pixels sampled outside the image are 0 and
the values stay in [0, 1]. Every draw comes from Philox4x32-10 keyed by the seed, counted by (epoch,
image row, pixel) as kernels/philox.cuh's table says, so every backend makes the same images
(float32 within 1e-5) and an epoch's distortions do not depend on the batch order.

The work is four kernels (kernels/augment.cu; NumPy references in gpubp.reference), run over passes
of at most ROWS_PER_PASS images (8192 on a GPU, 512 on a CPU) through workspaces made once by
``Augment.plan``: an epoch's augmentation allocates nothing, copies nothing back and waits for
nothing, so it can sit inside a captured graph (upload the epoch's key with ``plan.set_epoch``
before each replay). On the native backend the blur, the padding and the resampling split a pass's
images between the cores (helper threads that sleep rather than spin; OMP_NUM_THREADS caps them), and
on an AVX-512 CPU the noise and the resampling use its vector instructions directly; the images are the
same whatever the split.
``Augment()`` distorts nothing and returns its input unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from . import reference
from .errors import GpubpError

# Images per pass (the workspaces hold about 8 h w numbers per image, 24 KB for MNIST in float32): a
# GPU wants thousands of fields at once, a CPU wants the workspaces to stay in its caches.
ROWS_PER_PASS = {"gpu": 8192, "cpu": 512}
TRUNCATE = 3.0  # the blur's radius in standard deviations (before rounding: floor(3 sigma + 0.5))
PRESETS = {
    "none": {},
    # Simard et al. 2003 name affine distortions without their ranges: these are ours
    "simard-affine": {"rotate": 15.0, "scale": 0.15, "shear": 15.0},
    "simard-elastic": {"elastic_alpha": 34.0, "elastic_sigma": 4.0},  # their sigma = 4, alpha = 34
    # Ciresan et al. 2010: elastic sigma 5-6, alpha 36-38, rotation up to 15 degrees, scaling 15-20 %
    "ciresan": {"elastic_alpha": 36.0, "elastic_sigma": 6.0, "rotate": 15.0, "scale": 0.15},
}


@dataclass(frozen=True)
class Augment:
    """Random affine and elastic distortions of MNIST-like images (see the module's docstring).

    shift: pixels (up to, each way); rotate, shear: degrees (up to, each way); scale: a fraction
    (the size is multiplied by 1 +- scale, below 1); elastic_alpha: the field's scale in pixels,
    elastic_sigma: its Gaussian blur in pixels. shape: (h, w) of an image, else the square root of
    the row length.
    """

    shift: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0
    shape: tuple | None = None

    def __post_init__(self):
        limits = {"shift": math.inf, "rotate": 180.0, "scale": 1.0, "shear": 89.0, "elastic_alpha": math.inf,
                  "elastic_sigma": 1000.0}
        for name, top in limits.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise GpubpError(f"Augment {name} must be a finite number, got {v!r}")
            inclusive = name not in ("scale", "shear")
            if v < 0 or (v > top if inclusive else v >= top):
                raise GpubpError(f"Augment {name} must be from 0 to {top:g}{'' if inclusive else ' (excluded)'}, "
                                 f"got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.shape is not None:
            if len(self.shape) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in self.shape):
                raise GpubpError(f"Augment shape must be (height, width) in pixels, got {self.shape!r}")
            object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @classmethod
    def preset(cls, name: str, **overrides) -> Augment:
        """A named configuration (PRESETS), with any parameter given as a keyword overriding it."""
        if name not in PRESETS:
            raise GpubpError(f"no augmentation preset named {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def identity(self) -> bool:
        """Whether this distorts nothing (then a call returns its input unchanged)."""
        return not (self.shift or self.rotate or self.scale or self.shear or self.elastic_alpha)

    def describe(self) -> str:
        """The parameters that distort, as one line (e.g. 'rotate 15 deg, elastic alpha 34 sigma 4')."""
        parts = [f"shift {self.shift:g} px" if self.shift else "", f"rotate {self.rotate:g} deg" if self.rotate else "",
                 f"scale {self.scale:g}" if self.scale else "", f"shear {self.shear:g} deg" if self.shear else "",
                 f"elastic alpha {self.elastic_alpha:g} sigma {self.elastic_sigma:g}" if self.elastic_alpha else ""]
        return ", ".join(p for p in parts if p) or "no distortion"

    def image_shape(self, cols: int) -> tuple[int, int]:
        """(h, w) of the images in rows of ``cols`` pixels."""
        if self.shape is not None:
            if self.shape[0] * self.shape[1] != cols:
                raise GpubpError(f"Augment shape {self.shape} has {self.shape[0] * self.shape[1]} pixels, but the "
                                 f"rows have {cols}")
            return self.shape
        side = math.isqrt(cols)
        if side * side != cols:
            raise GpubpError(f"rows of {cols} pixels are not square images: give Augment(shape=(height, width))")
        return side, side

    def radius(self, h: int, w: int) -> int:
        """The Gaussian blur's truncation radius R in pixels: floor(3 sigma + 0.5), at most max(h, w) - 1
        (a tap further away never lands in the image)."""
        return min(int(TRUNCATE * self.elastic_sigma + 0.5), max(h, w) - 1)

    def weights(self, h: int, w: int) -> np.ndarray:
        """The blur's 2R + 1 taps g[k] = exp(-(k - R)^2 / (2 sigma^2)), normalised to sum 1 (float64);
        sigma = 0 gives the single tap 1 (the noise unblurred)."""
        r = self.radius(h, w)
        if self.elastic_sigma == 0:
            return np.ones(1)
        g = np.exp(-(np.arange(-r, r + 1, dtype=np.float64) ** 2) / (2 * self.elastic_sigma**2))
        return g / g.sum()

    def band(self, h: int, w: int) -> np.ndarray:
        """The blur's taps as augment_field reads them: t[E + k] = g[R - k] for |k| <= R between zeros,
        E = max(h, w) + AUGMENT_ROW_PAD (2E + 1 numbers, float64), so that the weight of source s in
        output o is t[E + o - s] along a whole row of outputs (kernels/augment.cu)."""
        g, r = self.weights(h, w), (self.radius(h, w) if self.elastic_sigma else 0)
        e = max(h, w) + reference.AUGMENT_ROW_PAD
        t = np.zeros(2 * e + 1)
        t[e - r:e + r + 1] = g[::-1]
        return t

    def plan(self, be, dtype, h: int, w: int, rows_per_pass: int | None = None) -> AugmentPlan:
        """The workspaces and launches that distort images of h x w pixels in ``dtype`` on backend ``be``,
        ``rows_per_pass`` images at a time (default ROWS_PER_PASS for the backend's kind)."""
        return AugmentPlan(self, be, dtype, h, w, rows_per_pass)

    def __call__(self, X, seed: int = 0, epoch: int = 0, backend="numpy"):
        """The distorted rows of X (m, h*w), float32 or float64 in [0, 1], for ``epoch`` of a run seeded by
        ``seed``: a NumPy array on the numpy, native and emulated backends, a CuPy array on cupy."""
        from .backends import get_backend

        be = get_backend(backend) if isinstance(backend, str) or backend is None else backend
        if getattr(X, "ndim", None) != 2:
            raise GpubpError(f"Augment takes rows of pixels (m, h*w), got an array of shape {getattr(X, 'shape', '?')}")
        dtype = np.dtype(X.dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise GpubpError(f"Augment takes float32 or float64 pixels in [0, 1], got {dtype}")
        h, w = self.image_shape(X.shape[1])
        check_seed_epoch(seed, epoch)
        Xd = be.to_device(X, dtype)
        if self.identity:
            return Xd.copy() if Xd is X else Xd
        out = be.empty(X.shape, dtype)
        plan = self._plans(be, dtype, h, w, len(X))
        plan.set_epoch(seed, epoch)
        plan.run(Xd, out)
        return out

    def _plans(self, be, dtype, h, w, rows) -> AugmentPlan:
        """One plan per backend, dtype, image shape and pass size, kept: repeated calls allocate no workspace."""
        cache = self.__dict__.setdefault("_plan_cache", {})
        per_pass = min(default_rows_per_pass(be), max(rows, 1))
        k = (id(be), np.dtype(dtype), h, w, per_pass)
        if k not in cache:
            cache[k] = self.plan(be, dtype, h, w, per_pass)
        return cache[k]

    def __getstate__(self) -> dict:
        """The parameters only: the plans hold device workspaces, which neither pickle nor travel."""
        return {k: v for k, v in self.__dict__.items() if k != "_plan_cache"}

    def as_dict(self) -> dict:
        """The parameters, for metrics and model files."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "shape"}


def default_rows_per_pass(be) -> int:
    return ROWS_PER_PASS["cpu" if be.xp is np else "gpu"]


def check_seed_epoch(seed, epoch) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise GpubpError(f"the augmentation seed must be an integer from 0 to 2^64 - 1, got {seed!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch < 2**32:
        raise GpubpError(f"the augmentation epoch must be an integer from 0 to 2^32 - 1, got {epoch!r}")


class AugmentPlan:
    """An Augment's workspaces on one backend (made here, once) and its launches (``run``: kernels only).

    key (3,) uint32: (seed mod 2^32, seed div 2^32, epoch), read by the kernels on the device; taps
    (2E + 1,): the blur's weights as ``Augment.band`` lays them out; per pass of P = rows_per_pass
    images: affine (P, 6), padded (P, (h+4)(w+4)), field (P, 2, h, w) and work (P, 2, h w + h wc),
    wc = w rounded up to a multiple of 32 (the last two only when there is an elastic field).
    """

    def __init__(self, aug: Augment, be, dtype, h: int, w: int, rows_per_pass: int | None = None) -> None:
        if not be.compiles_kernels and be.name != "numpy":
            raise GpubpError(f"the {be.name} backend runs no kernels: Augment needs numpy, native, emulated or cupy")
        self.aug, self.be, self.dtype, self.h, self.w = aug, be, np.dtype(dtype), h, w
        self.rows_per_pass = default_rows_per_pass(be) if rows_per_pass is None else int(rows_per_pass)
        if self.rows_per_pass < 1:
            raise GpubpError(f"rows_per_pass must be at least 1, got {rows_per_pass!r}")
        self.radius = aug.radius(h, w) if aug.elastic_sigma else 0
        self.elastic = aug.elastic_alpha != 0
        self.key = be.to_device(np.zeros(3), np.uint32)
        self.taps = be.to_device(aug.band(h, w), self.dtype)
        P = self.rows_per_pass
        self.affine = be.empty((P, 6), self.dtype)
        self.padded = be.empty((P, (h + 2 * reference.AUGMENT_BORDER) * (w + 2 * reference.AUGMENT_BORDER)), self.dtype)
        self.work = be.empty((P, 2, reference.augment_field_work(h, w)) if self.elastic else (1,), self.dtype)
        self.field = be.empty((P, 2, h, w) if self.elastic else (1,), self.dtype)
        stems = ("augment_affine", "augment_pad", "augment_field", "augment_resample")
        self._kernels = {s: be.kernel(s, self.dtype) for s in stems}
        if be.compiles_kernels:  # compiled and loaded now: a capture must find them loaded
            from .backends import kernel as K

            for s in stems:
                name = s + K.suffix(self.dtype)
                be.load_kernel(K.signatures()[name][0], name)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Upload (seed, epoch) into the key the kernels read (one 12-byte copy, outside any graph)."""
        check_seed_epoch(seed, epoch)
        self.be.upload(self.key, np.array([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(epoch)], np.uint32))

    def run(self, X, out) -> None:
        """out <- the distortions of X (m, h*w) for the uploaded key: 4 launches per pass of
        rows_per_pass images, nothing allocated, copied or waited for. X and out: device arrays of the
        plan's dtype, C-contiguous, distinct."""
        if X.shape != out.shape or X.ndim != 2 or X.shape[1] != self.h * self.w:
            raise GpubpError(f"Augment plan for {self.h}x{self.w} images: X {X.shape} and out {out.shape} must both "
                             f"be (m, {self.h * self.w})")
        a = self.aug
        k, h, w, R = self._kernels, self.h, self.w, self.radius
        rot, shear = math.radians(a.rotate), math.radians(a.shear)
        for row0 in range(0, X.shape[0], self.rows_per_pass):
            rows = min(self.rows_per_pass, X.shape[0] - row0)
            A = self.affine[:rows]
            k["augment_affine"](rows, A, self.key, rows, row0, h, w, rot, a.scale, shear, a.shift)
            if self.elastic:
                D = self.field[:rows]
                k["augment_field"](rows * 2, D, self.work[:rows], self.key, self.taps, rows, row0, h, w, R)
            else:
                D = self.field
            Xp = self.padded[:rows]
            k["augment_pad"](rows, Xp, X[row0:row0 + rows], rows, h, w)
            k["augment_resample"](rows * h, out[row0:row0 + rows], Xp, A, D, rows, h, w, a.elastic_alpha)


def scipy_distort(X, aug: Augment, seed: int, epoch: int) -> np.ndarray:
    """The same distortions in float64, image by image, by SciPy: the affine map composed from its
    matrices, gaussian_filter on the same Philox noise, map_coordinates at the map plus the field. A
    formula independent of the kernels and their references, for the tests."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    X = np.asarray(X, dtype=np.float64)
    h, w = aug.image_shape(X.shape[1])
    key = reference.seed_key(seed)
    key = np.array([key[0], key[1], epoch], np.uint32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    out = np.empty_like(X)
    for r in range(len(X)):
        u = [reference.uniform_pm1(reference.philox4x32_10([j, r, epoch, reference.PHILOX_AFFINE], key[:2]),
                                   np.float64) for j in (0, 1)]
        theta, s, phi = math.radians(aug.rotate) * u[0][0], 1 + aug.scale * u[0][1], math.radians(aug.shear) * u[0][2]
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        M = rotation @ np.array([[1.0, math.tan(phi)], [0.0, 1.0]]) / s
        shift = aug.shift * np.array([u[0][3], u[1][0]])
        sx, sy = np.einsum("ij,jhw->ihw", M, np.stack([x - centre[0], y - centre[1]])) + (centre + shift)[:, None, None]
        if aug.elastic_alpha:
            noise = reference.elastic_noise(key, 1, r, h, w, np.float64)[0]
            for f, s_ in ((0, sx), (1, sy)):
                s_ += aug.elastic_alpha * (gaussian_filter(noise[f], aug.elastic_sigma, mode="constant", cval=0.0,
                                                           radius=aug.radius(h, w)) if aug.elastic_sigma else noise[f])
        # grid-constant: 0 beyond the edge, and interpolated toward it (mode="constant" would not interpolate there)
        out[r] = map_coordinates(X[r].reshape(h, w), [sy, sx], order=1, mode="grid-constant", cval=0.0).reshape(-1)
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The command line: --augment and its parameters (gpubp train, gpubp samples), and the samples figure
# ---------------------------------------------------------------------------------------------

_FLAGS = (("shift", "PX", "shift up to PX pixels each way"),
          ("rotate", "DEG", "rotate up to DEG degrees each way"),
          ("scale", "FRAC", "scale by 1 +- FRAC (below 1)"),
          ("shear", "DEG", "shear up to DEG degrees each way"),
          ("elastic_alpha", "A", "Simard's elastic field scaled by A pixels"),
          ("elastic_sigma", "S", "the elastic field's Gaussian blur, S pixels"))


def _non_negative(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_augment_arguments(parser, default: str = "none") -> None:
    """--augment PRESET and one flag per parameter (each overrides the preset), as an argument group."""
    g = parser.add_argument_group("augmentation (distortions drawn anew every epoch)")
    g.add_argument("--augment", choices=list(PRESETS), default=None, metavar="PRESET",
                   help=f"a preset: {', '.join(f'{k} ({Augment(**v).describe()})' for k, v in PRESETS.items())} "
                        f"(default {default}; the flags below override it)")
    for name, metavar, what in _FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=_non_negative, default=None, metavar=metavar,
                       help=f"{what} (default: the preset's, else 0)")


def augment_from_args(args, default: str = "none") -> Augment | None:
    """The Augment that --augment and its flags ask for; None when it distorts nothing."""
    aug = Augment.preset(args.augment or default, **{name: getattr(args, name) for name, _, _ in _FLAGS})
    return None if aug.identity else aug


def _integer(lo: int, hi: int):
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {text}")
        return v
    return parse


def add_samples_arguments(parser) -> None:
    """gpubp samples' own arguments (the data and backend arguments come from the CLI)."""
    from pathlib import Path

    parser.add_argument("-o", "--out", type=Path, default=Path("samples.png"), metavar="OUT.png",
                        help="the PNG to write (default samples.png)")
    parser.add_argument("--count", type=_integer(1, 50), default=8, metavar="N",
                        help="training images shown, one per row (1 to 50, default 8)")
    parser.add_argument("--epochs", type=_integer(1, 20), default=6, metavar="E",
                        help="distortions of each: epochs 0 .. E-1, one per column (1 to 20, default 6)")
    parser.add_argument("--seed", type=_integer(0, 2**64 - 1), default=1,
                        help="the run's seed: which distortions (default 1)")
    add_augment_arguments(parser, default="simard-elastic")


def samples_figure(X, aug: Augment, seed: int, epochs: int, backend, title: str):
    """Rows of images X (n, h*w): each original, then its distortions for epochs 0 .. epochs-1."""
    from .figures import pyplot

    plt = pyplot("gpubp samples", "gpubp samples ...")
    h, w = aug.image_shape(X.shape[1])
    be = backend
    shots = [np.asarray(X)] + [be.to_host(aug(X, seed=seed, epoch=e, backend=be)) for e in range(epochs)]
    n = len(X)
    fig, axes = plt.subplots(n, epochs + 1, figsize=(1.1 * (epochs + 1) + 0.4, 1.1 * n + 0.7), squeeze=False)
    for i in range(n):
        for j, shot in enumerate(shots):
            ax = axes[i][j]
            ax.imshow(shot[i].reshape(h, w), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else f"epoch {j - 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
