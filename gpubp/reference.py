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
from scipy.special import expit as _expit

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
    return _expit(z, out=out)


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


for _name, _f, _prime in (("sigmoid", sigmoid, sigmoid_prime_from_output), ("tanh", tanh, tanh_prime_from_output),
                          ("relu", relu, relu_prime_from_output)):
    for _tile in ("s", "l"):
        globals()[f"layer_forward_{_name}_{_tile}"] = _layer_forward_kernel(_f, _name, _tile)
        globals()[f"layer_delta_{_name}_{_tile}"] = _layer_delta_kernel(_prime, _name, _tile)


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
