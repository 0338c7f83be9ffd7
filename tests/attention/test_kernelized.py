"""Maths of kernelized (Gaussian-kernel) attention against a direct numpy evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention


def _numpy_kernelized(q, k, v, mask):
  """out_i = sum_j M_j exp(-||q_i - k_j||^2 / 2) v_j, with q, k scaled by d^(-1/4)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  scale = q.shape[-1] ** -0.25
  q, k = q * scale, k * scale
  squared_distance = ((q[:, :, None] - k[:, None, :]) ** 2).sum(-1)  # [b, q, k, h]
  kernel = np.exp(-0.5 * squared_distance) * np.asarray(mask)[:, None, :, None]
  return np.einsum("bqkh,bkhd->bqhd", kernel, v)


def _inputs(length=20, lengths=(20, 7), head_dim=4, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (2, length, 3, head_dim), dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


@pytest.mark.parametrize("head_dim", [4, 32])
def test_matches_numpy_gaussian_kernel(head_dim):
  # head_dim 4 would fail with the reference's hard-coded 32^(-1/4).
  q, k, v, mask = _inputs(head_dim=head_dim)
  np.testing.assert_allclose(attention.kernelized_attention(q, k, v, mask),
                             _numpy_kernelized(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_is_unnormalised_exp_kernel_times_values():
  # With one-hot values the output is the kernel matrix itself: no row normalisation.
  length = 6
  q, k, _, _ = _inputs(length=length, lengths=(6, 4))
  mask = jnp.arange(length)[None] < jnp.asarray([6, 4])[:, None]
  values = jnp.broadcast_to(jnp.eye(length)[None, :, None, :], (2, length, 3, length))
  kernel = attention.kernelized_attention(q, k, values, mask)  # [b, q, h, k]
  scale = q.shape[-1] ** -0.25
  expected = np.exp(-0.5 * ((np.asarray(q)[:, :, None] - np.asarray(k)[:, None]) ** 2).sum(-1)
                    * scale ** 2)
  expected = np.transpose(expected * np.asarray(mask)[:, None, :, None], (0, 1, 3, 2))
  np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(kernel).sum(-1), 1.0)
  assert np.all(np.asarray(kernel)[1, :, :, 4:] == 0.0)  # padded keys weigh exactly 0


def test_all_padded_sequence_gives_zeros():
  q, k, v, mask = _inputs(lengths=(20, 0))
  out = attention.kernelized_attention(q, k, v, mask)
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[1], 0.0)


def test_dropout_needs_a_key_and_is_unbiased():
  q, k, v, mask = _inputs()
  clean = attention.kernelized_attention(q, k, v, mask, dropout_rate=0.5)
  np.testing.assert_array_equal(clean, attention.kernelized_attention(q, k, v, mask))
  draws = jax.jit(jax.vmap(lambda key: attention.kernelized_attention(
      q, k, v, mask, rng=key, dropout_rate=0.5)))(jax.random.split(jax.random.key(1), 2000))
  assert not np.allclose(draws[0], clean)
  # C is not row-normalised, so outputs (and the Monte Carlo noise) are larger
  # than for softmax; forgetting the 1 / (1 - rate) rescaling is off by ~clean.
  np.testing.assert_allclose(draws.mean(0), clean, atol=0.25)


def test_module_dropout_comes_from_the_dropout_stream():
  q, k, v, mask = _inputs()
  module = attention.KernelizedAttention(dropout_rate=0.3)
  variables = module.init({}, q, k, v, mask, deterministic=True)
  clean = attention.kernelized_attention(q, k, v, mask)
  np.testing.assert_array_equal(module.apply(variables, q, k, v, mask, deterministic=True), clean)

  def train(seed):
    return module.apply(variables, q, k, v, mask, deterministic=False,
                        rngs={"dropout": jax.random.key(seed)})

  assert not np.allclose(train(5), clean)
  np.testing.assert_array_equal(train(5), train(5))
  assert not np.allclose(train(5), train(6))


def test_kernel_runs_in_float32_for_bfloat16_inputs():
  q, k, v, mask = _inputs(head_dim=16)
  inputs = [x.astype(jnp.bfloat16) for x in (3.0 * q, 3.0 * k, v)]
  out = attention.kernelized_attention(*inputs, mask)
  assert out.dtype == jnp.bfloat16
  expected = _numpy_kernelized(*inputs, mask)
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=0.05, rtol=0.02)


def test_exponentials_are_float32_under_bfloat16():
  q, k, v, mask = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _inputs())
  jaxpr = jax.make_jaxpr(attention.kernelized_attention)(q, k, v, mask)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in jaxpr.jaxpr.eqns
                if eqn.primitive.name == "exp"}
  assert exp_dtypes == {"float32"}
