"""RMFA (SchoenbAt): coefficients, degree law, unbiased features, ppSBN, exact-attention and reference parity.

The Monte-Carlo checks vmap over many PRNG keys inside one jitted program per
configuration, and the per-kernel checks share programs that compute every
kernel at once, so the file stays fast.
"""

import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
from scipy import stats

from lra_jax import attention, base_config, errors
from lra_jax.attention import maclaurin as mc

HEADS, HEAD_DIM, LENGTH = 2, 8, 24
KERNELS = mc.DOT_KERNELS
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"

_EXACT = {
    "exp": np.exp,
    "inverse": lambda t: 1.0 / (1.0 - t),
    "log": lambda t: 1.0 - np.log1p(-t),
    "trigh": lambda t: np.cosh(t) + np.sinh(t),
    "sqrt": lambda t: 2.0 - np.sqrt(1.0 - t),
}


@functools.lru_cache(maxsize=None)
def _sympy_coefficients(kernel, degree=mc.DEFAULT_MAX_DEGREE):
  """Maclaurin coefficients from sympy's series of the reference's functions (rf_util/coeffients.py)."""
  x = sympy.symbols("x")
  function = {"exp": sympy.exp(x), "inverse": 1 / (1 - x), "log": 1 - sympy.log(1 - x),
              "trigh": sympy.cosh(x) + sympy.sinh(x), "sqrt": 2 - sympy.sqrt(1 - x)}[kernel]
  poly = sympy.Poly(sympy.series(function, x, 0, degree + 1).removeO(), x)
  return np.array([float(poly.coeff_monomial(x ** n)) for n in range(degree + 1)])


def _inputs(lengths=(LENGTH, 15), length=LENGTH, seed=0, scale=1.0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, HEADS, HEAD_DIM)
  q, k, v = (jax.random.normal(key, shape) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return scale * q, scale * k, v, mask


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


def _draw(nb_features=32, seed=3, head_dim=HEAD_DIM):
  return mc.draw_random_maclaurin(jax.random.key(seed), nb_features, head_dim)


# ---------------------------------------------------------------------------
# Independent float64 NumPy versions of the reference formulas.


def _np_pre_sbn(x):
  x = x - x.mean(-1, keepdims=True)
  x = x / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_reference_features(x, draw, kernel, max_degree=mc.DEFAULT_MAX_DEGREE):
  """Maclaurin.proj of the reference: per-degree PolynomialSketch blocks in ascending degree.

  The rows of our draw are mapped onto its per-degree Rademacher matrices
  R_{n,t} [d, D_n]: feature i's level-t vector is row offset_t + i.
  """
  degrees = np.asarray(draw["degrees"])
  rademacher = np.asarray(draw["rademacher"], np.float64)
  num_random = len(degrees)
  offsets = np.concatenate([[0], np.cumsum(mc.level_capacities(num_random, max_degree))])
  coefs = _sympy_coefficients(kernel, max_degree)
  pmf = 2.0 ** -(np.arange(1, max_degree + 1) + 1.0)
  pmf = pmf / pmf.sum()  # P_Measure: 2^-(n+1) / Z on n = 1..T
  blocks = []
  for n in np.unique(degrees):
    members = np.flatnonzero(degrees == n)
    sketch = np.ones(x.shape[:-1] + (len(members),))
    for t in range(n):
      sketch = sketch * (x @ rademacher[offsets[t] + members].T)
    sketch = sketch / np.sqrt(len(members))
    blocks.append(sketch * np.sqrt(coefs[n] / pmf[n - 1]) * np.sqrt(len(members)))
  features = np.concatenate(blocks, axis=-1) / np.sqrt(num_random)
  return np.concatenate([np.full(x.shape[:-1] + (1,), np.sqrt(coefs[0])), features], axis=-1)


def _np_reference_rmfa(q, k, v, mask, draw, kernel, gamma, causal, ppsbn=True, floor=1.0):
  """SchoenbAt.forward: PreSBN(Q, K), RMFA (d^-1/4, masked key features, rfa), PostSBN(gamma)."""
  q, k, v = (np.swapaxes(np.asarray(x, np.float64), 1, 2) for x in (q, k, v))  # [b, h, n, d]
  if ppsbn:
    q, k = _np_pre_sbn(q), _np_pre_sbn(k)
  scale = q.shape[-1] ** -0.25
  qf = _np_reference_features(q * scale, draw, kernel)
  kf = _np_reference_features(k * scale, draw, kernel) * np.asarray(mask)[:, None, :, None]
  if causal:  # rfa: prefix sums of the outer products, clamp_min(1.0)
    kv = np.cumsum(np.einsum("bhlp,bhld->bhlpd", kf, v), axis=2)
    num = np.einsum("bhlpd,bhlp->bhld", kv, qf)
    den = np.einsum("bhlp,bhlp->bhl", qf, np.cumsum(kf, axis=2))
  else:
    num = np.einsum("bhlp,bhpd->bhld", qf, np.einsum("bhlp,bhld->bhpd", kf, v))
    den = np.einsum("bhlp,bhp->bhl", qf, kf.sum(2))
  out = num / np.maximum(den, floor)[..., None]
  if ppsbn:
    out = np.asarray(gamma, np.float64) * out
  return np.swapaxes(out, 1, 2)


def _np_exact_attention(q, k, v, mask, kernel, ppsbn=True):
  """Exact kernelized attention sum_j f(q_i . k_j) v_j / sum_j f(q_i . k_j) over real keys."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  if ppsbn:
    q, k = _np_pre_sbn(q), _np_pre_sbn(k)
  scale = q.shape[-1] ** -0.25
  weights = _EXACT[kernel](np.einsum("bqhd,bkhd->bhqk", q * scale, k * scale))
  weights = weights * np.asarray(mask)[:, None, None, :]
  return np.einsum("bhqk,bkhd->bqhd", weights, v) / weights.sum(-1)[..., None].transpose(0, 2, 1, 3)


# ---------------------------------------------------------------------------
# Coefficients and the degree law.


@pytest.mark.parametrize("kernel", KERNELS)
def test_coefficients_match_sympy_series(kernel):
  ours = mc.maclaurin_coefficients(kernel)
  np.testing.assert_allclose(ours, _sympy_coefficients(kernel), rtol=1e-14, atol=0)
  assert np.all(ours > 0)  # Schoenberg: a positive-definite dot-product kernel


def test_coefficients_spot_values_and_aliases():
  # spectraformer_schoenbat.md §6.4.
  np.testing.assert_allclose(mc.maclaurin_coefficients("sqrt")[:5], [1, 0.5, 0.125, 0.0625, 0.0390625])
  np.testing.assert_allclose(mc.maclaurin_coefficients("sqrt")[20], 0.003215, rtol=1e-3)
  np.testing.assert_allclose(mc.maclaurin_coefficients("log")[20], 0.05)
  np.testing.assert_array_equal(mc.maclaurin_coefficients("trigh"), mc.maclaurin_coefficients("exp"))
  np.testing.assert_array_equal(mc.maclaurin_coefficients("logi"), mc.maclaurin_coefficients("log"))
  assert mc.maclaurin_coefficients("exp", 5).shape == (6,)


def test_degree_law_sorted_draws_within_capacities():
  probabilities = mc.degree_probabilities(20)
  np.testing.assert_allclose(probabilities, 2.0 ** -np.arange(1, 21) / (1 - 2.0 ** -20))
  np.testing.assert_allclose(probabilities.sum(), 1.0)
  draws = jax.jit(jax.vmap(lambda key: mc.draw_random_maclaurin(key, 128, HEAD_DIM)))(
      jax.random.split(jax.random.key(0), 200))
  degrees = np.asarray(draws["degrees"])
  assert degrees.min() >= 1 and degrees.max() <= 20
  assert np.all(np.diff(degrees, axis=1) <= 0)  # descending, as the level layout needs
  counts = np.bincount(degrees.ravel(), minlength=21)[1:]
  # Chi-square over degrees 1..5 and the rest pooled: i.i.d. draws from P.
  observed = np.append(counts[:5], counts[5:].sum())
  expected = degrees.size * np.append(probabilities[:5], probabilities[5:].sum())
  assert stats.chisquare(observed, expected).pvalue > 1e-4
  capacities = np.asarray(mc.level_capacities(127, 20))
  active = (degrees[:, None, :] > np.arange(20)[None, :, None]).sum(-1)
  assert np.all(active <= capacities)
  assert draws["rademacher"].shape == (200, 515, HEAD_DIM)
  assert set(np.unique(np.asarray(draws["rademacher"]))) == {-1.0, 1.0}
  signs = np.asarray(draws["rademacher"]).mean()
  assert abs(signs) < 5 / np.sqrt(draws["rademacher"].size)  # fair signs


@pytest.mark.parametrize("num_random", [1, 15, 127, 255])
def test_level_capacities_are_minimal_binomial_quantiles(num_random):
  capacities = mc.level_capacities(num_random, 20)
  assert capacities[0] == num_random and all(a >= b for a, b in zip(capacities, capacities[1:]))
  threshold = mc.CAPACITY_TAIL / 20
  for t, capacity in enumerate(capacities):
    above = (2.0 ** -t - 2.0 ** -20) / (1 - 2.0 ** -20)
    assert stats.binom.sf(capacity, num_random, above) <= threshold * (1 + 1e-6)
    if capacity > 0:
      assert stats.binom.sf(capacity - 1, num_random, above) > threshold
  if num_random == 127:
    assert sum(capacities) == 515


def test_draws_are_functions_of_the_key():
  once, again, other = (mc.draw_random_maclaurin(jax.random.key(seed), 16, HEAD_DIM) for seed in (9, 9, 10))
  for name in ("degrees", "rademacher"):
    np.testing.assert_array_equal(again[name], once[name])
  assert not np.array_equal(other["rademacher"], once["rademacher"])


# ---------------------------------------------------------------------------
# Unbiasedness of the features.

_PAIRS = 6
_KEYS = 1000


def _pairs():
  """x, y with |x| = |y| = 0.75: x.y in [-0.5625, 0.5625], inside every radius, finite variance."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(_PAIRS, HEAD_DIM))
  y = rng.normal(size=(_PAIRS, HEAD_DIM))
  y[0] = x[0]  # the largest inner product, t = 0.5625
  y[1] = -x[1]  # the smallest, t = -0.5625
  x, y = (0.75 * z / np.linalg.norm(z, axis=-1, keepdims=True) for z in (x, y))
  return x.astype(np.float32), y.astype(np.float32)


@functools.partial(jax.jit, static_argnames="nb_features")
def _kernel_estimates(x, y, keys, nb_features):
  """[kernel, key, pair] estimates phi(x) . phi(y), every kernel from the same draws."""

  def one(key):
    draw = mc.draw_random_maclaurin(key, nb_features, HEAD_DIM)
    return jnp.stack([jnp.sum(mc.maclaurin_features(x, draw["degrees"], draw["rademacher"], kernel)
                              * mc.maclaurin_features(y, draw["degrees"], draw["rademacher"], kernel),
                              axis=-1) for kernel in KERNELS])

  return jnp.moveaxis(jax.vmap(one)(keys), 0, 1)


@pytest.fixture(scope="module")
def estimates():
  x, y = _pairs()
  keys = jax.random.split(jax.random.key(42), _KEYS)
  small = np.asarray(_kernel_estimates(x, y, keys, 16), np.float64)
  large = np.asarray(_kernel_estimates(x, y, keys, 128), np.float64)
  return np.sum(x.astype(np.float64) * y, axis=-1), small, large


@pytest.mark.parametrize("kernel", KERNELS)
def test_feature_inner_products_are_unbiased(kernel, estimates):
  t, small, large = estimates
  index = KERNELS.index(kernel)
  assert np.all(np.abs(t) < 1) and np.ptp(t) > 1.0
  for samples in (small[index], large[index]):
    mean = samples.mean(0)
    bound = 5.0 * samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    # The degree-20 truncation error is below 0.5625^21 / (1 - 0.5625) < 1e-5.
    np.testing.assert_array_less(np.abs(mean - _EXACT[kernel](t)), bound + 1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_feature_error_falls_as_features_grow(kernel, estimates):
  t, small, large = estimates
  index = KERNELS.index(kernel)
  exact = _EXACT[kernel](t)
  mse_small = np.mean((small[index] - exact) ** 2)
  mse_large = np.mean((large[index] - exact) ** 2)
  # Variance is proportional to 1 / (nb_features - 1): 15 -> 127 random features.
  assert mse_large < mse_small / 4


def test_features_match_the_reference_construction():
  draw = _draw(64)
  rng = np.random.default_rng(1)
  x = (0.4 * rng.normal(size=(5, HEAD_DIM))).astype(np.float32)
  y = (0.4 * rng.normal(size=(7, HEAD_DIM))).astype(np.float32)
  for kernel in ("exp", "sqrt"):
    ours = [np.asarray(mc.maclaurin_features(z, draw["degrees"], draw["rademacher"], kernel),
                       np.float64) for z in (x, y)]
    ref = [_np_reference_features(z.astype(np.float64), draw, kernel) for z in (x, y)]
    assert ours[0].shape == ref[0].shape == (5, 64)
    np.testing.assert_allclose(ours[0][:, 0], ref[0][:, 0])  # the constant sqrt(a_0)
    # Same features up to their order (ours descending in degree): same Gram matrix.
    np.testing.assert_allclose(ours[0] @ ours[1].T, ref[0] @ ref[1].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sort(ours[0], -1), np.sort(ref[0], -1), rtol=1e-5, atol=1e-7)


def test_feature_gradient_is_exact_also_at_zero_factors():
  # The custom VJP (g f / p) against automatic differentiation of a plain
  # dense product, on rows with ordinary, zero and tiny entries.
  draw = _draw(32)
  degrees, rademacher = draw["degrees"], draw["rademacher"]
  capacities = mc.level_capacities(31, 20)
  offsets = np.concatenate([[0], np.cumsum(capacities)])
  rows = np.array([[offsets[t] + min(i, capacities[t] - 1) for i in range(31)] for t in range(20)])

  def dense(x):
    factors = jnp.einsum("...d,tid->...ti", x, rademacher[rows])
    factors = jnp.where(degrees[None, :] > jnp.arange(20)[:, None], factors, 1.0)
    return jnp.prod(factors, axis=-2)

  x = jnp.stack([0.5 * jax.random.normal(jax.random.key(0), (HEAD_DIM,)), jnp.zeros(HEAD_DIM),
                 jnp.full(HEAD_DIM, 2.0 ** -10)])
  ours = lambda x: mc.maclaurin_features(x, degrees, rademacher, "inverse")[..., 1:]
  cotangent = jax.random.normal(jax.random.key(1), (3, 31))

  @jax.jit
  def both(x):
    scale = ours(x[:1])[0] / dense(x[:1])[0]
    (a, vjp_a), (b, vjp_b) = jax.vjp(ours, x), jax.vjp(lambda x: dense(x) * scale, x)
    return a, b, vjp_a(cotangent)[0], vjp_b(cotangent)[0]

  value, dense_value, got, want = both(x)
  np.testing.assert_allclose(value, dense_value, rtol=1e-5, atol=1e-18)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(got[1]).sum()) > 0  # degree-1 features have a gradient at x = 0


# ---------------------------------------------------------------------------
# ppSBN.


def test_pre_sbn_keeps_scaled_dot_products_inside_the_radius():
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(64, HEAD_DIM)) + 3.0) * 10.0 ** rng.uniform(-3, 6, size=(64, 1))
  y = rng.normal(size=(64, HEAD_DIM)) * 1e4
  scale = HEAD_DIM ** -0.25
  qx, ky = (np.asarray(mc.pre_sbn(jnp.asarray(z, jnp.float32)), np.float64) * scale for z in (x, y))
  dots = qx @ ky.T
  assert np.all(np.abs(dots) <= HEAD_DIM ** -0.5 + 1e-6) and HEAD_DIM ** -0.5 < 1
  np.testing.assert_allclose(np.sum(qx * qx, -1), HEAD_DIM ** -0.5, rtol=1e-5)  # q = k: the bound
  normalised = np.asarray(mc.pre_sbn(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(normalised.mean(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(normalised, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(normalised, _np_pre_sbn(x), atol=1e-5)


def test_pre_sbn_of_a_constant_row_is_zero_with_finite_gradient():
  rows = jnp.array([[3.0] * HEAD_DIM, list(range(HEAD_DIM))])
  value, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(mc.pre_sbn(x) * jnp.arange(HEAD_DIM))))(rows)
  np.testing.assert_array_equal(jax.jit(mc.pre_sbn)(rows)[0], 0.0)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("kernel", [k for k in KERNELS if mc.RADIUS_OF_CONVERGENCE[k] == 1])
def test_ppsbn_makes_radius_one_kernels_finite_for_huge_inputs(kernel):
  q, k, v, mask = _inputs(scale=1e4)
  out = attention.rmfa_attention(q, k, v, mask, rng=jax.random.key(0), dot_kernel=kernel,
                                 nb_features=256)
  assert np.all(np.isfinite(out))
  exact = _np_exact_attention(q, k, v, mask, kernel)
  np.testing.assert_allclose(_real(out, mask), _real(exact, mask), atol=0.1)


def test_post_sbn_scale_and_sign_safe_power():
  x = jnp.array([[-2.0, -0.5, 0.0, 0.5, 3.0, 1.0, -1.0, 2.0]])
  gamma = jnp.arange(1.0, HEAD_DIM + 1)
  np.testing.assert_allclose(mc.post_sbn(x, gamma), gamma * x)
  np.testing.assert_allclose(mc.post_sbn(x, gamma, jnp.ones(HEAD_DIM)), gamma * x, rtol=1e-6)
  np.testing.assert_allclose(mc.post_sbn(x, jnp.ones(HEAD_DIM), jnp.full(HEAD_DIM, 2.0)),
                             jnp.sign(x) * x ** 2, rtol=1e-6)
  grads = jax.jit(jax.grad(lambda x, e: jnp.sum(mc.post_sbn(x, gamma, e)), argnums=(0, 1)))(
      x, jnp.full(HEAD_DIM, 0.5))
  assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------------------
# Attention against exact kernelized attention and the reference.


@functools.partial(jax.jit, static_argnames=("nb_features", "ppsbn", "kernels"))
def _attention_errors(q, k, v, mask, exact, keys, nb_features, ppsbn, kernels):
  """[kernel, key] RMS error over real positions, every kernel from the same draws."""
  real = mask[:, :, None, None]

  def one(key):
    draw = mc.draw_random_maclaurin(key, nb_features, HEAD_DIM)
    errors_ = []
    for index, kernel in enumerate(kernels):
      out = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw, dot_kernel=kernel,
                                     ppsbn=ppsbn)
      errors_.append(jnp.sqrt(jnp.sum(jnp.where(real, out - exact[index], 0.0) ** 2)
                              / (jnp.sum(mask) * HEADS * HEAD_DIM)))
    return jnp.stack(errors_)

  return jnp.moveaxis(jax.vmap(one)(keys), 0, 1)


@pytest.mark.parametrize("ppsbn,kernels", [(True, KERNELS), (False, ("exp", "sqrt"))])
def test_attention_approaches_exact_kernelized_attention(ppsbn, kernels):
  # Without ppSBN the inputs are kept small: q.k / sqrt(d) stays in [-0.6, 0.6].
  q, k, v, mask = _inputs(scale=1.0 if ppsbn else 0.25)
  exact = np.stack([_np_exact_attention(q, k, v, mask, kernel, ppsbn) for kernel in kernels])
  if not ppsbn:
    assert np.max(np.abs(np.einsum("bqhd,bkhd->bqhk", q, k))) / np.sqrt(HEAD_DIM) < 0.6
  # The kernel matters: exact differs from the plain average of the real values.
  mean_v = np.asarray(jnp.sum(jnp.where(mask[:, :, None, None], v, 0), 1) / mask.sum(1)[:, None, None])
  spread = np.sqrt(np.mean((_real(exact[0], mask) - _real(np.broadcast_to(mean_v[:, None], v.shape),
                                                          mask)) ** 2))
  keys = jax.random.split(jax.random.key(5), 8)
  exact = jnp.asarray(exact, jnp.float32)
  small = np.asarray(_attention_errors(q, k, v, mask, exact, keys, 16, ppsbn, kernels))
  large = np.asarray(_attention_errors(q, k, v, mask, exact, keys, 1024, ppsbn, kernels))
  for index, kernel in enumerate(kernels):
    assert large[index].mean() < small[index].mean() / 3, kernel
    assert large[index].mean() < 0.2 * spread, kernel


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("ppsbn", [True, False])
def test_matches_numpy_reference_given_the_same_draw(causal, ppsbn):
  q, k, v, mask = _inputs(scale=1.0 if ppsbn else 0.3)
  draw = _draw(32)
  gamma = jnp.linspace(0.5, 2.0, HEAD_DIM)
  for kernel in ("exp", "log"):
    ours = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw, dot_kernel=kernel,
                                    ppsbn=ppsbn, post_sbn_scale=gamma, causal=causal,
                                    causal_chunk=7)
    reference = _np_reference_rmfa(q, k, v, mask, draw, kernel, gamma, causal, ppsbn)
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------
# Masking, options, errors.


@pytest.mark.parametrize("causal,ppsbn", [(False, True), (True, True), (False, False)])
def test_padded_batch_equals_each_sequence_alone(causal, ppsbn):
  lengths = (LENGTH, 15, 4)
  q, k, v, mask = _inputs(lengths=lengths, scale=1.0 if ppsbn else 0.3)
  garbage = _inputs(lengths=lengths, seed=1, scale=100.0)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, g, x) for x, g in zip((q, k, v), garbage))
  draw = _draw(32)
  call = functools.partial(attention.rmfa_attention, random_maclaurin=draw, dot_kernel="sqrt",
                           ppsbn=ppsbn, causal=causal)
  batched = call(q2, k2, v2, mask)
  for row, n in enumerate(lengths):
    alone = call(q[row:row + 1, :n], k[row:row + 1, :n], v[row:row + 1, :n], mask[row:row + 1, :n])
    np.testing.assert_allclose(batched[row, :n], alone[0], rtol=1e-5, atol=1e-6)


def test_causal_outputs_ignore_later_tokens_and_chunking():
  q, k, v, mask = _inputs(lengths=(LENGTH, LENGTH))
  draw = _draw(32)
  out = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw, causal=True)
  later = jnp.arange(LENGTH)[None, :, None, None] >= 10
  changed = attention.rmfa_attention(*(jnp.where(later, -x, x) for x in (q, k, v)), mask,
                                     random_maclaurin=draw, causal=True)
  np.testing.assert_allclose(changed[:, :10], out[:, :10], rtol=1e-6)
  assert not np.allclose(changed[:, 10:], out[:, 10:])
  for chunk in (1, 5):
    np.testing.assert_allclose(
        attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw, causal=True, causal_chunk=chunk),
        out, rtol=1e-5, atol=1e-6)
  # Non-causal outputs do depend on later tokens.
  bidirectional = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw)
  assert not np.allclose(bidirectional[:, :10], out[:, :10])


def test_denominator_floor_binds_only_below_it():
  # One real key: out = den v / max(den, floor) with den = phi(q).phi(k) ~ f(q.k) < 1.
  q, k, v, _ = _inputs(lengths=(LENGTH,))
  k = k.at[:, 0].set(-q[:, 0])  # q.k = -1/sqrt(d) after PreSBN: f < 1 for every kernel
  mask = jnp.arange(LENGTH)[None] < 1
  draw = _draw(256)
  scale = HEAD_DIM ** -0.25
  phi = lambda x: mc.maclaurin_features(scale * mc.pre_sbn(x), draw["degrees"], draw["rademacher"])
  den = np.asarray(jax.jit(lambda q, k: jnp.sum(phi(q) * phi(k), -1))(q[:, 0], k[:, 0]))  # [b, h]
  assert np.all((den > 0.3) & (den < 1.0))
  clamped = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw)
  np.testing.assert_allclose(clamped[:, 0], den[..., None] * v[:, 0], rtol=1e-4)
  free = attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw, denominator_floor=1e-6)
  np.testing.assert_allclose(free[:, 0], v[:, 0], rtol=1e-4)
  # No real key at all: zero output, not NaN.
  none = attention.rmfa_attention(q, k, v, jnp.zeros_like(mask), random_maclaurin=draw)
  np.testing.assert_array_equal(none, 0.0)


def test_linear_cost_no_length_by_length_array():
  length = 192  # a multiple of the causal block, equal to no other dimension
  q, k, v, mask = _inputs(lengths=(length, 50), length=length)
  for causal in (False, True):
    jaxpr = jax.make_jaxpr(functools.partial(attention.rmfa_attention, rng=jax.random.key(0),
                                             causal=causal))(q, k, v, mask)
    shapes = _all_shapes(jaxpr.jaxpr)
    assert shapes and not [s for s in shapes if s.count(length) >= 2], causal


def _all_shapes(jaxpr):
  shapes = []
  for eqn in jaxpr.eqns:
    shapes.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          shapes.extend(_all_shapes(getattr(inner, "jaxpr", inner)))
  return shapes


def _module_run(module, seed_init=1, seed_apply=2):
  q, k, v, mask = _inputs()
  variables = module.init({"params": jax.random.key(0), attention.ATTENTION_RNG: jax.random.key(seed_init)},
                          q, k, v, mask, deterministic=True)
  out = module.apply(variables, q, k, v, mask, deterministic=False,
                     rngs={attention.ATTENTION_RNG: jax.random.key(seed_apply)})
  return variables, out


def test_module_fixed_features_live_in_constants():
  module = mc.RMFAttention()
  variables, out = _module_run(module)
  stored = variables[attention.CONSTANTS]["random_maclaurin"]
  assert stored["degrees"].shape == (127,) and stored["degrees"].dtype == jnp.int32
  assert stored["rademacher"].shape == (515, HEAD_DIM)
  np.testing.assert_array_equal(variables["params"]["post_sbn_scale"], np.ones(HEAD_DIM))
  _, out_other_key = _module_run(module, seed_apply=9)
  np.testing.assert_array_equal(out, out_other_key)  # the apply-time key is unused
  q, k, v, mask = _inputs()
  direct = attention.rmfa_attention(q, k, v, mask, random_maclaurin=stored)
  np.testing.assert_allclose(out, direct, rtol=1e-6)
  bad = {**variables, attention.CONSTANTS: {"random_maclaurin": _draw(32)}}
  with pytest.raises(ValueError, match="re-initialise"):
    module.apply(bad, q, k, v, mask, deterministic=True)


def test_module_redraw_features_per_call():
  module = mc.RMFAttention(redraw_features=True, nb_features=32)
  variables, out = _module_run(module)
  assert attention.CONSTANTS not in variables
  _, out_same = _module_run(module)
  _, out_other = _module_run(module, seed_apply=9)
  np.testing.assert_array_equal(out, out_same)
  assert not np.allclose(out, out_other)


def test_module_ppsbn_variants_and_parameters():
  # maclauformer (ppSBN) vs transformer (none): parameters and outputs.
  with_sbn, out_sbn = _module_run(mc.RMFAttention(nb_features=32))
  without, out_plain = _module_run(mc.RMFAttention(nb_features=32, ppsbn=False))
  assert "params" not in without and set(with_sbn["params"]) == {"post_sbn_scale"}
  q, k, v, mask = _inputs()
  draw = with_sbn[attention.CONSTANTS]["random_maclaurin"]
  np.testing.assert_allclose(out_plain, attention.rmfa_attention(q, k, v, mask, random_maclaurin=draw,
                                                                 ppsbn=False), rtol=1e-6)
  assert not np.allclose(out_plain, out_sbn)
  module = mc.RMFAttention(nb_features=32)
  doubled = {**with_sbn, "params": {"post_sbn_scale": 2.0 * jnp.ones(HEAD_DIM)}}
  out_doubled = module.apply(doubled, q, k, v, mask, deterministic=True)
  np.testing.assert_allclose(out_doubled, 2.0 * out_sbn, rtol=1e-6)
  # PostSBN's gamma is trained: it gets a gradient, the constants get none.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({**with_sbn, "params": p}, q, k, v, mask,
                                                           deterministic=True) ** 2)))(with_sbn["params"])
  assert float(jnp.abs(grads["post_sbn_scale"]).sum()) > 0
  powered, out_powered = _module_run(mc.RMFAttention(nb_features=32, post_sbn_power=True))
  assert set(powered["params"]) == {"post_sbn_scale", "post_sbn_exponent"}
  np.testing.assert_allclose(out_powered, out_sbn, rtol=1e-5, atol=1e-7)  # exponent 1 at init
  with pytest.raises(ValueError, match="needs ppsbn=True"):
    _module_run(mc.RMFAttention(ppsbn=False, post_sbn_power=True))


@pytest.mark.parametrize("kwargs,message", [
    (dict(dot_kernel="cosh"), "Unknown dot_kernel"),
    (dict(nb_features=1), "nb_features must be an integer >= 2"),
    (dict(max_degree=0), "max_degree must be a positive integer"),
    (dict(denominator_floor=0.0), "denominator_floor must be positive"),
    (dict(rng=None), "needs random features or a PRNG key"),
    (dict(random_maclaurin="draw32", nb_features=64), "disagrees with the draw"),
    (dict(random_maclaurin="draw32_wide"), "head_dim is 8"),
])
def test_bad_hyperparameters_say_what_to_do(kwargs, message):
  q, k, v, mask = _inputs()
  kwargs = {"rng": jax.random.key(0), **kwargs}
  if kwargs.get("random_maclaurin") == "draw32":
    kwargs["random_maclaurin"] = _draw(32)
  elif kwargs.get("random_maclaurin") == "draw32_wide":
    kwargs["random_maclaurin"] = _draw(32, head_dim=16)
  with pytest.raises(ValueError, match=message):
    attention.rmfa_attention(q, k, v, mask, **kwargs)


def test_features_reject_a_draw_of_another_size():
  draw = _draw(32)
  with pytest.raises(ValueError, match="draw them with draw_random_maclaurin"):
    mc.maclaurin_features(jnp.ones(HEAD_DIM), draw["degrees"][:-1], draw["rademacher"])


def test_registered_with_reference_defaults():
  assert attention.get("rmfa") is mc.RMFAttention
  defaults = attention.default_hyperparameters("rmfa")
  assert defaults == dict(dot_kernel="exp", nb_features=128, max_degree=20, redraw_features=False,
                          ppsbn=True, post_sbn_power=False, denominator_floor=1.0, causal=False)
  assert issubclass(mc.RMFAttention, nn.Module)


# ---------------------------------------------------------------------------
# Config files.


def _load_config(task, *args):
  path = CONFIG_DIR / f"{task}_rmfa.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize("task", ["listops", "text", "retrieval"])
def test_config_files_take_kernel_and_protocol(task):
  default = _load_config(task)
  assert (default.task, default.model.attention, default.protocol) == (task, "rmfa", "official")
  assert default.model.attention_kwargs.dot_kernel == "exp"
  assert default.train.num_train_steps == base_config.get_config(task, "rmfa").train.num_train_steps
  for kernel in KERNELS:
    for protocol in base_config.PROTOCOLS:
      config = _load_config(task, f"{kernel},{protocol}")
      assert (config.model.attention_kwargs.dot_kernel, config.protocol) == (kernel, protocol)
      if protocol == "pytorch_lra":
        assert config.train.num_train_steps == 10_000  # SchoenbAt config.py, not Skyformer's 50k
      mc.RMFAttention(**config.model.attention_kwargs.to_dict())  # valid module kwargs
  assert _load_config(task, "pytorch_lra,logi").model.attention_kwargs.dot_kernel == "log"
  for bad in ("cosh", "exp,sqrt", "exp,torch", "official,pytorch_lra"):
    with pytest.raises(errors.ConfigError, match="KERNEL"):
      _load_config(task, bad)
