"""Performer (FAVOR+) and its pieces: sampler, feature map, linear attention, reference parity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lra_jax import attention
from lra_jax.attention import random_features as rf

LENGTH, HEADS, HEAD_DIM = 24, 2, 8


def _inputs(lengths=(LENGTH, 15), length=LENGTH, seed=0, scale=1.0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, HEADS, HEAD_DIM)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return (scale * q).astype(dtype), (scale * k).astype(dtype), v, mask


def _projection(num_features=16, seed=5, dim=HEAD_DIM):
  return rf.gaussian_orthogonal_random_matrix(jax.random.key(seed), num_features, dim)


# Op-by-op dispatch compiles every op for every new shape; one jitted program
# per configuration keeps the file fast.
@functools.partial(jax.jit, static_argnames=("double_scaling", "padded_keys_in_denominator",
                                             "global_key_stabilizer"))
def _performer(q, k, v, mask, projection, numerical_stabilizer=1e-4, double_scaling=False,
               padded_keys_in_denominator=False, global_key_stabilizer=False):
  return attention.performer_attention(
      q, k, v, mask, projection=projection, numerical_stabilizer=numerical_stabilizer,
      double_scaling=double_scaling, padded_keys_in_denominator=padded_keys_in_denominator,
      global_key_stabilizer=global_key_stabilizer)


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


# ---------------------------------------------------------------------------
# Independent float64 numpy implementations.


def _np_reference_performer(q, k, v, mask, projection, eps=1e-4):
  """Skyformer's PerformerAttention wrapper around lucidrains FastAttention, formula by formula.

  The wrapper passes Q / p^(1/4), (K / p^(1/4)) * M and V * M; softmax_kernel
  scales by p^(-1/4) again, subtracts the row max (queries) or the max of the
  whole tensor (keys); linear_attention divides by phi(Q) sum_j phi(k_j) over
  every key, padded ones included.
  """
  q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, projection))
  real = np.asarray(mask, np.float64)[:, :, None, None]
  p = q.shape[-1]
  q, k, v = q / p ** 0.25, k / p ** 0.25 * real, v * real

  def softmax_kernel(data, is_query):
    normalizer = p ** -0.25
    ratio = w.shape[0] ** -0.5
    data_dash = np.einsum("bnhd,md->bnhm", normalizer * data, w)
    diag = (data ** 2).sum(-1, keepdims=True) / 2.0 * normalizer ** 2
    stab = data_dash.max(-1, keepdims=True) if is_query else data_dash.max()
    return ratio * (np.exp(data_dash - diag - stab) + eps)

  qf, kf = softmax_kernel(q, True), softmax_kernel(k, False)
  d_inv = 1.0 / np.einsum("bnhm,bhm->bnh", qf, kf.sum(1))
  context = np.einsum("bnhm,bnhd->bhmd", kf, v)
  return np.einsum("bhmd,bnhm,bnh->bnhd", context, qf, d_inv)


def _np_performer(q, k, v, mask, projection, eps=1e-4):
  """The default: d^(-1/4) once, per-(batch, head) key max over real keys, masked normaliser."""
  q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, projection))
  mask = np.asarray(mask)
  c = q.shape[-1] ** -0.25
  ratio = w.shape[0] ** -0.5
  out = np.zeros_like(v)
  for b in range(q.shape[0]):
    keys = np.flatnonzero(mask[b])
    for h in range(q.shape[2]):
      uq = c * q[b, :, h] @ w.T
      uk = c * k[b, keys, h] @ w.T
      qf = ratio * (np.exp(uq - 0.5 * c ** 2 * (q[b, :, h] ** 2).sum(-1, keepdims=True)
                           - uq.max(-1, keepdims=True)) + eps)
      kf = ratio * (np.exp(uk - 0.5 * c ** 2 * (k[b, keys, h] ** 2).sum(-1, keepdims=True)
                           - uk.max()) + eps)
      kernel = qf @ kf.T  # [length, real keys], only to check against
      out[b, :, h] = kernel @ v[b, keys, h] / kernel.sum(-1, keepdims=True)
  return out


# ---------------------------------------------------------------------------
# The projection sampler.


def test_sampler_blocks_are_orthogonal_with_sqrt_dim_rows_at_scaling_1():
  w = np.asarray(rf.gaussian_orthogonal_random_matrix(jax.random.key(0), 20, 8, scaling=1), np.float64)
  assert w.shape == (20, 8)
  for block in (w[:8], w[8:16], w[16:]):  # two full blocks and a partial one
    np.testing.assert_allclose(block @ block.T, 8.0 * np.eye(len(block)), atol=1e-4)
  # Different blocks are independent, not orthogonal to each other.
  assert np.abs(w[:8] @ w[8:16].T).max() > 1.0


def test_sampler_rows_have_chi_norms_and_orthogonal_directions_at_scaling_0():
  dim = 16
  w = np.asarray(rf.gaussian_orthogonal_random_matrix(jax.random.key(0), 4096, dim), np.float64)
  norms = np.linalg.norm(w, axis=-1)
  directions = w / norms[:, None]
  for start in range(0, 4096, dim):
    block = directions[start:start + dim]
    np.testing.assert_allclose(block @ block.T, np.eye(dim), atol=1e-4)
  # Row norms ~ chi_dim (as for iid Gaussian rows), not a constant sqrt(dim).
  assert stats.kstest(norms, "chi", args=(dim,)).pvalue > 0.01
  assert stats.kstest(np.full(4096, np.sqrt(dim)), "chi", args=(dim,)).pvalue < 1e-6
  assert norms.std() > 0.5


def test_sampler_directions_are_uniform():
  # Without the sign correction of QR, the first row of every block has a
  # non-positive first coordinate (mean about -0.3 for dim 8).
  draws = jax.vmap(lambda key: rf.gaussian_orthogonal_random_matrix(key, 8, 8, scaling=1))(
      jax.random.split(jax.random.key(0), 2000))
  first_rows = np.asarray(draws)[:, 0] / np.sqrt(8)
  np.testing.assert_allclose(first_rows.mean(0), 0.0, atol=0.03)
  np.testing.assert_allclose((first_rows ** 2).mean(0), 1 / 8, atol=0.02)


def test_sampler_is_deterministic_in_its_key():
  a, b, c = (rf.gaussian_orthogonal_random_matrix(jax.random.key(s), 16, 8) for s in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.parametrize("args, message", [
    ((0, 8, 0), "num_features"), ((16, 0, 0), "dim"), ((16, 8, 2), "scaling")])
def test_sampler_rejects_bad_arguments(args, message):
  with pytest.raises(ValueError, match=message):
    rf.gaussian_orthogonal_random_matrix(jax.random.key(0), *args)


# ---------------------------------------------------------------------------
# Features and linear attention.


def test_features_estimate_the_softmax_kernel_without_bias():
  # E[phi(q).phi(k)] = exp(q.k / sqrt(d)) when the stabilisers are 0: take
  # them out by hand (eps 0, one key so that its stabiliser is known).
  q, k, _, _ = _inputs(lengths=(1,), length=1, scale=0.7)

  @jax.jit
  def estimate(key):
    w = rf.gaussian_orthogonal_random_matrix(key, 32, HEAD_DIM)
    c = HEAD_DIM ** -0.25
    fq = rf.favor_plus_features(q, w, True, numerical_stabilizer=0.0)
    fk = rf.favor_plus_features(k, w, False, numerical_stabilizer=0.0)
    # Undo the stabilisers (max of u = W c x) to get the raw estimator.
    fq = fq * jnp.exp(jnp.max(jnp.einsum("bnhd,md->bnhm", c * q, w), axis=-1, keepdims=True))
    fk = fk * jnp.exp(jnp.max(jnp.einsum("bnhd,md->bnhm", c * k, w), axis=(1, 3), keepdims=True))
    return jnp.einsum("bnhm,bnhm->bh", fq, fk)

  estimates = np.asarray(jax.vmap(estimate)(jax.random.split(jax.random.key(0), 2000)), np.float64)
  exact = np.exp(np.einsum("bnhd,bnhd->bh", q, k) / np.sqrt(HEAD_DIM))
  standard_error = estimates.std(0) / np.sqrt(len(estimates))
  assert np.all(np.abs(estimates.mean(0) - exact) < 4 * standard_error + 1e-3)


def test_linear_attention_is_normalised_kernel_attention_over_real_keys():
  keys = jax.random.split(jax.random.key(0), 3)
  qf = jax.random.uniform(keys[0], (2, 6, HEADS, 5))
  kf = jax.random.uniform(keys[1], (2, 6, HEADS, 5))
  v = jax.random.normal(keys[2], (2, 6, HEADS, 3))
  mask = jnp.arange(6)[None] < jnp.asarray([6, 4])[:, None]
  kernel = np.einsum("bqhm,bkhm->bhqk", qf, kf) * np.asarray(mask)[:, None, None, :]
  expected = np.einsum("bhqk,bkhd->bqhd", kernel / kernel.sum(-1, keepdims=True), v)
  linear_attention = jax.jit(rf.linear_attention)
  np.testing.assert_allclose(linear_attention(qf, kf, v, mask), expected, rtol=1e-5, atol=1e-6)
  # Garbage in padded key features and values changes nothing.
  kf2 = jnp.where(mask[:, :, None, None], kf, 1e6)
  v2 = jnp.where(mask[:, :, None, None], v, jnp.nan)
  np.testing.assert_allclose(linear_attention(qf, kf2, v2, mask), expected, rtol=1e-5, atol=1e-6)


def test_linear_attention_without_real_keys_gives_zeros():
  qf = jnp.ones((1, 3, 1, 4))
  out = rf.linear_attention(qf, jnp.ones((1, 3, 1, 4)), jnp.ones((1, 3, 1, 2)),
                            jnp.zeros((1, 3), bool))
  np.testing.assert_array_equal(out, 0.0)


# ---------------------------------------------------------------------------
# Performer attention.


def test_error_against_softmax_attention_shrinks_with_more_features():
  q, k, v, mask = _inputs(scale=0.5)
  exact = _real(attention.softmax_attention(q, k, v, mask), mask)

  sizes = (16, 256, 4096)

  @jax.jit
  def outputs(key):  # four draws per size, one program
    # Whole blocks of one big draw are draws with fewer features.
    projection = rf.gaussian_orthogonal_random_matrix(key, sizes[-1], HEAD_DIM)
    return [_performer(q, k, v, mask, projection[:size]) for size in sizes]

  outs = jax.vmap(outputs)(jax.random.split(jax.random.key(0), 4))
  errors = [np.mean([np.sqrt(np.mean((_real(out, mask) - exact) ** 2)) for out in draws])
            for draws in outs]
  assert errors[0] > 1.8 * errors[1] > 1.8 ** 2 * errors[2], errors
  assert errors[2] < 0.015, errors


def test_default_matches_numpy_formula():
  q, k, v, mask = _inputs(lengths=(LENGTH, 11))
  w = _projection(20)  # two whole blocks and a partial one
  np.testing.assert_allclose(_performer(q, k, v, mask, w), _np_performer(q, k, v, mask, w),
                             rtol=1e-4, atol=1e-5)


def test_all_quirks_match_the_reference_formulas():
  q, k, v, mask = _inputs(lengths=(LENGTH, 11))
  w = _projection()
  out = _performer(q, k, v, mask, w, double_scaling=True, padded_keys_in_denominator=True,
                   global_key_stabilizer=True)
  np.testing.assert_allclose(out, _np_reference_performer(q, k, v, mask, w), rtol=1e-4, atol=1e-5)
  # The quirks matter: the default is another function.
  assert not np.allclose(_real(_performer(q, k, v, mask, w), mask), _real(out, mask), atol=1e-2)


def test_draws_its_projection_from_rng():
  q, k, v, mask = _inputs()
  draw = jax.jit(lambda rng: attention.performer_attention(q, k, v, mask, rng=rng, nb_features=16))
  drawn = draw(jax.random.key(5))
  np.testing.assert_allclose(drawn, _performer(q, k, v, mask, _projection(16, seed=5)), rtol=1e-6,
                             atol=1e-6)
  other = draw(jax.random.key(6))
  assert not np.allclose(drawn, other)


def test_double_scaling_is_an_extra_head_dim_quarter_power_on_q_and_k():
  q, k, v, mask = _inputs()
  w = _projection()
  c = HEAD_DIM ** -0.25
  np.testing.assert_allclose(_performer(q, k, v, mask, w, double_scaling=True),
                             _performer(c * q, c * k, v, mask, w), rtol=1e-5, atol=1e-6)
  # Hence with many features it approaches softmax(q.k / d), not softmax(q.k / sqrt(d)).
  many = _performer(q, k, v, mask, _projection(4096), double_scaling=True)
  over_d = attention.softmax_attention(q / np.sqrt(HEAD_DIM), k, v, mask)
  over_sqrt_d = attention.softmax_attention(q, k, v, mask)
  error_d = np.abs(_real(many, mask) - _real(over_d, mask)).mean()
  error_sqrt_d = np.abs(_real(many, mask) - _real(over_sqrt_d, mask)).mean()
  assert error_d < 0.02 and error_sqrt_d > 5 * error_d, (error_d, error_sqrt_d)


_QUIRK_SETTINGS = [dict(), dict(double_scaling=True), dict(padded_keys_in_denominator=True),
                   dict(global_key_stabilizer=True)]


@pytest.mark.parametrize("quirks", _QUIRK_SETTINGS)
def test_real_outputs_ignore_garbage_in_padded_positions(quirks):
  q, k, v, mask = _inputs(lengths=(19, 7))
  garbage = _inputs(lengths=(19, 7), seed=1)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, 100.0 * g, x) for x, g in zip((q, k, v), garbage))
  w = _projection()
  np.testing.assert_allclose(_real(_performer(q2, k2, v2, mask, w, **quirks), mask),
                             _real(_performer(q, k, v, mask, w, **quirks), mask), rtol=1e-5, atol=1e-6)


def test_more_padding_changes_nothing_unless_padded_keys_count_in_the_denominator():
  q, k, v, mask = _inputs(lengths=(LENGTH, 11))
  w = _projection()

  def extend(x):  # 8 more padded positions
    return jnp.concatenate([x, jnp.zeros((2, 8) + x.shape[2:], x.dtype)], axis=1)

  longer = [extend(x) for x in (q, k, v)] + [extend(mask)]
  for quirks, changes in ((dict(), False), (dict(padded_keys_in_denominator=True), True)):
    short = _real(_performer(q, k, v, mask, w, **quirks)[1], mask[1])
    long = _real(_performer(*longer, w, **quirks)[1], longer[3][1])
    assert (not np.allclose(long, short, atol=1e-4)) == changes, quirks
    if not changes:
      np.testing.assert_allclose(long, short, rtol=1e-5, atol=1e-6)


def test_global_key_stabilizer_couples_the_examples_of_a_batch():
  q, k, v, mask = _inputs()
  k2 = k.at[1].multiply(6.0)  # only example 1 changes; its keys raise the global max
  w = _projection()
  for quirks, coupled in ((dict(), False), (dict(global_key_stabilizer=True), True)):
    first = np.asarray(_performer(q, k, v, mask, w, **quirks)[0])
    second = np.asarray(_performer(q, k2, v, mask, w, **quirks)[0])
    if coupled:
      assert np.abs(first - second).max() > 1e-3
    else:
      np.testing.assert_array_equal(first, second)


def test_numerical_stabilizer_is_added_to_every_feature():
  q, _, _, _ = _inputs(scale=30.0)  # huge norms: exp underflows, eps remains
  w = _projection()
  features = rf.favor_plus_features(q, w, True, numerical_stabilizer=1e-3)
  assert float(features.min()) >= 1e-3 / 4 * (1 - 1e-6)  # ratio = 16^(-1/2)
  np.testing.assert_allclose(float(features.min()), 1e-3 / 4, rtol=1e-3)


def test_no_gradient_flows_into_the_projection():
  q, k, v, mask = _inputs()

  def loss(w):
    return jnp.sum(attention.performer_attention(q, k, v, mask, projection=w) ** 2)

  np.testing.assert_array_equal(jax.jit(jax.grad(loss))(_projection()), 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "PRNG key"),
    (dict(projection=jnp.zeros((16, HEAD_DIM + 1))), "num_features, head_dim"),
    (dict(projection=jnp.zeros((16, HEAD_DIM)), nb_features=32), "disagrees"),
    (dict(rng=jax.random.key(0), nb_features=0), "num_features"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=message):
    attention.performer_attention(q, k, v, mask, **kwargs)


def test_cost_is_linear_no_length_by_length_array():
  length = 64
  q, k, v, mask = _inputs(length=length, lengths=(length, 40))
  w = _projection()

  def loss(q, k, v):
    return jnp.sum(attention.performer_attention(q, k, v, mask, projection=w) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert any(length in shape and 16 in shape for shape in shapes)  # the features
  assert not any(list(shape).count(length) >= 2 for shape in shapes)


def test_exponentials_are_float32_under_bfloat16():
  q, k, v, mask = _inputs(dtype=jnp.bfloat16)
  w = _projection()
  jaxpr = jax.make_jaxpr(lambda *a: attention.performer_attention(*a, projection=w))(q, k, v, mask)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in jaxpr.jaxpr.eqns
                if eqn.primitive.name == "exp"}
  assert exp_dtypes == {"float32"}


# ---------------------------------------------------------------------------
# The linen module.


def _rngs(seed):
  return {"params": jax.random.key(0), attention.ATTENTION_RNG: jax.random.key(seed)}


def test_module_redraws_the_projection_every_call_by_default():
  q, k, v, mask = _inputs()
  module = attention.PerformerAttention(nb_features=16)
  variables = module.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert not variables  # nothing learned, nothing stored

  def apply(seed, deterministic):
    return module.apply(variables, q, k, v, mask, deterministic=deterministic,
                        rngs={attention.ATTENTION_RNG: jax.random.key(seed)})

  np.testing.assert_array_equal(apply(2, True), apply(2, False))  # evaluation redraws too
  assert not np.allclose(apply(2, True), apply(3, True))
  # Each draw is a sampler draw: close to softmax attention on average.
  exact = _real(attention.softmax_attention(q, k, v, mask), mask)
  single = np.abs(_real(apply(2, True), mask) - exact).mean()
  average = np.abs(np.mean([_real(apply(s, True), mask) for s in range(8)], 0) - exact).mean()
  assert average < single


def test_module_with_fixed_features_keeps_one_projection_in_constants():
  q, k, v, mask = _inputs()
  module = attention.PerformerAttention(nb_features=16, redraw_features=False)
  variables = module.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert set(variables) == {"constants"}
  w = variables["constants"]["projection"]
  assert w.shape == (16, HEAD_DIM)
  assert not np.allclose(module.init(_rngs(2), q, k, v, mask, deterministic=True)["constants"]
                         ["projection"], w)
  outs = [module.apply(variables, q, k, v, mask, deterministic=False,
                       rngs={attention.ATTENTION_RNG: jax.random.key(seed)}) for seed in (2, 3)]
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_allclose(outs[0], _performer(q, k, v, mask, w), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="re-initialise"):
    attention.PerformerAttention(nb_features=32, redraw_features=False).apply(
        variables, q, k, v, mask, deterministic=True)


def test_relu_features_are_deterministic_generalized_attention_over_real_keys():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 4)), jnp.float32) for _ in range(3))
  mask = jnp.arange(12)[None] < jnp.asarray([12, 7])[:, None]
  out = attention.performer_attention(q, k, v, mask, features="relu", numerical_stabilizer=1e-3)
  q64, k64 = (np.maximum(np.asarray(x, np.float64), 0) + 1e-3 for x in (q, k))
  v64 = np.asarray(v, np.float64)
  weights = np.einsum("bqhm,bkhm->bhqk", q64, k64) * np.asarray(mask)[:, None, None, :]
  expected = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v64)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  module = rf.PerformerAttention(features="relu", numerical_stabilizer=1e-3)
  variables = module.init(jax.random.key(0), q, k, v, mask, deterministic=True)
  assert not variables  # nothing drawn, nothing stored
  with pytest.raises(ValueError, match="favor_plus, relu"):
    attention.performer_attention(q, k, v, mask, features="elu")
