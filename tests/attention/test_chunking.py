"""Length-chunked evaluation: the same numbers and gradients as one whole-length call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import chunking
from lra_jax.attention import component_functions as cf
from lra_jax.attention import random_features, weight_matrices

LENGTH, HEADS, HEAD_DIM = 23, 2, 4  # 23: the last block of 5 is padded


def _tokens(seed=0, batch=3):
  x = jax.random.normal(jax.random.key(seed), (batch, LENGTH, HEADS, HEAD_DIM))
  mask = jnp.arange(LENGTH)[None] < jnp.asarray([LENGTH, 17, 4])[:batch, None]
  return x, mask


def test_map_length_chunks_equals_one_call_with_gradients_to_shared_values():
  x, _ = _tokens()
  weight = jax.random.normal(jax.random.key(1), (HEAD_DIM, 6))

  def tokenwise(weight, x):
    return jnp.tanh(x @ weight) * jnp.sum(x, -1, keepdims=True)

  def loss(weight, x, chunk_size):
    out = chunking.map_length_chunks(lambda x: tokenwise(weight, x), (x,), chunk_size)
    return jnp.sum(jnp.sin(out)), out

  (whole, out_whole), grads_whole = jax.value_and_grad(loss, (0, 1), has_aux=True)(weight, x, None)
  (chunked, out_chunked), grads_chunked = jax.value_and_grad(loss, (0, 1), has_aux=True)(weight, x, 5)
  assert out_chunked.shape == out_whole.shape == (3, LENGTH, HEADS, 6)
  np.testing.assert_allclose(out_chunked, out_whole, rtol=1e-6, atol=1e-6)
  for g_chunked, g_whole in zip(grads_chunked, grads_whole):
    scale = float(jnp.max(jnp.abs(g_whole)))
    np.testing.assert_allclose(g_chunked / scale, g_whole / scale, atol=1e-5)


def test_reduce_length_chunks_sums_and_maxes_real_tokens_only():
  x, mask = _tokens()

  def masked_sum_and_max(x, mask):
    real = mask[:, :, None, None]
    return jnp.sum(jnp.where(real, x, 0.0), axis=1), jnp.max(jnp.where(real, x, -jnp.inf), axis=1)

  total = chunking.reduce_length_chunks(lambda x, m: masked_sum_and_max(x, m)[0], (x, mask), 5)
  largest = chunking.reduce_length_chunks(lambda x, m: masked_sum_and_max(x, m)[1], (x, mask), 5,
                                          combine=jnp.maximum)
  real = np.asarray(mask)[:, :, None, None]
  np.testing.assert_allclose(total, np.sum(np.where(real, x, 0.0), axis=1), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(largest, np.max(np.where(real, x, -np.inf), axis=1))


def test_pad_to_multiple_pads_axis_1_with_zeros_and_false():
  x = jnp.ones((2, 5, 3))
  mask = jnp.ones((2, 5), bool)
  padded_x, padded_mask = chunking.pad_to_multiple((x, mask), 4)
  assert padded_x.shape == (2, 8, 3) and padded_mask.shape == (2, 8)
  np.testing.assert_array_equal(padded_x[:, 5:], 0)
  assert not padded_mask[:, 5:].any() and padded_mask[:, :5].all()
  assert chunking.pad_to_multiple((x, mask), 5) == (x, mask)
  assert [chunking.num_blocks(n, 4) for n in (1, 4, 5, 8)] == [1, 1, 2, 2]
  with pytest.raises(ValueError, match="same length|share one length"):
    chunking.pad_to_multiple((x, mask[:, :4]), 4)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_bad_chunk_size_is_a_clear_error(chunk_size):
  x, _ = _tokens()
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    chunking.map_length_chunks(jnp.sin, (x,), chunk_size)


SETTINGS = [
    dict(),
    dict(padded_keys_in_denominator=True),
    dict(key_stabilizer="global", kernel="softmax", norm_in_stabilizer=False),
    dict(key_stabilizer="token"),
    dict(oprf_per_position_statistic=True, padded_keys_in_denominator=True),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(s) or "default")
@pytest.mark.parametrize("feature_map", cf.COMPONENT_FUNCTIONS)
def test_random_feature_attention_in_blocks_equals_one_block(feature_map, settings):
  q, mask = _tokens(seed=2)
  k, _ = _tokens(seed=3)
  v, _ = _tokens(seed=4)
  projection = weight_matrices.draw_weight_matrix("orf", jax.random.key(5), 64, HEAD_DIM)
  # Per-position A: each block must get its own positions' A.
  gerf_a = jax.random.uniform(jax.random.key(6), (HEADS, LENGTH), minval=-0.1, maxval=0.1)

  def loss(q, k, v, projection, gerf_a, chunk_size):
    out = random_features.random_feature_attention(
        q, k, v, mask, projection, feature_map=feature_map, gerf_a=gerf_a,
        chunk_size=chunk_size, **settings)
    real = jnp.where(mask[:, :, None, None], out, 0.0)
    return jnp.sum(real * jnp.cos(real)), out

  grad = jax.jit(jax.value_and_grad(loss, range(5), has_aux=True), static_argnums=5)
  (_, whole), grads_whole = grad(q, k, v, projection, gerf_a, None)
  (_, blocks), grads_blocks = grad(q, k, v, projection, gerf_a, 5)
  np.testing.assert_allclose(blocks, whole, rtol=2e-5, atol=2e-6)
  # TrigRF's signed denominators come near 0 for some queries, where the
  # gradient (~ 1 / den^2) amplifies the rounding of the two summation orders.
  tolerance = 1e-2 if feature_map == "trigrf" else 2e-5
  for g_blocks, g_whole in zip(grads_blocks, grads_whole):
    scale = float(jnp.max(jnp.abs(g_whole))) + 1e-6
    np.testing.assert_allclose(g_blocks / scale, g_whole / scale, atol=tolerance)


@pytest.mark.parametrize("method", ["nystrom", "linformer", "performer", "spectraformer",
                                    "skeinformer", "skein_simplenorm", "skein_nonorm", "bigbird"])
def test_modules_in_blocks_equal_one_block(method):
  q, mask = _tokens(seed=7)
  k, _ = _tokens(seed=8)
  v, _ = _tokens(seed=9)
  small = dict(nystrom=dict(num_landmarks=6), linformer=dict(linformer_k=8),
               performer=dict(nb_features=8, redraw_features=False),
               spectraformer=dict(nb_features=8, feature_map="oprf"),
               bigbird=dict(block_size=2, num_random_blocks=1)).get(
                   method, dict(nb_features=8))
  module_class = attention.get(method)
  rngs = {"params": jax.random.key(0), attention.ATTENTION_RNG: jax.random.key(1)}
  variables = module_class(**small, chunk_size=None).init(rngs, q, k, v, mask, deterministic=True)

  params = variables.get("params", {})
  constants = {name: value for name, value in variables.items() if name != "params"}

  def loss(params, q, k, v, chunk_size):
    out = module_class(**small, chunk_size=chunk_size).apply(
        {"params": params, **constants}, q, k, v, mask, deterministic=True,
        rngs={attention.ATTENTION_RNG: jax.random.key(2)})
    real = jnp.where(mask[:, :, None, None], out, 0.0)
    return jnp.sum(real * jnp.cos(real)), out

  grad = jax.jit(jax.value_and_grad(loss, range(4), has_aux=True), static_argnums=4)
  (_, whole), grads_whole = grad(params, q, k, v, None)
  (_, blocks), grads_blocks = grad(params, q, k, v, 5)
  np.testing.assert_allclose(blocks, whole, rtol=2e-5, atol=2e-6)
  for g_blocks, g_whole in zip(jax.tree.leaves(grads_blocks), jax.tree.leaves(grads_whole)):
    scale = float(jnp.max(jnp.abs(g_whole))) + 1e-6
    np.testing.assert_allclose(g_blocks / scale, g_whole / scale, atol=2e-5)
