"""Sparse Sinkhorn attention against explicitly masked dense attention and numpy block formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import sinkhorn

HEADS, HEAD_DIM = 2, 4
# Jitted once per configuration: op-by-op dispatch compiles every primitive and is slower.
_STATIC = ("block_size", "max_num_blocks", "sinkhorn_iterations", "temperature", "sort_activation",
           "block_summary", "strided_blocks", "sorted_sum_of_all_blocks", "dropout_rate")
_sinkhorn = jax.jit(attention.sinkhorn_attention, static_argnames=_STATIC)


def _inputs(lengths=(24, 15), length=24, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (len(lengths), length, HEADS, HEAD_DIM)) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _hard_permutation(seed, batch, num_blocks):
  """One random block permutation per (batch, head): indices and one-hot matrix."""
  rng = np.random.default_rng(seed)
  perm = np.stack([np.stack([rng.permutation(num_blocks) for _ in range(HEADS)])
                   for _ in range(batch)])  # [b, h, N_B]
  return perm, np.eye(num_blocks, dtype=np.float32)[perm]  # P[b, h, i, perm[i]] = 1


def _np_attend(q, k, v, allowed, candidates):
  """Softmax attention restricted to `allowed`; rows with nothing allowed are uniform over
  `candidates` (what a -1e10 mask gives)."""
  logits = q @ k.T / np.sqrt(q.shape[-1])
  out = np.zeros_like(q)
  for p in range(q.shape[0]):
    if allowed[p].any():
      w = np.exp(logits[p, allowed[p]] - logits[p, allowed[p]].max())
      out[p] = (w / w.sum()) @ v[allowed[p]]
    else:
      out[p] = v[candidates[p]].mean(0)
  return out


def _np_dense_hard_sinkhorn(q, k, v, mask, perm, block_size, strided=False):
  """Local + sorted attention written as two n x n masked dense attentions.

  Position p is in block p // block_size (contiguous) or p % N_B (strided);
  its mask is read at its contiguous slot, as the official code does. The
  sorted branch of a query in block i attends to the keys of block perm[i],
  whose padded values are zero.
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask = np.asarray(mask)
  batch, n, heads, _ = q.shape
  num_blocks = n // block_size
  positions = np.arange(n)
  block = positions % num_blocks if strided else positions // block_size
  slot = positions // num_blocks if strided else positions % block_size
  out = np.zeros_like(q)
  for b in range(batch):
    real = mask[b, block * block_size + slot]
    both_real = real[:, None] & real[None, :]
    for h in range(heads):
      local = block[None, :] == block[:, None]
      sorted_ = block[None, :] == perm[b, h][block][:, None]
      out[b, :, h] = (_np_attend(q[b, :, h], k[b, :, h], v[b, :, h], local & both_real, local)
                      + _np_attend(q[b, :, h], k[b, :, h], v[b, :, h] * real[:, None],
                                   sorted_ & both_real, sorted_))
  return out


def _np_block_sinkhorn(q, k, v, mask, permutation, block_size):
  """Contiguous blocks; sorted block i = sum_j P_ij (M_j K_j), real where sum_j P_ij M_j > 0."""
  q, k, v, p = (np.asarray(x, np.float64) for x in (q, k, v, permutation))
  mask = np.asarray(mask)
  batch, n, heads, d = q.shape
  nb = n // block_size
  out = np.zeros_like(q)
  for b in range(batch):
    m = mask[b].reshape(nb, block_size)
    for h in range(heads):
      qb, kb, vb = (x[b, :, h].reshape(nb, block_size, d) for x in (q, k, v))
      sorted_k = np.einsum("ij,jsd->isd", p[b, h], kb * m[..., None])
      sorted_v = np.einsum("ij,jsd->isd", p[b, h], vb * m[..., None])
      sorted_real = np.einsum("ij,js->is", p[b, h], m) > 0
      for i in range(nb):
        all_slots = np.ones((block_size, block_size), bool)
        local = _np_attend(qb[i], kb[i], vb[i], m[i][:, None] & m[i][None, :], all_slots)
        sort = _np_attend(qb[i], sorted_k[i], sorted_v[i], m[i][:, None] & sorted_real[i][None, :],
                          all_slots)
        out[b, i * block_size:(i + 1) * block_size, h] = local + sort
  return out


def _real(x, mask):
  return np.asarray(x)[np.asarray(mask)]


# --- Sinkhorn balancing -------------------------------------------------------------------------

def test_balancing_gives_a_doubly_stochastic_matrix():
  logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 3, 6, 6))
  p = np.asarray(sinkhorn.sinkhorn_balance(logits, iterations=200, temperature=0.75))
  assert np.all(p > 0)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-5)
  # One round ends on the columns: they are exact, the rows are not yet.
  one = np.asarray(sinkhorn.sinkhorn_balance(logits, iterations=1))
  np.testing.assert_allclose(one.sum(-2), 1.0, atol=1e-5)
  assert np.abs(one.sum(-1) - 1.0).max() > 1e-2


def test_balancing_matches_numpy_alternating_normalisation():
  logits = jax.random.normal(jax.random.key(1), (4, 4))
  alpha = np.exp(np.asarray(logits, np.float64) / 0.5)
  for _ in range(3):
    alpha /= alpha.sum(1, keepdims=True)
    alpha /= alpha.sum(0, keepdims=True)
  np.testing.assert_allclose(sinkhorn.sinkhorn_balance(logits, 3, temperature=0.5), alpha,
                             rtol=1e-5, atol=1e-6)


def test_low_temperature_approaches_the_best_permutation():
  # Logits that clearly favour one permutation, plus noise.
  best = np.random.default_rng(0).permutation(5)
  logits = jnp.eye(5)[best] + 0.3 * jax.random.normal(jax.random.key(2), (5, 5))
  soft = np.asarray(sinkhorn.sinkhorn_balance(logits, iterations=300, temperature=1.0))
  hard = np.asarray(sinkhorn.sinkhorn_balance(logits, iterations=300, temperature=0.05))
  np.testing.assert_array_equal(hard.argmax(-1), best)
  np.testing.assert_allclose(hard, np.eye(5)[best], atol=1e-3)
  assert soft.max() < 0.9  # at temperature 1 it is far from a permutation


def test_the_attention_sort_matrix_is_doubly_stochastic():
  _, k, _, mask = _inputs(lengths=(24, 15), length=24)
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(3), HEAD_DIM, 5)
  p = np.asarray(sinkhorn.sinkhorn_sort_matrix(k, mask, kernel, block_size=6,
                                               sinkhorn_iterations=2000))
  assert p.shape == (2, HEADS, 4, 4)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-5)


# --- The attention pattern ----------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [4, 8])
def test_hard_permutation_equals_masked_dense_attention(block_size):
  q, k, v, mask = _inputs()
  perm, p = _hard_permutation(block_size, 2, 24 // block_size)
  out = _sinkhorn(q, k, v, mask, permutation=jnp.asarray(p),
                                     block_size=block_size)
  expected = _np_dense_hard_sinkhorn(q, k, v, mask, perm, block_size)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-5, atol=1e-5)


def test_identity_permutation_is_twice_local_attention():
  q, k, v, mask = _inputs(lengths=(24, 24))
  eye = jnp.broadcast_to(jnp.eye(3), (2, HEADS, 3, 3))
  out = _sinkhorn(q, k, v, mask, permutation=eye, block_size=8)
  local = jnp.concatenate([attention.softmax_attention(q[:, s:s + 8], k[:, s:s + 8], v[:, s:s + 8],
                                                       mask[:, s:s + 8]) for s in (0, 8, 16)], 1)
  np.testing.assert_allclose(out, 2 * local, rtol=1e-5, atol=1e-5)


def test_soft_permutation_matches_numpy_block_mixture():
  q, k, v, mask = _inputs()
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(4), HEAD_DIM, 3)
  p = sinkhorn.sinkhorn_sort_matrix(k, mask, kernel, block_size=8)
  out = _sinkhorn(q, k, v, mask, sort_kernel=kernel, block_size=8)
  np.testing.assert_allclose(_real(out, mask), _real(_np_block_sinkhorn(q, k, v, mask, p, 8), mask),
                             rtol=1e-5, atol=1e-5)
  # Without a kernel, the key draws the same one.
  drawn = _sinkhorn(q, k, v, mask, rng=jax.random.key(4), block_size=8,
                                       max_num_blocks=3)
  np.testing.assert_allclose(drawn, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("block_summary", ["sum", "mean"])
def test_sort_logits_match_numpy(block_summary):
  _, k, _, mask = _inputs()
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(5), HEAD_DIM, 4)
  logits = sinkhorn.sort_logits(k, mask, kernel, block_size=8, block_summary=block_summary)
  kb = np.asarray(k, np.float64).reshape(2, 3, 8, HEADS, HEAD_DIM)
  m = np.asarray(mask, np.float64).reshape(2, 3, 8)
  summary = np.einsum("bnshd,bns->bhnd", kb, m)
  if block_summary == "mean":
    summary /= np.maximum(m.sum(-1), 1)[:, None, :, None]
  np.testing.assert_allclose(logits, summary @ np.asarray(kernel, np.float64), rtol=1e-5, atol=1e-5)


def test_softmax_sort_activation_is_row_softmax_of_the_logits():
  _, k, _, mask = _inputs()
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(6), HEAD_DIM, 5)
  p = sinkhorn.sinkhorn_sort_matrix(k, mask, kernel, block_size=8, sort_activation="softmax")
  logits = sinkhorn.sort_logits(k, mask, kernel, block_size=8)[..., :3]
  np.testing.assert_allclose(p, jax.nn.softmax(logits, -1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, atol=1e-6)
  assert np.abs(np.asarray(p).sum(-2) - 1.0).max() > 1e-3  # not column-balanced


# --- Masking ------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,lengths,block_size,block_summary", [
    (24, (24, 15), 8, "sum"), (22, (22, 9), 8, "mean"), (20, (3, 17), 6, "sum")])
def test_real_outputs_ignore_padded_contents(length, lengths, block_size, block_summary):
  q, k, v, mask = _inputs(lengths=lengths, length=length)
  garbage = _inputs(lengths=lengths, length=length, seed=9)
  pad = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(pad, 1e3 * g, x) for x, g in zip((q, k, v), garbage))
  kwargs = dict(rng=jax.random.key(1), block_size=block_size, block_summary=block_summary)
  out = _sinkhorn(q, k, v, mask, **kwargs)
  out2 = _sinkhorn(q2, k2, v2, mask, **kwargs)
  assert np.all(np.isfinite(out2))
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)


def test_length_not_divisible_is_padded_to_a_block_multiple():
  # 22 tokens in blocks of 8 = the same sequence padded to 24 with masked positions.
  q, k, v, mask = _inputs(lengths=(22, 13), length=22)
  pad = ((0, 0), (0, 2), (0, 0), (0, 0))
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(7), HEAD_DIM, 3)
  out = _sinkhorn(q, k, v, mask, sort_kernel=kernel, block_size=8)
  padded = _sinkhorn(*(jnp.pad(x, pad) for x in (q, k, v)),
                                        jnp.pad(mask, ((0, 0), (0, 2))), sort_kernel=kernel,
                                        block_size=8)
  assert out.shape == q.shape
  np.testing.assert_allclose(out, padded[:, :22], rtol=1e-6, atol=1e-6)
  perm, p = _hard_permutation(1, 2, 3)
  hard = _sinkhorn(q, k, v, mask, permutation=jnp.asarray(p), block_size=8)
  expected = _np_dense_hard_sinkhorn(*(np.pad(np.asarray(x), pad) for x in (q, k, v)),
                                     np.pad(np.asarray(mask), ((0, 0), (0, 2))), perm, 8)[:, :22]
  np.testing.assert_allclose(_real(hard, mask), _real(expected, mask), rtol=1e-5, atol=1e-5)


def test_examples_of_a_batch_are_independent():
  q, k, v, mask = _inputs(lengths=(24, 11))
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(8), HEAD_DIM, 3)
  both = _sinkhorn(q, k, v, mask, sort_kernel=kernel, block_size=8)
  alone = _sinkhorn(q[1:], k[1:], v[1:], mask[1:], sort_kernel=kernel,
                                       block_size=8)
  np.testing.assert_allclose(both[1:], alone, rtol=1e-6, atol=1e-6)


# --- Official quirks ----------------------------------------------------------------------------

def test_strided_blocks_reproduce_the_official_layout_and_misaligned_mask():
  q, k, v, mask = _inputs(lengths=(24, 15))
  perm, p = _hard_permutation(2, 2, 4)
  out = _sinkhorn(q, k, v, mask, permutation=jnp.asarray(p), block_size=6,
                                     strided_blocks=True)
  # Every position compared: with the misaligned mask, "padded" is not what
  # the data say, so nothing is unused.
  np.testing.assert_allclose(out, _np_dense_hard_sinkhorn(q, k, v, mask, perm, 6, strided=True),
                             rtol=1e-5, atol=1e-5)
  # Block i is {i, i + 4, i + 8, ...}: with all-real sequences, position 0
  # only sees positions = 0 mod 4 (and those of its sorted block).
  full = jnp.ones_like(mask)
  strided = _sinkhorn(q, k, v, full, permutation=jnp.asarray(p), block_size=6,
                                         strided_blocks=True)
  np.testing.assert_allclose(strided, _np_dense_hard_sinkhorn(q, k, v, full, perm, 6, strided=True),
                             rtol=1e-5, atol=1e-5)
  contiguous = _sinkhorn(q, k, v, full, permutation=jnp.asarray(p), block_size=6)
  assert not np.allclose(strided, contiguous, atol=1e-3)


def _np_sum_of_all_blocks(q, k, v, mask, row_sums, block_size):
  """The official sorted branch: (row sum of P) x the sum of all raw key/value blocks."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask = np.asarray(mask)
  batch, n, heads, d = q.shape
  nb = n // block_size
  out = np.zeros_like(q)
  for b in range(batch):
    m = mask[b].reshape(nb, block_size)
    valid = np.any(m[:, :, None] & m[:, None, :], axis=0)  # [slot_q, slot_k]
    all_slots = np.ones_like(valid)
    for h in range(heads):
      qb, kb, vb = (x[b, :, h].reshape(nb, block_size, d) for x in (q, k, v))
      for i in range(nb):
        local = _np_attend(qb[i], kb[i], vb[i], m[i][:, None] & m[i][None, :], all_slots)
        sort = _np_attend(qb[i], row_sums[b, h, i] * kb.sum(0), row_sums[b, h, i] * vb.sum(0),
                          valid, all_slots)
        out[b, i * block_size:(i + 1) * block_size, h] = local + sort
  return out


def test_sorted_sum_of_all_blocks_reproduces_the_official_einsum():
  q, k, v, mask = _inputs(lengths=(24, 15))
  kwargs = dict(block_size=8, sorted_sum_of_all_blocks=True, sort_activation="softmax")
  kernel_a = sinkhorn.sinkhorn_sort_kernel(jax.random.key(10), HEAD_DIM, 3)
  kernel_b = sinkhorn.sinkhorn_sort_kernel(jax.random.key(11), HEAD_DIM, 3)
  out = _sinkhorn(q, k, v, mask, sort_kernel=kernel_a, **kwargs)
  expected = _np_sum_of_all_blocks(q, k, v, mask, np.ones((2, HEADS, 3)), 8)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The sort network has no effect, and a network narrower than N_B is accepted (ListOps).
  np.testing.assert_allclose(
      _sinkhorn(q, k, v, mask, sort_kernel=kernel_b, **kwargs), out, rtol=1e-5,
      atol=1e-6)
  narrow = sinkhorn.sinkhorn_sort_kernel(jax.random.key(12), HEAD_DIM, 2)
  np.testing.assert_allclose(
      _sinkhorn(q, k, v, mask, sort_kernel=narrow, **kwargs), out, rtol=1e-5,
      atol=1e-6)
  # With Sinkhorn balancing, the rows of P scale the summed blocks.
  p = sinkhorn.sinkhorn_sort_matrix(k, mask, kernel_a, block_size=8, sinkhorn_iterations=1)
  out = _sinkhorn(q, k, v, mask, sort_kernel=kernel_a, block_size=8,
                                     sorted_sum_of_all_blocks=True, sinkhorn_iterations=1)
  expected = _np_sum_of_all_blocks(q, k, v, mask, np.asarray(p, np.float64).sum(-1), 8)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --- Module, dropout, errors --------------------------------------------------------------------

def test_module_uses_its_learned_sort_kernel():
  q, k, v, mask = _inputs()
  module = attention.SinkhornAttention(block_size=8, sort_activation="softmax")
  variables = jax.jit(module.init, static_argnames="deterministic")(
      {"params": jax.random.key(0)}, q, k, v, mask, deterministic=True)
  apply = jax.jit(module.apply, static_argnames="deterministic")
  kernel = variables["params"]["sort_kernel"]
  assert kernel.shape == (HEAD_DIM, 3)  # max_num_blocks None: N_B at initialisation
  np.testing.assert_allclose(
      apply(variables, q, k, v, mask, deterministic=True),
      _sinkhorn(q, k, v, mask, sort_kernel=kernel, block_size=8,
                                   sort_activation="softmax"), rtol=1e-6, atol=1e-6)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, q, k, v, mask,
                                                          deterministic=True) ** 2)))(
                                                              variables["params"])
  assert float(jnp.abs(grads["sort_kernel"]).sum()) > 0  # the sort network is trained
  # More blocks than the network has outputs are an error.
  long = _inputs(lengths=(32, 32), length=32)
  with pytest.raises(ValueError, match="max_num_blocks"):
    apply(variables, *long, deterministic=True)
  fixed = attention.SinkhornAttention(block_size=8, max_num_blocks=25)
  shapes = jax.eval_shape(lambda: fixed.init({"params": jax.random.key(0)}, q, k, v, mask,
                                             deterministic=True))
  assert shapes["params"]["sort_kernel"].shape == (HEAD_DIM, 25)


def test_dropout_is_unbiased_and_keyed():
  q, k, v, mask = _inputs()
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(0), HEAD_DIM, 3)

  def run(key):
    return attention.sinkhorn_attention(q, k, v, mask, sort_kernel=kernel, block_size=8,
                                        dropout_rate=0.3, dropout_rng=key)

  plain = _sinkhorn(q, k, v, mask, sort_kernel=kernel, block_size=8, dropout_rate=0.3)
  samples = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), 1024))
  assert not np.allclose(samples[0], samples[1], atol=1e-3)  # one mask per key
  assert not np.allclose(samples[0], plain, atol=1e-3)
  error = np.abs(_real(samples.mean(0), mask) - _real(plain, mask))
  assert error.mean() < 0.02 and error.max() < 0.15, (error.mean(), error.max())


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_size=0), "block_size"),
    (dict(sort_activation="gumbel"), "sort_activation"),
    (dict(block_summary="max"), "block_summary"),
    (dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    (dict(temperature=0.0), "temperature"),
    (dict(max_num_blocks=2), "max_num_blocks"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, match):
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=match):
    attention.sinkhorn_attention(q, k, v, mask, rng=jax.random.key(0), **{"block_size": 8, **kwargs})


def test_missing_kernel_and_key_is_a_clear_error():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="rng="):
    attention.sinkhorn_attention(q, k, v, mask, block_size=8)


def test_no_length_squared_intermediate():
  # Blocks of 8 over 96 tokens: every array is O(n block_size) or O(N_B^2), none n x n.
  q, k, v, mask = _inputs(lengths=(96, 40), length=96)
  kernel = sinkhorn.sinkhorn_sort_kernel(jax.random.key(0), HEAD_DIM, 12)
  jaxpr = jax.make_jaxpr(lambda q, k, v, w: jax.grad(
      lambda *a: jnp.sum(attention.sinkhorn_attention(*a[:3], mask, sort_kernel=a[3],
                                                      block_size=8) ** 2),
      argnums=(0, 1, 2, 3))(q, k, v, w))(q, k, v, kernel)
  sizes = [np.prod(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert sizes and max(sizes) < 96 * 96 * HEADS
