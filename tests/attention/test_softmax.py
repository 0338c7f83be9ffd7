"""Maths of exact softmax attention against a direct numpy evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import softmax


def _numpy_attention(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _inputs(length=20, lengths=(20, 7)):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (2, length, 3, 4)) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def test_matches_numpy_reference():
  q, k, v, mask = _inputs()
  np.testing.assert_allclose(attention.softmax_attention(q, k, v, mask),
                             _numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_matches_flax_dot_product_attention():
  q, k, v, mask = _inputs()
  flax_mask = mask[:, None, None, :]
  expected = jax.nn.dot_product_attention(q, k, v, mask=flax_mask)
  np.testing.assert_allclose(attention.softmax_attention(q, k, v, mask), expected, atol=1e-5)


def test_all_padded_sequence_stays_finite():
  q, k, v, mask = _inputs(lengths=(20, 0))
  out = attention.softmax_attention(q, k, v, mask)
  assert np.all(np.isfinite(out))


def test_dropout_needs_a_key_and_is_unbiased():
  q, k, v, mask = _inputs()
  clean = attention.softmax_attention(q, k, v, mask, dropout_rate=0.5)
  np.testing.assert_array_equal(clean, attention.softmax_attention(q, k, v, mask))
  draws = jax.vmap(lambda key: attention.softmax_attention(q, k, v, mask, rng=key, dropout_rate=0.5))(
      jax.random.split(jax.random.key(1), 2000))
  assert not np.allclose(draws[0], clean)
  np.testing.assert_allclose(draws.mean(0), clean, atol=0.1)


def test_softmax_runs_in_float32_for_bfloat16_inputs():
  q, k, v, mask = _inputs()
  scale = 30.0  # large logits: a bfloat16 softmax would lose most of its mass
  inputs = [x.astype(jnp.bfloat16) for x in (scale * q, k, v)]
  out = attention.softmax_attention(*inputs, mask)
  expected = _numpy_attention(*inputs, mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=0.05)


def test_exponentials_are_float32_under_bfloat16():
  q, k, v, mask = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _inputs())
  jaxpr = jax.make_jaxpr(attention.softmax_attention)(q, k, v, mask)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "exp"}
  assert exp_dtypes == {"float32"}


@pytest.mark.parametrize("columns_first", [False, True])
def test_softmax_readout_equals_normalised_weights_times_values_with_gradients(columns_first):
  keys = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(keys[0], (2, 3, 5, 4))
  y = jax.random.normal(keys[1], (2, 3, 7, 4))
  values = jax.random.normal(keys[2], (2, 3, 7, 6))
  valid = jnp.arange(7)[None, None, None, :] < jnp.asarray([5, 0])[:, None, None, None]

  def reference(x, y, values):  # batch 0: 5 valid columns; batch 1: none, uniform weights
    logits = jnp.where(valid, jnp.einsum("bhrd,bhcd->bhrc", x, y), -1e10)
    return jnp.einsum("bhrc,bhce->bhre", jax.nn.softmax(logits, axis=-1), values)

  def readout(x, y, values):
    return softmax.softmax_readout(x, y, values, valid, columns_first=columns_first)

  np.testing.assert_allclose(readout(x, y, values), reference(x, y, values), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(readout(x, y, values)[1], jnp.broadcast_to(
      jnp.mean(values[1], axis=-2, keepdims=True), (3, 5, 6)), rtol=1e-5, atol=1e-6)
  for fn_grad, ref_grad in zip(
      jax.grad(lambda *a: jnp.sum(jnp.sin(readout(*a))), (0, 1, 2))(x, y, values),
      jax.grad(lambda *a: jnp.sum(jnp.sin(reference(*a))), (0, 1, 2))(x, y, values)):
    np.testing.assert_allclose(fn_grad, ref_grad, rtol=1e-4, atol=1e-5)
