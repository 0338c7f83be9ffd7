"""The contract every registered attention method must meet, run over all of them.

A method registered in lra_jax.attention is tested here without being listed:
shape and dtype, jit, padding invariance, finite gradients, determinism given
the key, a bfloat16 run, and its linen module inside the multi-head layer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention, errors

BATCH, LENGTH, HEADS, HEAD_DIM = 2, 24, 2, 8
LENGTHS = (LENGTH, 15)  # the second sequence has 9 padded positions
METHODS = attention.names()


def _inputs(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (BATCH, LENGTH, HEADS, HEAD_DIM)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
  mask = jnp.arange(LENGTH)[None, :] < jnp.asarray(LENGTHS)[:, None]
  return q, k, v, mask


def _call(name, q, k, v, mask, rng=None):
  method = attention.get_method(name)
  rng = jax.random.key(7) if rng is None else rng
  return method.fn(q, k, v, mask, rng=rng, **method.small_input_kwargs)


def _real(x, mask):
  return np.asarray(x, np.float32)[np.asarray(mask)]


@pytest.mark.parametrize("name", METHODS)
def test_shape_and_dtype(name):
  q, k, v, mask = _inputs()
  out = _call(name, q, k, v, mask)
  assert out.shape == q.shape
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", METHODS)
def test_jit_matches_eager(name):
  q, k, v, mask = _inputs()
  eager = _call(name, q, k, v, mask)
  jitted = jax.jit(lambda q, k, v, m, r: _call(name, q, k, v, m, r))(q, k, v, mask, jax.random.key(7))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_real_outputs_ignore_padded_positions(name):
  q, k, v, mask = _inputs()
  garbage = _inputs(seed=1)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, 100.0 * g, x) for x, g in zip((q, k, v), garbage))
  out = _call(name, q, k, v, mask)
  out2 = _call(name, q2, k2, v2, mask)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_are_finite_and_nonzero(name):
  q, k, v, mask = _inputs()

  def loss(q, k, v):
    out = _call(name, q, k, v, mask)
    return jnp.sum(jnp.where(mask[:, :, None, None], out, 0.0) ** 2)

  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  for grad in grads:
    assert np.all(np.isfinite(grad))
  assert float(jnp.abs(grads[2]).sum()) > 0  # outputs depend on the values


@pytest.mark.parametrize("name", METHODS)
def test_same_key_same_output(name):
  q, k, v, mask = _inputs()
  key = jax.random.key(3)
  np.testing.assert_array_equal(_call(name, q, k, v, mask, key), _call(name, q, k, v, mask, key))


@pytest.mark.parametrize("name", METHODS)
def test_bfloat16_runs_and_stays_close(name):
  q, k, v, mask = _inputs(jnp.bfloat16)
  out = _call(name, q, k, v, mask)
  assert out.dtype == jnp.bfloat16
  reference = _call(name, *(x.astype(jnp.float32) for x in (q, k, v)), mask)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  np.testing.assert_allclose(_real(out, mask), _real(reference, mask), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("name", METHODS)
def test_module_in_multihead_layer(name):
  layer = attention.MultiHeadAttention(
      num_heads=HEADS, qkv_dim=HEADS * HEAD_DIM, out_dim=12, attention=name,
      attention_kwargs=dict(attention.get_method(name).small_input_kwargs), dropout_rate=0.1)
  x = jax.random.normal(jax.random.key(0), (BATCH, LENGTH, 12))
  _, _, _, mask = _inputs()
  rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2),
          attention.ATTENTION_RNG: jax.random.key(3)}
  variables = layer.init(rngs, x, mask, deterministic=True)

  def loss(params):
    out = layer.apply({**variables, "params": params}, x, mask, deterministic=False,
                      rngs={"dropout": jax.random.key(4), attention.ATTENTION_RNG: jax.random.key(5)})
    assert out.shape == x.shape
    return jnp.sum(out ** 2)

  grads = jax.grad(loss)(variables["params"])
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", METHODS)
def test_pure_function_is_public_as_name_attention(name):
  assert getattr(attention, f"{name}_attention") is attention.get_method(name).fn
  assert attention.get(name) is attention.get_method(name).module


def test_unknown_name_lists_valid_names():
  with pytest.raises(errors.ConfigError) as error:
    attention.get("no_such_attention")
  for name in METHODS:
    assert name in str(error.value)


def _primitive_input_dtypes(jaxpr, primitive_names):
  """dtypes of the inputs of every equation named in `primitive_names`, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in primitive_names:
      found.extend(var.aval.dtype for var in eqn.invars if hasattr(var.aval, "dtype"))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          found.extend(_primitive_input_dtypes(getattr(inner, "jaxpr", inner), primitive_names))
  return found


@pytest.mark.parametrize("name", METHODS)
def test_exponentials_run_in_float32_under_bfloat16(name):
  # Softmaxes, kernels and feature maps are exponentials: none may see bfloat16.
  q, k, v, mask = _inputs(jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda q, k, v: _call(name, q, k, v, mask))(q, k, v)
  dtypes = _primitive_input_dtypes(jaxpr.jaxpr, {"exp", "exp2", "log", "logistic"})
  assert all(dtype == jnp.float32 for dtype in dtypes), dtypes


def test_exponential_finder_sees_softmax_exp():
  q, k, v, mask = _inputs(jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda q, k, v: _call("softmax", q, k, v, mask))(q, k, v)
  assert _primitive_input_dtypes(jaxpr.jaxpr, {"exp"}) == [jnp.float32]
