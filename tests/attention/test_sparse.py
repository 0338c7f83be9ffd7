"""Informer (ProbSparse) and BigBird (block-sparse) attention against numpy float64 code."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from lra_jax import attention
from lra_jax.attention import sparse

HEADS, HEAD_DIM = 2, 8

# Jitted once per shape and setting: eager op-by-op dispatch is far slower here.
informer = jax.jit(attention.informer_attention, static_argnames=("in_nb_features", "ignore_padding"))
bigbird = jax.jit(attention.bigbird_attention, static_argnames=(
    "block_size", "num_random_blocks", "random_blocks_first_1024_tokens"))
softmax = jax.jit(attention.softmax_attention)
random_blocks = jax.jit(sparse.bigbird_random_blocks, static_argnums=(1, 2), static_argnames=(
    "block_size", "num_random_blocks", "first_1024_tokens"))
sample_indices = jax.jit(sparse.informer_sample_indices, static_argnums=2,
                         static_argnames="ignore_padding")
sparsity = jax.jit(sparse.informer_sparsity, static_argnames="ignore_padding")


def _inputs(lengths, length, seed=0, heads=HEADS, head_dim=HEAD_DIM):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, heads, head_dim)
  q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)
  mask = jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _with_garbage(q, k, v, mask, seed=1):
  garbage = jax.random.split(jax.random.key(seed), 3)
  padded = ~mask[:, :, None, None]
  return tuple(jnp.where(padded, 100.0 * jax.random.normal(g, x.shape), x)
               for g, x in zip(garbage, (q, k, v)))


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_softmax_attention(q, k, v, allowed):
  """One (batch, head): softmax(q k^T / sqrt(d)) v over the allowed [n, n] pairs."""
  logits = np.where(allowed, q @ k.T / np.sqrt(q.shape[-1]), -np.inf)
  return _np_softmax(logits) @ v


# ---------------------------------------------------------------------------
# Informer.


def _np_informer(q, k, v, mask, indices, num_top, ignore_padding):
  """Float64 ProbSparse attention given the sampled key positions [b, n, U]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask, indices = np.asarray(mask), np.asarray(indices)
  batch, length, heads, head_dim = q.shape
  out = np.zeros_like(v)
  measures = np.zeros((batch, heads, length))
  for b in range(batch):
    for h in range(heads):
      qs, ks, vs = q[b, :, h], k[b, :, h], v[b, :, h]
      scores = np.einsum("nd,nud->nu", qs, ks[indices[b]])
      if ignore_padding:
        measure = scores.max(1) - scores.sum(1) / length
        lazy, allowed = vs.mean(0), np.ones(length, bool)
      else:
        measure = (scores.max(1) - scores.mean(1)) / np.sqrt(head_dim)
        measure[~mask[b]] = -np.inf
        lazy, allowed = vs[mask[b]].mean(0), mask[b]
      measures[b, h] = measure
      out[b, :, h] = lazy
      for i in np.argsort(-measure, kind="stable")[:num_top]:
        out[b, i, h] = _np_softmax_attention(qs[i:i + 1], ks, vs, allowed[None])[0]
  return out, measures


def test_informer_sizes_are_the_reference_numbers():
  assert sparse.informer_sizes(1024) == (19, 133, 133)
  assert sparse.informer_sizes(2048) == (17, 136, 136)
  assert sparse.informer_sizes(4096) == (16, 144, 144)
  assert sparse.informer_sizes(16384) == (14, 140, 140)
  assert sparse.informer_sizes(24, 4) == (2, 8, 8)  # ln 24 = 3.18
  assert sparse.informer_sizes(24, 100) == (32, 24, 24)  # clipped to the length
  with pytest.raises(ValueError, match="in_nb_features"):
    sparse.informer_sizes(24, 0)


def test_informer_samples_real_keys_shared_by_equal_lengths():
  mask = jnp.arange(24)[None, :] < jnp.asarray([15, 24, 15])[:, None]
  indices = np.asarray(sample_indices(jax.random.key(0), mask, 40))
  assert indices.shape == (3, 24, 40) and indices.dtype == np.int32
  assert set(indices[0].ravel()) == set(range(15))  # 960 draws cover all 15 real keys
  assert set(indices[1].ravel()) == set(range(24))
  np.testing.assert_array_equal(indices[0], indices[2])  # one draw for the whole batch
  blind = np.asarray(sample_indices(jax.random.key(0), mask, 40, ignore_padding=True))
  assert set(blind[0].ravel()) == set(range(24))  # padded keys are sampled too
  np.testing.assert_array_equal(blind[0], blind[1])


def test_informer_selecting_every_query_is_exact_softmax():
  q, k, v, mask = _inputs((24, 15, 5), 24)
  out = informer(q, k, v, mask, rng=jax.random.key(0), in_nb_features=100)
  np.testing.assert_allclose(_real(out, mask), _real(softmax(q, k, v, mask), mask),
                             rtol=1e-5, atol=1e-6)
  blind = informer(q, k, v, mask, rng=jax.random.key(0), in_nb_features=100, ignore_padding=True)
  all_real = jnp.ones_like(mask)
  np.testing.assert_allclose(blind, softmax(q, k, v, all_real), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ignore_padding", [False, True])
def test_informer_matches_numpy_given_the_same_sample(ignore_padding):
  q, k, v, mask = _inputs((24, 15, 10), 24)
  rng = jax.random.key(3)
  _, num_samples, num_top = sparse.informer_sizes(24, 4)
  indices = sample_indices(rng, mask, num_samples, ignore_padding=ignore_padding)
  expected, measures = _np_informer(q, k, v, mask, indices, num_top, ignore_padding)
  measure = sparsity(q, k, mask, indices, ignore_padding=ignore_padding)
  np.testing.assert_allclose(measure, measures, rtol=1e-5, atol=1e-5)
  out = informer(q, k, v, mask, rng=rng, in_nb_features=4, ignore_padding=ignore_padding)
  # Which padded queries fill the spare top-u slots is arbitrary by default.
  rows = np.ones_like(mask) if ignore_padding else np.asarray(mask)
  np.testing.assert_allclose(np.asarray(out)[rows], expected[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ignore_padding", [False, True])
def test_informer_lazy_rows_are_the_mean_of_the_values(ignore_padding):
  q, k, v, mask = _inputs((24, 15), 24)
  rng = jax.random.key(5)
  _, num_samples, num_top = sparse.informer_sizes(24, 4)
  indices = sample_indices(rng, mask, num_samples, ignore_padding=ignore_padding)
  measure = np.asarray(sparsity(q, k, mask, indices, ignore_padding=ignore_padding))
  out = np.asarray(informer(q, k, v, mask, rng=rng, in_nb_features=4, ignore_padding=ignore_padding))
  for b in range(2):
    real = np.asarray(mask[b])
    mean = np.asarray(v[b]).mean(0) if ignore_padding else np.asarray(v[b])[real].mean(0)
    for h in range(HEADS):
      lazy = np.argsort(-measure[b, h], kind="stable")[num_top:]
      lazy = lazy if ignore_padding else lazy[real[lazy]]
      assert len(lazy) >= 7  # 24 - 8 or 15 - 8 lazy real queries
      np.testing.assert_allclose(out[b, lazy, h], np.broadcast_to(mean[h], (len(lazy), HEAD_DIM)),
                                 rtol=1e-5, atol=1e-6)


def test_informer_picks_the_peaked_queries():
  """Zero queries attend uniformly (their exact output is the lazy mean), so
  when the u selected queries are exactly the non-zero ones the result is exact."""
  q, k, v, mask = _inputs((24, 15), 24)
  _, _, num_top = sparse.informer_sizes(24, 4)
  active = np.zeros((2, 24, HEADS), bool)
  for b, real in enumerate((24, 15)):
    for h in range(HEADS):
      active[b, np.random.default_rng(b * HEADS + h).choice(real, num_top, replace=False), h] = True
  q = jnp.where(active[..., None], 3.0 * q, 0.0)
  for seed in range(3):
    out = informer(q, k, v, mask, rng=jax.random.key(seed), in_nb_features=4)
    np.testing.assert_allclose(_real(out, mask), _real(softmax(q, k, v, mask), mask),
                               rtol=1e-5, atol=1e-6)


def test_informer_error_shrinks_as_more_queries_are_exact():
  q, k, v, mask = _inputs((24, 15), 24)
  exact = _real(softmax(q, k, v, mask), mask)
  errors = []
  for in_nb_features in (2, 6, 12, 100):  # u = 4, 8, 16, 24
    outs = [informer(q, k, v, mask, rng=jax.random.key(s), in_nb_features=in_nb_features)
            for s in range(4)]
    errors.append(np.mean([np.abs(_real(out, mask) - exact).mean() for out in outs]))
  assert errors[0] > errors[1] > errors[2] > errors[3]
  assert errors[3] < 1e-6


def test_informer_real_outputs_ignore_padding_unless_the_quirk_is_on():
  q, k, v, mask = _inputs((24, 15, 7, 1), 24)
  q2, k2, v2 = _with_garbage(q, k, v, mask)
  rng = jax.random.key(2)
  out = informer(q, k, v, mask, rng=rng, in_nb_features=4)
  out2 = informer(q2, k2, v2, mask, rng=rng, in_nb_features=4)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)
  blind = informer(q, k, v, mask, rng=rng, in_nb_features=4, ignore_padding=True)
  blind2 = informer(q2, k2, v2, mask, rng=rng, in_nb_features=4, ignore_padding=True)
  padded_sequences = np.asarray(mask[1:])
  assert np.abs(_real(blind2[1:], padded_sequences) - _real(blind[1:], padded_sequences)).max() > 0.1
  np.testing.assert_allclose(blind2[0], blind[0], rtol=1e-5, atol=1e-5)  # no padding there


def test_informer_needs_a_key():
  q, k, v, mask = _inputs((24,), 24)
  with pytest.raises(ValueError, match="PRNG key"):
    informer(q, k, v, mask, in_nb_features=4)


def test_informer_module_redraws_the_sample_each_call():
  module = attention.InformerAttention(in_nb_features=4)
  q, k, v, mask = _inputs((24, 15), 24)
  init = jax.jit(module.init, static_argnames="deterministic")
  variables = init({attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask, deterministic=True)
  assert variables == {}

  @jax.jit
  def apply(seed):
    return module.apply(variables, q, k, v, mask, deterministic=True,
                        rngs={attention.ATTENTION_RNG: jax.random.key(seed)})

  np.testing.assert_array_equal(apply(1), apply(1))
  assert np.abs(np.asarray(apply(1)) - np.asarray(apply(2))).max() > 1e-3
  assert attention.default_hyperparameters("informer") == {"in_nb_features": 128,
                                                           "ignore_padding": False}


# ---------------------------------------------------------------------------
# BigBird.


def _np_block_mask(num_blocks, block_size, pattern):
  """The dense [n, n] pattern of one head: global rows and columns, window, random blocks."""
  allowed = np.zeros((num_blocks, num_blocks), bool)
  for i in range(num_blocks):
    if i in (0, num_blocks - 1):
      allowed[i] = True
      continue
    allowed[i, [0, num_blocks - 1, i - 1, i, i + 1]] = True
    for block in pattern[i - 1]:
      if block >= 0:
        allowed[i, block] = True
  return np.kron(allowed, np.ones((block_size, block_size), bool))


def _np_bigbird(q, k, v, mask, block_size, pattern):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask, pattern = np.asarray(mask), np.asarray(pattern)
  batch, length, heads, _ = q.shape
  out = np.zeros_like(v)
  with np.errstate(invalid="ignore"):  # padded query rows may be all -inf; they are not compared
    for h in range(heads):
      dense = _np_block_mask(length // block_size, block_size, pattern[h])
      for b in range(batch):
        out[b, :, h] = _np_softmax_attention(q[b, :, h], k[b, :, h], v[b, :, h],
                                             dense & mask[b][None, :])
  return out


def test_bigbird_random_blocks_avoid_window_globals_and_repeats():
  blocks = np.asarray(random_blocks(jax.random.key(0), 48, 3, block_size=4, num_random_blocks=3))
  assert blocks.shape == (3, 10, 3) and blocks.dtype == np.int32
  for h in range(3):
    for row, drawn in enumerate(blocks[h]):
      i = row + 1
      assert len(set(drawn)) == 3 and all(1 <= j <= 10 and abs(j - i) > 1 for j in drawn)
  assert not np.array_equal(blocks[0], blocks[1])  # heads differ
  # Every candidate gets drawn: 200 heads, one block each.
  many = np.asarray(random_blocks(jax.random.key(1), 48, 200, block_size=4, num_random_blocks=1))
  assert set(many[:, 4, 0]) == {1, 2, 3, 7, 8, 9, 10}  # query block 5


def test_bigbird_random_blocks_leave_empty_slots_without_candidates():
  # 5 blocks: query block 1 may draw block 3 only; blocks 2 and 3 have none left.
  blocks = np.asarray(random_blocks(jax.random.key(0), 20, 1, block_size=4, num_random_blocks=2))
  np.testing.assert_array_equal(blocks[0], [[3, -1], [-1, -1], [1, -1]])
  assert random_blocks(jax.random.key(0), 8, 2, block_size=4).shape == (2, 0, 3)


@pytest.mark.parametrize("lengths", [(48, 30, 9), (48, 48, 1)])
def test_bigbird_matches_the_dense_mask_oracle(lengths):
  q, k, v, mask = _inputs(lengths, 48)
  rng = jax.random.key(4)
  pattern = random_blocks(rng, 48, HEADS, block_size=4, num_random_blocks=2)
  out = bigbird(q, k, v, mask, rng=rng, block_size=4, num_random_blocks=2)
  expected = _np_bigbird(q, k, v, mask, 4, pattern)
  np.testing.assert_allclose(_real(out, mask), expected[np.asarray(mask)], rtol=1e-5, atol=1e-6)
  # The pattern really is sparse: the result is not softmax attention.
  dense = _real(softmax(q, k, v, mask), mask)
  assert np.abs(_real(out, mask) - dense).max() > 1e-2


def test_bigbird_ignores_empty_repeated_and_redundant_random_slots():
  q, k, v, mask = _inputs((48, 30), 48)
  # 12 blocks; rows are query blocks 1..10. Per row: an empty slot, a window
  # block, a global block, then one out-of-window block twice.
  pattern = np.zeros((HEADS, 10, 5), np.int32)
  for h in range(HEADS):
    for row in range(10):
      i = row + 1
      far = [j for j in range(1, 11) if abs(j - i) > 1][(3 * row + h) % 7]
      pattern[h, row] = [-1, i, 11 if h else 0, far, far]
  out = bigbird(q, k, v, mask, block_size=4, num_random_blocks=5, random_blocks=jnp.asarray(pattern))
  np.testing.assert_allclose(_real(out, mask), _np_bigbird(q, k, v, mask, 4, pattern)[np.asarray(mask)],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length,block_size", [(16, 4), (12, 4), (16, 8), (16, 16)])
def test_bigbird_with_at_most_four_blocks_is_exact_softmax(length, block_size):
  q, k, v, mask = _inputs((length, length - 5), length)
  out = bigbird(q, k, v, mask, rng=jax.random.key(0), block_size=block_size, num_random_blocks=2)
  np.testing.assert_allclose(_real(out, mask), _real(softmax(q, k, v, mask), mask),
                             rtol=1e-5, atol=1e-6)


def test_bigbird_real_outputs_ignore_padded_positions():
  q, k, v, mask = _inputs((48, 30, 13, 2), 48)
  q2, k2, v2 = _with_garbage(q, k, v, mask)
  rng = jax.random.key(6)
  out = bigbird(q, k, v, mask, rng=rng, block_size=4, num_random_blocks=2)
  out2 = bigbird(q2, k2, v2, mask, rng=rng, block_size=4, num_random_blocks=2)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)


def test_bigbird_first_1024_tokens_quirk_confines_random_blocks():
  rng = jax.random.key(0)
  confined = np.asarray(random_blocks(rng, 4096, 4, block_size=64, num_random_blocks=3,
                                      first_1024_tokens=True))
  assert confined.shape == (4, 62, 3)
  assert confined.min() >= 1 and confined.max() <= 15  # blocks 1-15: tokens 64-1023
  assert len(np.unique(confined)) == 15
  free = np.asarray(random_blocks(rng, 4096, 4, block_size=64, num_random_blocks=3))
  assert free.max() > 15
  # Within 1024 tokens there is nothing to restrict (the reference's n = 1024).
  np.testing.assert_array_equal(
      random_blocks(rng, 1024, 2, block_size=64, first_1024_tokens=True),
      random_blocks(rng, 1024, 2, block_size=64))
  # Blocks of 16 tokens: 1024 tokens are blocks 0-63; the attention uses that pattern.
  q, k, v, mask = _inputs((1280, 1100), 1280, heads=1, head_dim=4)
  out = bigbird(q, k, v, mask, rng=rng, block_size=16, num_random_blocks=2,
                random_blocks_first_1024_tokens=True)
  pattern = random_blocks(rng, 1280, 1, block_size=16, num_random_blocks=2, first_1024_tokens=True)
  assert 1 <= int(pattern.min()) and int(pattern.max()) <= 63
  np.testing.assert_allclose(_real(out, mask), _np_bigbird(q, k, v, mask, 16, pattern)[np.asarray(mask)],
                             rtol=1e-5, atol=1e-6)


def test_bigbird_is_block_sparse():
  """No intermediate of the forward and backward pass is [n, n]-sized."""
  length = 256
  q, k, v, mask = _inputs((length,), length)

  def loss(q, k, v):
    out = bigbird(q, k, v, mask, rng=jax.random.key(0), block_size=16, num_random_blocks=2)
    return jnp.sum(out ** 2)

  # 14 middle blocks x 16 queries x 7 key blocks x 16 keys per (batch, head).
  assert _largest_intermediate(loss, q, k, v) <= HEADS * 14 * 16 * 7 * 16 < HEADS * length * length


def test_informer_never_forms_length_by_length_arrays():
  length = 256
  q, k, v, mask = _inputs((length, 100), length)
  _, num_samples, num_top = sparse.informer_sizes(length, 8)  # c = 2, U_part = u = 12

  def loss(q, k, v):
    return jnp.sum(informer(q, k, v, mask, rng=jax.random.key(0), in_nb_features=8) ** 2)

  bound = 2 * HEADS * max(num_top * length, length * num_samples * HEAD_DIM)  # [b, h, u, n] logits
  assert _largest_intermediate(loss, q, k, v) <= bound < 2 * HEADS * length * length


def _largest_intermediate(loss, *args):
  """Largest number of elements of any value in the jaxpr of grad(loss), nested ones included."""

  def largest(jaxpr):
    sizes = [0]
    for eqn in jaxpr.eqns:
      sizes += [int(np.prod(var.aval.shape)) for var in eqn.outvars if hasattr(var.aval, "shape")]
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            sizes.append(largest(sub.jaxpr))
          elif isinstance(sub, jax_core.Jaxpr):
            sizes.append(largest(sub))
    return max(sizes)

  return largest(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(*args).jaxpr)


def test_bigbird_pads_other_lengths_to_a_multiple_of_the_block_size():
  q, k, v, mask = _inputs((45, 30), 45)  # 12 blocks of 4 once padded to 48
  rng = jax.random.key(8)
  out = bigbird(q, k, v, mask, rng=rng, block_size=4, num_random_blocks=2)
  assert out.shape == q.shape
  pattern = random_blocks(rng, 45, HEADS, block_size=4, num_random_blocks=2)
  assert pattern.shape == (HEADS, 10, 2)
  padded = [jnp.pad(x, ((0, 0), (0, 3), (0, 0), (0, 0))) for x in (q, k, v)]
  expected = _np_bigbird(*padded, jnp.pad(mask, ((0, 0), (0, 3))), 4, pattern)[:, :45]
  np.testing.assert_allclose(_real(out, mask), expected[np.asarray(mask)], rtol=1e-5, atol=1e-6)


def test_bigbird_argument_errors():
  with pytest.raises(ValueError, match="block_size must be a positive integer"):
    bigbird(*_inputs((32,), 32), rng=jax.random.key(0), block_size=0)
  with pytest.raises(ValueError, match="PRNG key"):
    bigbird(*_inputs((32,), 32), block_size=4)
  with pytest.raises(ValueError, match="random_blocks must be"):
    bigbird(*_inputs((32,), 32), block_size=4, random_blocks=jnp.zeros((HEADS, 5, 3), jnp.int32))


class _TwoLayers(nn.Module):
  random_pattern: str

  @nn.compact
  def __call__(self, q, k, v, mask):
    layers = [attention.BigBirdAttention(block_size=4, num_random_blocks=2,
                                         random_pattern=self.random_pattern, name=f"layer_{i}")
              for i in range(2)]
    return [layer(q, k, v, mask, deterministic=True) for layer in layers]


def test_bigbird_fixed_pattern_is_drawn_once_per_layer():
  q, k, v, mask = _inputs((48, 30), 48)
  model = _TwoLayers("fixed")
  variables = jax.jit(model.init)({attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask)
  patterns = [variables["constants"][f"layer_{i}"]["random_blocks"] for i in range(2)]
  assert patterns[0].shape == (HEADS, 10, 2) and patterns[0].dtype == jnp.int32
  assert not np.array_equal(patterns[0], patterns[1])  # each layer has its own pattern
  apply = jax.jit(lambda seed: model.apply(variables, q, k, v, mask,
                                           rngs={attention.ATTENTION_RNG: jax.random.key(seed)}))
  first, second = apply(1), apply(2)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  for layer, pattern in zip(first, patterns):
    expected = _np_bigbird(q, k, v, mask, 4, pattern)[np.asarray(mask)]
    np.testing.assert_allclose(_real(layer, mask), expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="number of blocks is fixed at initialisation"):
    model.apply(variables, *_inputs((40,), 40))
  assert attention.default_hyperparameters("bigbird") == {
      "block_size": 64, "num_random_blocks": 3, "random_pattern": "fixed",
      "random_blocks_first_1024_tokens": False, "chunk_size": 1024}


def test_bigbird_per_call_pattern_is_redrawn():
  q, k, v, mask = _inputs((48, 30), 48)
  model = _TwoLayers("per_call")
  variables = jax.jit(model.init)({attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask)
  assert "constants" not in variables
  apply = jax.jit(lambda seed: model.apply(variables, q, k, v, mask,
                                           rngs={attention.ATTENTION_RNG: jax.random.key(seed)}))
  first, again, second = apply(1), apply(1), apply(2)
  np.testing.assert_array_equal(first[0], again[0])
  assert np.abs(np.asarray(first[0]) - np.asarray(second[0])).max() > 1e-3
  with pytest.raises(ValueError, match="random_pattern"):
    attention.BigBirdAttention(block_size=4, random_pattern="sometimes").init(
        {attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask, deterministic=True)
