"""Spectraformer's component functions: kernel estimation with every weight matrix, parameters, options.

The Monte-Carlo tests share one jitted program (`_monte_carlo`, cached): for
every weight matrix, N draws of W (vmapped over keys) with 64 rows and, as the
m = 16 draw, their first 16 rows (whole blocks / the first Sobol' points /
i.i.d. entries: a valid 16-row draw of every construction but mm, which is
whitened over all its rows and drawn separately); then the raw estimates
phi(x).phi(y) (no stabilisers, eps 0) of the five maps on 3 x 3 pairs in
d = 4, against K(x, y) = exp(-||x - y||^2 / 2).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from lra_jax.attention import component_functions as cf
from lra_jax.attention import spectraformer, weight_matrices

DIM, NUM_DRAWS, GERF_A = 4, 8000, -0.05
MAPS, MATRICES = cf.COMPONENT_FUNCTIONS, weight_matrices.WEIGHT_MATRICES
# Unbiased in law (rows exactly N(0, I); sgq's quadrature matches the Gaussian
# moments to order 15): only float32 rounding beyond the Monte-Carlo bound.
# sorf / rom: Hadamard products give few row directions at d = 4 (measured
# bias <= 0.9% here, 30% for trigrf at norms near 1); mm: whitening over m
# rows biases by O(1/m) (<= 1% at m = 16 here; see the mm test).
RELATIVE_BIAS = {**{name: 2e-3 for name in MATRICES}, "sorf": 0.015, "rom": 0.015, "mm": 0.015}


def _points(seed, count=3, scale=0.5):
  """Points of norms 0.2 .. 0.5 (moderate kernel values, light-tailed estimators)."""
  p = np.random.default_rng(seed).normal(size=(count, DIM))
  return p / np.linalg.norm(p, axis=-1, keepdims=True) * np.linspace(0.4, 1.0, count)[:, None] * scale


X, Y = _points(0), _points(1)
KERNEL = np.exp(-0.5 * ((X[:, None] - Y[None]) ** 2).sum(-1))


def _as_tokens(points):  # [n, d] -> [batch 1, n, heads 1, d]
  return jnp.asarray(points, jnp.float32)[None, :, None]


def _raw_kernel(feature_map, w, x=X, y=Y, kernel="gaussian", **kwargs):
  qf, kf = cf.query_key_features(feature_map, _as_tokens(x), _as_tokens(y), w, None, kernel=kernel,
                                 gerf_a=kwargs.pop("gerf_a", GERF_A), data_normalizer=1.0,
                                 numerical_stabilizer=0.0, stabilize=False, **kwargs)
  return jnp.einsum("bihm,bjhm->ij", qf, kf)


_OPTIMISED = {"xla_backend_optimization_level": 2, "xla_llvm_disable_expensive_passes": False}


def _row_contributions(feature_map, w):
  """m phi_f(x) phi_f(y) per row f of W ([m, 3, 3]); their mean is the estimate."""
  qf, kf = cf.query_key_features(feature_map, _as_tokens(X), _as_tokens(Y), w, None,
                                 gerf_a=GERF_A, data_normalizer=1.0, numerical_stabilizer=0.0,
                                 stabilize=False)
  products = w.shape[0] * jnp.einsum("bihm,bjhm->mij", qf, kf)
  if feature_map == "trigrf":  # cos and sin halves of one row
    products = products[:w.shape[0]] + products[w.shape[0]:]
  return products


@functools.lru_cache(maxsize=None)
def _monte_carlo():
  """One program for every weight matrix (the feature maps compile once, vmapped over them).

  Returns:
    estimates: [matrices, N, 2 (m = 16, 64), maps, 3, 3] raw estimates;
    large: per map (query features, key features, denominators), each
      [matrices, ...]: stabilised features (default eps) of inputs of norm ~12
      after d^(-1/4), with the first 16-row draw of each matrix.
  """

  @jax.jit
  def run(key):
    draw_keys = jax.random.split(key, NUM_DRAWS)

    def draws(weight_matrix):
      def one(key):
        key16, key64 = jax.random.split(key)
        w64 = spectraformer.draw_projection(key64, weight_matrix, 64, DIM)
        w16 = (spectraformer.draw_projection(key16, weight_matrix, 16, DIM)
               if weight_matrix == "mm" else w64[:16])
        return w16, w64
      return jax.vmap(one)(draw_keys)

    w16, w64 = (jnp.stack(ws) for ws in zip(*[draws(name) for name in MATRICES]))

    def estimates(ws):  # one matrix: [N, 16, d], [N, 64, d]
      return jax.vmap(lambda w16, w64: jnp.stack([
          jnp.stack([_row_contributions(name, w).mean(0) for name in MAPS]) for w in (w16, w64)]))(*ws)

    big = 12.0 * jax.random.normal(key, (2, 2, 9, 1, DIM))

    def large(w):
      out = []
      for name in MAPS:
        qf, kf = cf.query_key_features(name, big[0], big[1], w, gerf_a=0.1)
        out.append((qf, kf, jnp.einsum("bnhm,bhm->bnh", qf, kf.sum(1))))
      return out

    return jax.lax.map(estimates, (w16, w64)), jax.vmap(large)(w16[:, 0])

  return jax.tree.map(lambda a: np.asarray(a, np.float64), run(jax.random.key(0)))


def _grid(weight_matrix):
  """Raw estimates [N, 2 (m = 16, 64), maps, 3, 3] from N draws of `weight_matrix`."""
  return _monte_carlo()[0][MATRICES.index(weight_matrix)]


def _large_input_features(feature_map, weight_matrix):
  qf, kf, den = _monte_carlo()[1][MAPS.index(feature_map)]
  index = MATRICES.index(weight_matrix)
  return qf[index], kf[index], den[index]


def _mse(estimates):  # per draw
  return ((estimates - KERNEL) ** 2).mean(axis=(-1, -2))


@pytest.mark.parametrize("weight_matrix", MATRICES)
@pytest.mark.parametrize("feature_map", MAPS)
def test_estimates_the_gaussian_kernel_without_bias(feature_map, weight_matrix):
  estimates = _grid(weight_matrix)[:, 0, MAPS.index(feature_map)]
  standard_error = estimates.std(0) / np.sqrt(NUM_DRAWS)
  bias = np.abs(estimates.mean(0) - KERNEL)
  bound = 5 * standard_error + RELATIVE_BIAS[weight_matrix] * KERNEL
  assert np.all(bias < bound), (bias / KERNEL, standard_error)


@pytest.mark.parametrize("feature_map", MAPS)
def test_moment_matching_bias_falls_with_the_number_of_features(feature_map):
  estimates = _grid("mm")[:, :, MAPS.index(feature_map)]
  bias16, bias64 = np.abs(estimates.mean(0) - KERNEL).sum((-1, -2))
  assert bias64 < 0.5 * bias16, (bias16, bias64)


@pytest.mark.parametrize("weight_matrix", MATRICES)
@pytest.mark.parametrize("feature_map", MAPS)
def test_mean_squared_error_falls_with_the_number_of_features(feature_map, weight_matrix):
  estimates = _grid(weight_matrix)[:, :, MAPS.index(feature_map)]
  mse16, mse64 = _mse(estimates[:, 0]).mean(), _mse(estimates[:, 1]).mean()
  assert mse64 < 0.5 * mse16, (mse16, mse64)  # 1/m: a quarter (qmc: less)


@pytest.mark.parametrize("structured", ["orf", "sorf", "qmc"])
@pytest.mark.parametrize("feature_map", MAPS)
def test_orthogonal_and_quasi_monte_carlo_beat_iid_gaussian(feature_map, structured):
  index = MAPS.index(feature_map)
  iid = _mse(_grid("gaus")[:, 0, index]).mean()
  assert _mse(_grid(structured)[:, 0, index]).mean() < iid


@pytest.mark.parametrize("weight_matrix", MATRICES)
@pytest.mark.parametrize("feature_map", MAPS)
def test_large_inputs_give_finite_features_and_positive_maps_positive_denominators(
    feature_map, weight_matrix):
  qf, kf, den = _large_input_features(feature_map, weight_matrix)
  assert np.all(np.isfinite(qf)) and np.all(np.isfinite(kf)) and np.all(np.isfinite(den))
  if feature_map in cf.POSITIVE_COMPONENT_FUNCTIONS:
    assert qf.min() > 0 and kf.min() > 0 and den.min() > 0
    # Stabilised: every query's largest feature is m^(-1/2) (1 + eps), up to
    # the rounding of exponents of magnitude ~100.
    np.testing.assert_allclose(qf.max(-1), 0.25 * (1 + 1e-4), rtol=1e-4)
  else:
    assert qf.min() < 0  # trigrf is signed


def test_softmax_kernel_switch_estimates_exp_of_the_dot_product():
  # exp(x.y) = K(x, y) exp(||x||^2 / 2 + ||y||^2 / 2): the softmax-kernel
  # estimate is the Gaussian one times that factor, draw by draw, so it is
  # unbiased wherever the Gaussian one is (tested above).
  factor = np.exp(0.5 * (X ** 2).sum(-1)[:, None] + 0.5 * (Y ** 2).sum(-1)[None])
  np.testing.assert_allclose(factor * KERNEL, np.exp(X @ Y.T), rtol=1e-12)
  both = jax.jit(lambda w: [(_raw_kernel(name, w, kernel="softmax"), _raw_kernel(name, w))
                            for name in MAPS])
  for softmax, gaussian in both(weight_matrices.draw_weight_matrix("gaus", jax.random.key(2), 16,
                                                                   DIM)):
    np.testing.assert_allclose(softmax, factor * np.asarray(gaussian), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Data-dependent parameters.


def _log_second_moment(a, phi, dim):
  """Mean over pairs of log E[(f(x) f(y))^2] / K^2 for GERF (s = +1), up to constants."""
  return dim * np.log(1 - 4 * a) - dim / 2 * np.log(1 - 8 * a) + (2 * (1 - 4 * a) / (1 - 8 * a) - 1) * phi


@pytest.mark.parametrize("phi", [0.0, 0.3, 5.0, 80.0])
def test_optimal_positive_a_minimises_the_mean_log_second_moment(phi):
  a = float(cf.optimal_positive_a(jnp.float32(phi), 32))
  if phi == 0:
    assert a == 0.0  # posrf
  else:
    best = optimize.minimize_scalar(_log_second_moment, bounds=(-50, 0.124), args=(phi, 32),
                                    method="bounded", options=dict(xatol=1e-10)).x
    np.testing.assert_allclose(a, best, rtol=1e-4)
    # The paper's rho* form (spectraformer_schoenbat.md §2.3).
    rho = (np.sqrt((2 * phi + 32) ** 2 + 8 * 32 * phi) - (2 * phi + 32)) / (4 * phi)
    np.testing.assert_allclose(a, (1 - 1 / rho) / 8, rtol=1e-4)


def _np_optimal_a(phi, dim=DIM):
  rho = (np.sqrt((2 * phi + dim) ** 2 + 8 * dim * phi) - (2 * phi + dim)) / (4 * phi)
  return (1 - 1 / rho) / 8


def test_oprf_statistic_is_the_mean_over_all_real_pairs_per_batch_and_head():
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (2, 7, 3, DIM))
  y = jax.random.normal(keys[1], (2, 7, 3, DIM))
  mask = jnp.arange(7)[None] < jnp.asarray([7, 4])[:, None]
  a, per_position = jax.jit(lambda x, y: (
      cf.oprf_parameter(x, y, query_mask=mask, key_mask=mask),
      cf.oprf_parameter(x, y, key_mask=mask, per_position=True)))(x, y)
  a, per_position = np.asarray(a), np.asarray(per_position)
  assert a.shape == (2, 1, 3, 1)
  xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
  for b, length in enumerate((7, 4)):
    for h in range(3):
      pairs = xn[b, :length, h][:, None] + yn[b, :length, h][None]
      phi = (pairs ** 2).sum(-1).mean()
      np.testing.assert_allclose(a[b, 0, h, 0], _np_optimal_a(phi), rtol=1e-5)
  # Reference quirk: per (head, position), batch means, query j paired with key j.
  assert per_position.shape == (1, 7, 3, 1)
  yz = yn * np.asarray(mask)[:, :, None, None]
  phi = ((xn ** 2).sum(-1).mean(0) + (yz ** 2).sum(-1).mean(0)
         + 2 * (xn.mean(0) * yz.mean(0)).sum(-1))  # [7, 3]
  np.testing.assert_allclose(per_position[0, :, :, 0], _np_optimal_a(phi), rtol=1e-5)


def test_saderf_scales_balance_queries_and_keys_and_keep_dot_products():
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (2, 6, 2, DIM)) * jnp.asarray([0.3, 1.0, 3.0, 1.0])
  y = jax.random.normal(keys[1], (2, 6, 2, DIM))
  x = x.at[0, :, 1, 3].set(0.0)  # a coordinate that is zero for every query
  mask = jnp.arange(6)[None] < jnp.asarray([6, 3])[:, None]
  scales = functools.partial(cf.saderf_scales, query_mask=mask, key_mask=mask)
  psi, grad = jax.jit(lambda x: (scales(x, y), jax.grad(lambda x: scales(x, y).sum())(x)))(x)
  real = np.asarray(mask)[:, :, None, None]
  xs, ys = np.asarray(x * psi) * real, np.asarray(y / psi) * real
  # Sum_i (psi x_il)^2 = sum_j (y_jl / psi)^2 over real tokens, per coordinate.
  balanced = np.abs((xs ** 2).sum(1) - (ys ** 2).sum(1))
  balanced[0, 1, 3] = 0.0
  assert balanced.max() < 1e-4 * (ys ** 2).sum(1).max()
  assert float(psi[0, 0, 1, 3]) == 1.0
  np.testing.assert_allclose(np.einsum("bihd,bjhd->bhij", xs, ys),
                             np.einsum("bihd,bjhd->bhij", np.asarray(x) * real, np.asarray(y) * real),
                             rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------
# Options and stabilisers.


def test_d_factor_is_the_only_difference_when_dropped():
  cases = (("gerf", GERF_A), ("gerf", 0.1), ("saderf", 0.1), ("oprf", GERF_A), ("posrf", GERF_A))

  @jax.jit
  def kernels(w):
    return [(_raw_kernel(name, w, gerf_a=a), _raw_kernel(name, w, gerf_a=a, drop_d_factor=True))
            for name, a in cases] + [cf.oprf_parameter(_as_tokens(X), _as_tokens(Y))]

  *pairs, oprf_a = kernels(weight_matrices.draw_weight_matrix("gaus", jax.random.key(3), 16, DIM))
  for (name, a), (full, dropped) in zip(cases, pairs):
    a = {"oprf": float(oprf_a.squeeze()), "posrf": 0.0}.get(name, a)  # oprf: A from the data
    np.testing.assert_allclose(np.asarray(dropped, np.float64) * (1 - 4 * a) ** (DIM / 2), full,
                               rtol=1e-5)  # D^2


def test_stabilisers_cancel_in_normalised_attention_except_per_token_for_keys():
  keys = jax.random.split(jax.random.key(4), 3)
  q = 2.0 * jax.random.normal(keys[0], (2, 5, 2, DIM))
  k = 2.0 * jax.random.normal(keys[1], (2, 5, 2, DIM))
  w = weight_matrices.draw_weight_matrix("orf", keys[2], 16, DIM)

  settings = [(name, stabilize, stabilizer) for name in MAPS
              for stabilize, stabilizer in ((False, "sequence"), (True, "sequence"),
                                            (True, "global"), (True, "token"))]

  @jax.jit
  def features():
    return [cf.query_key_features(name, q, k, w, gerf_a=GERF_A, stabilize=stabilize,
                                  key_stabilizer=stabilizer, numerical_stabilizer=0.0)
            for name, stabilize, stabilizer in settings]

  normalised = {}
  for setting, (qf, kf) in zip(settings, features()):
    scores = np.einsum("bihm,bjhm->bhij", np.asarray(qf, np.float64), np.asarray(kf, np.float64))
    normalised[setting] = scores / scores.sum(-1, keepdims=True)
    if setting[2] == "token" and setting[0] != "trigrf":
      np.testing.assert_allclose(np.asarray(kf).max(-1), 0.25, rtol=1e-6)  # each key's max is 1
  for name in MAPS:
    raw = normalised[name, False, "sequence"]
    for stabilizer in ("sequence", "global"):
      np.testing.assert_allclose(normalised[name, True, stabilizer], raw, rtol=2e-4, atol=1e-7)
    # Per-token key maxima reweight the keys: another attention (trigrf has none).
    differs = np.abs(normalised[name, True, "token"] - raw).max() > 1e-2
    assert differs == (name != "trigrf"), name


def test_reference_trigrf_renormalizer_formula():
  x = jax.random.normal(jax.random.key(5), (1, 4, 2, DIM))
  w = weight_matrices.draw_weight_matrix("gaus", jax.random.key(6), 8, DIM)
  features = jax.jit(functools.partial(cf.trigonometric_features, reference_renormalizer=True))(x, w)
  xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64)
  u = xn @ wn.T
  z = np.concatenate([np.cos(u), np.sin(u)], -1)
  expected = z * np.exp(np.linalg.norm(xn, axis=-1, keepdims=True) - z.max(-1, keepdims=True))
  np.testing.assert_allclose(features, expected / np.sqrt(8), rtol=1e-5, atol=1e-6)


def test_gerf_parameter_shapes_and_clamp():
  w = weight_matrices.draw_weight_matrix("gaus", jax.random.key(7), 16, DIM)
  x = jax.random.normal(jax.random.key(8), (1, 3, 2, DIM))
  per_head, number, above, bound, per_position, posrf = jax.jit(lambda x: [
      cf.query_key_features(name, x, x, w, gerf_a=a) for name, a in (
          ("gerf", jnp.asarray([0.05, 0.05])), ("gerf", 0.05), ("gerf", 0.2),
          ("gerf", cf.GERF_A_BOUND), ("gerf", jnp.zeros((2, 3))), ("posrf", None))])(x)
  np.testing.assert_allclose(per_head[0], number[0], rtol=1e-6)
  # Above the bound (finite variance needs A < 1/8) A is clamped, as the reference's gerf.
  np.testing.assert_array_equal(above[1], bound[1])
  np.testing.assert_allclose(per_position[0], posrf[0], rtol=1e-6)
  with pytest.raises(ValueError, match="A must be"):
    cf.query_key_features("gerf", x, x, w, gerf_a=jnp.zeros((5,)))
  with pytest.raises(ValueError, match="needs its parameter A"):
    cf.query_key_features("saderf", x, x, w)
  draws = np.asarray(cf.draw_gerf_parameter(jax.random.key(0), (4000,)))
  assert draws.min() >= -cf.GERF_A_BOUND and draws.max() <= cf.GERF_A_BOUND
  assert abs(draws.mean()) < 0.005 and draws.max() > 0.12 and draws.min() < -0.12


@pytest.mark.parametrize("what, kwargs", [
    ("feature_map", dict(feature_map="softmax")), ("kernel", dict(kernel="rbf")),
    ("key_stabilizer", dict(key_stabilizer="none"))])
def test_unknown_choices_list_the_valid_values(what, kwargs):
  x = jnp.ones((1, 2, 1, DIM))
  w = jnp.ones((8, DIM))
  arguments = dict(feature_map="posrf") | kwargs
  with pytest.raises(ValueError, match=f"Unknown {what} .*valid values: "):
    cf.query_key_features(arguments.pop("feature_map"), x, x, w, **arguments)


def test_features_are_float32_under_bfloat16():
  x = jax.ShapeDtypeStruct((1, 3, 2, DIM), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((8, DIM), jnp.float32)
  for name in MAPS:
    qf, kf = jax.eval_shape(lambda x, w: cf.query_key_features(name, x, x, w, gerf_a=0.05), x, w)
    assert qf.dtype == kf.dtype == jnp.float32


def test_cos_sin_matches_numpy_in_value_and_derivative():
  u = np.concatenate([np.linspace(-20.0, 20.0, 4001), [0.0, np.pi, -np.pi / 2, 1e3, -3e3, 9e3]])
  u = u.astype(np.float32)
  cos, sin = cf.cos_sin(jnp.asarray(u))
  exact = u.astype(np.float64)
  np.testing.assert_allclose(cos, np.cos(exact), atol=4e-7)
  np.testing.assert_allclose(sin, np.sin(exact), atol=4e-7)
  d_cos, d_sin = (jax.vmap(jax.grad(lambda x, i=i: cf.cos_sin(x)[i]))(jnp.asarray(u[:4001]))
                  for i in (0, 1))
  np.testing.assert_allclose(d_cos, -np.sin(exact[:4001]), atol=4e-7)
  np.testing.assert_allclose(d_sin, np.cos(exact[:4001]), atol=4e-7)
