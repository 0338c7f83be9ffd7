"""Reformer LSH attention: shared-QK attention within locality-sensitive hash buckets.

Kitaev, Kaiser & Levskaya, "Reformer: The Efficient Transformer" (ICLR 2020),
§2-3. Queries double as keys (shared-QK, keys length-normalised); each hash
round r draws a random rotation R_r and hashes h(x) = argmax([x R_r; -x R_r])
(§2, angular LSH); tokens are sorted by (bucket, position), cut into chunks
of `chunk_length`, and every chunk attends to itself and `num_chunks_before`
/ `num_chunks_after` neighbouring chunks (§2, the chunked set P~_i); attention
to self is forbidden unless nothing else is available (§2, shared-QK
masking); the rounds are combined by their log-sum-exp weights
(multi-round LSH attention, App. A: o_i = sum_r exp(z_i^(r) - z_i) o_i^(r)).

Reference code: HF transformers 4.5.0 `LSHSelfAttention`, subclassed by
`attention_reformer.LSHAttention` in the Skyformer and Nyströmformer repos
(skyformer_skeinformer.md §1.9, nystromformer_and_peers.md §3). This file
follows it operation for operation (mask values, length normalisation,
per-head rotations shared over the batch, sorting over the concatenated hash
rounds, chunk look-back that wraps around, extra bucket for padding, plain
attention for sequences no longer than one chunk).

Cost per hash round: hashing O(n head_dim sum(bucket factors)), a sort
(O(n log n), no gradient) and O(n chunk_length (1 + num_chunks_before +
num_chunks_after) head_dim) for the chunked attention; nothing n x n is
built. (The automatic bucket count grows like n / chunk_length up to HF's
limit and is factorised beyond it, so hashing stays a small share.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lra_jax.attention import chunking, registry
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import dropout_rng, dropout_weights

# HF's float32 mask values. Padded keys are replaced by -1e9; the self logit
# is replaced by -1e5, so a token attends to itself only when every other key
# of its window is padding (or when it is alone in the sequence).
_PAD_MASK_VALUE = -1e9
_SELF_MASK_VALUE = -1e5
# HF `_len_norm`: x / sqrt(mean(x^2) + eps).
_LEN_NORM_EPS = 1e-6


def default_num_buckets(length: int, chunk_length: int) -> int | tuple[int, int]:
  """HF's automatic bucket count for a sequence of `length` tokens.

  2^p buckets with p = bitlen(2 (length // chunk_length)) - 1, the largest
  power of two <= 2 length / chunk_length (about two buckets per chunk, the
  paper's recommendation): 32 for length 1024 at chunk length 64, 64 for
  2048, 128 for 4096. Above 2 max(int(sqrt(length // chunk_length)),
  chunk_length) buckets (HF's limit, with max_position_embeddings = length as
  in the reference) the count is factorised as (2^(p // 2), 2^(p - p // 2)),
  e.g. (16, 16) at 8192 and (16, 32) at 16384, which keeps the hashing cost
  at O(length sqrt(length)) instead of O(length^2). At least 2 buckets.
  """
  exponent = max((2 * (length // chunk_length)).bit_length() - 1, 1)
  limit = 2 * max(int((length // chunk_length) ** 0.5), chunk_length)
  if 2 ** exponent > limit:
    return (2 ** (exponent // 2), 2 ** (exponent - exponent // 2))
  return 2 ** exponent


def _bucket_factors(num_buckets) -> tuple[int, ...]:
  """num_buckets as a tuple of factors; checks every factor is even and >= 2."""
  factors = (num_buckets,) if isinstance(num_buckets, int) else tuple(num_buckets or ())
  if not factors or any(not isinstance(f, int) or isinstance(f, bool) or f < 2 or f % 2
                        for f in factors):
    raise ValueError(f"reformer num_buckets must be an even integer >= 2 (h(x) = argmax([xR; -xR]) "
                     f"has an even number of buckets) or a tuple of them (factorised hashing), got "
                     f"{num_buckets!r}. Set an even value, or None for HF's automatic choice "
                     f"(`default_num_buckets`).")
  return factors


def num_buckets_total(num_buckets: int | tuple[int, ...]) -> int:
  """The number of real buckets: num_buckets, or the product of its factors."""
  return int(np.prod(_bucket_factors(num_buckets)))


def lsh_random_rotations(rng: jax.Array, num_heads: int, head_dim: int, num_hash: int,
                         num_buckets: int | tuple[int, ...]) -> jax.Array:
  """The random rotations of one forward pass, i.i.d. N(0, 1) like HF's `torch.randn`.

  Args:
    rng: PRNG key of the draw (one draw, all heads and hash rounds).
    num_heads: heads; every head has its own rotations, shared by the batch.
    head_dim: size of the hashed vectors.
    num_hash: hash rounds.
    num_buckets: buckets per round (even), or a tuple of even factors; a round
      projects on sum(factors) / 2 random directions.

  Returns:
    [heads, head_dim, num_hash, sum(factors) // 2] float32.
  """
  columns = sum(_bucket_factors(num_buckets)) // 2
  return jax.random.normal(rng, (num_heads, head_dim, num_hash, columns), jnp.float32)


def _signed_argmax(x: jax.Array) -> jax.Array:
  """argmax([x, -x]) over the last axis (first index on ties), without the concatenation."""
  half = x.shape[-1]
  positive_wins = jnp.max(x, axis=-1) >= -jnp.min(x, axis=-1)
  return jnp.where(positive_wins, jnp.argmax(x, axis=-1), half + jnp.argmin(x, axis=-1))


def lsh_hash(rotations: jax.Array, vectors: jax.Array, mask: jax.Array,
             num_buckets: int | tuple[int, ...]) -> jax.Array:
  """Angular LSH h(x) = argmax([x R; -x R]), padded tokens in an extra bucket.

  With factors (f_1, f_2, ...) the rotation columns are split into blocks of
  f_i / 2 and h(x) = h_1(x) + f_1 h_2(x) + f_1 f_2 h_3(x) + ... (HF's
  factorised hash).

  Args:
    rotations: [heads, head_dim, num_hash, sum(factors) // 2]
      (`lsh_random_rotations`).
    vectors: [batch, length, heads, head_dim] (the shared queries/keys; the
      hash has no gradient).
    mask: [batch, length] bool, True for real tokens.
    num_buckets: buckets per round, or its factors.

  Returns:
    [batch, heads, num_hash, length] int32 bucket ids in [0, B] (B the number
    of buckets) where id B is given to every padded token, so that padded
    tokens sort after all real ones and never change which real tokens share
    a chunk (as HF does when the batch has padding).
  """
  factors = _bucket_factors(num_buckets)
  if rotations.shape[-1] != sum(factors) // 2:
    raise ValueError(f"rotations have {rotations.shape[-1]} columns, num_buckets {num_buckets!r} "
                     f"needs {sum(factors) // 2}.")
  vectors = jax.lax.stop_gradient(vectors.astype(jnp.float32))
  rotated = jnp.einsum("bnhd,hdrk->bhrnk", vectors, rotations, preferred_element_type=jnp.float32)
  buckets, start, scale = 0, 0, 1
  for factor in factors:
    buckets = buckets + scale * _signed_argmax(rotated[..., start:start + factor // 2])
    start, scale = start + factor // 2, scale * factor
  return jnp.where(mask[:, None, None, :], buckets.astype(jnp.int32), scale)


def lsh_bucket_ids(rng: jax.Array, vectors: jax.Array, mask: jax.Array, num_hash: int,
                   num_buckets: int | tuple[int, ...]) -> jax.Array:
  """Draws the rotations from `rng` and hashes: the buckets `reformer_attention` uses.

  Args:
    rng: PRNG key of the rotations (`lsh_random_rotations`).
    vectors: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    num_hash: hash rounds.
    num_buckets: buckets per round (even), or a tuple of even factors.

  Returns:
    [batch, heads, num_hash, length] int32, see `lsh_hash`.
  """
  _, _, heads, head_dim = vectors.shape
  rotations = lsh_random_rotations(rng, heads, head_dim, num_hash, num_buckets)
  return lsh_hash(rotations, vectors, mask, num_buckets)


def _check_hyperparameters(num_hash, chunk_length, num_chunks_before, num_chunks_after):
  if not isinstance(num_hash, int) or num_hash < 1:
    raise ValueError(f"reformer num_hash must be a positive integer, got {num_hash!r}.")
  if not isinstance(chunk_length, int) or chunk_length < 1:
    raise ValueError(f"reformer chunk_length must be a positive integer, got {chunk_length!r}.")
  for name, value in (("num_chunks_before", num_chunks_before), ("num_chunks_after", num_chunks_after)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"reformer {name} must be a non-negative integer, got {value!r}.")


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """x gathered along axis 2 by index [batch, heads, m] (x is [b, h, N] or [b, h, N, d])."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 3)), axis=2)


@jax.custom_vjp
def _permute(x: jax.Array, permutation: jax.Array, inverse: jax.Array) -> jax.Array:
  """x reordered along axis 2 by a permutation whose inverse is known.

  The cotangent is gathered with the inverse instead of scatter-added (what
  autodiff of a gather would do), like HF's `ReverseSort`.
  """
  return _take(x, permutation)


def _permute_fwd(x, permutation, inverse):
  return _take(x, permutation), (permutation, inverse)


def _permute_bwd(residuals, cotangent):
  permutation, inverse = residuals
  return _take(cotangent, inverse), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _look_adjacent(x: jax.Array, before: int, after: int) -> jax.Array:
  """HF `_look_adjacent`: chunk c also sees chunks c - before .. c + after (cyclically).

  x is [batch, heads, chunks, chunk_length, ...]; returns [batch, heads,
  chunks, (before + 1 + after) chunk_length, ...], previous chunks first. The
  chunk axis runs over all hash rounds, so the first chunk of round r looks
  back at the last chunk of round r - 1 (and round 0 at the last round).
  """
  if before == 0 and after == 0:
    return x
  return jnp.concatenate([jnp.roll(x, -offset, axis=2) for offset in range(-before, after + 1)], axis=3)


def _length_normalised_keys(x: jax.Array) -> jax.Array:
  """HF `_len_and_dim_norm`: x / sqrt(mean(x^2) + 1e-6) / sqrt(d), i.e. about x / ||x||."""
  head_dim = x.shape[-1]
  x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + _LEN_NORM_EPS)
  return x / jnp.sqrt(jnp.float32(head_dim))


def _shared_keys(queries: jax.Array, official_lra_logits: bool) -> jax.Array:
  """The keys of shared-QK attention: normalised queries, or the queries themselves (official LRA)."""
  return queries if official_lra_logits else _length_normalised_keys(queries)


def _masked_logits(queries, keys, query_positions, key_positions, key_mask, official_lra_logits):
  """q . k with padded keys set to -1e9 and self set to -1e5 (HF order: padding first).

  With `official_lra_logits`, q . k * sqrt(head_dim) and no self mask (the
  official LRA code's dot product).
  """
  dots = jnp.einsum("...qd,...kd->...qk", queries, keys, preferred_element_type=jnp.float32)
  if official_lra_logits:
    dots = dots * jnp.sqrt(jnp.float32(queries.shape[-1]))
  dots = jnp.where(key_mask[..., None, :], dots, _PAD_MASK_VALUE)
  if official_lra_logits:
    return dots
  is_self = query_positions[..., :, None] == key_positions[..., None, :]
  return jnp.where(is_self, _SELF_MASK_VALUE, dots)


def _full_shared_qk_attention(query, value, mask, dropout_rate, dropout_key, official_lra_logits):
  """HF's path for length <= chunk_length: one chunk, no hashing, no rounds."""
  length = query.shape[1]
  queries = heads_major(query)
  positions = jnp.arange(length)
  logits = _masked_logits(queries, _shared_keys(queries, official_lra_logits), positions, positions,
                          mask[:, None, :], official_lra_logits)
  weights = dropout_weights(jax.nn.softmax(logits, axis=-1), dropout_rate, dropout_key)
  return length_major(jnp.einsum("bhqk,bhkd->bhqd", weights, heads_major(value).astype(jnp.float32)))


def _duplicate_counts(query_chunks, key_chunks, num_chunks, before, after):
  """N_ij: how many times key j appears in query i's windows over all rounds.

  query_chunks: [..., q, R] the chunk of query i's copy in each round;
  key_chunks: [..., k, R] the chunk of key j's copy in each round. A copy of j
  in chunk c_j lies in the round-r' window of i as many times as offsets o in
  [-before, after] have c_j = c_i^(r') + o (mod num_chunks).
  """
  difference = key_chunks[..., None, :, :, None] - query_chunks[..., :, None, None, :]
  counts = sum(jnp.sum(jnp.mod(difference - offset, num_chunks) == 0, axis=(-2, -1), dtype=jnp.int32)
               for offset in range(-before, after + 1))
  return counts.astype(jnp.float32)


def reformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                       rng: jax.Array | None = None, num_hash: int = 2, chunk_length: int = 64,
                       num_chunks_before: int = 1, num_chunks_after: int = 0,
                       num_buckets: int | tuple[int, ...] | None = None,
                       correct_duplicates: bool = True, official_lra_logits: bool = False,
                       dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Reformer LSH self-attention with shared queries and keys (Kitaev et al. 2020, §2-3).

  For each of `num_hash` rounds: bucket every token with `lsh_bucket_ids`
  (padded tokens in an extra last bucket); stably sort the concatenation of all
  rounds by (round, bucket, position); cut the sorted sequence of
  num_hash x length tokens into chunks of `chunk_length`; every query chunk
  attends to keys k_j = q_j / ||q_j|| (HF's length normalisation times
  1/sqrt(head_dim), so logits are q_i . q_j / (||q_j|| sqrt(d))) in its own
  chunk and the `num_chunks_before` previous and `num_chunks_after` next
  chunks (cyclic over the concatenated rounds), with padded keys replaced by
  -1e9 and self by -1e5. Each round gives o_i^(r) and z_i^(r) = logsumexp of
  its logits; out_i = sum_r softmax_r(z_i^(r)) o_i^(r) (paper App. A).
  Sequences of at most `chunk_length` tokens use plain shared-QK attention
  over all real keys (HF's shortcut; no hashing, no rounds).

  Only `query` enters the computation: `key` is ignored, like the reference's
  unused W_k, so a key projection feeding it gets zero gradient. The bucket
  assignment has no gradient; gradients reach `query` through the logits and
  `value` through the weighted sum.

  Args:
    query: [batch, length, heads, head_dim], the shared queries/keys.
    key: [batch, length, heads, head_dim], ignored (shared-QK).
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (right-padded). Padded
      keys get zero weight and padded tokens are sorted after all real ones,
      so real outputs never depend on padded positions; outputs at padded
      positions are unused.
    rng: PRNG key of the random rotations (`lsh_random_rotations`: one
      [heads, head_dim, num_hash, num_buckets // 2] N(0, 1) draw, shared by the
      batch), the only random draw besides dropout; required unless
      length <= chunk_length.
    num_hash: hash rounds (reference: 2).
    chunk_length: tokens per chunk (reference: 64).
    num_chunks_before: previous chunks each chunk attends to (reference: 1).
    num_chunks_after: following chunks each chunk attends to (reference: 0).
    num_buckets: buckets per round, even, or a tuple of even factors
      (factorised hash); None picks `default_num_buckets(length,
      chunk_length)` (HF's rule).
    correct_duplicates: subtract log N_ij from every logit, N_ij being how
      often key j occurs in query i's windows over all rounds (paper App. A's
      m_ij = log N_ij), so the rounds combine into one softmax over the union
      of the windows (the paper's maths, default). False reproduces the
      reference (HF), which leaves it out.
    official_lra_logits: the official LRA code's logits (lra_official_jax.md
      §7.8): keys are the raw queries (no length normalisation), q . k is
      multiplied by sqrt(head_dim) instead of divided, and nothing stops a
      token attending to itself. Off by default.
    dropout_rate: dropout on the attention weights of each round (after the
      log-sum-exp weights are taken, as HF does; reference: 0.0).
    dropout_rng: PRNG key of the dropout mask; None means no dropout.

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Logits, softmaxes and
    the round combination are computed in float32.

  Lengths that are not a multiple of chunk_length (the official protocol's
  n + 1 with its CLS token) are padded with masked positions to the next
  multiple (HF requires a multiple; the PyTorch LRA lengths are powers of two).

  Raises:
    ValueError: bad hyper-parameters or a missing rng.
  """
  del key  # Shared-QK: the keys are the normalised queries.
  if query.shape != value.shape or query.ndim != 4 or mask.shape != query.shape[:2]:
    raise ValueError(f"reformer_attention is self-attention: query and value must share one shape "
                     f"[batch, length, heads, head_dim] and mask be [batch, length]; got query "
                     f"{query.shape}, value {value.shape}, mask {mask.shape}.")
  _check_hyperparameters(num_hash, chunk_length, num_chunks_before, num_chunks_after)
  batch, length, heads, head_dim = query.shape
  query = query.astype(jnp.float32)
  if length <= chunk_length:
    return _full_shared_qk_attention(query, value, mask, dropout_rate, dropout_rng,
                                     official_lra_logits).astype(value.dtype)
  if length % chunk_length:
    # Masked positions up to the next multiple of chunk_length: they hash to
    # the padding bucket, after every real token, and are never attended to.
    query, value, mask = chunking.pad_to_multiple((query, value, mask), chunk_length)
    return reformer_attention(
        query, None, value, mask, rng=rng, num_hash=num_hash,
        chunk_length=chunk_length, num_chunks_before=num_chunks_before,
        num_chunks_after=num_chunks_after, num_buckets=num_buckets,
        correct_duplicates=correct_duplicates, official_lra_logits=official_lra_logits,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng)[:, :length]
  if num_buckets is None:
    num_buckets = default_num_buckets(length, chunk_length)
  total_buckets = num_buckets_total(num_buckets)
  if rng is None:
    raise ValueError("reformer_attention draws random hash rotations and needs a PRNG key: pass "
                     "rng=jax.random.key(...) (the module draws it from the "
                     f"{registry.ATTENTION_RNG!r} RNG stream).")

  buckets = lsh_bucket_ids(rng, query, mask, num_hash, num_buckets)  # [b, h, R, n]
  # Offsets keep the rounds apart (total_buckets + 1 ids per round, the padding
  # bucket included); a stable sort breaks bucket ties by position.
  offsets = (total_buckets + 1) * jnp.arange(num_hash, dtype=jnp.int32)
  sort_keys = (buckets + offsets[:, None]).reshape(batch, heads, num_hash * length)
  order = jnp.argsort(sort_keys, axis=-1, stable=True).astype(jnp.int32)  # [b, h, R n]
  iota = jnp.broadcast_to(jnp.arange(num_hash * length, dtype=jnp.int32), order.shape)
  undo = jnp.put_along_axis(jnp.zeros_like(order), order, iota, axis=-1, inplace=False)
  positions = order % length  # sorted slot -> token position

  def sort(x):  # [b, n, h, ...] -> [b, h, R n, ...] in sorted order.
    x = jnp.swapaxes(x, 1, 2)
    return _permute(jnp.tile(x, (1, 1, num_hash) + (1,) * (x.ndim - 3)), order, undo)

  num_chunks = num_hash * length // chunk_length

  def chunked(x):  # [b, h, R n, ...] -> [b, h, chunks, chunk_length, ...]
    return x.reshape((batch, heads, num_chunks, chunk_length) + x.shape[3:])

  def window(x):
    return _look_adjacent(chunked(x), num_chunks_before, num_chunks_after)

  queries = sort(query)  # [b, h, R n, d]
  values = sort(value.astype(jnp.float32))
  key_mask = _take(jnp.broadcast_to(mask[:, None, :], (batch, heads, length)), positions)
  logits = _masked_logits(chunked(queries), window(_shared_keys(queries, official_lra_logits)),
                          chunked(positions), window(positions), window(key_mask),
                          official_lra_logits)
  if correct_duplicates:
    # Chunk of every token's copy in each round, looked up per sorted slot.
    round_chunks = jnp.swapaxes((undo // chunk_length).reshape(batch, heads, num_hash, length), 2, 3)
    slot_chunks = _take(round_chunks, positions)  # [b, h, R n, R]
    logits = logits - jnp.log(_duplicate_counts(chunked(slot_chunks), window(slot_chunks), num_chunks,
                                                num_chunks_before, num_chunks_after))
  # [b, h, chunks, chunk_length, window]
  round_logits = jax.nn.logsumexp(logits, axis=-1)  # [b, h, chunks, chunk_length]
  weights = jnp.exp(logits - round_logits[..., None])
  weights = dropout_weights(weights, dropout_rate, dropout_rng)
  out = jnp.einsum("bhcqk,bhckd->bhcqd", weights, window(values))

  out = _permute(out.reshape(batch, heads, num_hash * length, head_dim), undo, order)
  round_logits = _permute(round_logits.reshape(batch, heads, num_hash * length), undo, order)
  out = out.reshape(batch, heads, num_hash, length, head_dim)
  round_weights = jax.nn.softmax(round_logits.reshape(batch, heads, num_hash, length), axis=2)
  out = jnp.einsum("bhrnd,bhrn->bnhd", out, round_weights)
  return out.astype(value.dtype)


class ReformerAttention(nn.Module):
  """Module around `reformer_attention`; rotations from the 'attention' stream.

  Fresh random rotations are drawn from `registry.ATTENTION_RNG` on every
  call, in training and evaluation alike (the reference's `hash_seed=None`
  and the paper). No parameters and no constants.

  Shared-QK: `query` is both queries and keys and `key` is ignored, so in
  `MultiHeadAttention` the key projection receives no gradient (it stays at
  its initial value under plain gradient descent; weight decay still shrinks
  it), exactly like the reference's unused W_k.

  Reference quirks (HF transformers 4.5.0 `LSHSelfAttention` via Skyformer's
  `attention_reformer.LSHAttention`) and how to reproduce them:
    * The rounds are combined without correcting for keys seen in several
      windows (the paper's App. A subtracts log N_ij), so such keys weigh
      more: `correct_duplicates=False`. The default (True) is the paper's
      softmax over the union of the windows. Here N_ij counts
      occurrences, which equals the paper's count of rounds whenever no
      window holds a key twice.
    * Chunks look cyclically over the concatenation of the hash rounds (the
      first chunk of a round sees the last chunk of the previous round), and
      keys of other buckets in the window are attended (no same-bucket mask):
      reproduced, no option.
    * Self and padding logits are replaced by -1e5 and -1e9 (not subtracted),
      keys are q / sqrt(mean(q^2) + 1e-6) / sqrt(d): reproduced.
    * Padded tokens hash to an extra bucket sorted after every real bucket:
      reproduced (HF does this whenever the batch has padding), so real
      outputs never depend on padded positions.
    * Lengths <= chunk_length use plain shared-QK attention: reproduced.
    * num_buckets=None picks 2^(bitlen(2 n / chunk_length) - 1) (32 / 64 / 128
      buckets at n = 1024 / 2048 / 4096) and factorises it above HF's limit
      ((16, 16) at 8192, (16, 32) at 16384): reproduced (`default_num_buckets`,
      with max_position_embeddings = n as in the reference). HF fixes the
      count at its first call; here it follows each call's length.
    * The reference LSH layer uses the bias-free W_q and W_v weights (their
      biases unused): use `MultiHeadAttention(use_bias=False)` (the default).
    * LSH attention dropout 0.0 in the reference: set the model's
      attention_dropout_rate to 0.0 to match (this module applies the rate it
      is given to the attention weights).

  The official LRA Reformer (lra_official_jax.md §7.8) is the setting
  `num_hash=1, num_buckets=10, chunk_length=ceil(length / 10),
  num_chunks_before=1` (its 10 equal chunks, each looking one back with
  wrap-around). Its bugs, behind options off by default:
    * keys not length-normalised, logits multiplied by sqrt(head_dim), no
      self mask: `official_lra_logits=True`;
    * rotations from a fixed PRNGKey(0) on every call, identical for every
      layer and step: `fixed_hash_key=True` (here still one draw per head;
      the official shares one rotation by all heads).
  Not reproduced: the official has no padding mask at all (here padded
  tokens keep their own bucket), forces qkv_dim to emb_dim and drops the
  output projection (model-level differences).

  Attributes:
    dropout_rate: dropout on the attention weights, active when not
      deterministic (reference: 0.0).
    num_hash: hash rounds (reference: 2).
    chunk_length: tokens per chunk (reference: 64).
    num_chunks_before: previous chunks attended (reference: 1).
    num_chunks_after: following chunks attended (reference: 0).
    num_buckets: buckets per round (even), or None for HF's automatic rule
      (`default_num_buckets`, factorised above 4096 tokens at chunk 64); the
      pure function also takes a tuple of factors.
    correct_duplicates: the paper's log N_ij correction (off in the reference).
    official_lra_logits: the official LRA code's logits (see above).
    fixed_hash_key: hash with jax.random.key(0) on every call (official LRA).
  """

  dropout_rate: float = 0.0
  num_hash: int = 2
  chunk_length: int = 64
  num_chunks_before: int = 1
  num_chunks_after: int = 0
  num_buckets: int | None = None
  correct_duplicates: bool = True
  official_lra_logits: bool = False
  fixed_hash_key: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    rng = jax.random.key(0) if self.fixed_hash_key else self.make_rng(registry.ATTENTION_RNG)
    return reformer_attention(
        query, key, value, mask, rng=rng, num_hash=self.num_hash,
        chunk_length=self.chunk_length, num_chunks_before=self.num_chunks_before,
        num_chunks_after=self.num_chunks_after, num_buckets=self.num_buckets,
        correct_duplicates=self.correct_duplicates, official_lra_logits=self.official_lra_logits,
        dropout_rate=self.dropout_rate, dropout_rng=dropout_rng(self, self.dropout_rate, deterministic))


# Contract-test inputs have length 24, one sequence with 15 real tokens: 6
# chunks of 4 per round, 4 buckets plus the padding bucket, a partly padded
# chunk, and look-back across the two rounds.
registry.register("reformer", reformer_attention, ReformerAttention,
                  small_input_kwargs=dict(chunk_length=4, num_buckets=4, num_hash=2))
