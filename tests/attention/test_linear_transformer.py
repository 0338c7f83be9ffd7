"""Linear Transformer attention (elu + 1 features) against numpy, dense and linear evaluations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention

HEADS, HEAD_DIM = 3, 4
_linear = jax.jit(attention.linear_transformer_attention,
                  static_argnames=("eps", "padded_keys_attended"))


def _inputs(lengths=(16, 6), length=16, seed=0, value_dim=HEAD_DIM):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k = (jax.random.normal(key, (len(lengths), length, HEADS, HEAD_DIM)) for key in keys[:2])
  v = jax.random.normal(keys[2], (len(lengths), length, HEADS, value_dim))
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _np_elu_plus_one(x):
  return np.where(x > 0, x + 1.0, np.exp(x))


def _np_linear_transformer(q, k, v, mask, eps=1e-6, masked=True):
  """Dense form: out_i = sum_j A_ij v_j / (sum_j A_ij + eps), A_ij = phi(q_i).phi(k_j) M_j."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  kernel = np.einsum("bqhd,bkhd->bhqk", _np_elu_plus_one(q), _np_elu_plus_one(k))
  if masked:
    kernel = kernel * np.asarray(mask, np.float64)[:, None, None, :]
  numerator = np.einsum("bhqk,bkhd->bqhd", kernel, v)
  return numerator / (kernel.sum(-1).transpose(0, 2, 1)[..., None] + eps)


def _real(x, mask):
  return np.asarray(x)[np.asarray(mask)]


@pytest.mark.parametrize("value_dim", [HEAD_DIM, 7])
def test_matches_dense_numpy_formula(value_dim):
  q, k, v, mask = _inputs(value_dim=value_dim)
  out = _linear(q, k, v, mask)
  assert out.shape == v.shape[:3] + (value_dim,)
  np.testing.assert_allclose(out, _np_linear_transformer(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_feature_map_is_elu_plus_one():
  x = jnp.linspace(-5.0, 5.0, 41)
  np.testing.assert_allclose(attention.linear_transformer.elu_feature_map(x), _np_elu_plus_one(
      np.asarray(x, np.float64)), rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(attention.linear_transformer.elu_feature_map(x)) > 0)


def test_is_a_convex_combination_of_real_values():
  # phi > 0, so with eps 0 the weights are positive and sum to 1 over the real keys.
  q, k, _, mask = _inputs()
  values = jnp.broadcast_to(jnp.eye(16)[None, :, None, :], (2, 16, HEADS, 16))
  weights = np.asarray(_linear(q, k, values, mask, eps=0.0))  # [b, q, h, k]
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert np.all(weights[0] > 0)
  np.testing.assert_array_equal(weights[1, :, :, 6:], 0.0)  # padded keys weigh exactly 0


def test_eps_enters_the_denominator():
  q, k, v, mask = _inputs()
  for eps in (0.0, 1e-6, 10.0):
    np.testing.assert_allclose(_linear(q, k, v, mask, eps=eps),
                               _np_linear_transformer(q, k, v, mask, eps=eps), rtol=1e-5, atol=1e-6)


def test_real_outputs_ignore_padded_contents_and_empty_rows_are_zero():
  q, k, v, mask = _inputs(lengths=(9, 0))
  garbage = _inputs(seed=3)
  pad = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(pad, 1e3 * g, x) for x, g in zip((q, k, v), garbage))
  out, out2 = _linear(q, k, v, mask), _linear(q2, k2, v2, mask)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out2[1], 0.0)  # no real key at all
  # A padded sequence equals the same sequence unpadded.
  np.testing.assert_allclose(out[0, :9], _linear(q[:1, :9], k[:1, :9], v[:1, :9], mask[:1, :9])[0],
                             rtol=1e-5, atol=1e-6)


def test_padded_keys_attended_reproduces_the_official_unmasked_sums():
  q, k, v, mask = _inputs()
  out = _linear(q, k, v, mask, padded_keys_attended=True)
  np.testing.assert_allclose(out, _np_linear_transformer(q, k, v, mask, masked=False), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out[0], _linear(q, k, v, mask)[0], rtol=1e-6)  # no padding: same
  assert not np.allclose(_real(out, mask)[16:], _real(_linear(q, k, v, mask), mask)[16:], atol=1e-3)


def test_cost_is_linear_no_length_squared_intermediate():
  length = 64
  q, k, v, mask = _inputs(lengths=(64, 20), length=length)
  jaxpr = jax.make_jaxpr(lambda q, k, v: jax.grad(
      lambda q, k, v: jnp.sum(attention.linear_transformer_attention(q, k, v, mask) ** 2),
      argnums=(0, 1, 2))(q, k, v))(q, k, v)
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert shapes and all(list(shape).count(length) <= 1 for shape in shapes)


def test_module_has_no_parameters_and_ignores_dropout():
  q, k, v, mask = _inputs()
  module = attention.LinearTransformerAttention(dropout_rate=0.5, padded_keys_attended=True)
  variables = module.init({"params": jax.random.key(0)}, q, k, v, mask, deterministic=True)
  assert not jax.tree.leaves(variables)
  out = module.apply(variables, q, k, v, mask, deterministic=False,
                     rngs={"dropout": jax.random.key(1)})
  np.testing.assert_allclose(out, _linear(q, k, v, mask, padded_keys_attended=True), rtol=1e-6,
                             atol=1e-6)


def test_mismatched_shapes_and_negative_eps_are_clear_errors():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="mask"):
    attention.linear_transformer_attention(q, k, v, mask[:, :5])
  with pytest.raises(ValueError, match="eps"):
    attention.linear_transformer_attention(q, k, v, mask, eps=-1.0)
