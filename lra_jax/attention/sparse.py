"""Sparse attention: Informer's ProbSparse queries and BigBird's block-sparse pattern.

* `informer`: Zhou et al., "Informer: Beyond Efficient Transformer for Long
  Sequence Time-Series Forecasting" (AAAI 2021), ProbSparse self-attention
  (its eqs. 3-4 and Lemma 1): each query's sparsity measurement
  M(q_i, K) = max_j(q_i k_j^T / sqrt(d)) - mean_j(q_i k_j^T / sqrt(d)) is
  estimated from U_part randomly sampled keys, the top-u queries get exact
  softmax attention and the other ("lazy") queries the mean of V. Reference
  code `attention_informer.ProbAttention` (reachable) and
  `attention_informermask.py` (the paper's "w/ padding mask", unreachable) of
  pkuzengqi/Skyformer (skyformer_skeinformer.md §1.7).
* `bigbird`: Zaheer et al., "Big Bird: Transformers for Longer Sequences"
  (NeurIPS 2020), the ITC block-sparse pattern (its §2 and Appendix D): global
  first and last blocks, a sliding window of 3 blocks and r random blocks per
  query block and head. Reference code `attention_bigbird.BigBirdAttention`,
  a copy of HF `BigBirdBlockSparseAttention` (skyformer_skeinformer.md §1.8;
  the official LRA JAX version: lra_official_jax.md §7.4).

Both are self-attention: queries, keys and values share one length and one
padding mask.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import checks, chunking, registry
from lra_jax.attention.layout import heads_major, length_major
from lra_jax.attention.softmax import softmax_attention

# Finite rather than -inf (as in softmax.py): an all-masked row stays finite.
_MASK_VALUE = -1e10
# Float32 elements of sampled keys gathered at once by Informer (32 MiB).
_GATHER_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------
# Informer (ProbSparse attention).


def informer_sizes(length: int, in_nb_features: int = 128) -> tuple[int, int, int]:
  """The reference's sampling sizes for a sequence of `length` tokens.

  factor c = ceil(in_nb_features / ln(length)) and
  U_part = u = c ceil(ln(length)), both clipped to length. With the reference
  in_nb_features = 128: n = 1024 -> c = 19, U_part = u = 133; n = 2048 -> 17,
  136; n = 4096 -> 16, 144; n = 8192 -> 15, 150; n = 16384 -> 14, 140. So the
  cost is O(n log n) for the sampled scores plus O(u n) for the exact rows.

  Args:
    length: sequence length n (the padded length, as the reference's
      max_seq_len).
    in_nb_features: the reference hyper-parameter, about the number u of
      exact queries (u is it rounded up to a multiple of ceil(ln n)).

  Returns:
    (factor c, U_part = number of sampled keys per query, u = number of
    queries given exact attention).
  """
  checks.check_positive_int("in_nb_features", in_nb_features)
  checks.check_positive_int("length", length)
  if length < 2:  # ln(1) = 0: the single query is the whole sequence.
    return 1, length, length
  log_length = math.log(length)
  factor = math.ceil(in_nb_features / log_length)
  count = min(factor * math.ceil(log_length), length)
  return factor, count, count


def _real_positions(mask: jax.Array, rank: jax.Array) -> jax.Array:
  """Position of the rank-th real token of each sequence: [b, n], [b, ...] -> [b, ...].

  For right-padded masks this is `rank` itself; other masks work too.
  """
  real_first = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
  flat = rank.reshape(rank.shape[0], -1)
  return jnp.take_along_axis(real_first, flat, axis=-1).reshape(rank.shape).astype(jnp.int32)


def informer_sample_indices(rng: jax.Array, mask: jax.Array, num_samples: int, *,
                            ignore_padding: bool = False) -> jax.Array:
  """The keys sampled for each query's sparsity measurement.

  One uniform array u ~ U[0, 1)^[length, num_samples] is drawn from `rng` and
  shared by every sequence and head (as the reference's single
  `torch.randint` / `torch.rand` draw). By default sample t of query i in
  sequence b is the floor(u_it m_b)-th real token (m_b real tokens: uniform
  with replacement over the real keys, as `attention_informermask.py`); with
  `ignore_padding` it is position floor(u_it n), uniform over all n positions
  (as `attention_informer.ProbAttention`).

  Args:
    rng: PRNG key of the uniform draw.
    mask: [batch, length] bool, True for real tokens.
    num_samples: U_part, keys sampled per query.
    ignore_padding: sample among all positions, padded ones included.

  Returns:
    [batch, length, num_samples] int32 key positions.
  """
  batch, length = mask.shape
  uniform = jax.random.uniform(rng, (length, num_samples), jnp.float32)
  if ignore_padding:
    count = jnp.full((batch, 1, 1), length, jnp.int32)
  else:
    count = jnp.sum(mask, axis=-1).astype(jnp.int32)[:, None, None]
  rank = jnp.floor(uniform[None] * count.astype(jnp.float32)).astype(jnp.int32)
  # u m_b can round up to m_b in float32; a sequence without real tokens falls
  # back to position 0.
  rank = jnp.clip(rank, 0, jnp.maximum(count - 1, 0))
  if ignore_padding:
    return rank
  return _real_positions(mask, rank)


def informer_sparsity(query: jax.Array, key: jax.Array, mask: jax.Array, sample_indices: jax.Array,
                      *, ignore_padding: bool = False) -> jax.Array:
  """Each query's sparsity measurement over its sampled keys (no gradient).

  With s_it = q_i k_(j_it)^T the scores of query i against its sampled keys
  j_it (t < U_part):
    default: M_i = max_t s_it / sqrt(d) - mean_t s_it / sqrt(d), the paper's
      max-mean measurement (eq. 4) estimated on the sample, and -inf for padded
      queries so that they are selected last;
    ignore_padding: M_i = max_t s_it - (sum_t s_it) / n, the reference's
      unscaled sum over the sample divided by the full length n, every query
      eligible.
  Only the ranking of M matters (it selects queries), so no gradient flows
  through it.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens.
    sample_indices: [batch, length, num_samples] key positions, see
      `informer_sample_indices`.
    ignore_padding: the reference's measurement (see above).

  Returns:
    [batch, heads, length] float32.
  """
  batch, length, heads, head_dim = query.shape
  num_samples = sample_indices.shape[-1]
  query = jax.lax.stop_gradient(query).astype(jnp.float32)
  # Rows [heads * head_dim] of all sequences stacked: one plain row gather
  # serves every head (the sample is shared by the heads).
  key_rows = jax.lax.stop_gradient(key).astype(jnp.float32).reshape(batch * length, heads * head_dim)
  rows = sample_indices.astype(jnp.int32) + (jnp.arange(batch, dtype=jnp.int32) * length)[:, None, None]

  # The sampled keys of all queries, [b, n, U_part, h, d], are ~U_part times
  # the size of K (GBs at n = 16384), so queries go through in chunks.
  chunk = max(1, min(length, _GATHER_CHUNK_ELEMENTS // (batch * num_samples * heads * head_dim)))
  num_chunks = chunking.num_blocks(length, chunk)
  query, rows = chunking.pad_to_multiple((query, rows), chunk)

  def chunk_scores(args):
    chunk_query, chunk_rows = args  # [b, chunk, h, d], [b, chunk, U_part]
    sampled = jnp.take(key_rows, chunk_rows.reshape(-1), axis=0, mode="clip")
    sampled = sampled.reshape(batch, chunk, num_samples, heads, head_dim)
    scores = jnp.sum(chunk_query[:, :, None] * sampled, axis=-1)  # [b, chunk, U_part, h]
    return jnp.max(scores, axis=2), jnp.sum(scores, axis=2)

  def by_chunk(x):  # [b, num_chunks * chunk, ...] -> [num_chunks, b, chunk, ...]
    return jnp.swapaxes(x.reshape(batch, num_chunks, chunk, *x.shape[2:]), 0, 1)

  largest, total = jax.lax.map(chunk_scores, (by_chunk(query), by_chunk(rows)))
  largest, total = (jnp.swapaxes(x, 0, 1).reshape(batch, num_chunks * chunk, heads)[:, :length]
                    for x in (largest, total))
  if ignore_padding:
    measure = largest - total / length
  else:
    # max and mean commute with the positive 1 / sqrt(d) scale.
    measure = (largest - total / num_samples) / jnp.sqrt(jnp.float32(head_dim))
    measure = jnp.where(mask[:, :, None], measure, -jnp.inf)
  return jnp.transpose(measure, (0, 2, 1))


def informer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                       rng: jax.Array | None = None, in_nb_features: int = 128,
                       ignore_padding: bool = False) -> jax.Array:
  """ProbSparse self-attention (Zhou et al. 2021, eqs. 3-4), O(n log n d).

  With (c, U_part, u) = `informer_sizes(n, in_nb_features)`: the sparsity
  measurement of every query is estimated on U_part sampled keys
  (`informer_sample_indices`, `informer_sparsity`); per batch element and head
  the top-u queries get exact attention softmax(q_i K^T / sqrt(d)) V over the
  real keys, and every other ("lazy") query gets the mean of V over the real
  tokens (the output of uniform attention). Only the u selected queries are
  compared with all keys ([u, n] logits), so nothing n x n is formed.

  By default padding is handled (the paper's "w/ padding mask"): keys are
  sampled among real tokens, only real queries compete for the top-u (padded
  queries fill the remaining slots when u exceeds the real length), padded
  keys are masked in the exact rows and the lazy mean is over real tokens.
  When u >= n every query is exact: the result is softmax attention.

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (one mask for queries and
      keys: this is self-attention).
    rng: PRNG key of the key sample, the only random draw (one
      [length, U_part] uniform array, shared by the batch and heads, fresh for
      every call as in the reference); required.
    in_nb_features: sets the sampling factor, see `informer_sizes`.
    ignore_padding: the reachable reference (`ProbAttention`): keys sampled
      among all n positions, the unscaled measurement of `informer_sparsity`,
      every query eligible, padded keys attended to, lazy rows the mean of V
      over all n positions. Real outputs then depend on the padding.

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Scores and softmax are
    computed in float32.
  """
  checks.check_self_attention("Informer", query, key, value, mask)
  checks.require_rng(rng, "informer_attention", "the sampled keys of its sparsity measurement")
  batch, length, heads, head_dim = query.shape
  _, num_samples, num_top = informer_sizes(length, in_nb_features)
  indices = informer_sample_indices(rng, mask, num_samples, ignore_padding=ignore_padding)
  measure = informer_sparsity(query, key, mask, indices, ignore_padding=ignore_padding)
  _, top = jax.lax.top_k(measure, num_top)  # [batch, heads, u]

  selected = jnp.take_along_axis(heads_major(query), top[..., None], axis=2)
  logits = jnp.einsum("bhud,bhkd->bhuk", selected, heads_major(key),
                      preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(head_dim))
  if not ignore_padding:
    logits = jnp.where(mask[:, None, None, :], logits, _MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1)
  exact = jnp.einsum("bhuk,bhkd->bhud", weights.astype(value.dtype), heads_major(value),
                     preferred_element_type=jnp.float32)

  values = value.astype(jnp.float32)
  if ignore_padding:
    lazy = jnp.mean(values, axis=1)  # [batch, heads, head_dim]
  else:
    real = mask[:, :, None, None]
    count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(jnp.float32)[:, None, None]
    lazy = jnp.sum(jnp.where(real, values, 0.0), axis=1) / count
  out = jnp.broadcast_to(lazy[:, :, None, :], (batch, heads, length, head_dim))
  out = out.at[jnp.arange(batch)[:, None, None], jnp.arange(heads)[None, :, None], top].set(exact)
  return length_major(out).astype(value.dtype)


class InformerAttention(nn.Module):
  """Module around `informer_attention`; sampled keys from the 'attention' stream.

  A fresh sample is drawn from `registry.ATTENTION_RNG` on every call, in
  training and evaluation alike, like the reference's `torch.randint` in each
  forward pass; it is shared by the batch and the heads (as the reference).

  Reference quirks (pkuzengqi/Skyformer, `--attn informer`) and how to
  reproduce them:
    * The padding mask is ignored entirely (keys sampled among all n
      positions, padded queries eligible for the top-u, padded keys attended
      to, lazy rows the mean of V over all n positions) and the sparsity
      measurement is the unscaled max minus the sample's sum divided by n:
      `ignore_padding=True`. The default is the paper's "w/ padding mask"
      behaviour with the paper's scaled max-mean measurement.
    * Sizes c = ceil(in_nb_features / ln n), U_part = u = c ceil(ln n) from the
      padded length n: reproduced (see `informer_sizes`). The unreachable
      masked file's U_part = u = in_nb_features and its unscaled sum / n
      measurement are not reproduced (no option).
    * One sample shared by the batch and heads, redrawn every forward pass,
      evaluation included: reproduced.
    * Attention dropout defined but never applied: `dropout_rate` is accepted
      for the registry protocol and ignored.

  Attributes:
    dropout_rate: ignored (see above).
    in_nb_features: sets the sampling factor (reference: 128).
    ignore_padding: the reachable reference's padding-blind computation.
  """

  dropout_rate: float = 0.0
  in_nb_features: int = 128
  ignore_padding: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    return informer_attention(query, key, value, mask, rng=self.make_rng(registry.ATTENTION_RNG),
                              in_nb_features=self.in_nb_features,
                              ignore_padding=self.ignore_padding)


# ----------------------------------------------------------------------------
# BigBird (block-sparse attention, ITC).

RANDOM_PATTERNS = ("fixed", "per_call")
# The HF "old plan" (used by the reference for n in {1024, 3072, 4096}) draws
# random blocks only among those inside the first 1024 tokens.
_OLD_PLAN_TOKENS = 1024


def bigbird_random_blocks(rng: jax.Array, length: int, num_heads: int, *, block_size: int = 64,
                          num_random_blocks: int = 3, first_1024_tokens: bool = False) -> jax.Array:
  """Draws BigBird's random key blocks for every middle query block and head.

  Query block i (1 <= i <= num_blocks - 2) draws `num_random_blocks` distinct
  key blocks uniformly without replacement among the candidates: blocks
  1 ... num_blocks - 2 outside its window {i - 1, i, i + 1} (the global first
  and last blocks and the window are attended to anyway). With
  `first_1024_tokens` the candidates are further restricted to blocks lying in
  the first 1024 tokens ((j + 1) block_size <= 1024), the HF "old plan". Where
  fewer candidates exist, the missing slots are -1 (no block). The draw is one
  uniform score per (head, query block, key block) from `rng`; the top scores
  among the candidates are kept.

  Args:
    rng: PRNG key of the draw.
    length: sequence length n; num_blocks = ceil(n / block_size).
    num_heads: number of heads (each head has its own pattern).
    block_size: tokens per block.
    num_random_blocks: r, random key blocks per query block.
    first_1024_tokens: the HF "old plan" restriction.

  Returns:
    [num_heads, max(num_blocks - 2, 0), num_random_blocks] int32 key-block
    indices, -1 for an empty slot (row m is query block m + 1).
  """
  num_blocks = chunking.num_blocks(length, block_size)
  if not isinstance(num_random_blocks, int) or num_random_blocks < 0:
    raise ValueError(f"num_random_blocks must be a non-negative integer, got {num_random_blocks!r}.")
  num_middle = max(num_blocks - 2, 0)
  shape = (num_heads, num_middle, num_random_blocks)
  if num_middle == 0 or num_random_blocks == 0:
    return jnp.full(shape, -1, jnp.int32)
  rows = jnp.arange(1, num_blocks - 1)[:, None]
  columns = jnp.arange(num_blocks)[None, :]
  candidate = (columns >= 1) & (columns <= num_blocks - 2) & (jnp.abs(columns - rows) > 1)
  if first_1024_tokens:
    candidate &= (columns + 1) * block_size <= _OLD_PLAN_TOKENS
  scores = jax.random.uniform(rng, (num_heads, num_middle, num_blocks), jnp.float32)
  scores = jnp.where(candidate, scores, -1.0)
  kept = min(num_random_blocks, num_blocks)
  best, blocks = jax.lax.top_k(scores, kept)
  blocks = jnp.where(best >= 0.0, blocks, -1).astype(jnp.int32)
  return jnp.pad(blocks, ((0, 0), (0, 0), (0, num_random_blocks - kept)), constant_values=-1)


def _random_block_validity(random_blocks: jax.Array, num_blocks: int) -> jax.Array:
  """[h, m, r] bool: in range, not global, outside the window, not a repeat.

  Keys must appear once in the union of blocks for the block-sparse softmax to
  equal the dense masked one, so slots that repeat a block are dropped.
  """
  rows = jnp.arange(1, num_blocks - 1)[None, :, None]
  valid = ((random_blocks >= 1) & (random_blocks <= num_blocks - 2)
           & (jnp.abs(random_blocks - rows) > 1))
  r = random_blocks.shape[-1]
  earlier = jnp.tril(jnp.ones((r, r), bool), k=-1)
  repeat = jnp.any((random_blocks[..., :, None] == random_blocks[..., None, :]) & earlier, axis=-1)
  return valid & ~repeat


def bigbird_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                      rng: jax.Array | None = None, block_size: int = 64, num_random_blocks: int = 3,
                      random_blocks: jax.Array | None = None,
                      random_blocks_first_1024_tokens: bool = False,
                      chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """BigBird ITC block-sparse attention (Zaheer et al. 2020), O(n block_size (5 + r) d).

  The sequence is split into num_blocks = n / block_size blocks (a length that
  is not a multiple of block_size is first right-padded to the next multiple
  with masked positions, and the output cropped back). The first and
  last query blocks (global) attend to every key; query block i of the others
  attends to key blocks {0, i - 1, i, i + 1, num_blocks - 1} plus its r
  random blocks (`bigbird_random_blocks`), so every query attends to the
  global blocks and its window. Within the attended keys this is
  softmax(q k^T / sqrt(d)) v with padded keys masked, i.e. exactly dense
  softmax attention under the n x n block mask of the pattern; the computation
  gathers the key and value blocks of each query block instead, never forming
  n x n arrays. With num_blocks <= 4 the blocks cover all keys and the result
  is exact softmax attention. Outputs of padded queries are not zeroed (they
  are unused).

  Args:
    query: [batch, length, heads, head_dim].
    key: [batch, length, heads, head_dim].
    value: [batch, length, heads, head_dim].
    mask: [batch, length] bool, True for real tokens (one mask for queries and
      keys: this is self-attention).
    rng: PRNG key of the random blocks, drawn on this call when
      `random_blocks` is None (and r > 0); unused otherwise.
    block_size: tokens per block.
    num_random_blocks: r, random key blocks per middle query block and head.
    random_blocks: optional [heads, num_blocks - 2, r] int pattern (see
      `bigbird_random_blocks`), e.g. one drawn once at initialisation. Slots
      that are -1, out of range, global, inside the window or repeated are
      ignored.
    random_blocks_first_1024_tokens: draw the random blocks among the first
      1024 tokens only (HF "old plan"); used only when drawing here.
    chunk_size: tokens per group of middle query blocks computed together
      (`chunking`: their gathered key blocks and logits never exist for the
      whole length; None: all at once).

  Returns:
    [batch, length, heads, head_dim] in `value.dtype`. Logits and softmax are
    computed in float32.
  """
  checks.check_self_attention("BigBird", query, key, value, mask)
  length = query.shape[1]
  num_blocks = chunking.num_blocks(length, block_size)
  if num_blocks * block_size != length:
    query, key, value, mask = chunking.pad_to_multiple((query, key, value, mask), block_size)
    return bigbird_attention(
        query, key, value, mask, rng=rng, block_size=block_size, num_random_blocks=num_random_blocks,
        random_blocks=random_blocks,
        random_blocks_first_1024_tokens=random_blocks_first_1024_tokens,
        chunk_size=chunk_size)[:, :length]
  batch, _, heads, head_dim = query.shape
  num_middle = max(num_blocks - 2, 0)
  if random_blocks is None:
    if num_random_blocks > 0 and num_middle > 0:
      checks.require_rng(rng, "bigbird_attention", "its random blocks")
    random_blocks = bigbird_random_blocks(
        rng, length, heads, block_size=block_size, num_random_blocks=num_random_blocks,
        first_1024_tokens=random_blocks_first_1024_tokens)
  if random_blocks.ndim != 3 or random_blocks.shape[:2] != (heads, num_middle):
    raise ValueError(f"random_blocks must be [heads, num_blocks - 2, num_random_blocks] = "
                     f"[{heads}, {num_middle}, r], got shape {random_blocks.shape}.")
  if num_blocks <= 2:  # Every block is global.
    return softmax_attention(query, key, value, mask)

  def blocked(x):  # [b, n, h, d] -> [b, h, nb, bs, d]
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(batch, heads, num_blocks, block_size, -1)

  q, k, v = blocked(query), blocked(key), blocked(value)
  mask_blocks = mask.reshape(batch, num_blocks, block_size)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))

  def softmax_weights(logits, key_real):
    return jax.nn.softmax(jnp.where(key_real, logits * scale, _MASK_VALUE), axis=-1)

  # Global query blocks (first and last) against every key.
  global_q = q[:, :, jnp.array([0, num_blocks - 1])]  # [b, h, 2, bs, d]
  keys = k.reshape(batch, heads, length, head_dim)
  values = v.reshape(batch, heads, length, head_dim)
  logits = jnp.einsum("bhgqd,bhkd->bhgqk", global_q, keys, preferred_element_type=jnp.float32)
  weights = softmax_weights(logits, mask[:, None, None, None, :])
  global_out = jnp.einsum("bhgqk,bhkd->bhgqd", weights.astype(value.dtype), values,
                          preferred_element_type=jnp.float32)

  # Middle query blocks against their key-block slots: first, last, the
  # window (left, self, right) and the random blocks.
  random_blocks = random_blocks.astype(jnp.int32)
  random_valid = _random_block_validity(random_blocks, num_blocks)  # [h, m, r]
  random_safe = jnp.where(random_valid, random_blocks, 0)
  heads_index = jnp.arange(heads)[:, None, None]

  # Each middle block's key-block slots: the window (left, self, right), then
  # the random blocks. The window's left block of query block 1 is block 0,
  # its right block of query block nb - 2 is block nb - 1: both are already
  # global slots.
  middle = jnp.arange(1, num_blocks - 1)
  window_index = jnp.stack([middle - 1, middle, middle + 1], axis=-1)  # [m, 3]
  window_valid = jnp.ones((num_middle, 3), bool).at[0, 0].set(False).at[-1, 2].set(False)
  slot_index = jnp.concatenate(
      [jnp.broadcast_to(window_index, (heads, num_middle, 3)), random_safe], axis=-1)
  slot_valid = jnp.concatenate(
      [jnp.broadcast_to(window_valid, (heads, num_middle, 3)), random_valid], axis=-1)
  mask_heads = jnp.broadcast_to(mask_blocks[:, None], (batch, heads, num_blocks, block_size))
  global_real = mask_blocks[:, None, None, jnp.array([0, num_blocks - 1])]  # [b, 1, 1, 2, bs]
  global_k = k[:, :, jnp.array([0, num_blocks - 1])]  # [b, h, 2, bs, d]
  global_v = v[:, :, jnp.array([0, num_blocks - 1])]

  def middle_blocks(middle_q, slot_index, slot_valid):
    """Query blocks [b, c, h, bs, d] with their slots [1, c, h, 3 + r] -> [b, c, h, bs, d]."""
    middle_q = jnp.swapaxes(middle_q, 1, 2)  # [b, h, c, bs, d]
    slot_index, slot_valid = jnp.swapaxes(slot_index[0], 0, 1), jnp.swapaxes(slot_valid[0], 0, 1)
    slot_keys, slot_values = k[:, heads_index, slot_index], v[:, heads_index, slot_index]
    slot_real = mask_heads[:, heads_index, slot_index] & slot_valid[None, ..., None]
    chunk = middle_q.shape[2]
    logits_global = jnp.einsum("bhmqd,bhgkd->bhmqgk", middle_q, global_k,
                               preferred_element_type=jnp.float32)
    logits_slots = jnp.einsum("bhmqd,bhmskd->bhmqsk", middle_q, slot_keys,
                              preferred_element_type=jnp.float32)
    num_slots = 2 + slot_keys.shape[3]
    logits = jnp.concatenate([logits_global, logits_slots], axis=4)  # [b, h, c, bs, 5 + r, bs]
    key_real = jnp.concatenate([jnp.broadcast_to(global_real, (batch, heads, chunk, 2, block_size)),
                                slot_real], axis=3)[:, :, :, None]
    shape = logits.shape
    weights = softmax_weights(logits.reshape(*shape[:4], num_slots * block_size),
                              key_real.reshape(batch, heads, chunk, 1, num_slots * block_size))
    weights = weights.reshape(shape).astype(value.dtype)
    out = (jnp.einsum("bhmqgk,bhgkd->bhmqd", weights[:, :, :, :, :2], global_v,
                      preferred_element_type=jnp.float32)
           + jnp.einsum("bhmqsk,bhmskd->bhmqd", weights[:, :, :, :, 2:], slot_values,
                        preferred_element_type=jnp.float32))
    return jnp.swapaxes(out, 1, 2)

  blocks_per_chunk = None if chunk_size is None else max(1, chunk_size // block_size)
  middle_out = chunking.map_length_chunks(
      middle_blocks, (jnp.swapaxes(q[:, :, 1:-1], 1, 2), jnp.swapaxes(slot_index, 0, 1)[None],
                      jnp.swapaxes(slot_valid, 0, 1)[None]), blocks_per_chunk)
  middle_out = jnp.swapaxes(middle_out, 1, 2)  # [b, h, m, bs, d]

  out = jnp.concatenate([global_out[:, :, :1], middle_out, global_out[:, :, 1:]], axis=2)
  out = out.reshape(batch, heads, length, head_dim)
  return jnp.transpose(out, (0, 2, 1, 3)).astype(value.dtype)


class BigBirdAttention(nn.Module):
  """Module around `bigbird_attention`; random blocks from the 'attention' stream.

  `random_pattern` says when the random blocks are drawn:
    'fixed' (default): once at initialisation from `registry.ATTENTION_RNG`,
      stored in the non-trainable 'constants' collection (variable
      'random_blocks', [heads, num_blocks - 2, r] int32, checkpointed with the
      model), so each layer has its own pattern, fixed for the run (the
      paper's and HF's intent). The number of blocks is then fixed at
      initialisation.
    'per_call': a fresh pattern from `registry.ATTENTION_RNG` on every call.

  Reference quirks (pkuzengqi/Skyformer, a copy of HF BigBird) and how to
  reproduce them:
    * `np.random.seed(seed)` at every forward: one pattern for every step and
      for every layer (heads differ). 'fixed' keeps it for every step but draws
      one per layer; identical layers are not offered.
    * Random blocks only among the first 1024 tokens (blocks 1-15 for
      block_size 64; the HF "old plan" the reference uses for n = 1024, 3072,
      4096, so at n = 4096 random attention never reaches past the first
      quarter): `random_blocks_first_1024_tokens=True`. For other lengths with
      more than 11 blocks (n = 2048 for ListOps) the reference's plan draws
      from the first 704 tokens (and, treating block 10 as global, only blocks
      1-9): not reproduced exactly; the 1024 option is the nearest.
    * HF's old plan can draw, for the last two middle query blocks, random
      blocks inside the window, so those keys count twice in the softmax: not
      reproduced (random blocks never repeat a window, global or random block).
    * Additive -10000 on padded keys and padded query outputs multiplied by
      zero: padded keys get weight 0 here too (the real outputs agree); padded
      query outputs are left as computed (they are unused).
    * Length must be a multiple of block_size (64; an assertion): here other
      lengths are right-padded to the next multiple with masked positions (the
      official LRA JAX BigBird pads every length, even adding a whole block to
      multiples and marking the padding as real tokens: not reproduced).
    * No attention dropout: `dropout_rate` is accepted for the registry
      protocol and ignored.

  Attributes:
    dropout_rate: ignored (see above).
    block_size: tokens per block (reference: 64).
    num_random_blocks: random key blocks per query block and head (reference: 3).
    random_pattern: 'fixed' or 'per_call' (see above).
    random_blocks_first_1024_tokens: the HF "old plan" restriction.
    chunk_size: tokens per group of query blocks (a speed setting: the
      outputs agree to float rounding; None computes all blocks at once).
  """

  dropout_rate: float = 0.0
  block_size: int = 64
  num_random_blocks: int = 3
  random_pattern: str = "fixed"
  random_blocks_first_1024_tokens: bool = False
  chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    if self.random_pattern not in RANDOM_PATTERNS:
      raise ValueError(f"Unknown BigBird random_pattern {self.random_pattern!r}; valid: "
                       f"{', '.join(RANDOM_PATTERNS)}.")
    length, heads = query.shape[1], query.shape[2]

    def draw():
      return bigbird_random_blocks(
          self.make_rng(registry.ATTENTION_RNG), length, heads, block_size=self.block_size,
          num_random_blocks=self.num_random_blocks,
          first_1024_tokens=self.random_blocks_first_1024_tokens)

    if self.random_pattern == "per_call":
      random_blocks = draw()
    else:
      num_middle = max(chunking.num_blocks(length, self.block_size) - 2, 0)
      shape = (heads, num_middle, self.num_random_blocks)
      if self.has_variable(registry.CONSTANTS, "random_blocks"):
        stored = tuple(self.get_variable(registry.CONSTANTS, "random_blocks").shape)
        if stored != shape:
          raise ValueError(
              f"BigBird's fixed random pattern was drawn with shape {stored} = [heads, "
              f"num_blocks - 2, num_random_blocks] (the number of blocks is fixed at "
              f"initialisation) but the inputs (length {length}, block_size {self.block_size}) "
              f"need {shape}: initialise the model at this length, pad or crop the inputs to the "
              f"initialisation length, or use random_pattern='per_call'.")
      random_blocks = self.variable(registry.CONSTANTS, "random_blocks", draw).value
    return bigbird_attention(query, key, value, mask, block_size=self.block_size,
                             num_random_blocks=self.num_random_blocks, random_blocks=random_blocks,
                             chunk_size=self.chunk_size)


# Contract-test inputs have length 24, one sequence with 15 real tokens. For
# informer, in_nb_features=4 gives c = 2, U_part = u = 8: 8 of the 15 or 24
# queries are exact. For bigbird, 6 blocks of 4 tokens, one random block each:
# the padded sequence has a partial block and two all-padding blocks.
registry.register("informer", informer_attention, InformerAttention,
                  small_input_kwargs=dict(in_nb_features=4))
registry.register("bigbird", bigbird_attention, BigBirdAttention,
                  small_input_kwargs=dict(block_size=4, num_random_blocks=1))
