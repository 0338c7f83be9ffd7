"""Nyströmformer, Skyformer and their iterative pseudo-inverse against numpy float64 code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import nystrom

# ---------------------------------------------------------------------------
# Independent float64 numpy implementations, one (batch, head) at a time.


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_pinv(a, iterations, coefficient):
  """Razavi et al. iteration from Z_0 = coefficient A^T."""
  eye = np.eye(len(a))
  z = coefficient * a.T
  for _ in range(iterations):
    az = a @ z
    z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
  return z


def _np_segments(length, num_landmarks):
  """Index arrays of the contiguous segments: r of size s, then m - r of size s + 1."""
  s = length // num_landmarks
  r = (s + 1) * num_landmarks - length
  sizes = [s] * r + [s + 1] * (num_landmarks - r)
  return [np.arange(end - size, end) for end, size in zip(np.cumsum(sizes), sizes)]


def _np_depthwise_conv(v, w):
  """out[t, :] = sum_j w[j] v[t + j - k // 2, :], zeros outside (one head)."""
  out = np.zeros_like(v)
  size = len(w)
  for t in range(len(v)):
    for j in range(size):
      source = t + j - size // 2
      if 0 <= source < len(v):
        out[t] += w[j] * v[source]
  return out


def _np_nystrom(q, k, v, mask, num_landmarks, iterations=6, conv=None, include_padding=False,
                exact_pinv=False):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask = np.asarray(mask)
  batch, length, heads, head_dim = q.shape
  out = np.zeros_like(v)
  for b in range(batch):
    real = mask[b].astype(np.float64)[:, None]
    for h in range(heads):
      qs = q[b, :, h] * real / head_dim ** 0.25
      ks = k[b, :, h] * real / head_dim ** 0.25
      vs = v[b, :, h] * real
      segments = _np_segments(length, num_landmarks)
      if include_padding:
        kept = segments
        q_land = np.stack([qs[s].mean(0) for s in kept])
        k_land = np.stack([ks[s].mean(0) for s in kept])
      else:  # masked means; segments without a real token are dropped
        kept = [s[mask[b, s]] for s in segments if mask[b, s].any()]
        q_land = np.stack([qs[s].mean(0) for s in kept])
        k_land = np.stack([ks[s].mean(0) for s in kept])
      f = _np_softmax(qs @ k_land.T)
      a = _np_softmax(q_land @ k_land.T)
      bk = _np_softmax(np.where(mask[b][None], q_land @ ks.T, -np.inf))
      z = np.linalg.pinv(a) if exact_pinv else _np_pinv(a, iterations, 1 / a.sum(0).max())
      out[b, :, h] = f @ z @ (bk @ vs)
      if conv is not None:
        out[b, :, h] += _np_depthwise_conv(vs, np.asarray(conv, np.float64)[:, h])
  return out


def _np_softmax_attention(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  return np.einsum("bhqk,bkhd->bqhd", _np_softmax(logits), v)


def _np_skyformer(q, k, v, mask, indices, iterations=6, jitter=0.1, global_init=False):
  """Skyformer steps 1-8 (skyformer_skeinformer.md §1.3) for given landmark rows."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask, indices = np.asarray(mask), np.asarray(indices)
  batch, length, heads, head_dim = q.shape

  def kappa(x, y):
    return np.exp(-0.5 * ((x[:, None] - y[None]) ** 2).sum(-1))

  normalised, parts = {}, {}
  for b in range(batch):
    real = mask[b].astype(np.float64)[:, None]
    for h in range(heads):
      qs = q[b, :, h] * real * head_dim ** -0.25
      ks = k[b, :, h] * real * head_dim ** -0.25
      landmarks = np.concatenate([qs, ks])[indices[b]]
      w = kappa(landmarks, landmarks) + jitter * np.eye(len(landmarks))
      d_inv_sqrt = np.diag(w.sum(1) ** -0.5)
      normalised[b, h] = d_inv_sqrt @ w @ d_inv_sqrt
      parts[b, h] = (kappa(qs, landmarks), real * kappa(ks, landmarks), d_inv_sqrt,
                     v[b, :, h] * real)
  column_max = max(m.sum(0).max() for m in normalised.values())
  out = np.zeros_like(v)
  for (b, h), w_hat in normalised.items():
    c_ql, c_kl, d_inv_sqrt, vs = parts[b, h]
    z = _np_pinv(w_hat, iterations, 1 / (column_max if global_init else w_hat.sum(0).max()))
    k_feat = c_kl @ d_inv_sqrt @ z @ d_inv_sqrt
    out[b, :, h] = c_ql @ (k_feat.T @ vs)
  return out


def _np_kernelized(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  q, k = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
  kernel = np.exp(-0.5 * ((q[:, :, None] - k[:, None, :]) ** 2).sum(-1))
  return np.einsum("bqkh,bkhd->bqhd", kernel * np.asarray(mask)[:, None, :, None], v)


# ---------------------------------------------------------------------------
# Inputs and helpers.

# Jitted once per static setting: much faster than op-by-op on CPU.
_nystrom = jax.jit(attention.nystrom_attention, static_argnames=(
    "num_landmarks", "num_iterations", "pinv_init", "segment_means_include_padding"))
_skyformer = jax.jit(attention.skyformer_attention, static_argnames=(
    "num_landmarks", "num_iterations", "jitter", "pinv_init"))


def _inputs(length=20, lengths=(20, 7), heads=3, head_dim=4, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (len(lengths), length, heads, head_dim), dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _smooth_inputs(length=64, lengths=(64, 41), knots=4, seed=0):
  """q, k interpolated linearly between a few random knots: segment means represent them well."""
  rs = np.random.RandomState(seed)
  shape = (len(lengths), length, 2, 8)

  def smooth():
    values = rs.normal(size=(shape[0], knots) + shape[2:])
    x = np.linspace(0, knots - 1, length)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, knots - 1)
    weight = (x - low)[None, :, None, None]
    interpolated = (1 - weight) * values[:, low] + weight * values[:, high]
    return jnp.asarray(2.0 * interpolated, jnp.float32)

  q, k = smooth(), smooth()
  v = jnp.asarray(rs.normal(size=shape), jnp.float32)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


def _relative_error(approx, exact, mask):
  approx, exact = _real(approx, mask), _real(exact, mask)
  return np.linalg.norm(approx - exact) / np.linalg.norm(exact)


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _all_eqns(inner)


# ---------------------------------------------------------------------------
# Iterative pseudo-inverse.


def _softmax_matrices(batch=2, heads=3, size=8, seed=0):
  logits = jax.random.normal(jax.random.key(seed), (batch, heads, size, size))
  return jax.nn.softmax(logits, axis=-1)


def test_pseudo_inverse_matches_numpy_iteration_with_both_inits():
  a = _softmax_matrices()
  a64 = np.asarray(a, np.float64)
  global_max = a64.sum(-2).max()
  for init in ("per_matrix", "batch_global"):
    z = nystrom.iterative_pseudo_inverse(a, 6, init)
    for b in range(2):
      for h in range(3):
        coefficient = 1 / (a64[b, h].sum(0).max() if init == "per_matrix" else global_max)
        np.testing.assert_allclose(z[b, h], _np_pinv(a64[b, h], 6, coefficient), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("init", ["per_matrix", "batch_global"])
def test_pseudo_inverse_converges_to_numpy_pinv(init):
  a = _softmax_matrices()
  z = nystrom.iterative_pseudo_inverse(a, 40, init)
  expected = np.linalg.pinv(np.asarray(a, np.float64))
  np.testing.assert_allclose(z, expected, rtol=1e-3, atol=1e-3)
  six = nystrom.iterative_pseudo_inverse(a, 6, init)
  assert np.abs(six - expected).max() > np.abs(z - expected).max()


def test_pseudo_inverse_of_rank_deficient_matrix_is_moore_penrose():
  a = np.asarray(_softmax_matrices(batch=1, heads=1), np.float64)[0, 0]
  a[:, -1] = a[:, 0]  # rank m - 1
  z = nystrom.iterative_pseudo_inverse(jnp.asarray(a, jnp.float32), 60)
  np.testing.assert_allclose(z, np.linalg.pinv(a), rtol=1e-2, atol=1e-2)


def test_per_matrix_init_does_not_couple_the_batch_and_batch_global_does():
  a = _softmax_matrices()
  other = a.at[1].multiply(5.0)  # a different second example with larger column sums
  per_matrix = nystrom.iterative_pseudo_inverse(a, 6, "per_matrix")
  np.testing.assert_array_equal(nystrom.iterative_pseudo_inverse(other, 6, "per_matrix")[0],
                                per_matrix[0])
  np.testing.assert_allclose(nystrom.iterative_pseudo_inverse(a[:1], 6, "per_matrix")[0],
                             per_matrix[0], rtol=1e-6, atol=1e-6)
  batch_global = nystrom.iterative_pseudo_inverse(a, 6, "batch_global")
  coupled = nystrom.iterative_pseudo_inverse(other, 6, "batch_global")
  assert np.abs(coupled[0] - batch_global[0]).max() > 1e-2


@pytest.mark.parametrize("init", ["per_matrix", "batch_global"])
@pytest.mark.parametrize("num_iterations", [0, 1, 6])
def test_pseudo_inverse_times_is_the_explicit_inverse_applied_with_gradients(init, num_iterations):
  a = _softmax_matrices(size=16)
  x = jax.random.normal(jax.random.key(5), (2, 3, 16, 4))

  def applied(a, x):
    return nystrom.pseudo_inverse_times(a, x, num_iterations, init)

  def explicit(a, x):
    return nystrom.iterative_pseudo_inverse(a, num_iterations, init) @ x

  np.testing.assert_allclose(applied(a, x), explicit(a, x), rtol=1e-4, atol=1e-4)
  for got, expected in zip(
      jax.grad(lambda *args: jnp.sum(jnp.sin(applied(*args))), (0, 1))(a, x),
      jax.grad(lambda *args: jnp.sum(jnp.sin(explicit(*args))), (0, 1))(a, x)):
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_pseudo_inverse_rejects_unknown_init():
  with pytest.raises(ValueError, match="per_matrix"):
    nystrom.iterative_pseudo_inverse(_softmax_matrices(), 6, "original")


# ---------------------------------------------------------------------------
# Nyströmformer.


def test_segment_sizes_split_non_divisible_lengths():
  np.testing.assert_array_equal(nystrom.segment_sizes(784, 64), [12] * 48 + [13] * 16)
  np.testing.assert_array_equal(nystrom.segment_sizes(24, 8), [3] * 8)
  np.testing.assert_array_equal(nystrom.segment_sizes(24, 7), [3, 3, 3, 3, 4, 4, 4])


@pytest.mark.parametrize("length,num_landmarks,lengths", [
    (24, 6, (24, 7)),  # divisible, the padded sequence has a partial and empty segments
    (20, 6, (20, 7)),  # non-divisible: segments 3, 3, 3, 3, 4, 4
    (23, 5, (17, 23)),  # non-divisible, padding in the first sequence
])
def test_nystrom_matches_numpy(length, num_landmarks, lengths):
  q, k, v, mask = _inputs(length=length, lengths=lengths)
  out = _nystrom(q, k, v, mask, num_landmarks=num_landmarks)
  expected = _np_nystrom(q, k, v, mask, num_landmarks)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-4)


def test_nystrom_quirk_segment_means_include_padding_matches_numpy():
  q, k, v, mask = _inputs(length=20, lengths=(20, 7))
  out = _nystrom(q, k, v, mask, num_landmarks=5,
                                    segment_means_include_padding=True)
  expected = _np_nystrom(q, k, v, mask, 5, include_padding=True)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-4)
  default = _nystrom(q, k, v, mask, num_landmarks=5)
  # Identical without padding, different with it.
  np.testing.assert_allclose(out[0], default[0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out[1])[:7] - np.asarray(default[1])[:7]).max() > 1e-3


def test_nystrom_padded_sequence_equals_its_unpadded_version():
  # 15 real tokens of 24 with segments of 3: the 5 real segments are those of
  # the 15-token sequence with 5 landmarks; the 3 empty ones must not matter.
  q, k, v, mask = _inputs(length=24, lengths=(24, 15))
  padded = _nystrom(q, k, v, mask, num_landmarks=8)
  alone = _nystrom(q[1:, :15], k[1:, :15], v[1:, :15], mask[1:, :15],
                                      num_landmarks=5)
  np.testing.assert_allclose(padded[1, :15], alone[0], rtol=1e-5, atol=1e-5)


def test_nystrom_example_does_not_depend_on_the_batch_with_per_matrix_init():
  q, k, v, mask = _inputs(length=24, lengths=(24, 15))
  together = _nystrom(q, k, v, mask, num_landmarks=6)
  alone = _nystrom(q[:1], k[:1], v[:1], mask[:1], num_landmarks=6)
  np.testing.assert_allclose(together[0], alone[0], rtol=1e-5, atol=1e-5)
  together = _nystrom(q, k, v, mask, num_landmarks=6, pinv_init="batch_global")
  alone = _nystrom(q[:1], k[:1], v[:1], mask[:1], num_landmarks=6,
                                      pinv_init="batch_global")
  assert not np.allclose(together[0], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_landmarks", [20, 32])
def test_nystrom_is_exact_softmax_when_landmarks_cover_the_sequence(num_landmarks):
  q, k, v, mask = _inputs(length=20, lengths=(20, 7))
  out = _nystrom(q, k, v, mask, num_landmarks=num_landmarks)
  np.testing.assert_allclose(out, attention.softmax_attention(q, k, v, mask), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(out, _np_softmax_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_nystrom_error_shrinks_with_more_landmarks():
  q, k, v, mask = _smooth_inputs()
  exact = attention.softmax_attention(q, k, v, mask)
  errors = [_relative_error(_nystrom(
      q, k, v, mask, num_landmarks=m, num_iterations=20), exact, mask) for m in (4, 16, 32, 64)]
  assert errors[0] > errors[1] > errors[2] > errors[3]
  assert errors[2] < 1e-2
  assert errors[3] < 1e-6  # 64 landmarks = exact fallback


def test_nystrom_converged_pinv_is_the_nystrom_formula():
  # Segments of 8; the padded sequence has full, partial and empty segments.
  q, k, v, mask = _smooth_inputs(length=32, lengths=(32, 21))
  out = _nystrom(q, k, v, mask, num_landmarks=4, num_iterations=30)
  expected = _np_nystrom(q, k, v, mask, 4, exact_pinv=True)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_landmarks", [5, 20])  # approximate branch and exact fallback
def test_nystrom_conv_skip_adds_depthwise_convolution_of_masked_values(num_landmarks):
  q, k, v, mask = _inputs(length=20, lengths=(20, 7))
  conv_kernel = jax.random.normal(jax.random.key(9), (5, 3))
  plain = _nystrom(q, k, v, mask, num_landmarks=num_landmarks)
  with_conv = _nystrom(q, k, v, mask, num_landmarks=num_landmarks,
                                          conv_kernel=conv_kernel)
  vm = np.asarray(v, np.float64) * np.asarray(mask)[:, :, None, None]
  expected = np.stack([np.stack([_np_depthwise_conv(vm[b, :, h], np.asarray(conv_kernel)[:, h])
                                 for h in range(3)], axis=1) for b in range(2)])
  np.testing.assert_allclose(with_conv - plain, expected, rtol=1e-5, atol=1e-5)
  if num_landmarks == 5:
    full = _np_nystrom(q, k, v, mask, 5, conv=conv_kernel)
    np.testing.assert_allclose(_real(with_conv, mask), _real(full, mask), rtol=1e-4, atol=1e-4)


def test_nystrom_conv_kernel_size_must_be_odd():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="odd"):
    attention.nystrom_attention(q, k, v, mask, num_landmarks=5, conv_kernel=jnp.ones((4, 3)))


def test_nystrom_module_owns_the_conv_weight():
  q, k, v, mask = _inputs()
  module = attention.NystromAttention(num_landmarks=5, conv_kernel_size=7)
  variables = module.init(jax.random.key(0), q, k, v, mask, deterministic=True)
  weight = variables["params"]["conv_kernel"]
  assert weight.shape == (7, 3)
  assert np.all(np.abs(weight) <= 7 ** -0.5)  # PyTorch Conv2d default init bound
  out = module.apply(variables, q, k, v, mask, deterministic=False)
  np.testing.assert_allclose(out, _nystrom(
      q, k, v, mask, num_landmarks=5, conv_kernel=weight), rtol=1e-6, atol=1e-6)
  no_conv = attention.NystromAttention(num_landmarks=5)
  assert not no_conv.init(jax.random.key(0), q, k, v, mask, deterministic=True)


def test_nystrom_is_deterministic_and_ignores_rng():
  q, k, v, mask = _inputs()
  np.testing.assert_array_equal(
      _nystrom(q, k, v, mask, num_landmarks=5),
      _nystrom(q, k, v, mask, rng=jax.random.key(1), num_landmarks=5))


def test_nystrom_all_padded_sequence_stays_finite():
  q, k, v, mask = _inputs(lengths=(20, 0))
  assert np.all(np.isfinite(_nystrom(q, k, v, mask, num_landmarks=5)))


# ---------------------------------------------------------------------------
# Skyformer.


def test_skyformer_needs_a_key():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="PRNG key"):
    attention.skyformer_attention(q, k, v, mask, num_landmarks=8)


def test_landmark_indices_follow_the_reference_draw_for_right_padding():
  mask = jnp.arange(20)[None] < jnp.asarray([20, 7, 1])[:, None]
  key = jax.random.key(4)
  indices = np.asarray(nystrom.skyformer_landmark_indices(key, mask, 9))
  assert indices.shape == (3, 9) and indices.dtype == np.int32
  u = np.asarray(jax.random.uniform(key, (9,)))
  for b, real_length in enumerate((20, 7, 1)):
    rank = np.floor(u * np.float32(real_length)).astype(int)
    np.testing.assert_array_equal(indices[b], rank + np.where(np.arange(9) < 5, 0, 20))
  np.testing.assert_array_equal(indices[2], [0] * 5 + [20] * 4)


def test_landmark_indices_are_real_rows_for_any_mask():
  mask = jax.random.bernoulli(jax.random.key(0), 0.4, (4, 30))
  indices = np.asarray(nystrom.skyformer_landmark_indices(jax.random.key(1), mask, 64))
  mask = np.asarray(mask)
  for b in range(4):
    assert np.all(mask[b, indices[b, :32]])  # query rows
    assert np.all(indices[b, 32:] >= 30) and np.all(mask[b, indices[b, 32:] - 30])  # key rows


@pytest.mark.parametrize("global_init", [False, True])
def test_skyformer_matches_numpy_given_the_landmarks(global_init):
  q, k, v, mask = _inputs(length=20, lengths=(20, 7))
  key = jax.random.key(2)
  pinv_init = "batch_global" if global_init else "per_matrix"
  out = _skyformer(q, k, v, mask, rng=key, num_landmarks=8,
                                      pinv_init=pinv_init)
  indices = nystrom.skyformer_landmark_indices(key, mask, 8)
  expected = _np_skyformer(q, k, v, mask, indices, global_init=global_init)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-4)


def test_skyformer_error_vs_kernelized_shrinks_with_more_landmarks():
  q, k, v, mask = _inputs(length=64, lengths=(64, 41), heads=2, head_dim=8)
  exact = attention.kernelized_attention(q, k, v, mask)
  np.testing.assert_allclose(exact, _np_kernelized(q, k, v, mask), rtol=1e-4, atol=1e-5)

  def mean_error(num_landmarks):
    return np.mean([_relative_error(_skyformer(
        q, k, v, mask, rng=jax.random.key(seed), num_landmarks=num_landmarks, num_iterations=20),
        exact, mask) for seed in range(3)])

  errors = [mean_error(m) for m in (4, 16, 64)]
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.25


def test_skyformer_example_does_not_depend_on_the_batch_with_per_matrix_init():
  q, k, v, mask = _inputs(length=24, lengths=(24, 15))
  key = jax.random.key(3)
  together = _skyformer(q, k, v, mask, rng=key, num_landmarks=8)
  alone = _skyformer(q[1:], k[1:], v[1:], mask[1:], rng=key, num_landmarks=8)
  np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-5)


def test_skyformer_module_draws_landmarks_from_the_attention_stream_in_eval_too():
  q, k, v, mask = _inputs()
  module = attention.SkyformerAttention(num_landmarks=8)
  assert not module.init({attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask,
                         deterministic=True)

  def run(seed, deterministic):
    return module.apply({}, q, k, v, mask, deterministic=deterministic,
                        rngs={attention.ATTENTION_RNG: jax.random.key(seed)})

  for deterministic in (True, False):
    np.testing.assert_array_equal(run(1, deterministic), run(1, deterministic))
    assert not np.allclose(run(1, deterministic), run(2, deterministic))
  with pytest.raises(Exception, match="attention"):
    module.apply({}, q, k, v, mask, deterministic=True)


# ---------------------------------------------------------------------------
# bfloat16 inputs: the maths stays float32.


@pytest.mark.parametrize("name", ["nystrom", "skyformer"])
def test_internals_are_float32_under_bfloat16(name):
  q, k, v, mask = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _inputs())
  fn = attention.get_method(name).fn
  jaxpr = jax.make_jaxpr(lambda q, k, v, m: fn(q, k, v, m, rng=jax.random.key(0), num_landmarks=5))(
      q, k, v, mask)
  eqns = list(_all_eqns(jaxpr.jaxpr))
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in eqns if eqn.primitive.name == "exp"}
  dot_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in eqns
                if eqn.primitive.name == "dot_general"}
  assert exp_dtypes == {"float32"}
  assert dot_dtypes == {"float32"}
  out = fn(q, k, v, mask, rng=jax.random.key(0), num_landmarks=5)
  assert out.dtype == jnp.bfloat16
