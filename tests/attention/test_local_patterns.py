"""Local, Sparse Transformer and Longformer attention against explicitly masked dense numpy attention.

Every pattern is built here as a dense [n, n] boolean array in numpy, from the
papers' set definitions (or the official code's mask construction for the
quirk options), independently of the blocked / chunked JAX computation.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import local_patterns

HEADS, HEAD_DIM = 2, 4

# The pure functions are jitted themselves (hyper-parameters static).
local = attention.local_attention
sparse = attention.sparse_attention
longformer = attention.longformer_attention
softmax = jax.jit(attention.softmax_attention)


def _inputs(lengths, length, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, HEADS, HEAD_DIM)
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


def _np_attention(q, k, v, allowed, candidate=None):
  """Float64 masked attention, every (batch, head).

  q, k, v: [b, n, h, d]; allowed: [b, n, n] (query, key). Keys in `candidate`
  but not `allowed` get the logit -1e10 (the official additive mask, which
  makes a row without allowed keys uniform over its candidates); others -inf.
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  candidate = allowed if candidate is None else candidate
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(allowed[:, None], logits, np.where(candidate[:, None], -1e10, -np.inf))
  with np.errstate(invalid="ignore"):  # rows of padded queries without candidates: NaN, unused
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _pair_mask(mask):
  mask = np.asarray(mask)
  return mask[:, :, None] & mask[:, None, :]


def _key_mask(mask, length):
  return np.broadcast_to(np.asarray(mask)[:, None, :], (len(mask), length, length))


# ---------------------------------------------------------------------------
# Local attention.


def _np_contiguous_blocks(length, block_size):
  block = np.arange(length) // block_size
  return block[:, None] == block[None, :]


@pytest.mark.parametrize("block_size", [1, 5, 30])
def test_local_equals_dense_attention_under_the_block_pattern(block_size):
  length, lengths = 23, (23, 9)
  q, k, v, mask = _inputs(lengths, length)
  allowed = _np_contiguous_blocks(length, block_size)[None] & _key_mask(mask, length)
  out = local(q, k, v, mask, block_size=block_size)
  np.testing.assert_allclose(_real(out, mask), _real(_np_attention(q, k, v, allowed), mask),
                             rtol=1e-5, atol=1e-5)


def _np_official_local(q, k, v, mask, block_size, strided_blocks, valid_block_padding):
  """The official computation (lra_official_jax.md §7.1) as an explicit dense mask over n' positions."""
  length = q.shape[1]
  if valid_block_padding:
    extra, fill = block_size - length % block_size, True
  else:
    extra, fill = -length % block_size, False
  pad = ((0, 0), (0, extra), (0, 0), (0, 0))
  q, k, v = (np.pad(np.asarray(x, np.float64), pad) for x in (q, k, v))
  mask = np.pad(np.asarray(mask), ((0, 0), (0, extra)), constant_values=fill)
  padded = length + extra
  num_blocks = padded // block_size
  position = np.arange(padded)
  if strided_blocks:
    # Data: reshape(block_size, num_blocks): position p is row p // nb of group p % nb.
    group, row = position % num_blocks, position // num_blocks
  else:
    group, row = position // block_size, position % block_size
  # The mask is cut contiguously whatever the data layout: entry row of group g is mask[g b + row].
  mask_entry = mask[:, group * block_size + row]
  same = group[:, None] == group[None, :]
  allowed = same[None] & _pair_mask(mask_entry)
  return _np_attention(q, k, v, allowed, candidate=np.broadcast_to(same, allowed.shape))[:, :length]


@pytest.mark.parametrize("length,block_size,strided_blocks,valid_block_padding", [
    (23, 4, True, True), (24, 4, True, True), (7, 8, True, True), (20, 5, True, False),
    (23, 4, False, True)])
def test_local_quirk_options_reproduce_the_official_computation(length, block_size, strided_blocks,
                                                                 valid_block_padding):
  lengths = (length, length // 2)
  q, k, v, mask = _inputs(lengths, length)
  out = local(q, k, v, mask, block_size=block_size, strided_blocks=strided_blocks,
              valid_block_padding=valid_block_padding)
  expected = _np_official_local(q, k, v, mask, block_size, strided_blocks, valid_block_padding)
  # Under the quirks padded positions' outputs are defined too: compare all.
  np.testing.assert_allclose(np.asarray(out, np.float64)[np.asarray(mask)], expected[np.asarray(mask)],
                             rtol=1e-5, atol=1e-5)
  if strided_blocks or valid_block_padding:
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_local_strided_blocks_are_dilated_and_misaligned_with_the_mask():
  # n = 12, block 4 -> 3 strided blocks {0, 3, 6, 9}, {1, 4, 7, 10}, {2, 5, 8, 11}.
  length, block_size = 12, 4
  q, k, v, mask = _inputs((12,), length)
  v = jnp.zeros_like(v).at[:, :, :, 0].set(jnp.arange(length, dtype=jnp.float32)[None, :, None])
  # Make each query's own key dominate: q = 50 k.
  q = 50.0 * k
  out = local(q, k, v, mask, block_size=block_size, strided_blocks=True)
  # Output of position p is a mixture of the values (= positions) of its strided group only.
  weights_positions = np.asarray(out[0, :, 0, 0])
  for p in range(length):
    group = np.arange(p % 3, length, 3)
    assert group.min() - 1e-4 <= weights_positions[p] <= group.max() + 1e-4
  # Misalignment: with the last 4 positions padded (mask[8:] False), the contiguous mask
  # kills mask entries 8..11 = element (8..11) - 2 * 4 of group 2, i.e. positions
  # {2, 5, 8, 11}: real queries 2 and 5 see only masked keys and become uniform over their group.
  mask = jnp.arange(length)[None] < 8
  out = local(q, k, v, mask, block_size=block_size, strided_blocks=True)
  np.testing.assert_allclose(out[0, 2, 0, 0], np.mean([2, 5, 8, 11]), rtol=1e-5)
  np.testing.assert_allclose(out[0, 5, 0, 0], np.mean([2, 5, 8, 11]), rtol=1e-5)
  contiguous = local(q, k, v, mask, block_size=block_size)
  np.testing.assert_allclose(contiguous[0, 2, 0, 0], 2.0, atol=1e-3)  # its own key dominates


def test_local_valid_block_padding_adds_a_whole_block_of_real_zero_keys():
  assert local_patterns.local_padding(24, 4) == 0
  assert local_patterns.local_padding(24, 4, valid_block_padding=True) == 4
  assert local_patterns.local_padding(23, 4, valid_block_padding=True) == 1
  # A length-3 sequence in one block of 4: one appended zero key (logit 0, value 0) is real.
  q, k, v, mask = _inputs((3,), 3)
  out = local(q, k, v, mask, block_size=4, valid_block_padding=True)
  logits = np.einsum("qhd,khd->hqk", np.asarray(q[0], np.float64), np.asarray(k[0], np.float64)) / 2.0
  logits = np.concatenate([logits, np.zeros((HEADS, 3, 1))], axis=-1)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = np.einsum("hqk,khd->qhd", weights[..., :3], np.asarray(v[0], np.float64))
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Sparse Transformer (fixed patterns).


def _np_fixed_pattern(length, block_size, summary_size, causal, block_start, cls_token):
  """Child et al. §4.3 A(1) ∪ A(2) as an [n, n] boolean, by the set definitions."""
  offset = 1 if cls_token else 0
  allowed = np.zeros((length, length), bool)
  summary = set(range(block_size - summary_size, block_size)) | ({0} if block_start else set())
  for i in range(length):
    for j in range(length):
      if cls_token and (i == 0 or j == 0):
        allowed[i, j] = True
        continue
      a, b = i - offset, j - offset
      same_block = a // block_size == b // block_size
      allowed[i, j] = (same_block or b % block_size in summary) and (not causal or b <= a)
  return allowed


@pytest.mark.parametrize("causal,block_start,cls_token", [
    (False, False, False), (True, False, False), (False, True, False), (False, False, True),
    (True, True, True)])
def test_sparse_equals_dense_attention_under_the_fixed_pattern(causal, block_start, cls_token):
  length, lengths, block_size, summary_size = 23, (23, 12), 5, 2
  q, k, v, mask = _inputs(lengths, length)
  pattern = _np_fixed_pattern(length, block_size, summary_size, causal, block_start, cls_token)
  allowed = pattern[None] & _key_mask(mask, length)
  out = sparse(q, k, v, mask, block_size=block_size, summary_size=summary_size, causal=causal,
               summary_includes_block_start=block_start, cls_token=cls_token)
  np.testing.assert_allclose(_real(out, mask), _real(_np_attention(q, k, v, allowed), mask),
                             rtol=1e-5, atol=1e-5)


def _np_official_sparse_mask(length, block_size, c, use_cls_token):
  """lra_official_jax.md §7.3: causal Fixed1 OR Fixed2, CLS row and column all ones."""
  n = length - 1 if use_cls_token else length
  r = np.arange(n)
  query, key = r[:, None], r[None, :]
  fixed1 = (query // block_size == key // block_size) & (key <= query)
  remainder = key % block_size
  fixed2 = ((remainder == 0) | (remainder >= block_size - c)) & (key <= query)
  merged = fixed1 | fixed2
  if use_cls_token:
    merged = np.pad(merged, ((1, 0), (1, 0)), constant_values=True)
  return merged


@pytest.mark.parametrize("use_cls_token", [False, True])
def test_sparse_quirk_options_reproduce_the_official_mask(use_cls_token):
  length, lengths, block_size, c = 31, (31, 17), 6, 2
  q, k, v, mask = _inputs(lengths, length)
  official = _np_official_sparse_mask(length, block_size, c, use_cls_token)[None] & _pair_mask(mask)
  out = sparse(q, k, v, mask, block_size=block_size, summary_size=c, causal=True,
               summary_includes_block_start=True, cls_token=use_cls_token)
  np.testing.assert_allclose(_real(out, mask), _real(_np_attention(q, k, v, official), mask),
                             rtol=1e-5, atol=1e-5)
  default = sparse(q, k, v, mask, block_size=block_size, summary_size=c, cls_token=use_cls_token)
  assert np.max(np.abs(_real(default, mask) - _real(out, mask))) > 1e-2


def test_sparse_summary_offsets_and_bad_sizes():
  assert local_patterns.sparse_summary_offsets(50, 10) == tuple(range(40, 50))
  assert local_patterns.sparse_summary_offsets(50, 10, True) == (0,) + tuple(range(40, 50))
  assert local_patterns.sparse_summary_offsets(4, 4, True) == (0, 1, 2, 3)
  with pytest.raises(ValueError, match="summary_size"):
    local_patterns.sparse_summary_offsets(4, 5)
  with pytest.raises(ValueError, match="block_size"):
    local_patterns.sparse_summary_offsets(0, 1)


# ---------------------------------------------------------------------------
# Longformer.


def _np_longformer(q, k, v, mask, left, right, num_global, gq=None, gk=None, gv=None):
  """Band |j - i| within (left, right) ∪ global columns; global rows everything, with global q, k, v."""
  length = q.shape[1]
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  pattern = ((j - i >= -left) & (j - i <= right)) | (j < num_global)
  out = _np_attention(q, k, v, pattern[None] & _key_mask(mask, length))
  if num_global:
    gq, gk, gv = (x if g is None else g for x, g in zip((q, k, v), (gq, gk, gv)))
    glob = _np_attention(gq, gk, gv, _key_mask(mask, length))
    out[:, :num_global] = glob[:, :num_global]
  return out


@pytest.mark.parametrize("window_size,num_global,asymmetric", [
    (1, 0, False), (2, 1, True), (5, 3, False), (6, 1, False), (6, 0, True), (9, 3, True),
    (16, 1, False)])
def test_longformer_equals_dense_attention_under_window_and_global_pattern(window_size, num_global,
                                                                           asymmetric):
  length, lengths = 29, (29, 13)
  q, k, v, mask = _inputs(lengths, length)
  gq, gk, gv, _ = _inputs(lengths, length, seed=5)
  left, right = local_patterns.longformer_window(window_size, asymmetric)
  out = longformer(q, k, v, mask, window_size=window_size, num_global_tokens=num_global,
                   asymmetric_window=asymmetric, global_query=gq, global_key=gk, global_value=gv)
  expected = _np_longformer(q, k, v, mask, left, right, num_global, gq, gk, gv)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-5, atol=1e-5)


def test_longformer_window_sides():
  assert local_patterns.longformer_window(512) == (256, 256)
  assert local_patterns.longformer_window(512, asymmetric_window=True) == (255, 256)
  assert local_patterns.longformer_window(7) == local_patterns.longformer_window(7, True) == (3, 3)
  with pytest.raises(ValueError, match="window_size"):
    local_patterns.longformer_window(0)


def _np_official_sliding_window(length, window_size):
  """lra_official_jax.md §7.2: sums of shifted identities, w - w // 2 on the left (diagonal included)."""
  right_size = window_size // 2
  left_size = window_size - right_size
  band = sum(np.eye(length, k=-i) for i in range(left_size))
  band = band + sum(np.eye(length, k=i) for i in range(1, right_size + 1))
  return band.astype(bool)


@pytest.mark.parametrize("window_size", [4, 7])
def test_longformer_asymmetric_window_reproduces_the_official_mask(window_size):
  length, lengths = 26, (26, 15)
  q, k, v, mask = _inputs(lengths, length)
  official = _np_official_sliding_window(length, window_size)[None] & _pair_mask(mask)
  out = longformer(q, k, v, mask, window_size=window_size, num_global_tokens=0,
                   asymmetric_window=True)
  np.testing.assert_allclose(_real(out, mask), _real(_np_attention(q, k, v, official), mask),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window_size,asymmetric,num_global", [
    (58, False, 0), (60, True, 1), (512, False, 2)])
def test_longformer_with_a_window_covering_the_sequence_is_softmax_attention(window_size, asymmetric,
                                                                             num_global):
  length, lengths = 30, (30, 18)  # w = 58: 29 on each side; w = 60 asymmetric: 29 left, 30 right
  q, k, v, mask = _inputs(lengths, length)
  out = longformer(q, k, v, mask, window_size=window_size, num_global_tokens=num_global,
                   asymmetric_window=asymmetric)
  np.testing.assert_allclose(_real(out, mask), _real(softmax(q, k, v, mask), mask),
                             rtol=1e-5, atol=1e-6)


def test_longformer_one_short_of_the_sequence_is_not_softmax_attention():
  # Honesty check of the test above: a window one key short differs.
  q, k, v, mask = _inputs((30,), 30)
  out = longformer(q, k, v, mask, window_size=57, num_global_tokens=0)
  assert np.max(np.abs(np.asarray(out) - np.asarray(softmax(q, k, v, mask)))) > 1e-3


def test_longformer_module_global_projections():
  length, lengths = 20, (20, 11)
  q, k, v, mask = _inputs(lengths, length)
  module = attention.LongformerAttention(window_size=4, num_global_tokens=2)
  variables = jax.jit(functools.partial(module.init, deterministic=True))(jax.random.key(0), q, k, v, mask)
  apply = jax.jit(functools.partial(module.apply, deterministic=True))
  params = variables["params"]
  assert set(params) == {"query_global", "key_global", "value_global"}
  # Identity at initialisation: the global rows use the shared projections.
  plain = longformer(q, k, v, mask, window_size=4, num_global_tokens=2)
  np.testing.assert_allclose(apply(variables, q, k, v, mask), plain, rtol=1e-5, atol=1e-6)
  # Perturbed maps: the global rows use q A_q, k A_k, v A_v, the others are unchanged.
  keys = jax.random.split(jax.random.key(1), 3)
  size = HEADS * HEAD_DIM
  maps = {name: jax.random.normal(key, (size, size)) / np.sqrt(size)
          for name, key in zip(("query_global", "key_global", "value_global"), keys)}
  new_params = {name: {"kernel": maps[name].reshape(params[name]["kernel"].shape)} for name in maps}
  out = apply({"params": new_params}, q, k, v, mask)

  def project(x, name):
    return (x.reshape(*x.shape[:2], size) @ maps[name]).reshape(x.shape)

  expected = longformer(q, k, v, mask, window_size=4, num_global_tokens=2,
                        global_query=project(q, "query_global"), global_key=project(k, "key_global"),
                        global_value=project(v, "value_global"))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(np.asarray(out[:, :2]) - np.asarray(plain[:, :2]))) > 1e-2
  np.testing.assert_allclose(out[:, 2:], plain[:, 2:], rtol=1e-5, atol=1e-6)
  # No global tokens (the official setting) or no separate projections: no parameters.
  for kwargs in (dict(num_global_tokens=0), dict(global_projections=False)):
    shapes = jax.eval_shape(functools.partial(
        attention.LongformerAttention(window_size=4, **kwargs).init, deterministic=True),
        jax.random.key(0), q, k, v, mask)
    assert not shapes.get("params")


def test_longformer_bad_num_global_tokens():
  q, k, v, mask = _inputs((5,), 5)
  with pytest.raises(ValueError, match="num_global_tokens"):
    attention.longformer_attention(q, k, v, mask, num_global_tokens=-1)


# ---------------------------------------------------------------------------
# All three: padding, dropout, cost.

SETTINGS = [
    ("local", local, dict(block_size=7)),
    ("sparse", sparse, dict(block_size=5, summary_size=2, causal=True, cls_token=True)),
    ("longformer", longformer, dict(window_size=5, num_global_tokens=3, asymmetric_window=True)),
]


@pytest.mark.parametrize("name,fn,kwargs", SETTINGS, ids=lambda x: str(x) if isinstance(x, str) else "")
def test_mixed_lengths_padded_positions_are_never_attended(name, fn, kwargs):
  del name
  lengths = (26, 1, 9, 17)
  q, k, v, mask = _inputs(lengths, 26)
  out = fn(q, k, v, mask, **kwargs)
  out2 = fn(*_with_garbage(q, k, v, mask), mask, **kwargs)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-5, atol=1e-5)
  # A sequence alone, unpadded, gives its real outputs.
  b, n = 2, lengths[2]
  alone = fn(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], mask[b:b + 1, :n], **kwargs)
  np.testing.assert_allclose(alone[0], out[b, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,fn,kwargs", SETTINGS, ids=lambda x: str(x) if isinstance(x, str) else "")
def test_dropout_is_driven_by_the_key(name, fn, kwargs):
  del name
  q, k, v, mask = _inputs((20, 12), 20)
  clean = fn(q, k, v, mask, **kwargs)
  first = fn(q, k, v, mask, rng=jax.random.key(0), dropout_rate=0.5, **kwargs)
  again = fn(q, k, v, mask, rng=jax.random.key(0), dropout_rate=0.5, **kwargs)
  other = fn(q, k, v, mask, rng=jax.random.key(1), dropout_rate=0.5, **kwargs)
  np.testing.assert_array_equal(first, again)
  assert np.max(np.abs(np.asarray(first) - np.asarray(clean))) > 1e-2
  assert np.max(np.abs(np.asarray(first) - np.asarray(other))) > 1e-2


def _largest_intermediate(jaxpr):
  """Size of the largest array any equation produces, sub-jaxprs included."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          largest = max(largest, _largest_intermediate(getattr(inner, "jaxpr", inner)))
  return largest


@pytest.mark.parametrize("fn,kwargs", [(attention.local_attention, dict(block_size=8)),
                                       (attention.longformer_attention, dict(window_size=16))])
def test_local_and_longformer_form_nothing_quadratic(fn, kwargs):
  length = 1024
  q, k, v, mask = _inputs((length,), length)

  def loss(q, k, v):
    return jnp.sum(fn(q, k, v, mask, rng=jax.random.key(0), dropout_rate=0.1, **kwargs) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  # Forward and backward arrays stay O(n w h): far below one n x n matrix.
  assert _largest_intermediate(jaxpr.jaxpr) < length * length // 8


def test_modules_match_functions_and_expose_reference_defaults():
  assert attention.default_hyperparameters("local") == dict(
      block_size=50, strided_blocks=False, valid_block_padding=False)
  assert attention.default_hyperparameters("sparse") == dict(
      block_size=50, summary_size=10, causal=False, summary_includes_block_start=False,
      cls_token=False)
  assert attention.default_hyperparameters("longformer") == dict(
      window_size=512, num_global_tokens=1, global_projections=True, asymmetric_window=False)
  q, k, v, mask = _inputs((24, 10), 24)
  for name, kwargs, extra in (("local", dict(block_size=5, strided_blocks=True), {}),
                              ("sparse", dict(block_size=6, summary_size=3, causal=True), {}),
                              ("longformer", dict(window_size=6), dict(global_projections=False))):
    module = attention.get(name)(**kwargs, **extra)
    assert isinstance(module, nn.Module)

    def both(q, k, v, mask, module=module, name=name, kwargs=kwargs):
      return (module.apply({}, q, k, v, mask, deterministic=True),
              attention.get_method(name).fn(q, k, v, mask, **kwargs))

    out, expected = jax.jit(both)(q, k, v, mask)
    np.testing.assert_array_equal(out, expected)
