"""Reformer LSH attention against an independent numpy implementation and exact shared-QK attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lra_jax import attention
from lra_jax.attention import lsh

# Jitted once per static setting: compiling the whole function is cheaper than
# compiling its many primitives one by one for every new shape in eager mode.
_reformer = jax.jit(attention.reformer_attention, static_argnames=(
    "num_hash", "chunk_length", "num_chunks_before", "num_chunks_after", "num_buckets",
    "correct_duplicates", "official_lra_logits", "dropout_rate"))


def _inputs(length=24, lengths=(24, 15), heads=2, head_dim=8, seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (2, length, heads, head_dim), dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return q, k, v, mask


def _numpy_keys(x):
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) / np.sqrt(x.shape[-1])


def _numpy_shared_qk(q, v, mask):
  """Exact shared-QK attention over all real keys, self replaced by -1e5 (the oracle)."""
  q, v, mask = np.asarray(q, np.float64), np.asarray(v, np.float64), np.asarray(mask)
  logits = np.einsum("bqhd,bkhd->bhqk", q, _numpy_keys(q))
  logits = np.where(mask[:, None, None, :], logits, -1e9)
  length = q.shape[1]
  logits = np.where(np.eye(length, dtype=bool), -1e5, logits)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", weights, v)


def _numpy_hash(x, rotations, factors):
  """[n, d] vectors, [d, R, sum(factors) / 2] rotations -> [n, R] bucket ids (HF's factorised hash)."""
  rotated = np.einsum("nd,drk->nrk", x, rotations)
  buckets, start, scale = 0, 0, 1
  for factor in factors:
    block = rotated[..., start:start + factor // 2]
    buckets = buckets + scale * np.argmax(np.concatenate([block, -block], -1), -1)
    start, scale = start + factor // 2, scale * factor
  return buckets


def _numpy_reformer(q, v, mask, rotations, chunk_length, before, after, correct_duplicates=False,
                    factors=None):
  """Loop-by-loop LSH attention from the paper / HF description, given the rotations."""
  q, v, mask = np.asarray(q, np.float64), np.asarray(v, np.float64), np.asarray(mask)
  rotations = np.asarray(rotations, np.float64)
  batch, length, heads, head_dim = q.shape
  num_hash = rotations.shape[2]
  factors = factors or (2 * rotations.shape[3],)
  num_buckets = int(np.prod(factors))
  num_chunks = num_hash * length // chunk_length
  offsets = range(-before, after + 1)
  out = np.zeros(q.shape)
  for b in range(batch):
    for h in range(heads):
      x = q[b, :, h]
      keys = _numpy_keys(x)
      buckets = _numpy_hash(x, rotations[h], factors)  # [n, R]
      buckets[~mask[b]] = num_buckets
      slots = []  # the concatenated rounds in sorted order: (round, position)
      for r in range(num_hash):
        slots += [(r, j) for j in sorted(range(length), key=lambda j: (buckets[j, r], j))]
      slot_of = {slot: s for s, slot in enumerate(slots)}

      def window(s):
        chunk = s // chunk_length
        return [slots[((chunk + o) % num_chunks) * chunk_length + t]
                for o in offsets for t in range(chunk_length)]

      round_out = np.zeros((num_hash, length, head_dim))
      round_lse = np.zeros((num_hash, length))
      for s, (r, i) in enumerate(slots):
        key_positions = [j for _, j in window(s)]
        logits = []
        for j in key_positions:
          logit = x[i] @ keys[j] if mask[b, j] else -1e9
          if j == i:
            logit = -1e5
          if correct_duplicates:
            count = sum(jj == j for rr in range(num_hash) for _, jj in window(slot_of[(rr, i)]))
            logit -= np.log(count)
          logits.append(logit)
        logits = np.asarray(logits)
        lse = logits.max() + np.log(np.sum(np.exp(logits - logits.max())))
        round_out[r, i] = np.exp(logits - lse) @ v[b, key_positions, h]
        round_lse[r, i] = lse
      round_weights = np.exp(round_lse - round_lse.max(0))
      round_weights /= round_weights.sum(0)
      out[b, :, h] = np.einsum("rn,rnd->nd", round_weights, round_out)
  return out


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


@pytest.mark.parametrize("num_hash,chunk_length,before,after,num_buckets,duplicates", [
    (2, 4, 1, 0, 4, False),  # the contract-suite setting
    (3, 4, 0, 1, 6, False),
    (1, 8, 1, 1, 2, False),
    (2, 6, 2, 0, (2, 4), False),  # factorised hash, 8 buckets
    (2, 6, 2, 0, 8, True),
    (3, 4, 1, 1, 4, True),
])
def test_matches_numpy_given_the_same_rotations(num_hash, chunk_length, before, after, num_buckets,
                                                duplicates):
  q, k, v, mask = _inputs()
  rng = jax.random.key(3)
  out = _reformer(
      q, k, v, mask, rng=rng, num_hash=num_hash, chunk_length=chunk_length, num_chunks_before=before,
      num_chunks_after=after, num_buckets=num_buckets, correct_duplicates=duplicates)
  rotations = lsh.lsh_random_rotations(rng, 2, 8, num_hash, num_buckets)
  factors = num_buckets if isinstance(num_buckets, tuple) else None
  expected = _numpy_reformer(q, v, mask, rotations, chunk_length, before, after, duplicates, factors)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-5)


def test_bucket_ids_are_the_angular_hash_with_an_extra_padding_bucket():
  q, _, _, mask = _inputs()
  rng = jax.random.key(5)
  buckets = np.asarray(lsh.lsh_bucket_ids(rng, q, mask, num_hash=3, num_buckets=6))
  assert buckets.shape == (2, 2, 3, 24)
  rotations = np.asarray(lsh.lsh_random_rotations(rng, 2, 8, 3, 6), np.float64)
  assert rotations.shape == (2, 8, 3, 3)
  rotated = np.einsum("bnhd,hdrk->bhrnk", np.asarray(q, np.float64), rotations)
  expected = np.argmax(np.concatenate([rotated, -rotated], -1), -1)
  real = np.broadcast_to(np.asarray(mask)[:, None, None, :], buckets.shape)
  np.testing.assert_array_equal(buckets[real], expected[real])
  assert np.all(buckets[~real] == 6)  # padded tokens: bucket num_buckets, after every real one
  assert set(np.unique(buckets[real])) == set(range(6))


def test_factorised_buckets_combine_the_factor_hashes():
  q, _, _, mask = _inputs()
  rng = jax.random.key(6)
  buckets = np.asarray(lsh.lsh_bucket_ids(rng, q, mask, num_hash=2, num_buckets=(4, 6)))
  rotations = np.asarray(lsh.lsh_random_rotations(rng, 2, 8, 2, (4, 6)), np.float64)
  assert rotations.shape == (2, 8, 2, 5)
  for b in range(2):
    for h in range(2):
      expected = _numpy_hash(np.asarray(q, np.float64)[b, :, h], rotations[h], (4, 6)).T
      real = np.asarray(mask[b])
      np.testing.assert_array_equal(buckets[b, h][:, real], expected[:, real])
      assert np.all(buckets[b, h][:, ~real] == 24)
  assert buckets.max() == 24 and buckets[np.broadcast_to(
      np.asarray(mask)[:, None, None], buckets.shape)].max() < 24


def test_rounds_and_heads_get_different_rotations_and_the_batch_shares_them():
  rotations = np.asarray(lsh.lsh_random_rotations(jax.random.key(0), 2, 8, 2, 4))
  assert not np.allclose(rotations[0], rotations[1])
  assert not np.allclose(rotations[:, :, 0], rotations[:, :, 1])
  q, _, _, mask = _inputs(lengths=(24, 24))
  same = jnp.concatenate([q[:1], q[:1]])
  buckets = np.asarray(lsh.lsh_bucket_ids(jax.random.key(0), same, mask, 2, 4))
  np.testing.assert_array_equal(buckets[0], buckets[1])


@pytest.mark.parametrize("chunk_length,rng", [(24, jax.random.key(0)), (32, None)])
def test_one_chunk_is_exact_shared_qk_attention_without_self(chunk_length, rng):
  # chunk_length = length runs the hashed path (every round is one chunk);
  # chunk_length > length takes HF's plain-attention shortcut (no key needed).
  q, k, v, mask = _inputs()
  out = _reformer(q, k, v, mask, rng=rng, chunk_length=chunk_length,
                                     num_chunks_before=0, num_hash=3, num_buckets=4)
  np.testing.assert_allclose(_real(out, mask), _real(_numpy_shared_qk(q, v, mask), mask),
                             rtol=1e-5, atol=1e-5)


def _shared_qk_error(num_hash, correct_duplicates, seeds=12):
  q, k, v, mask = _inputs(length=64, lengths=(64, 64), seed=11)
  q = 2.0 * q  # peakier attention, as in a trained model
  exact = _numpy_shared_qk(q, v, mask)
  run = jax.jit(lambda rng: attention.reformer_attention(
      q, k, v, mask, rng=rng, num_hash=num_hash, chunk_length=8, num_buckets=8,
      correct_duplicates=correct_duplicates))
  return np.mean([np.mean((np.asarray(run(jax.random.key(s))) - exact) ** 2) for s in range(seeds)])


@pytest.mark.parametrize("correct_duplicates", [False, True])
def test_more_hash_rounds_bring_it_closer_to_full_shared_qk_attention(correct_duplicates):
  errors = [_shared_qk_error(num_hash, correct_duplicates) for num_hash in (1, 3, 8)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.5 * errors[0], errors


def test_duplicate_correction_is_exact_when_every_window_covers_the_sequence():
  # Chunks of half the sequence with one chunk before and after: every window
  # holds all tokens, some twice; only the log N_ij correction makes that the
  # exact softmax.
  q, k, v, mask = _inputs(length=16, lengths=(16, 11))
  exact = _real(_numpy_shared_qk(q, v, mask), mask)
  for num_hash in (1, 3):
    kwargs = dict(rng=jax.random.key(num_hash), num_hash=num_hash, chunk_length=8,
                  num_chunks_before=1, num_chunks_after=1, num_buckets=4)
    corrected = _reformer(q, k, v, mask, correct_duplicates=True, **kwargs)
    np.testing.assert_allclose(_real(corrected, mask), exact, rtol=1e-5, atol=1e-5)
    plain = _reformer(q, k, v, mask, correct_duplicates=False, **kwargs)
    assert np.max(np.abs(_real(plain, mask) - exact)) > 1e-3


def test_attention_weights_skip_self_and_padding():
  # One-hot values turn the output into the (round-combined) attention weights.
  length = 24
  q, k, _, mask = _inputs(length=length, lengths=(24, 15), head_dim=length)
  values = jnp.broadcast_to(jnp.eye(length)[None, :, None, :], (2, length, 2, length))
  weights = np.asarray(_reformer(q, k, values, mask, rng=jax.random.key(1),
                                                    chunk_length=4, num_buckets=4))
  real = np.asarray(mask)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  diagonal = np.einsum("bnhn->bnh", weights)
  assert np.all(diagonal[real] == 0.0)  # never itself while other real keys are in reach
  assert np.all(weights[1][:, :, 15:][real[1]] == 0.0)  # padded keys weigh exactly 0
  # ... sparse: each query sees at most num_hash windows of 8 keys.
  assert np.all(np.sum(weights > 0, axis=-1)[real] <= 16)
  assert np.any(np.sum(weights > 0, axis=-1)[real] < 23)


def test_a_lone_real_token_attends_to_itself():
  q, k, v, mask = _inputs(lengths=(24, 1))
  out = _reformer(q, k, v, mask, rng=jax.random.key(0), chunk_length=4,
                                     num_buckets=4)
  np.testing.assert_allclose(out[1, 0], v[1, 0], rtol=1e-6)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize("kwargs", [
    dict(chunk_length=4, num_buckets=4),
    dict(chunk_length=3, num_buckets=2, num_hash=3, num_chunks_after=1),
    dict(chunk_length=4, num_buckets=6, num_chunks_before=2, correct_duplicates=True),
    dict(chunk_length=64),
])
def test_real_outputs_ignore_padded_positions(kwargs):
  # Garbage in padded queries would hash anywhere: without the padding bucket it
  # would change which real tokens share a chunk.
  q, k, v, mask = _inputs(lengths=(17, 9))
  garbage = _inputs(seed=1)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, 1e3 * g, x) for x, g in zip((q, k, v), garbage))
  out = _reformer(q, k, v, mask, rng=jax.random.key(2), **kwargs)
  out2 = _reformer(q2, k2, v2, mask, rng=jax.random.key(2), **kwargs)
  np.testing.assert_allclose(_real(out2, mask), _real(out, mask), rtol=1e-6, atol=1e-6)


def test_gradients_reach_query_and_value_but_not_key():
  q, k, v, mask = _inputs()

  def loss(q, k, v):
    out = _reformer(q, k, v, mask, rng=jax.random.key(4), chunk_length=4,
                                       num_buckets=4)
    return jnp.sum(jnp.where(mask[:, :, None, None], out, 0.0) ** 2)

  grad_q, grad_k, grad_v = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  assert np.all(np.asarray(grad_k) == 0.0)
  for grad in (grad_q, grad_v):
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0


def test_gradients_match_finite_differences():
  # The sort and unsort have a hand-written VJP (gather with the inverse).
  q, k, v, mask = _inputs(length=12, lengths=(12, 7), head_dim=4)

  def f(q, v):
    return _reformer(q, k, v, mask, rng=jax.random.key(6), chunk_length=3,
                                        num_buckets=4, num_hash=2, num_chunks_after=1)

  check_grads(jax.jit(f), (q, v), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_module_draws_fresh_rotations_and_has_no_variables():
  q, k, v, mask = _inputs()
  module = attention.ReformerAttention(chunk_length=4, num_buckets=4)
  variables = module.init({attention.ATTENTION_RNG: jax.random.key(0)}, q, k, v, mask,
                          deterministic=True)
  assert not jax.tree.leaves(variables)

  @jax.jit
  def run(key):
    return module.apply(variables, q, k, v, mask, deterministic=True,
                        rngs={attention.ATTENTION_RNG: key})

  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))


def test_module_dropout_comes_from_the_dropout_stream():
  q, k, v, mask = _inputs()
  module = attention.ReformerAttention(dropout_rate=0.3, chunk_length=4, num_buckets=4)
  rngs = {attention.ATTENTION_RNG: jax.random.key(1)}
  clean = module.apply({}, q, k, v, mask, deterministic=True, rngs=rngs)

  def train(seed):
    return module.apply({}, q, k, v, mask, deterministic=False,
                        rngs={**rngs, "dropout": jax.random.key(seed)})

  assert not np.allclose(train(5), clean)
  np.testing.assert_array_equal(train(5), train(5))
  assert not np.allclose(train(5), train(6))


def test_key_projection_gets_no_gradient_in_the_multihead_layer():
  layer = attention.MultiHeadAttention(num_heads=2, qkv_dim=16, out_dim=12, attention="reformer",
                                       attention_kwargs=dict(chunk_length=4, num_buckets=4))
  x = jax.random.normal(jax.random.key(0), (2, 24, 12))
  mask = jnp.arange(24)[None] < jnp.asarray([24, 15])[:, None]
  rngs = {"params": jax.random.key(1), attention.ATTENTION_RNG: jax.random.key(2)}
  params = jax.jit(lambda x: layer.init(rngs, x, mask, deterministic=True))(x)["params"]
  grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(
      {"params": p}, x, mask, deterministic=True,
      rngs={attention.ATTENTION_RNG: jax.random.key(3)}) ** 2)))(params)
  assert np.all(np.asarray(grads["key"]["kernel"]) == 0.0)
  for name in ("query", "value", "out"):
    assert float(jnp.abs(grads[name]["kernel"]).sum()) > 0


def test_default_num_buckets_follows_hf():
  assert [lsh.default_num_buckets(n, 64) for n in (1024, 2048, 4096)] == [32, 64, 128]
  # Above HF's limit 2 max(sqrt(n / 64), 64) = 128 the count is factorised.
  assert lsh.default_num_buckets(8192, 64) == (16, 16)
  assert lsh.default_num_buckets(16384, 64) == (16, 32)
  assert lsh.default_num_buckets(24, 4) == 8
  assert lsh.default_num_buckets(128, 64) == 4
  assert lsh.default_num_buckets(64, 64) == 2
  assert attention.default_hyperparameters("reformer") == dict(
      num_hash=2, chunk_length=64, num_chunks_before=1, num_chunks_after=0, num_buckets=None,
      correct_duplicates=True, official_lra_logits=False, fixed_hash_key=False)
  q, k, v, mask = _inputs()
  np.testing.assert_array_equal(
      _reformer(q, k, v, mask, rng=jax.random.key(0), chunk_length=4),
      _reformer(q, k, v, mask, rng=jax.random.key(0), chunk_length=4,
                                   num_buckets=8))


@pytest.mark.parametrize("kwargs,message", [
    (dict(chunk_length=4, num_buckets=5), "even"),
    (dict(chunk_length=4, num_buckets=0), "even"),
    (dict(chunk_length=4, num_buckets=(4, 3)), "even"),
    (dict(chunk_length=4, num_hash=0), "num_hash"),
    (dict(chunk_length=0), "chunk_length"),
    (dict(chunk_length=4, num_chunks_before=-1), "num_chunks_before"),
])
def test_bad_hyperparameters_raise_clear_errors(kwargs, message):
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match=message):
    attention.reformer_attention(q, k, v, mask, rng=jax.random.key(0), **kwargs)


def test_lengths_off_the_chunk_grid_are_padded_with_masked_positions():
  # Length 22 with chunks of 4: the same as the length-24 call whose last two
  # positions are padding (they hash to the padding bucket either way).
  q, k, v, mask = _inputs(length=24, lengths=(22, 15))
  kwargs = dict(rng=jax.random.key(5), chunk_length=4, num_buckets=4)
  short = _reformer(q[:, :22], k[:, :22], v[:, :22], mask[:, :22], **kwargs)
  padded = _reformer(q, k, v, mask, **kwargs)
  assert short.shape == (2, 22, 2, 8)
  np.testing.assert_allclose(_real(short, mask[:, :22]), _real(padded[:, :22], mask[:, :22]),
                             rtol=1e-6, atol=1e-6)


def test_missing_rng_is_an_error():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="PRNG key"):
    attention.reformer_attention(q, k, v, mask, chunk_length=4)


def _largest_intermediate(length, correct_duplicates):
  q, k, v, mask = _inputs(length=length, lengths=(length, length // 3))
  jaxpr = jax.make_jaxpr(lambda q, v: jax.grad(lambda q, v: jnp.sum(attention.reformer_attention(
      q, k, v, mask, rng=jax.random.key(0), chunk_length=16, num_buckets=8,
      correct_duplicates=correct_duplicates) ** 2), argnums=(0, 1))(q, v))(q, v)

  def sizes(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        yield int(np.prod(var.aval.shape))
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", None)
        if inner is not None:
          yield from sizes(getattr(inner, "jaxpr", inner))

  return max(sizes(jaxpr.jaxpr))


@pytest.mark.parametrize("correct_duplicates", [False, True])
def test_nothing_quadratic_is_built(correct_duplicates):
  # Doubling the length at most doubles every intermediate, forward and backward.
  small, large = (_largest_intermediate(n, correct_duplicates) for n in (256, 512))
  assert large <= 2 * small
  if not correct_duplicates:  # chunked logits [b, h, 2 x 16 chunks, 16, 32]: n^2 / 4 here
    assert small <= 2 * 2 * 256 * 256 // 4


def test_bfloat16_keeps_softmax_in_float32():
  q, k, v, mask = (x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in _inputs())
  run = lambda q, k, v, m: attention.reformer_attention(q, k, v, m, rng=jax.random.key(0),
                                                         chunk_length=4, num_buckets=4)
  out = run(q, k, v, mask)
  assert out.dtype == jnp.bfloat16
  jaxpr = jax.make_jaxpr(run)(q, k, v, mask)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in jaxpr.jaxpr.eqns
                if eqn.primitive.name == "exp"}
  assert exp_dtypes == {"float32"}


def test_official_lra_logits_one_chunk_is_unnormalised_shared_qk_times_sqrt_d_with_self():
  q, k, v, mask = _inputs()
  out = _reformer(q, k, v, mask, rng=jax.random.key(0), chunk_length=24, num_chunks_before=0,
                  num_hash=1, num_buckets=4, official_lra_logits=True)
  q64, v64 = np.asarray(q, np.float64), np.asarray(v, np.float64)
  logits = np.einsum("bqhd,bkhd->bhqk", q64, q64) * np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -1e9)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum("bhqk,bkhd->bqhd", weights, v64)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=1e-4, atol=1e-5)


def test_fixed_hash_key_gives_the_same_rotations_on_every_call_and_layer():
  q, k, v, mask = _inputs()
  module = lsh.ReformerAttention(chunk_length=4, num_buckets=4, fixed_hash_key=True)
  calls = [module.apply({}, q, k, v, mask, deterministic=True,
                        rngs={attention.ATTENTION_RNG: jax.random.key(seed)}) for seed in (1, 2)]
  np.testing.assert_array_equal(calls[0], calls[1])
  np.testing.assert_array_equal(calls[0], attention.reformer_attention(
      q, k, v, mask, rng=jax.random.key(0), chunk_length=4, num_buckets=4))
  fresh = lsh.ReformerAttention(chunk_length=4, num_buckets=4)
  draws = [fresh.apply({}, q, k, v, mask, deterministic=True,
                       rngs={attention.ATTENTION_RNG: jax.random.key(seed)}) for seed in (1, 2)]
  assert not np.allclose(draws[0], draws[1])
