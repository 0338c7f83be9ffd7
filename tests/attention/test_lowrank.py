"""Linformer against exact softmax attention and a numpy float64 evaluation of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import lowrank

LENGTH, HEADS, HEAD_DIM = 24, 2, 8


def _inputs(lengths=(LENGTH, 15), length=LENGTH, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (len(lengths), length, HEADS, HEAD_DIM), dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _numpy_linformer(q, k, v, mask, projection):
  """softmax(Q (E (M K))^T / sqrt(d)) E (M V) per head, as attention_linformer computes it."""
  q, k, v, e = (np.asarray(x, np.float64) for x in (q, k, v, projection))
  real = np.asarray(mask, np.float64)[:, :, None, None]
  projected_k = np.einsum("hkn,bnhd->bhkd", e, k * real)
  projected_v = np.einsum("hkn,bnhd->bhkd", e, v * real)
  logits = np.einsum("bqhd,bhkd->bhqk", q, projected_k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bhkd->bqhd", weights, projected_v)


def _identity_projection(k, length=LENGTH):
  return jnp.broadcast_to(jnp.eye(k, length), (HEADS, k, length))


def test_identity_projection_without_padding_is_softmax_attention():
  q, k, v, mask = _inputs(lengths=(LENGTH, LENGTH))
  out = attention.linformer_attention(q, k, v, mask, projection=_identity_projection(LENGTH))
  np.testing.assert_allclose(out, attention.softmax_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_projection_onto_the_real_tokens_is_masked_softmax_attention():
  # E = the first 15 rows of the identity keeps exactly the 15 real keys of
  # the padded sequence: exact masked softmax there.
  q, k, v, mask = _inputs(lengths=(15, 15))
  out = attention.linformer_attention(q, k, v, mask, projection=_identity_projection(15))
  np.testing.assert_allclose(out, attention.softmax_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)
  # The padded zero rows of a square identity do get weight (no mask in
  # Linformer's softmax), so that is not softmax attention.
  full = attention.linformer_attention(q, k, v, mask, projection=_identity_projection(LENGTH))
  assert not np.allclose(full, out, atol=1e-3)


@pytest.mark.parametrize("linformer_k", [4, 8, 32])
def test_matches_numpy_reference_formula(linformer_k):
  q, k, v, mask = _inputs()
  projection = lowrank.linformer_projection(jax.random.key(3), HEADS, linformer_k, LENGTH)
  expected = _numpy_linformer(q, k, v, mask, projection)
  out = attention.linformer_attention(q, k, v, mask, projection=projection)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Without a projection, the key draws the same one.
  drawn = attention.linformer_attention(q, k, v, mask, rng=jax.random.key(3), linformer_k=linformer_k)
  np.testing.assert_array_equal(drawn, out)


def test_projection_draw_is_normal_with_reference_stddev():
  e = np.asarray(lowrank.linformer_projection(jax.random.key(0), 4, 128, 256))
  assert e.shape == (4, 128, 256) and e.dtype == np.float32
  assert abs(e.mean()) < 2e-4
  np.testing.assert_allclose(e.std(), 0.02, rtol=0.01)
  assert not np.array_equal(e, lowrank.linformer_projection(jax.random.key(1), 4, 128, 256))


def test_default_draw_has_128_rows():
  q, k, v, mask = _inputs(length=8, lengths=(8, 5))
  out = attention.linformer_attention(q, k, v, mask, rng=jax.random.key(3))
  projection = lowrank.linformer_projection(jax.random.key(3), HEADS, 128, 8)
  np.testing.assert_array_equal(out, attention.linformer_attention(q, k, v, mask, projection=projection))


def test_padding_is_ignored_by_values_and_by_projection_columns():
  q, k, v, mask = _inputs(lengths=(20, 9))
  projection = lowrank.linformer_projection(jax.random.key(3), HEADS, 8, LENGTH)
  out = attention.linformer_attention(q, k, v, mask, projection=projection)
  garbage = _inputs(lengths=(20, 9), seed=1)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, 1e3 * g, x) for x, g in zip((q, k, v), garbage))
  # The columns of E that meet padded positions multiply zeros.
  other_columns = jnp.where(jnp.arange(LENGTH) < 20, projection, 5.0)
  out2 = attention.linformer_attention(q2, k2, v2, mask, projection=other_columns)
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(out2)[real], np.asarray(out)[real], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "PRNG key"),
    (dict(projection=jnp.zeros((HEADS, 8, LENGTH + 1))), r"\[heads, k, length\]"),
    (dict(projection=jnp.zeros((HEADS + 1, 8, LENGTH))), r"\[heads, k, length\]"),
    (dict(projection=jnp.zeros((HEADS, 8, LENGTH)), linformer_k=16), "disagrees"),
    (dict(rng=jax.random.key(0), linformer_k=0), "positive"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=message):
    attention.linformer_attention(q, k, v, mask, **kwargs)


def test_module_learns_its_projection_by_default():
  q, k, v, mask = _inputs()
  module = attention.LinformerAttention(linformer_k=8)
  variables = module.init({"params": jax.random.key(1)}, q, k, v, mask, deterministic=True)
  assert set(variables) == {"params"}
  projection = variables["params"]["projection"]
  assert projection.shape == (HEADS, 8, LENGTH)
  out = module.apply(variables, q, k, v, mask, deterministic=False)
  np.testing.assert_array_equal(out, attention.linformer_attention(q, k, v, mask, projection=projection))

  def loss(params):
    return jnp.sum(module.apply({"params": params}, q, k, v, mask, deterministic=True) ** 2)

  grad = jax.grad(loss)(variables["params"])["projection"]
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad[:, :, :LENGTH]).min()) > 0


def test_projection_columns_of_positions_padded_everywhere_get_no_gradient():
  q, k, v, mask = _inputs(lengths=(20, 15))
  module = attention.LinformerAttention(linformer_k=8)
  params = module.init({"params": jax.random.key(1)}, q, k, v, mask, deterministic=True)["params"]

  def loss(params):
    return jnp.sum(module.apply({"params": params}, q, k, v, mask, deterministic=True) ** 2)

  grad = np.abs(np.asarray(jax.grad(loss)(params)["projection"]))
  assert grad[:, :, :20].min() > 0
  np.testing.assert_array_equal(grad[:, :, 20:], 0.0)


def test_fixed_projection_is_a_constant_drawn_from_the_attention_stream():
  q, k, v, mask = _inputs()
  module = attention.LinformerAttention(linformer_k=8, trainable_projection=False)

  def init(seed):
    return module.init({"params": jax.random.key(1), attention.ATTENTION_RNG: jax.random.key(seed)},
                       q, k, v, mask, deterministic=True)

  variables = init(2)
  assert "params" not in variables
  projection = variables["constants"]["projection"]
  assert projection.shape == (HEADS, 8, LENGTH) and projection.dtype == jnp.float32
  np.testing.assert_array_equal(init(2)["constants"]["projection"], projection)
  assert not np.array_equal(init(3)["constants"]["projection"], projection)
  np.testing.assert_allclose(np.asarray(projection).std(), 0.02, rtol=0.2)
  # Applying needs no RNG and does not change E.
  out, state = module.apply(variables, q, k, v, mask, deterministic=False, mutable=["constants"])
  np.testing.assert_array_equal(state["constants"]["projection"], projection)
  np.testing.assert_array_equal(out, attention.linformer_attention(q, k, v, mask, projection=projection))


@pytest.mark.parametrize("trainable", [True, False])
def test_module_rejects_a_length_other_than_at_init(trainable):
  q, k, v, mask = _inputs()
  module = attention.LinformerAttention(linformer_k=8, trainable_projection=trainable)
  variables = module.init({"params": jax.random.key(1), attention.ATTENTION_RNG: jax.random.key(2)},
                          q, k, v, mask, deterministic=True)
  short = _inputs(length=16, lengths=(16, 7))
  with pytest.raises(ValueError, match="runtime length 16 differs from the length at initialisation 24"):
    module.apply(variables, *short, deterministic=True)


def test_cost_is_linear_no_length_by_length_array():
  length = 64
  q, k, v, mask = _inputs(length=length, lengths=(length, 40))
  projection = lowrank.linformer_projection(jax.random.key(3), HEADS, 8, length)

  def loss(q, k, v):
    return jnp.sum(attention.linformer_attention(q, k, v, mask, projection=projection) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert any(length in shape and 8 in shape for shape in shapes)  # the [n, k] weights
  assert not any(list(shape).count(length) >= 2 for shape in shapes)


def test_softmax_is_float32_under_bfloat16():
  q, k, v, mask = _inputs(dtype=jnp.bfloat16)
  projection = lowrank.linformer_projection(jax.random.key(3), HEADS, 8, LENGTH)
  jaxpr = jax.make_jaxpr(lambda *a: attention.linformer_attention(*a, projection=projection))(
      q, k, v, mask)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in jaxpr.jaxpr.eqns
                if eqn.primitive.name == "exp"}
  assert exp_dtypes == {"float32"}
  out = attention.linformer_attention(q, k, v, mask, projection=projection)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_linformer(q, k, v, mask, projection),
                             atol=0.02, rtol=0.02)


def test_projection_shared_by_heads_equals_the_same_projection_per_head():
  q, k, v, mask = _inputs()
  shared = lowrank.linformer_projection(jax.random.key(4), 1, 8, LENGTH)
  out = attention.linformer_attention(q, k, v, mask, projection=shared)
  per_head = attention.linformer_attention(q, k, v, mask,
                                           projection=jnp.broadcast_to(shared, (HEADS, 8, LENGTH)))
  np.testing.assert_allclose(out, per_head, rtol=1e-5, atol=1e-6)
  expected = _numpy_linformer(q, k, v, mask, np.broadcast_to(shared, (HEADS, 8, LENGTH)))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_official_lra_setting_one_xavier_projection_for_all_heads():
  q, k, v, mask = _inputs()
  module = lowrank.LinformerAttention(linformer_k=16, shared_across_heads=True,
                                      projection_init="xavier_uniform")
  variables = module.init(jax.random.key(0), q, k, v, mask, deterministic=True)
  projection = variables["params"]["projection"]
  assert projection.shape == (1, 16, LENGTH)
  limit = np.sqrt(6.0 / (16 + LENGTH))
  assert np.abs(projection).max() <= limit and np.abs(projection).max() > 0.8 * limit


def test_padded_positions_projected_quirk_lets_padding_change_real_outputs():
  q, k, v, mask = _inputs()
  projection = lowrank.linformer_projection(jax.random.key(5), HEADS, 8, LENGTH)
  garbage_k = k.at[1, 15:].set(100.0)
  for quirk, changes in ((False, False), (True, True)):
    clean = attention.linformer_attention(q, k, v, mask, projection=projection,
                                          padded_positions_projected=quirk)
    dirty = attention.linformer_attention(q, garbage_k, v, mask, projection=projection,
                                          padded_positions_projected=quirk)
    assert (not np.allclose(clean[1, :15], dirty[1, :15], atol=1e-4)) == changes
  unmasked = attention.linformer_attention(q, k, v, jnp.ones_like(mask), projection=projection)
  quirk = attention.linformer_attention(q, k, v, mask, projection=projection,
                                        padded_positions_projected=True)
  np.testing.assert_allclose(quirk, unmasked, rtol=1e-5, atol=1e-6)


def test_unknown_projection_init_lists_the_valid_ones():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="normal, xavier_uniform"):
    lowrank.LinformerAttention(projection_init="orthogonal").init(jax.random.key(0), q, k, v, mask,
                                                                  deterministic=True)
