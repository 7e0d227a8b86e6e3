"""The NumPy reference of every CUDA kernel, under the kernel's name and with its exact arguments.

The NumPy backend runs these, and every kernel is tested against them (and they against float64
formulas written independently in the tests). Arrays are written in place, as the kernels write
them. ``scratch(shape, dtype)``, when given, lends a reusable buffer so that a training step
allocates nothing; without it a temporary is made.

The activation formulas come first, each beside its derivative (computed from the stored output
a = f(z), as the kernels compute it, so z is never kept); then the kernels, in the order of a step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import GpubpError


def _buffer(scratch, like):
    return None if scratch is None else scratch(like.shape, like.dtype)


def _model_rows(b, models, cols, b_stride):
    """The (models, 1, cols) view of model k's bias at b[k * b_stride:][:cols], as a _models kernel reads
    it (b: 1-D, starting at model 0's bias; the biases are strided views of the (K, P) parameters)."""
    return np.lib.stride_tricks.as_strided(b, (models, 1, cols), (b_stride * b.itemsize, 0, b.itemsize),
                                           writeable=False)


def _per_model(x):
    """A per-model hyperparameter array (K,) as a (K, 1) column that broadcasts over a model's parameters."""
    return np.asarray(x)[:, None]


# ---------------------------------------------------------------------------------------------
# Activation formulas: f(z) and f'(z) from a = f(z)  (kernels: gpubp.cuh, tanh.cu, relu.cu)
# ---------------------------------------------------------------------------------------------

def sigmoid(z, out=None):
    """sigma(z) = 1/(1+exp(-z)), elementwise, by SciPy's expit: one pass, no overflow warning (the
    kernels compute the same formula; tests tie the two to 1e-7)."""
    return (_expit or _load_expit())(z, out=out)


_expit = None  # scipy.special, imported on the first sigmoid: 0.2 s of every `import gpubp` otherwise


def _load_expit():
    global _expit
    from scipy.special import expit

    _expit = expit
    return expit


def sigmoid_prime_from_output(a, out=None):
    """sigma'(z) = a*(1-a) from a = sigma(z)."""
    out = np.subtract(1, a, out=out)
    out *= a
    return out


def tanh(z, out=None):
    return np.tanh(z, out=out)


def tanh_prime_from_output(a, out=None):
    """tanh'(z) = 1 - a^2 = (1 - a)(1 + a) from a = tanh(z); the product does not cancel near |a| = 1."""
    out = np.subtract(1, a, out=out)
    out *= 1 + a
    return out


def relu(z, out=None):
    """max(z, 0); a NaN stays NaN (numpy.maximum), so a diverging run is still seen."""
    return np.maximum(z, 0, out=out)


def relu_prime_from_output(a, out=None):
    """1 where a = max(z, 0) > 0, else 0 (0 at z = 0)."""
    if out is None:
        out = np.empty_like(a)
    return np.greater(a, 0, out=out)


def softmax(z, out=None):
    """Row-wise softmax of z (m, n): exp(z - row max) / its row sum, so +-1000 stays finite."""
    out = np.subtract(z, np.max(z, axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=1, keepdims=True)
    return out


# ---------------------------------------------------------------------------------------------
# Forward: bias + activation, in place on the product Z = A W^T  (kernels: activation.cuh, softmax.cu)
# ---------------------------------------------------------------------------------------------

def _bias_kernel(f, name):
    def bias_act(Z, b, rows, cols):
        np.add(Z, b, out=Z)
        f(Z, out=Z)

    bias_act.__name__ = bias_act.__qualname__ = f"bias_{name}"
    bias_act.__doc__ = f"Z (rows, cols) <- {name}(Z + b), b (cols,) broadcast over rows; in place."
    return bias_act


def _bias_models_kernel(f, name):
    def bias_act_models(Z, b, rows, cols, rows_per_model, b_stride):
        models = rows // rows_per_model
        Zm = Z.reshape(models, rows_per_model, cols)
        np.add(Zm, _model_rows(b, models, cols, b_stride), out=Zm)
        Z2 = Z.reshape(rows, cols)  # a row-wise f (softmax) sees rows
        f(Z2, out=Z2)

    bias_act_models.__name__ = bias_act_models.__qualname__ = f"bias_{name}_models"
    bias_act_models.__doc__ = (f"Z (rows, cols) <- {name}(Z + b of the row's model): rows in blocks of rows_per_model, "
                               f"one per model; model k's bias at b[k*b_stride:][:cols]. In place.")
    return bias_act_models


def _delta_kernel(prime, name):
    def act_delta(G, A, n, *, scratch=None):
        G *= prime(A, out=_buffer(scratch, A))

    act_delta.__name__ = act_delta.__qualname__ = f"{name}_delta"
    act_delta.__doc__ = f"G <- G * {name}'(z) from A = {name}(z), elementwise in place (BP2, after G = delta W)."
    return act_delta


def _bias_drop_kernel(f, name):
    def bias_act_drop(Z, b, rows, cols, key, step, layer, p):
        np.add(Z, b, out=Z)
        f(Z, out=Z)
        Z *= _factors(key, step, layer, rows * cols, p, Z.dtype).reshape(rows, cols)

    bias_act_drop.__name__ = bias_act_drop.__qualname__ = f"bias_{name}_drop"
    bias_act_drop.__doc__ = (f"Z (rows, cols) <- {name}(Z + b) times each element's dropout factor of layer "
                             f"``layer`` in mini-batch ``step``, key = (seed, epoch); in place.")
    return bias_act_drop


def _delta_drop_kernel(prime, name):
    def act_delta_drop(G, A, n, key, step, layer, p):
        r = _factors(key, step, layer, n, p, G.dtype).reshape(G.shape)
        G[...] = dropout_delta(G, A, r, prime)

    act_delta_drop.__name__ = act_delta_drop.__qualname__ = f"{name}_delta_drop"
    act_delta_drop.__doc__ = (f"G <- G * {name}'(z) * r, {name}'(z) from the undropped output A / r; 0 where "
                              f"dropped (BP2 through dropout, r the dropout factor of each element).")
    return act_delta_drop


bias_sigmoid = _bias_kernel(sigmoid, "sigmoid")
bias_tanh = _bias_kernel(tanh, "tanh")
bias_relu = _bias_kernel(relu, "relu")
bias_softmax = _bias_kernel(softmax, "softmax")
bias_sigmoid_models = _bias_models_kernel(sigmoid, "sigmoid")
bias_tanh_models = _bias_models_kernel(tanh, "tanh")
bias_relu_models = _bias_models_kernel(relu, "relu")
bias_softmax_models = _bias_models_kernel(softmax, "softmax")
sigmoid_delta = _delta_kernel(sigmoid_prime_from_output, "sigmoid")
tanh_delta = _delta_kernel(tanh_prime_from_output, "tanh")
relu_delta = _delta_kernel(relu_prime_from_output, "relu")
# Each hidden activation's formula and derivative from its output, once: the kernels' references below take them.
ACTIVATION_FORMULAS = (("sigmoid", sigmoid, sigmoid_prime_from_output), ("tanh", tanh, tanh_prime_from_output),
                       ("relu", relu, relu_prime_from_output))
for _name, _f, _prime in ACTIVATION_FORMULAS:
    globals()[f"bias_{_name}_drop"] = _bias_drop_kernel(_f, _name)
    globals()[f"{_name}_delta_drop"] = _delta_drop_kernel(_prime, _name)


# ---------------------------------------------------------------------------------------------
# The own route's layer kernels: a product with the layer's elementwise work after it
# (kernels: layer.cuh via activation.cuh, quadratic.cu, difference_delta.cu, layer_update.cu).
# The tile (_s, _l) changes how a GPU computes the product, not what it is.
# ---------------------------------------------------------------------------------------------

def round_tf32(x, out=None):
    """float32 x rounded to TF32, the 10 mantissa bits tensor cores read (to nearest, ties to even; NaN
    and inf kept), as kernels/gpubp.cuh's gpubp_tf32; other dtypes are returned as they are (copied
    into out when given)."""
    if out is None:
        out = np.array(x)
    else:
        np.copyto(out, x)
    if out.dtype != np.float32:
        return out
    u = out.view(np.uint32)
    finite = (u & 0x7F800000) != 0x7F800000
    u[finite] = (u[finite] + 0x0FFF + ((u[finite] >> 13) & 1)) & 0xFFFFE000
    return out


def _tf32(x, tf32):
    return round_tf32(x) if tf32 and x.dtype == np.float32 else x


def _layer_forward_kernel(f, name, tile):
    def layer_forward(A_out, A_in, W, b, m, n_in, n_out, tf32):
        np.matmul(_tf32(A_in, tf32), _tf32(W, tf32).T, out=A_out)
        np.add(A_out, b, out=A_out)
        f(A_out, out=A_out)

    layer_forward.__name__ = layer_forward.__qualname__ = f"layer_forward_{name}_{tile}"
    layer_forward.__doc__ = f"A_out (m, n_out) <- {name}(A_in (m, n_in) W^T + b)."
    return layer_forward


def _layer_delta_kernel(prime, name, tile):
    def layer_delta(D_prev, D, W, A_prev, m, n_out, n_in, tf32, *, scratch=None):
        np.matmul(_tf32(D, tf32), _tf32(W, tf32), out=D_prev)
        D_prev *= prime(A_prev, out=_buffer(scratch, A_prev))

    layer_delta.__name__ = layer_delta.__qualname__ = f"layer_delta_{name}_{tile}"
    layer_delta.__doc__ = f"D_prev (m, n_in) <- (D (m, n_out) W) * {name}'(z) from A_prev (BP2)."
    return layer_delta


def _layer_forward_drop_kernel(f, name, tile):
    def layer_forward(A_out, A_in, W, b, m, n_in, n_out, tf32, key, step, layer, p):
        np.matmul(_tf32(A_in, tf32), _tf32(W, tf32).T, out=A_out)
        np.add(A_out, b, out=A_out)
        f(A_out, out=A_out)
        A_out *= _factors(key, step, layer, m * n_out, p, A_out.dtype).reshape(m, n_out)

    layer_forward.__name__ = layer_forward.__qualname__ = f"layer_forward_{name}_drop_{tile}"
    layer_forward.__doc__ = f"A_out (m, n_out) <- {name}(A_in (m, n_in) W^T + b) times each element's dropout factor."
    return layer_forward


def _layer_delta_drop_kernel(prime, name, tile):
    def layer_delta(D_prev, D, W, A_prev, m, n_out, n_in, tf32, key, step, layer, p):
        G = np.matmul(_tf32(D, tf32), _tf32(W, tf32))
        D_prev[...] = dropout_delta(G, A_prev, _factors(key, step, layer, m * n_in, p, G.dtype).reshape(m, n_in),
                                    prime)

    layer_delta.__name__ = layer_delta.__qualname__ = f"layer_delta_{name}_drop_{tile}"
    layer_delta.__doc__ = f"D_prev (m, n_in) <- (D W) * {name}'(z) * r from the dropped A_prev (BP2 through dropout)."
    return layer_delta


for _name, _f, _prime in ACTIVATION_FORMULAS:  # each activation's layer kernels, both tiles, without and with dropout
    for _tile in ("s", "l"):
        globals()[f"layer_forward_{_name}_{_tile}"] = _layer_forward_kernel(_f, _name, _tile)
        globals()[f"layer_delta_{_name}_{_tile}"] = _layer_delta_kernel(_prime, _name, _tile)
        globals()[f"layer_forward_{_name}_drop_{_tile}"] = _layer_forward_drop_kernel(_f, _name, _tile)
        globals()[f"layer_delta_{_name}_drop_{_tile}"] = _layer_delta_drop_kernel(_prime, _name, _tile)


def layer_update_s(W, b, D, A_in, m, n_out, n_in, alpha, beta, beta_b, tf32):
    """W (n_out, n_in) <- beta W + alpha D^T A_in;  b <- beta_b b + alpha sum_rows D. beta = 0 does not
    read the old W (nor beta_b = 0 the old b), so poisoned buffers are overwritten."""
    product = _tf32(D, tf32).T @ _tf32(A_in, tf32)
    if beta == 0:
        np.multiply(product, alpha, out=W)
    else:
        W *= beta
        W += alpha * product
    column_sums = D.sum(axis=0)
    if beta_b == 0:
        np.multiply(column_sums, alpha, out=b)
    else:
        b *= beta_b
        b += alpha * column_sums


layer_update_l = layer_update_s


def _layer_output_kernel(f, delta, name):
    def layer_output(A_out, D, A_in, W, b, Y, m, n_in, n_out, scale, tf32):
        np.matmul(_tf32(A_in, tf32), _tf32(W, tf32).T, out=A_out)
        np.add(A_out, b, out=A_out)
        f(A_out, out=A_out)
        delta(D, A_out, Y, A_out.size, scale)

    layer_output.__name__ = layer_output.__qualname__ = f"layer_output_{name}"
    layer_output.__doc__ = f"The {name} output layer: A_out <- f(A_in W^T + b), then D <- scale * delta^L(A_out, Y)."
    return layer_output


# ---------------------------------------------------------------------------------------------
# Output errors delta^L (BP1), times scale = 1/m  (kernels: quadratic.cu, difference_delta.cu)
# ---------------------------------------------------------------------------------------------

def quadratic_delta(D, A, Y, n, scale, *, scratch=None):
    """D <- scale * (A - Y) * A * (1 - A): the quadratic cost with sigmoid outputs."""
    np.subtract(A, Y, out=D)
    D *= sigmoid_prime_from_output(A, out=_buffer(scratch, A))
    D *= scale


def difference_delta(D, A, Y, n, scale):
    """D <- scale * (A - Y): cross-entropy with sigmoid outputs, log-likelihood with softmax outputs."""
    np.subtract(A, Y, out=D)
    D *= scale


layer_output_quadratic = _layer_output_kernel(sigmoid, quadratic_delta, "quadratic")
layer_output_cross_entropy = _layer_output_kernel(sigmoid, difference_delta, "cross_entropy")
layer_output_log_likelihood = _layer_output_kernel(softmax, difference_delta, "log_likelihood")


# ---------------------------------------------------------------------------------------------
# Optimizers over the flat buffer: every weight first, then every bias  (kernels: sgd.cu, momentum.cu, adam.cu)
# ---------------------------------------------------------------------------------------------

# Each rule is written once over P (..., n_params) with hyperparameters that broadcast against it:
# scalars for one network, (K, 1) columns for the K models of a stack (the _models kernels).

def _decays(decay) -> bool:
    """Whether a weight decay (a scalar, or one per model) changes anything; skipped, it costs no pass."""
    return decay != 1 if isinstance(decay, (int, float)) else bool(np.any(decay != 1))


def _sgd(P, G, n_weights, decay, step, scratch):
    if _decays(decay):
        P[..., :n_weights] *= decay
    P -= np.multiply(G, step, out=_buffer(scratch, G))


def sgd_update(p, g, n, n_weights, decay, step, *, scratch=None):
    """p[:nw] <- decay*p[:nw] - step*g[:nw]; p[nw:] <- p[nw:] - step*g[nw:]."""
    _sgd(p, g, n_weights, decay, step, scratch)


def sgd_update_models(p, g, n, n_params, n_weights, decay, step, *, scratch=None):
    """sgd_update for each model k of p, g (K, n_params) with its own decay[k] and step[k]."""
    K = n // n_params
    _sgd(p.reshape(K, n_params), g.reshape(K, n_params), n_weights, _per_model(decay), _per_model(step), scratch)


def _momentum(P, G, V, n_weights, eta, mu, l2, scratch):
    grad = np.multiply(P, l2, out=_buffer(scratch, G))
    grad[..., n_weights:] = 0
    grad += G
    grad *= eta
    V *= mu
    V -= grad
    P += V


def momentum_update(p, g, v, n, n_weights, eta, mu, l2, *, scratch=None):
    """v <- mu*v - eta*(g + l2*p on the weights, g on the biases); p <- p + v."""
    _momentum(p, g, v, n_weights, eta, mu, l2, scratch)


def momentum_update_models(p, g, v, n, n_params, n_weights, eta, mu, l2, *, scratch=None):
    """momentum_update for each model k of p, g, v (K, n_params) with its own eta[k] and l2[k]."""
    K = n // n_params
    shape = (K, n_params)
    _momentum(p.reshape(shape), g.reshape(shape), v.reshape(shape), n_weights, _per_model(eta), mu,
              _per_model(l2), scratch)


def _adam(P, G, M, V, steps, n_weights, eta, beta1, beta2, eps, decay, scratch):
    step = int(steps[0]) + 1
    dt = P.dtype.type
    b1, b2 = dt(beta1), dt(beta2)
    w = np.empty_like(G) if scratch is None else scratch(G.shape, G.dtype)
    M *= b1
    M += np.multiply(G, dt(1) - b1, out=w)
    V *= b2
    np.multiply(G, G, out=w)
    w *= dt(1) - b2
    V += w
    # the bias corrections 1/(1 - beta^t) in the parameters' precision, written as the kernel writes
    # them: 1 - beta^t = -expm1(t log1p(-(1 - beta))), which does not cancel as 1 - beta**t would
    c1 = dt(-1) / np.expm1(dt(step) * np.log1p(-(dt(1) - b1)))
    c2 = dt(-1) / np.expm1(dt(step) * np.log1p(-(dt(1) - b2)))
    np.multiply(V, c2, out=w)  # w: the denominator sqrt(v_hat) + eps ...
    np.sqrt(w, out=w)
    w += eps
    np.divide(M, w, out=w)  # ... then the step eta * m_hat / it
    w *= eta * c1
    if _decays(decay):
        P[..., :n_weights] *= decay
    P -= w
    steps[0] = step


def adam_update(p, g, m, v, steps, done, n, n_weights, eta, beta1, beta2, eps, decay, *, scratch=None):
    """Adam with decoupled weight decay, step number t = steps[0] + 1 (steps then counts it; ``done``
    is the kernel's block counter and stays 0):  m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;
    p[:nw] <- decay*p[:nw];  p <- p - eta * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
    One work buffer, so a step makes no parameter-sized temporary."""
    _adam(p, g, m, v, steps, n_weights, eta, beta1, beta2, eps, decay, scratch)


def adam_update_models(p, g, m, v, steps, done, n, n_params, n_weights, eta, beta1, beta2, eps, decay, *,
                       scratch=None):
    """adam_update for each model k of p, g, m, v (K, n_params), all at step t, with its own eta[k] and decay[k]."""
    K = n // n_params
    shape = (K, n_params)
    _adam(p.reshape(shape), g.reshape(shape), m.reshape(shape), v.reshape(shape), steps, n_weights,
          _per_model(eta), beta1, beta2, eps, _per_model(decay), scratch)


# ---------------------------------------------------------------------------------------------
# Data and evaluation  (kernels: gather.cu, one_hot.cu, argmax_count.cu, the costs' *_cost, accumulate.cu)
# ---------------------------------------------------------------------------------------------

def _kernel_constant(header: str, name: str) -> float:
    """A ``#define NAME number`` of one of the kernels' headers, so that a constant the kernels and these
    references share is written once, in C. The headers are where gpubp.backends.kernel.kernel_dir finds
    them (gpubp/_kernels in a wheel, else kernels/ beside the package); that module cannot be imported
    here, since the backends import this one."""
    here = Path(__file__).resolve().parent
    for d in (here / "_kernels", here.parent / "kernels"):
        if (d / header).is_file():
            m = re.search(rf"^#define {name} (\S+)$", (d / header).read_text(), re.MULTILINE)
            if m:
                return float(m.group(1))
            raise GpubpError(f"kernels/{header} does not #define {name}: reinstall gpubp")
    raise GpubpError(f"kernels/{header} not found next to {here}: reinstall gpubp")


# A saturated wrong answer costs -ln(CLIP) = 27.6 per output rather than inf: kernels/cost.cuh's GPUBP_COST_CLIP.
CLIP = _kernel_constant("cost.cuh", "GPUBP_COST_CLIP")


def gather_rows(Xs, Ys, X, Y, perm, rows, cols_x, cols_y):
    """Xs <- X[perm], Ys <- Y[perm]: one epoch's shuffle."""
    np.take(X, perm, axis=0, out=Xs)
    np.take(Y, perm, axis=0, out=Ys)


def one_hot(Y, labels, rows, classes):
    """Y (rows, classes) <- one-hot rows of the int labels (rows,)."""
    Y[...] = 0
    Y[np.arange(rows), labels] = 1


def argmax_count(total, A, labels, rows, cols):
    """total[0] += the number of rows whose argmax is the label (ties to the first, NaN is the max)."""
    total[0] += np.count_nonzero(np.argmax(A, axis=1) == labels)


def _cost_kernel(term, name):
    def cost(total, A, Y, rows, cols):
        total[0] += np.sum(term(np.asarray(A, dtype=np.float64), Y))

    cost.__name__ = cost.__qualname__ = f"{name}_cost"
    cost.__doc__ = f"total[0] += the {name} cost summed over the rows of A, Y (rows, cols), in float64."
    return cost


quadratic_cost = _cost_kernel(lambda a, y: 0.5 * (a - y) ** 2, "quadratic")
cross_entropy_cost = _cost_kernel(
    lambda a, y: -(y * np.log(np.clip(a, CLIP, 1 - CLIP)) + (1 - y) * np.log(1 - np.clip(a, CLIP, 1 - CLIP))),
    "cross_entropy")
log_likelihood_cost = _cost_kernel(lambda a, y: -y * np.log(np.clip(a, CLIP, 1.0)), "log_likelihood")


def fill(x, n, value):
    """x[...] <- value."""
    x[...] = value


def sum_into(total, x, n):
    """total[0] += sum of x, in float64."""
    total[0] += np.sum(x, dtype=np.float64)


def sum_squares_into(total, x, n):
    """total[0] += sum of x^2, in float64."""
    x = np.asarray(x, dtype=np.float64)
    total[0] += np.dot(x, x)


# ---------------------------------------------------------------------------------------------
# Counter-based random draws, dropout, max-norm and augmentation  (kernels: philox.cuh, max_norm.cu,
# augment.cu; kernels/philox.cuh's header maps (seed, epoch, step, element) onto counter and key)
# ---------------------------------------------------------------------------------------------

PHILOX_DROPOUT, PHILOX_ELASTIC, PHILOX_AFFINE = 1, 2, 3  # c3 of each use (dropout adds 256 * layer)
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32_10(counter, key):
    """Philox4x32-10 of counters (..., 4) under keys (..., 2) (uint32; the leading axes broadcast): the four
    random words (..., 4) uint32, as kernels/philox.cuh's gpubp_philox4x32_10 computes them."""
    counter, key = np.asarray(counter, np.uint32), np.asarray(key, np.uint32)
    k0, k1 = key[..., 0].astype(np.uint64), key[..., 1].astype(np.uint64)
    c = [np.broadcast_to(counter[..., i], np.broadcast_shapes(counter.shape[:-1], key.shape[:-1])).astype(np.uint64)
         for i in range(4)]
    mask = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & mask, (k1 + _PHILOX_W[1]) & mask
        p0, p1 = _PHILOX_M[0] * c[0], _PHILOX_M[1] * c[2]  # exact: both factors < 2^32
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    return np.stack(c, axis=-1).astype(np.uint32)


def seed_key(seed):
    """The Philox key of a seed (0 <= seed < 2^64): (seed mod 2^32, seed div 2^32) as uint32."""
    seed = int(seed)
    return np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)


def uniform01(words, dtype):
    """A word's top 24 bits as a number in [0, 1): (u >> 8) * 2^-24, exact in float32 and float64."""
    return ((np.asarray(words, np.uint32) >> 8).astype(np.int64) * 2.0**-24).astype(dtype)


def uniform_pm1(words, dtype):
    """A word's top 24 bits as a number in (-1, 1): (2 (u >> 8) + 1 - 2^24) * 2^-24, exact in float32."""
    top = (np.asarray(words, np.uint32) >> 8).astype(np.int64)
    return ((2 * top + 1 - 2**24) * 2.0**-24).astype(dtype)


def dropout_factor(seed, epoch, step, layer, elements, p, dtype):
    """Inverted dropout's factors for element indices ``elements`` of layer ``layer``'s activations in
    mini-batch ``step`` of epoch ``epoch``: 1/(1-p) where kept (uniform01 < 1 - p, in dtype), else 0;
    kernels/philox.cuh's gpubp_dropout_factor."""
    e = np.asarray(elements, np.uint64)
    counter = np.stack(np.broadcast_arrays((e >> np.uint64(2)).astype(np.uint32), np.uint32(step), np.uint32(epoch),
                                           np.uint32(PHILOX_DROPOUT + 256 * layer)), axis=-1)
    words = np.take_along_axis(philox4x32_10(counter, seed_key(seed)), (e & np.uint64(3)).astype(np.intp)[..., None],
                               axis=-1)[..., 0]
    dt = np.dtype(dtype).type
    keep = dt(1) - dt(p)
    return np.where(uniform01(words, dtype) < keep, dt(1) / keep, dt(0)).astype(dtype)


def _factors(key, step, layer, n, p, dtype):
    """The dropout factors of elements 0..n-1 of layer ``layer`` in step ``step``, key = (seed, epoch)."""
    key = np.asarray(key)
    return dropout_factor(int(key[0]), int(key[1]), step, layer, np.arange(n, dtype=np.uint64), p, dtype)


def dropout_output(a, r):
    """Inverted dropout's forward: the output a times its factor r (dropout.cuh's Dropout::output)."""
    return a * r


def dropout_delta(g, a, r, prime):
    """BP2 through dropout: g f'(z) r with f'(z) from the undropped output a / r, 0 where r = 0
    (dropout.cuh's Dropout::delta); g * prime(a) where there is no dropout."""
    safe = np.where(r == 0, r.dtype.type(1), r)
    return np.where(r == 0, r.dtype.type(0), g * (prime(a / safe) * r))


def dropout(out, X, n, key, step, layer, p):
    """out (rows, cols) <- X times each element's dropout factor of layer ``layer`` (0: the inputs) in
    mini-batch ``step``, key = (seed, epoch): inverted dropout of a step's inputs (kernels/dropout.cu)."""
    out.reshape(-1)[:n] = dropout_output(X.reshape(-1)[:n], _factors(key, step, layer, n, p, out.dtype))


def max_norm(W, rows, cols, c):
    """Each row of W (rows, cols) whose norm exceeds c scaled by c/||row|| (rounded once to W's dtype); the
    norm's square summed in float64; rows within the ball untouched. In place."""
    squares = np.einsum("ij,ij->i", W.astype(np.float64), W.astype(np.float64))
    over = squares > float(c) ** 2
    W[over] *= (float(c) / np.sqrt(squares[over])).astype(W.dtype)[:, None]


def augment_affine(A, key, rows, row0, h, w, rotate, scale, shear, shift):
    """A (rows, 6) <- each image's affine map (a, b, ex, c, d, ey): source (a x + b y + ex, c x + d y + ey)
    of output pixel (x, y); (1/s) R(theta) [1 tan(phi); 0 1] about the centre, then the shift, with
    theta, s, phi and the shift drawn from Philox as kernels/augment.cu says."""
    dt = A.dtype.type
    image = np.arange(row0, row0 + rows, dtype=np.uint32)
    zeros = np.zeros_like(image)
    tags = np.full_like(image, PHILOX_AFFINE)
    u = philox4x32_10(np.stack([zeros, image, zeros + key[2], tags], axis=-1), key[:2])
    v = philox4x32_10(np.stack([zeros + 1, image, zeros + key[2], tags], axis=-1), key[:2])
    U, V = uniform_pm1(u, A.dtype), uniform_pm1(v, A.dtype)
    theta = dt(rotate) * U[:, 0]
    inv_s = dt(1) / (dt(1) + dt(scale) * U[:, 1])
    tan_phi = np.tan(dt(shear) * U[:, 2])
    tx, ty = dt(shift) * U[:, 3], dt(shift) * V[:, 0]
    cs, sn = np.cos(theta), np.sin(theta)
    a, b = inv_s * cs, inv_s * (cs * tan_phi - sn)
    c, d = inv_s * sn, inv_s * (sn * tan_phi + cs)
    cx, cy = dt(0.5) * dt(w - 1), dt(0.5) * dt(h - 1)
    A[:, 0], A[:, 1], A[:, 2] = a, b, (cx + tx) - (a * cx + b * cy)
    A[:, 3], A[:, 4], A[:, 5] = c, d, (cy + ty) - (c * cx + d * cy)


def elastic_noise(key, rows, row0, h, w, dtype):
    """The elastic noise (rows, 2, h, w) of images row0 .. row0+rows-1, uniform(-1, 1) from Philox, drawn
    x-major: pixel (y, x) of field f is word y mod 4 of counter ((f w + x) ceil(h/4) + y div 4, row,
    epoch, ELASTIC)."""
    quads = -(-h // 4)
    q = np.arange(2 * w * quads, dtype=np.uint32).reshape(2, w, quads)
    image = np.arange(row0, row0 + rows, dtype=np.uint32)[:, None, None, None]
    q = np.broadcast_to(q, (rows, 2, w, quads))
    counter = np.stack(np.broadcast_arrays(q, image, np.uint32(key[2]), np.uint32(PHILOX_ELASTIC)), axis=-1)
    words = philox4x32_10(counter, key[:2]).reshape(rows, 2, w, 4 * quads)[..., :h]
    return uniform_pm1(words, dtype).transpose(0, 1, 3, 2)


def _blur_last_axis(src, g, radius):
    """out[..., i] = sum over k (increasing) of g[k] * src[..., i + k - radius], entries beyond the ends absent."""
    n = src.shape[-1]
    out = np.zeros_like(src)
    for k in range(2 * radius + 1):
        shift = k - radius
        lo, hi = max(0, -shift), min(n, n - shift)
        if lo < hi:
            out[..., lo:hi] += g[k] * src[..., lo + shift:hi + shift]
    return out


AUGMENT_ROW_PAD = 32  # the blur's intermediate rows are padded to a multiple of this (kernels/augment.cu)


def augment_field_work(h, w):
    """The numbers of augment_field's scratch per field: the noise (w, h) and the blur along x (h, wc),
    wc = w rounded up to a multiple of AUGMENT_ROW_PAD."""
    return h * w + h * (-(-w // AUGMENT_ROW_PAD) * AUGMENT_ROW_PAD)


def augment_field(D, Tw, key, t, rows, row0, h, w, radius):
    """D (rows, 2, h, w) <- the elastic noise blurred along x, then along y, by the taps g (2 radius + 1,),
    pixels beyond the image absent; t is the band's table (Augment.band: t[E + k] = g[R - k] between
    zeros, E = max(h, w) + AUGMENT_ROW_PAD). Tw (rows, 2, augment_field_work(h, w)) is the kernel's
    scratch (the noise and the blur along x); the reference leaves it alone."""
    e = max(h, w) + AUGMENT_ROW_PAD
    g = np.asarray(t)[e - radius:e + radius + 1][::-1]
    noise = elastic_noise(key, rows, row0, h, w, D.dtype)
    along_x = _blur_last_axis(noise, g, radius)
    D.reshape(rows, 2, h, w)[...] = _blur_last_axis(along_x.swapaxes(2, 3), g, radius).swapaxes(2, 3)


AUGMENT_BORDER = 2  # zeros around a padded image (kernels/augment.cu)


def augment_pad(Xp, X, rows, h, w):
    """Xp (rows, (h+4)(w+4)) <- each image of X (rows, h*w) inside a border of 2 zeros."""
    b = AUGMENT_BORDER
    P = Xp.reshape(rows, h + 2 * b, w + 2 * b)
    P[...] = 0
    P[:, b:h + b, b:w + b] = X.reshape(rows, h, w)


def augment_resample(out, Xp, A, D, rows, h, w, alpha):
    """out (rows, h*w) <- the bilinear sample of each padded image Xp (rows, (h+4)(w+4)) at its affine map
    plus alpha times the field D (rows, 2, h, w) (not read when alpha = 0); the coordinates clamped to
    [-1, w] x [-1, h] (beyond, every neighbour is 0), pixels outside the image 0, values clamped to [0, 1]."""
    dt = out.dtype.type
    b = AUGMENT_BORDER
    y, x = np.meshgrid(np.arange(h, dtype=out.dtype), np.arange(w, dtype=out.dtype), indexing="ij")
    m = A.reshape(rows, 6)[:, :, None, None]
    sx = m[:, 0] * x + m[:, 1] * y + m[:, 2]
    sy = m[:, 3] * x + m[:, 4] * y + m[:, 5]
    if alpha != 0:
        field = D.reshape(rows, 2, h, w)
        sx += dt(alpha) * field[:, 0]
        sy += dt(alpha) * field[:, 1]
    np.clip(sx, dt(-1), dt(w), out=sx)
    np.clip(sy, dt(-1), dt(h), out=sy)
    x0, y0 = np.floor(sx), np.floor(sy)
    ax, ay = sx - x0, sy - y0
    W = w + 2 * b
    base = ((y0.astype(np.int64) + b) * W + (x0.astype(np.int64) + b)).reshape(rows, -1)
    flat = Xp.reshape(rows, -1)

    def at(offset):
        return np.take_along_axis(flat, base + offset, axis=1).reshape(rows, h, w)

    p00, p10, p01, p11 = at(0), at(1), at(W), at(W + 1)
    top, bottom = p00 + ax * (p10 - p00), p01 + ax * (p11 - p01)
    np.clip(top + ay * (bottom - top), dt(0), dt(1), out=out.reshape(rows, h, w))
