"""Spectraformer's weight matrices: laws of the rows, structure, reference defects, estimator error.

Compiling dominates the cost here, so the draws come from a few jitted
programs that are cached and shared between the tests.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy import special

from lra_jax.attention import weight_matrices as wm

FIXED = tuple(name for name in wm.WEIGHT_MATRICES if name not in wm.LEARNABLE_WEIGHT_MATRICES)
# Four full blocks of d = 8 rows and a cut fifth; m is not a power of two.
M, D = 36, 8
# d = 6 pads the Hadamard-based constructions to n = 8.
PADDED = (20, 6)
NUM_KEYS = 1024


def _keys(seed=0):
  """NUM_KEYS keys; keys 0 and 1 are equal (determinism), the others distinct."""
  keys = jax.random.split(jax.random.key(seed), NUM_KEYS)
  return keys.at[1].set(keys[0])


def _draws(name, num_features=M, dim=D, reference=False):
  """[NUM_KEYS, m, d] numpy draws from one jitted, vmapped program per configuration."""
  return _cached_draws(name, num_features, dim, reference)


@functools.lru_cache(maxsize=None)
def _cached_draws(name, num_features, dim, reference):
  draw = functools.partial(wm.draw_weight_matrix, name, num_features=num_features, dim=dim,
                           reference_construction=reference)
  return np.asarray(jax.jit(jax.vmap(draw))(_keys()))


@functools.lru_cache(maxsize=None)
def _reference_draws():
  """Single reference-construction draws from `_keys()[0]`, one program for all of them."""
  specs = {"scrf_128_32": ("scrf", 128, 32), "scrf_16_8": ("scrf", 16, 8),
           "scrf_8_8": ("scrf", 8, 8), "scrf_16_40": ("scrf", 16, 40),
           "sorf_32_32": ("sorf", 32, 32), "rom_32_32": ("rom", 32, 32),
           "sorf_128_32": ("sorf", 128, 32), "qmc": ("qmc", M, D),
           "fastfood_fixed": ("fastfood_fixed", M, D)}

  def draw_all(key):
    out = {label: wm.draw_weight_matrix(name, key, m, d, reference_construction=True)
           for label, (name, m, d) in specs.items()}
    out["sorf_128_32_corrected"] = wm.draw_weight_matrix("sorf", key, 128, 32)
    out["fastfood_learnable_32_32"] = wm.fastfood_weight_matrix(
        wm.init_fastfood_parameters(key, 32, 32, reference_construction=True),
        wm.draw_fastfood_permutation(key, 32, 32), 32, reference_construction=True)
    return out

  return {k: np.asarray(v, np.float64) for k, v in jax.jit(draw_all)(_keys()[0]).items()}


# ---------------------------------------------------------------------------
# Every matrix: shape, determinism, marginal law of the rows.


@pytest.mark.parametrize("name, num_features, dim",
                         [(name, M, D) for name in FIXED]
                         + [(name, *PADDED) for name in ("sorf", "rom", "fastfood_fixed")])
def test_rows_are_marginally_standard_normal(name, num_features, dim):
  draws = _draws(name, num_features, dim)
  assert draws.shape == (NUM_KEYS, num_features, dim) and draws.dtype == np.float32
  assert np.all(np.isfinite(draws))
  np.testing.assert_array_equal(draws[0], draws[1])  # a pure function of the key
  assert not np.allclose(draws[0], draws[2])
  rows = draws.reshape(-1, dim).astype(np.float64)
  np.testing.assert_allclose(rows.mean(0), 0.0, atol=0.04)
  np.testing.assert_allclose(rows.T @ rows / len(rows), np.eye(dim), atol=0.06)
  if name != "mm":  # whitening fixes sum_f ||w_f||^2 = m d, which narrows the radial law
    # E||w||^4 = d (d + 2) for N(0, I_d); nearly fixed norms (the reference's
    # qmc layout, textbook SORF) give ~d^2.
    squared_norms = (rows ** 2).sum(-1)
    np.testing.assert_allclose(np.mean(squared_norms ** 2), dim * (dim + 2), rtol=0.06)


@pytest.mark.parametrize("name", ["gaus", "orf", "scrf", "qmc", "fastfood_fixed"])
def test_projections_of_exact_constructions_are_gaussian(name):
  # u.w must be N(0, 1) in law, not just in its first moments.
  u = np.ones(D) / np.sqrt(D)
  projections = np.sort(_draws(name).reshape(-1, D) @ u)
  quantiles = special.ndtri((np.arange(len(projections)) + 0.5) / len(projections))
  inner = slice(len(projections) // 100, -len(projections) // 100)
  np.testing.assert_allclose(projections[inner], quantiles[inner], atol=0.06)


def test_direct_call_matches_vmapped_draw_and_validates():
  key = _keys()[2]
  np.testing.assert_allclose(wm.draw_weight_matrix("gaus", key, M, D), _draws("gaus")[2],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="Valid names: gaus, orf, scrf"):
    wm.draw_weight_matrix("gaussian", key, M, D)
  with pytest.raises(ValueError, match="init_fastfood_parameters"):
    wm.draw_weight_matrix("fastfood_learnable", key, M, D)
  with pytest.raises(ValueError, match="num_features > dim"):
    wm.draw_weight_matrix("mm", key, D, D)
  with pytest.raises(ValueError, match="num_features must be a positive integer"):
    wm.draw_weight_matrix("gaus", key, 0, D)


# ---------------------------------------------------------------------------
# Structure of each construction.


@pytest.mark.parametrize("name", ["orf", "sorf", "rom"])
def test_rows_are_orthogonal_within_blocks_only(name):
  w = _draws(name)[2].astype(np.float64)
  norms = np.linalg.norm(w, axis=1)
  cosines = (w @ w.T) / np.outer(norms, norms)
  blocks = np.arange(M) // D
  same_block = blocks[:, None] == blocks[None, :]
  np.testing.assert_allclose(cosines[same_block], np.eye(M)[same_block], atol=1e-5)
  assert np.max(np.abs(cosines[~same_block])) > 0.3  # independent blocks are not orthogonal


def test_mm_sample_moments_are_exact():
  w = _draws("mm")[2].astype(np.float64)
  np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(w.T @ w / M, np.eye(D), atol=1e-4)


def test_scrf_blocks_are_signed_circulants_with_chi_radii():
  w = _draws("scrf")[2].astype(np.float64)
  directions = w / np.linalg.norm(w, axis=1, keepdims=True)
  for start in range(0, M, D):
    block = directions[start:start + D]
    for i in range(1, len(block)):  # row i is +-roll(row 0, i)
      rolled = np.roll(block[0], i)
      assert min(np.abs(block[i] - rolled).max(), np.abs(block[i] + rolled).max()) < 1e-5
  assert np.std(np.linalg.norm(w[:D], axis=1)) > 0.3  # not one norm per block


def test_sgq_entries_are_gauss_hermite_nodes_with_their_weights():
  nodes, weights = np.polynomial.hermite_e.hermegauss(wm.SGQ_NUM_NODES)
  entries = _draws("sgq")[2:].ravel()
  atoms = np.abs(entries[:, None] - nodes[None, :].astype(np.float32)).argmin(1)
  np.testing.assert_array_equal(entries, nodes[atoms].astype(np.float32))
  frequencies = np.bincount(atoms, minlength=len(nodes)) / len(entries)
  np.testing.assert_allclose(frequencies, weights / weights.sum(), atol=0.004)


def _one_per_stratum(uniforms):
  """Whether the columns of [k, ...] uniforms put one value in each of k equal cells."""
  cells = np.sort(np.floor(uniforms * len(uniforms)).astype(int), axis=0)
  return np.all(cells == np.arange(len(uniforms)).reshape((-1,) + (1,) * (uniforms.ndim - 1)))


def test_qmc_points_are_rows_and_each_dimension_is_stratified():
  # The first 2^k Sobol' points, digitally shifted, have one point per 1/2^k
  # cell in every dimension: the columns of W are stratified, its rows not.
  uniforms = special.ndtr(_draws("qmc")[2:].astype(np.float64))
  assert all(_one_per_stratum(u[:32]) for u in uniforms)
  assert not _one_per_stratum(uniforms[0, :D].T)
  # The reference transposes: row f is coordinate f of the first d points.
  reference = special.ndtr(_reference_draws()["qmc"])
  assert reference.shape == (M, D) and _one_per_stratum(reference.T)


def test_fastfood_matches_numpy_le_sarlos_smola():
  """V = (1 / sqrt(n)) S H G P H B with the +-1 Hadamard matrix, per block, stacked, cut."""
  parameter_key, permutation_key = jax.random.split(_keys()[2])
  num_features, dim = PADDED  # n = 8, three blocks, the last one cut
  parameters = wm.init_fastfood_parameters(parameter_key, num_features, dim)
  permutation = wm.draw_fastfood_permutation(permutation_key, num_features, dim)
  assert permutation.shape == (3, 8) and permutation.dtype == jnp.int32
  assert all(sorted(p) == list(range(8)) for p in np.asarray(permutation))
  np.testing.assert_array_equal(np.abs(parameters["B"]), 1.0)
  hadamard = scipy.linalg.hadamard(8)
  blocks = []
  for s, g, b, p in zip(*(np.asarray(parameters[k], np.float64) for k in ("S", "G", "B")),
                        np.asarray(permutation)):
    shuffled = np.eye(8)[p]  # (P y)_k = y_{p_k}
    rows = np.diag(s) @ hadamard @ np.diag(g) @ shuffled @ hadamard / np.sqrt(8)
    # Le et al.'s S = s / ||G||: the rows have norms S ||G|| = s, the chi radii.
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), s * np.linalg.norm(g), rtol=1e-5)
    blocks.append(rows[:, :dim] * b)
  expected = np.concatenate(blocks)[:num_features]
  actual = wm.fastfood_weight_matrix(parameters, permutation, num_features)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  # fastfood_fixed is fastfood_learnable's default initial matrix for the same key.
  np.testing.assert_allclose(_draws("fastfood_fixed", *PADDED)[2], actual, rtol=1e-5, atol=1e-6)


def test_fastfood_gradients_reach_s_g_and_b():
  num_features, dim = PADDED  # blocks of 8 rows: 8, 8 and 4 of the third
  parameters = wm.init_fastfood_parameters(jax.random.key(5), num_features, dim)
  permutation = wm.draw_fastfood_permutation(jax.random.key(6), num_features, dim)
  weights = jax.random.normal(jax.random.key(7), (num_features, dim))
  direction = {k: jax.random.normal(jax.random.key(8 + i), v.shape)
               for i, (k, v) in enumerate(parameters.items())}

  @jax.jit
  def derivatives(p, step=1e-2):
    def loss(p):
      return jnp.sum(weights * jnp.sin(wm.fastfood_weight_matrix(p, permutation, num_features)))

    def shifted(sign):
      return loss(jax.tree.map(lambda x, v: x + sign * step * v, p, direction))

    return jax.grad(loss)(p), (shifted(1.0) - shifted(-1.0)) / (2 * step)

  gradients, finite_difference = derivatives(parameters)
  for name in ("S", "G", "B"):
    assert np.all(np.abs(np.asarray(gradients[name])[0]) > 0), name
  np.testing.assert_array_equal(np.asarray(gradients["S"])[2, 4:], 0.0)  # rows cut away
  analytic = sum(np.sum(np.asarray(gradients[k]) * np.asarray(direction[k])) for k in parameters)
  np.testing.assert_allclose(finite_difference, analytic, rtol=2e-2)


def test_fast_walsh_hadamard_transform_matches_scipy():
  x = np.random.default_rng(0).standard_normal((3, 2, 64)).astype(np.float32)
  sizes = (1, 2, 16, 64)

  @jax.jit
  def transforms(x):
    return ([wm.fast_walsh_hadamard_transform(x[..., :n]) for n in sizes],
            wm.fast_walsh_hadamard_transform(x[..., :16], normalized=False))

  normalized, unnormalized = transforms(x)
  for n, actual in zip(sizes, normalized):
    np.testing.assert_allclose(actual, x[..., :n] @ scipy.linalg.hadamard(n) / np.sqrt(n),
                               atol=2e-5)
  np.testing.assert_allclose(unnormalized, x[..., :16] @ scipy.linalg.hadamard(16), atol=1e-4)
  with pytest.raises(ValueError, match="power-of-two"):
    wm.fast_walsh_hadamard_transform(jnp.ones((2, 12)))


# ---------------------------------------------------------------------------
# reference_construction reproduces the documented defects.


def test_reference_scrf_is_zero_from_twice_the_dimension_on():
  draws = _reference_draws()
  np.testing.assert_array_equal(draws["scrf_128_32"], 0.0)  # round(0.25) = 0
  np.testing.assert_array_equal(draws["scrf_16_8"], 0.0)  # round(0.5) = 0
  # m = d: one plain circulant C[r, c] = w[(r - c) mod m] (no signs, no radii).
  w = draws["scrf_8_8"]
  np.testing.assert_array_equal(w, w[:, 0][(np.arange(8)[:, None] - np.arange(8)) % 8])
  # round(40 / 16) = 2 (Python rounds half to even): columns 32..39 stay zero.
  w = draws["scrf_16_40"]
  assert np.all(w[:, :32] != 0) and np.all(w[:, 32:] == 0)


def test_reference_sorf_and_rom_rows_are_unnormalised():
  draws = _reference_draws()
  # m = d = n = 32: sqrt(d) D0 H D1 H D2 H with the +-1 H has orthogonal rows
  # of norm sqrt(d) n^(3/2) = 1024.
  sorf = draws["sorf_32_32"]
  np.testing.assert_allclose(sorf @ sorf.T, 1024.0 ** 2 * np.eye(32), atol=1.0)
  # rom: the rows scaled by a ~ U(0, pi), the real part of the complex diagonal.
  scales = np.linalg.norm(draws["rom_32_32"], axis=1) / 1024.0
  assert np.all((scales > 0) & (scales < np.pi)) and np.std(scales) > 0.3
  # LRA sizes: n = 128, 32 of 128 columns kept: row norms ~ d n = 4096, not ~sqrt(32).
  np.testing.assert_allclose(np.linalg.norm(draws["sorf_128_32"], axis=1).mean(), 4096.0,
                             rtol=0.1)
  np.testing.assert_allclose(np.linalg.norm(draws["sorf_128_32_corrected"], axis=1).mean(),
                             np.sqrt(32), rtol=0.1)


def test_reference_sgq_is_degenerate():
  entries = _draws("sgq", reference=True)[2:].ravel()
  values, counts = np.unique(entries, return_counts=True)
  np.testing.assert_array_equal(values, np.float32([-11.625, 0.0]))
  np.testing.assert_allclose(counts[0] / len(entries), 1 - 1 / np.sqrt(np.pi), atol=0.005)


def test_reference_fastfood_scaling_and_init():
  np.testing.assert_allclose(_reference_draws()["fastfood_fixed"],
                             _draws("fastfood_fixed")[0] * D ** -0.25, rtol=1e-5, atol=1e-6)
  # The reference's N(0, 1/d) init: rows near zero (~0.02), not ~sqrt(d).
  w = _reference_draws()["fastfood_learnable_32_32"]
  assert 0 < np.mean(np.linalg.norm(w, axis=1)) < 0.1


def test_reference_row_counts():
  assert wm.reference_num_features("qmc", 100, 32) == 128
  assert wm.reference_num_features("fastfood_learnable", 128, 32) == 32
  assert wm.reference_num_features("orf", 100, 32) == 100


# ---------------------------------------------------------------------------
# The variance reduction the framework rests on.


def test_structured_matrices_lower_the_gaussian_kernel_error():
  """MSE over the draws of (1/m) sum_f cos(w_f . z) against exp(-||z||^2 / 2)."""
  offsets = np.random.default_rng(1).standard_normal((64, D))
  offsets *= (np.linspace(0.3, 2.0, 64) / np.linalg.norm(offsets, axis=1))[:, None]
  target = np.exp(-0.5 * np.sum(offsets ** 2, -1))

  def mse(name):
    estimates = np.cos(np.einsum("kmd,zd->kzm", _draws(name)[1:].astype(np.float64),
                                 offsets)).mean(-1)
    return np.mean((estimates - target) ** 2)

  errors = {name: mse(name) for name in ("gaus", "orf", "qmc", "sorf", "rom", "mm", "scrf")}
  # Measured ratios to gaus at m = 32..64, d = 8: orf 0.39, qmc 0.29..0.38,
  # sorf / rom 0.36, mm 0.35, scrf 0.98 (1.6 without its chi radii).
  for name in ("orf", "qmc", "sorf", "rom", "mm"):
    assert errors[name] < 0.6 * errors["gaus"], errors
  assert errors["scrf"] < 1.25 * errors["gaus"], errors
