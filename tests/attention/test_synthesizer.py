"""Synthesizer attention against softmax attention and a numpy evaluation of each mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import synthesizer

HEADS, HEAD_DIM, LENGTH = 2, 4, 12
_STATIC = ("synthesizer_mode", "ignore_dot_product", "factorized_rank", "max_length",
           "padded_keys_attended", "dense_scrambled_reshape", "dropout_rate")
_synthesizer = jax.jit(attention.synthesizer_attention, static_argnames=_STATIC)


def _inputs(lengths=(LENGTH, 7), length=LENGTH, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (len(lengths), length, HEADS, HEAD_DIM)) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _params(mode, max_length=LENGTH, seed=3, scale=1.0):
  params = synthesizer.synthesizer_parameters(jax.random.key(seed), mode, HEADS, HEAD_DIM,
                                              max_length, factorized_rank=3)
  # Non-zero biases, so that the numpy check sees them.
  return {name: (x + 0.1 * jax.random.normal(jax.random.key(7), x.shape)
                 if name.endswith("_bias") else x) * scale for name, x in params.items()}


def _np_synthesizer(q, k, v, mask, params, mode, *, ignore_dot_product=False, masked=True,
                    scrambled=False):
  """softmax(S + q k^T / sqrt(d), padded keys masked) V, S from the mode's formula."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  p = {name: np.asarray(x, np.float64) for name, x in params.items()}
  b, n, h, d = q.shape
  logits = np.zeros((b, h, n, n))
  parts = mode.split("+")
  if "random" in parts:
    logits += p["random"][None, :, :n, :n]
  if "factorized_random" in parts:
    logits += np.einsum("hlk,hkm->hlm", p["random1"], p["random2"])[None, :, :n, :n]
  if "dense" in parts:
    hidden = np.maximum(np.einsum("bnhd,hde->bnhe", q, p["dense1_kernel"]) + p["dense1_bias"], 0)
    dense = np.einsum("bnhe,hel->bnhl", hidden, p["dense2_kernel"]) + p["dense2_bias"]
    dense = dense.reshape(b, h, n, -1) if scrambled else dense.transpose(0, 2, 1, 3)
    logits += dense[..., :n]
  if not ignore_dot_product:
    logits += np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
  if masked:
    logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _real(x, mask):
  return np.asarray(x)[np.asarray(mask)]


def test_zero_random_table_with_dot_product_is_softmax_attention():
  q, k, v, mask = _inputs()
  zeros = {"random": jnp.zeros((HEADS, 20, 20))}
  out = _synthesizer(q, k, v, mask, params=zeros)
  np.testing.assert_allclose(out, attention.softmax_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,ignore_dot_product", [
    ("random", False), ("random", True), ("factorized_random", False), ("dense", True),
    ("dense+random", False), ("dense+factorized_random", True)])
def test_matches_numpy_formula(mode, ignore_dot_product):
  q, k, v, mask = _inputs()
  params = _params(mode, max_length=15, scale=3.0)  # tables longer than the call: sliced
  out = _synthesizer(q, k, v, mask, params=params, synthesizer_mode=mode,
                     ignore_dot_product=ignore_dot_product)
  expected = _np_synthesizer(q, k, v, mask, params, mode, ignore_dot_product=ignore_dot_product)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_random_synthesizer_without_dot_product_ignores_queries_and_keys():
  q, k, v, mask = _inputs()
  q2, k2, _, _ = _inputs(seed=5)
  params = _params("random")
  kwargs = dict(params=params, ignore_dot_product=True)
  np.testing.assert_allclose(_synthesizer(q, k, v, mask, **kwargs),
                             _synthesizer(q2, k2, v, mask, **kwargs), rtol=1e-6)
  # The dense synthesizer reads the queries (its MLP input), never the keys.
  kwargs = dict(params=_params("dense"), synthesizer_mode="dense", ignore_dot_product=True)
  np.testing.assert_allclose(_synthesizer(q, k, v, mask, **kwargs),
                             _synthesizer(q, k2, v, mask, **kwargs), rtol=1e-6)
  assert not np.allclose(_synthesizer(q, k, v, mask, **kwargs), _synthesizer(q2, k, v, mask, **kwargs))


def test_drawn_tables_are_the_helpers_draw():
  q, k, v, mask = _inputs()
  mode = "dense+random"
  params = synthesizer.synthesizer_parameters(jax.random.key(4), mode, HEADS, HEAD_DIM, 16, 32)
  np.testing.assert_allclose(
      _synthesizer(q, k, v, mask, rng=jax.random.key(4), synthesizer_mode=mode, max_length=16),
      _synthesizer(q, k, v, mask, params=params, synthesizer_mode=mode), rtol=1e-6, atol=1e-6)


def test_tables_are_xavier_uniform_over_heads_and_length():
  params = synthesizer.synthesizer_parameters(jax.random.key(0), "dense+random", 4, 16, 256)
  table = np.asarray(params["random"])
  bound = np.sqrt(6.0 / (2 * 4 * 256))  # fans include the heads, as the official initializer
  assert table.shape == (4, 256, 256) and np.abs(table).max() <= bound
  np.testing.assert_allclose(table.std(), bound / np.sqrt(3), rtol=0.01)
  kernel = np.asarray(params["dense2_kernel"])  # [heads, d, L]: per-head fans
  assert np.abs(kernel).max() <= np.sqrt(6.0 / (16 + 256)) and np.abs(kernel).max() > 0.9 * np.sqrt(
      6.0 / (16 + 256))
  np.testing.assert_array_equal(params["dense2_bias"], 0.0)


# --- Masking ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,ignore_dot_product", [("random", False), ("random", True),
                                                     ("dense+factorized_random", True),
                                                     ("dense", False)])
def test_real_outputs_ignore_padded_contents(mode, ignore_dot_product):
  q, k, v, mask = _inputs(lengths=(5, 9))
  garbage = _inputs(seed=9)
  pad = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(pad, 1e3 * g, x) for x, g in zip((q, k, v), garbage))
  kwargs = dict(params=_params(mode), synthesizer_mode=mode, ignore_dot_product=ignore_dot_product)
  out = _synthesizer(q, k, v, mask, **kwargs)
  out2 = _synthesizer(q2, k2, v2, mask, **kwargs)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)
  expected = _np_synthesizer(q, k, v, mask, kwargs["params"], mode,
                             ignore_dot_product=ignore_dot_product)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-5, atol=1e-5)


# --- Official quirks ----------------------------------------------------------------------------

def test_padded_keys_attended_reproduces_the_unmasked_official_softmax():
  q, k, v, mask = _inputs()
  params = _params("random", scale=3.0)
  kwargs = dict(params=params, ignore_dot_product=True)
  out = _synthesizer(q, k, v, mask, padded_keys_attended=True, **kwargs)
  expected = _np_synthesizer(q, k, v, mask, params, "random", ignore_dot_product=True, masked=False)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  masked = _synthesizer(q, k, v, mask, **kwargs)
  np.testing.assert_allclose(out[0], masked[0], rtol=1e-5, atol=1e-6)  # no padding: same
  assert not np.allclose(_real(out, mask)[LENGTH:], _real(masked, mask)[LENGTH:], atol=1e-3)


def test_dense_scrambled_reshape_reproduces_the_official_reshape():
  q, k, v, mask = _inputs()
  params = _params("dense", scale=3.0)
  kwargs = dict(params=params, synthesizer_mode="dense")
  out = _synthesizer(q, k, v, mask, dense_scrambled_reshape=True, **kwargs)
  np.testing.assert_allclose(out, _np_synthesizer(q, k, v, mask, params, "dense", scrambled=True),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(out, _synthesizer(q, k, v, mask, **kwargs), atol=1e-3)


# --- Module -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["random", "factorized_random", "dense"])
def test_module_tables_follow_the_initialisation_length(mode):
  q, k, v, mask = _inputs()
  module = attention.SynthesizerAttention(synthesizer_mode=mode, factorized_rank=3)
  variables = jax.jit(module.init, static_argnames="deterministic")(
      {"params": jax.random.key(0)}, q, k, v, mask, deterministic=True)
  shapes = synthesizer.parameter_shapes(mode, HEADS, HEAD_DIM, LENGTH, 3)
  assert {name: x.shape for name, x in variables["params"].items()} == shapes
  apply = jax.jit(module.apply, static_argnames="deterministic")
  short = _inputs(lengths=(8, 5), length=8, seed=2)
  np.testing.assert_allclose(
      apply(variables, *short, deterministic=True),
      _synthesizer(*short, params=variables["params"], synthesizer_mode=mode), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="length"):
    apply(variables, *_inputs(lengths=(13, 13), length=13), deterministic=True)


def test_module_max_length_sets_the_table_length():
  q, k, v, mask = _inputs()
  module = attention.SynthesizerAttention(max_length=40)
  shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)}, q, k, v, mask,
                                              deterministic=True))
  assert shapes["params"]["random"].shape == (HEADS, 40, 40)


@pytest.mark.parametrize("kwargs,match", [(dict(synthesizer_mode="dense+dense"), "synthesizer_mode"),
                                          (dict(factorized_rank=0), "factorized_rank"),
                                          (dict(max_length=0), "max_length"),
                                          (dict(max_length=8), "length")])
def test_bad_hyperparameters_are_clear_errors(kwargs, match):
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=match):
    attention.synthesizer_attention(q, k, v, mask, rng=jax.random.key(0), **kwargs)


def test_missing_params_and_key_is_a_clear_error():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="rng="):
    attention.synthesizer_attention(q, k, v, mask)
