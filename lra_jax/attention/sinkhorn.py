"""Sparse Sinkhorn attention: block-local attention plus attention to a learned, sorted block.

Tay et al., "Sparse Sinkhorn Attention" (ICML 2020). The sequence is cut
into N_B blocks of `block_size` tokens. A sorting network maps a summary of
each key block (the sum, or mean, of its keys) to one row of logits R
[N_B, N_B] (the paper's SortNet; here, as in the official code, one dense
layer shared by the heads); Sinkhorn balancing (alternate row and column
normalisation of exp(R / temperature), done in log space) turns R into a
doubly-stochastic matrix P, a relaxed permutation of the blocks. The sorted
keys and values are psi_S(K)_i = sum_j P_ij K_j (block i of the sorted
sequence is the mixture of key blocks sorted onto it, position by position),
and every query block i attends both to its own block and to sorted block i:
  Y_i = softmax(Q_i K_i^T / sqrt(d)) V_i + softmax(Q_i psi_S(K)_i^T / sqrt(d)) psi_S(V)_i,
the sum of two separately normalised block attentions (local + sorted), as the
official LRA code combines them.

Official LRA JAX version: `sinkhorn_transformer/sinkhorn_attention.py`
(lra_official_jax.md §7.9), block_size 50, max_num_blocks 25, sort activation
'softmax' (§3.4); its quirks are options of `SinkhornAttention`.

Cost: the two block attentions are O(n block_size d) time and memory. Mixing
the key and value blocks by the dense N_B x N_B matrix P costs
O(N_B^2 block_size d) = O(n^2 d / block_size): quadratic in n with a
1 / block_size factor, the price of a soft (differentiable) sort (a hard
permutation would be a gather). With block_size 50 the local term dominates up
to a few thousand tokens; beyond n ~ block_size^2 the sort term does. Memory
stays O(n block_size + N_B^2) (no n x n array).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lra_jax.attention import checks, chunking, registry
from lra_jax.attention.softmax import dropout_rng as _dropout_rng
from lra_jax.attention.softmax import dropout_weights

# Finite rather than -inf (as in softmax.py): an all-masked row stays finite.
_MASK_VALUE = -1e10
SORT_ACTIVATIONS = ("sinkhorn", "softmax")
BLOCK_SUMMARIES = ("sum", "mean")


def _check_choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"Unknown Sinkhorn {name} {value!r}; valid: {', '.join(valid)}.")


def to_blocks(x: jax.Array, block_size: int, *, strided: bool = False) -> jax.Array:
  """[batch, n, ...] with n a multiple of block_size -> [batch, N_B, block_size, ...].

  Contiguous blocks: block i holds positions i * block_size ... (i + 1) *
  block_size - 1. Strided (the official layout, a reshape to [b, block_size,
  N_B, ...]): block i holds positions {i, i + N_B, i + 2 N_B, ...}.
  """
  batch, length = x.shape[:2]
  blocks = length // block_size
  if strided:
    return jnp.swapaxes(x.reshape(batch, block_size, blocks, *x.shape[2:]), 1, 2)
  return x.reshape(batch, blocks, block_size, *x.shape[2:])


def from_blocks(x: jax.Array, *, strided: bool = False) -> jax.Array:
  """Inverse of `to_blocks`: [batch, N_B, block_size, ...] -> [batch, n, ...]."""
  batch, blocks, block_size = x.shape[:3]
  if strided:
    x = jnp.swapaxes(x, 1, 2)
  return x.reshape(batch, blocks * block_size, *x.shape[3:])


def sinkhorn_balance(logits: jax.Array, iterations: int, temperature: float = 1.0) -> jax.Array:
  """Sinkhorn normalisation of exp(logits / temperature), in log space (Tay et al. 2020).

  Each iteration subtracts the row log-sum-exp (rows sum to 1), then the
  column log-sum-exp (columns sum to 1); the result converges to a
  doubly-stochastic matrix (Sinkhorn 1964). After any number of iterations the
  columns sum to 1 exactly and the rows approximately.

  Args:
    logits: [..., n, n] float (rectangular [..., n, m] is normalised the
      same way but cannot become doubly stochastic).
    iterations: number of row-then-column rounds (positive).
    temperature: divides the logits first; lower means closer to a hard
      permutation.

  Returns:
    [..., n, n] float32, exp of the balanced logits.
  """
  checks.check_positive_int("sinkhorn_iterations", iterations)
  if not temperature > 0:
    raise ValueError(f"The Sinkhorn temperature must be positive, got {temperature!r}.")
  log_alpha = logits.astype(jnp.float32) / jnp.float32(temperature)

  def round_(_, log_alpha):
    log_alpha = log_alpha - jax.nn.logsumexp(log_alpha, axis=-1, keepdims=True)
    return log_alpha - jax.nn.logsumexp(log_alpha, axis=-2, keepdims=True)

  return jnp.exp(jax.lax.fori_loop(0, iterations, round_, log_alpha))


def sinkhorn_sort_kernel(rng: jax.Array, head_dim: int, max_num_blocks: int) -> jax.Array:
  """A fresh sorting-network kernel [head_dim, max_num_blocks], xavier-uniform as the official."""
  return nn.initializers.xavier_uniform()(rng, (head_dim, max_num_blocks), jnp.float32)


def sort_logits(key: jax.Array, mask: jax.Array, sort_kernel: jax.Array, *, block_size: int,
                strided_blocks: bool = False, block_summary: str = "sum") -> jax.Array:
  """The sorting network's logits R (the paper's SortNet, in its official form).

  Each key block is summarised by the sum (or mean) of its real keys (padded
  keys are left out, so what they hold cannot change the sort), and the
  summary goes through one linear map shared by the heads (no bias, as the
  official): R[b, h, i, :] = summary(K_i) W.

  Args:
    key: [batch, n, heads, head_dim], n a multiple of block_size.
    mask: [batch, n] bool, True for real tokens; blocked contiguously (see
      `SinkhornAttention`'s strided_blocks for the official misalignment).
    sort_kernel: [head_dim, width] W; width >= N_B.
    block_size: tokens per block.
    strided_blocks: the official strided block layout of the keys.
    block_summary: 'sum' (paper, official) or 'mean' over the real keys.

  Returns:
    [batch, heads, N_B, width] float32.
  """
  _check_choice("block_summary", block_summary, BLOCK_SUMMARIES)
  blocked_key = to_blocks(key.astype(jnp.float32), block_size, strided=strided_blocks)
  real = to_blocks(mask, block_size).astype(jnp.float32)  # [b, N_B, bs]
  summary = jnp.einsum("bnshd,bns->bhnd", blocked_key, real, preferred_element_type=jnp.float32)
  if block_summary == "mean":
    summary = summary / jnp.maximum(jnp.sum(real, axis=-1), 1.0)[:, None, :, None]
  return jnp.einsum("bhnd,dm->bhnm", summary, sort_kernel.astype(jnp.float32),
                    preferred_element_type=jnp.float32)


def sinkhorn_sort_matrix(key: jax.Array, mask: jax.Array, sort_kernel: jax.Array, *,
                         block_size: int = 50, sinkhorn_iterations: int = 5,
                         temperature: float = 0.75, sort_activation: str = "sinkhorn",
                         block_summary: str = "sum", strided_blocks: bool = False,
                         allow_truncated: bool = False) -> jax.Array:
  """The relaxed block permutation P that `sinkhorn_attention` uses.

  Sequences whose length is not a multiple of block_size are right-padded
  (masked) first, exactly as in `sinkhorn_attention`.

  Args:
    key: [batch, n, heads, head_dim].
    mask: [batch, n] bool, True for real tokens.
    sort_kernel: [head_dim, width] sorting-network kernel, width >= N_B; its
      first N_B output columns are used.
    block_size: tokens per block.
    sinkhorn_iterations: Sinkhorn rounds (sort_activation 'sinkhorn').
    temperature: Sinkhorn temperature (sort_activation 'sinkhorn').
    sort_activation: 'sinkhorn' (paper: doubly stochastic) or 'softmax' (the
      official default: a row softmax, no temperature, rows sum to 1 only).
    block_summary: see `sort_logits`.
    strided_blocks: see `sort_logits`.
    allow_truncated: accept width < N_B and return only `width` columns (the
      official code's silent behaviour, harmless under its einsum bug only).

  Returns:
    [batch, heads, N_B, N_B] float32 (N_B x width when truncated); row i
    says how much of each key block is sorted onto block i.

  Raises:
    ValueError: width < N_B (unless allow_truncated) or bad hyper-parameters.
  """
  _check_choice("sort_activation", sort_activation, SORT_ACTIVATIONS)
  length = key.shape[1]
  blocks = chunking.num_blocks(length, block_size)
  width = sort_kernel.shape[-1]
  if width < blocks and not allow_truncated:
    raise ValueError(
        f"Sinkhorn attention needs a sorting network with at least N_B = ceil({length} / "
        f"{block_size}) = {blocks} outputs, but it has max_num_blocks = {width}. Set max_num_blocks "
        f">= {blocks} (or None: the number of blocks at the initialisation length), or block_size "
        f">= {-(-length // width)}.")
  key, mask = chunking.pad_to_multiple((key, mask), block_size)
  logits = sort_logits(key, mask, sort_kernel, block_size=block_size,
                       strided_blocks=strided_blocks, block_summary=block_summary)
  logits = logits[..., :blocks]
  if sort_activation == "softmax":
    return jax.nn.softmax(logits, axis=-1)
  return sinkhorn_balance(logits, sinkhorn_iterations, temperature)


def _block_attention(query, key, value, valid, dropout_rate, dropout_key):
  """softmax(q k^T / sqrt(d) masked by `valid`) v within blocks: [b, h, N_B, bs, d]."""
  logits = jnp.einsum("bhnsd,bhntd->bhnst", query, key, preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(query.shape[-1]))
  weights = jax.nn.softmax(jnp.where(valid, logits, _MASK_VALUE), axis=-1)
  weights = dropout_weights(weights, dropout_rate, dropout_key)
  return jnp.einsum("bhnst,bhntd->bhnsd", weights.astype(value.dtype), value,
                    preferred_element_type=jnp.float32)


def sinkhorn_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                       rng: jax.Array | None = None, sort_kernel: jax.Array | None = None,
                       permutation: jax.Array | None = None, block_size: int = 50,
                       max_num_blocks: int | None = None, sinkhorn_iterations: int = 5,
                       temperature: float = 0.75, sort_activation: str = "sinkhorn",
                       block_summary: str = "sum", strided_blocks: bool = False,
                       sorted_sum_of_all_blocks: bool = False, dropout_rate: float = 0.0,
                       dropout_rng: jax.Array | None = None) -> jax.Array:
  """Sparse Sinkhorn attention (Tay et al. 2020): local + sorted block attention.

  Lengths that are not a multiple of block_size are right-padded to the next
  multiple with masked positions and the output is cropped back (the official
  code requires divisibility). Masking (contiguous blocks, the default): in
  the local branch padded keys get zero weight; in the sorted branch padded
  keys and values are zeroed before the mixing by P, and a sorted position
  counts as a key only if some real key is mixed into it
  (sum_j P_ij M_j > 0), so with a hard permutation the sorted branch sees
  exactly the real keys of block pi(i). A query whose sorted block holds no
  real key gets 0 from that branch. Outputs of padded queries are unused.
  Real outputs do not depend on what padded positions hold, but do depend on
  the padded length (it sets N_B).

  Args:
    query: [batch, n, heads, head_dim].
    key: [batch, n, heads, head_dim].
    value: [batch, n, heads, head_dim].
    mask: [batch, n] bool, True for real tokens (self-attention: one mask).
    rng: PRNG key of a fresh sorting-network kernel
      (`sinkhorn_sort_kernel(rng, head_dim, max_num_blocks or N_B)`), the only
      random draw besides dropout; used only when neither `sort_kernel` nor
      `permutation` is given (the module passes its learned kernel).
    sort_kernel: [head_dim, width] sorting-network kernel (width >= N_B).
    permutation: [batch or 1, heads or 1, N_B, N_B] block-sorting matrix P to
      use instead of the sorting network (e.g. a hard permutation in tests).
    block_size: tokens per block (official: 50; 64 for the image task).
    max_num_blocks: width of a drawn sorting kernel; None means N_B.
    sinkhorn_iterations: Sinkhorn rounds.
    temperature: Sinkhorn temperature.
    sort_activation: 'sinkhorn' or 'softmax' (official), see
      `sinkhorn_sort_matrix`.
    block_summary: 'sum' or 'mean' of each block's real keys.
    strided_blocks: official quirk, see `SinkhornAttention`.
    sorted_sum_of_all_blocks: official quirk, see `SinkhornAttention`.
    dropout_rate: dropout on both branches' attention weights.
    dropout_rng: PRNG key of the dropout masks (split in two, one per
      branch); None means no dropout.

  Returns:
    [batch, n, heads, head_dim] in `value.dtype`; logits, softmaxes and the
    Sinkhorn iterations in float32.

  Raises:
    ValueError: bad hyper-parameters, a missing kernel and key, or a sorting
      network narrower than N_B.
  """
  if not query.shape == key.shape == value.shape or mask.shape != query.shape[:2]:
    raise ValueError(
        f"Sinkhorn attention is self-attention: query, key and value must share one shape "
        f"[batch, length, heads, head_dim] and mask be [batch, length]; got query {query.shape}, "
        f"key {key.shape}, value {value.shape}, mask {mask.shape}.")
  _check_choice("sort_activation", sort_activation, SORT_ACTIVATIONS)
  _check_choice("block_summary", block_summary, BLOCK_SUMMARIES)
  batch, length, heads, head_dim = query.shape
  blocks = chunking.num_blocks(length, block_size)
  if blocks * block_size != length:
    query, key, value, mask = chunking.pad_to_multiple((query, key, value, mask), block_size)
    return sinkhorn_attention(
        query, key, value, mask, rng=rng, sort_kernel=sort_kernel, permutation=permutation,
        block_size=block_size, max_num_blocks=max_num_blocks,
        sinkhorn_iterations=sinkhorn_iterations, temperature=temperature,
        sort_activation=sort_activation, block_summary=block_summary,
        strided_blocks=strided_blocks, sorted_sum_of_all_blocks=sorted_sum_of_all_blocks,
        dropout_rate=dropout_rate, dropout_rng=dropout_rng)[:, :length]

  if permutation is None:
    if sort_kernel is None:
      if rng is None:
        raise ValueError("sinkhorn_attention needs a sorting-network kernel, a permutation or a "
                         "PRNG key to draw a kernel: pass sort_kernel=[head_dim, max_num_blocks], "
                         "permutation=[batch, heads, N_B, N_B] or rng=jax.random.key(...).")
      if max_num_blocks is not None:
        checks.check_positive_int("max_num_blocks", max_num_blocks)
      sort_kernel = sinkhorn_sort_kernel(rng, head_dim, max_num_blocks or blocks)
    if sort_kernel.ndim != 2 or sort_kernel.shape[0] != head_dim:
      raise ValueError(f"The Sinkhorn sort kernel must be [head_dim, max_num_blocks] = "
                       f"[{head_dim}, width], got shape {sort_kernel.shape}.")
    permutation = sinkhorn_sort_matrix(
        key, mask, sort_kernel, block_size=block_size, sinkhorn_iterations=sinkhorn_iterations,
        temperature=temperature, sort_activation=sort_activation, block_summary=block_summary,
        strided_blocks=strided_blocks, allow_truncated=sorted_sum_of_all_blocks)
  elif permutation.ndim != 4 or permutation.shape[-2] != blocks or (
      permutation.shape[-1] != blocks and not sorted_sum_of_all_blocks):
    raise ValueError(f"The block permutation must be [batch, heads, N_B, N_B] with N_B = {blocks}, "
                     f"got shape {permutation.shape}.")
  permutation = permutation.astype(jnp.float32)

  def blocked(x):  # [b, n, h, d] -> [b, h, N_B, bs, d]
    return jnp.moveaxis(to_blocks(x, block_size, strided=strided_blocks), 3, 1)

  q = blocked(query.astype(jnp.float32))
  k = blocked(key.astype(jnp.float32))
  v = blocked(value)
  # The mask is always blocked contiguously: with strided data blocks this is
  # the official misalignment (see SinkhornAttention).
  real = to_blocks(mask, block_size)  # [b, N_B, bs]
  query_real = real[:, None, :, :, None]
  local_valid = query_real & real[:, None, :, None, :]

  if sorted_sum_of_all_blocks:
    # The official einsum sums over the key-block axis and the permutation's
    # column axis separately: every block gets (row sum of P) x (sum of all
    # key blocks), padded keys included; its mask for query slot s and key
    # slot t is "some block has both s and t real".
    row_sums = jnp.sum(permutation, axis=-1)[..., None, None]  # [b, h, N_B, 1, 1]
    sorted_k = row_sums * jnp.sum(k, axis=2, keepdims=True)
    sorted_v = (row_sums * jnp.sum(v.astype(jnp.float32), axis=2, keepdims=True)).astype(v.dtype)
    sorted_valid = jnp.any(real[:, :, :, None] & real[:, :, None, :], axis=1)[:, None, None]
  else:
    real_f = real.astype(jnp.float32)
    k_real = jnp.where(real[:, None, :, :, None], k, 0.0)
    v_real = jnp.where(real[:, None, :, :, None], v, jnp.zeros((), v.dtype))
    sorted_k = jnp.einsum("bhij,bhjsd->bhisd", permutation, k_real,
                          preferred_element_type=jnp.float32)
    sorted_v = jnp.einsum("bhij,bhjsd->bhisd", permutation.astype(v.dtype), v_real,
                          preferred_element_type=jnp.float32).astype(v.dtype)
    sorted_real = jnp.einsum("bhij,bjs->bhis", permutation, real_f) > 0.0
    sorted_valid = query_real & sorted_real[:, :, :, None, :]

  local_key, sorted_key = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
  out = (_block_attention(q, k, v, local_valid, dropout_rate, local_key)
         + _block_attention(q, sorted_k, sorted_v, sorted_valid, dropout_rate, sorted_key))
  out = from_blocks(jnp.moveaxis(out, 1, 3), strided=strided_blocks)
  return out.astype(value.dtype)


class SinkhornAttention(nn.Module):
  """Module around `sinkhorn_attention` with the sorting network as a parameter.

  The learned parameter 'sort_kernel' [head_dim, max_num_blocks] (xavier
  uniform, no bias, shared by the heads: the official SortNet) maps each key
  block's summary to its row of sort logits. With max_num_blocks None its
  width is the number of blocks at the initialisation length, so calls with
  more blocks are an error (as any N_B x N_B sort network must be).

  Hyper-parameter sources: block_size 50 (64 in the official image configs)
  and sort_activation 'softmax' are the official LRA values
  (lra_official_jax.md §3.3-3.4). The official max_num_blocks is 25, which
  with correct sorting caps the length at 25 x 50 = 1250 tokens (ListOps's
  2000 tokens are 40 blocks, Retrieval's 4000 are 80: the official code runs
  them only because its sort is degenerate); hence the default None.
  sinkhorn_iterations 5 and temperature 0.75 are the defaults of the public
  PyTorch port (lucidrains/sinkhorn-transformer); the official code's unused
  'sinkhorn' mode runs 1 iteration at temperature 1.

  Reference quirks (official LRA JAX code, §7.9) and how to reproduce them:
    * Strided blocks: the official reshape to [b, block_size, N_B, h, d] puts
      positions {i, i + N_B, ...} in block i, while the padding mask is
      blocked contiguously, so mask and data are misaligned (both for queries
      and keys): `strided_blocks=True` (same layout, same misaligned mask;
      with all-real sequences it is a correct dilated pattern).
    * Einsum bug: the sorted keys and values are the (row sum of P) times the
      sum of all key (value) blocks, padded ones included, whatever the sort
      network says, with a mask that allows key slot t to query slot s when
      any block has both real: `sorted_sum_of_all_blocks=True`. A sort
      network narrower than N_B is then accepted, as in the official code.
    * Row softmax instead of Sinkhorn balancing (the official default
      sort_activation): `sort_activation='softmax'` (no temperature).
    * Length must divide by block_size (a reshape error otherwise): here any
      length is right-padded to a multiple with masked positions.
  Differences not reproduced: the official 'sinkhorn' mode clips the balanced
  log-matrix to [-1, 1] before exp (never used by the official configs);
  both official branches draw their dropout mask from the same key (here
  independent keys); the official applies attention dropout with its
  attention_dropout_rate, here `dropout_rate` (the same config field).

  Attributes:
    dropout_rate: attention-weight dropout (both branches), active when not
      deterministic.
    block_size: tokens per block (official: 50).
    max_num_blocks: sort network width; None means the number of blocks at
      the initialisation length (official: 25, see above).
    sinkhorn_iterations: Sinkhorn rounds.
    temperature: Sinkhorn temperature.
    sort_activation: 'sinkhorn' (paper) or 'softmax' (official).
    block_summary: 'sum' (paper, official) or 'mean' of each block's keys.
    strided_blocks: the official strided layout with a misaligned mask.
    sorted_sum_of_all_blocks: the official einsum bug.
  """

  dropout_rate: float = 0.0
  block_size: int = 50
  max_num_blocks: int | None = None
  sinkhorn_iterations: int = 5
  temperature: float = 0.75
  sort_activation: str = "sinkhorn"
  block_summary: str = "sum"
  strided_blocks: bool = False
  sorted_sum_of_all_blocks: bool = False

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    _check_choice("sort_activation", self.sort_activation, SORT_ACTIVATIONS)
    _check_choice("block_summary", self.block_summary, BLOCK_SUMMARIES)
    head_dim = query.shape[-1]
    blocks = chunking.num_blocks(query.shape[1], self.block_size)
    if self.max_num_blocks is not None:
      checks.check_positive_int("max_num_blocks", self.max_num_blocks)
      width = self.max_num_blocks
    elif self.has_variable("params", "sort_kernel"):
      width = self.get_variable("params", "sort_kernel").shape[1]
    else:
      width = blocks
    if self.has_variable("params", "sort_kernel"):
      stored = tuple(self.get_variable("params", "sort_kernel").shape)
      if stored != (head_dim, width):
        raise ValueError(f"Sinkhorn's sort kernel has shape {stored} = [head_dim, max_num_blocks] "
                         f"but this module needs {(head_dim, width)}: re-initialise the model.")
    if width < blocks and not self.sorted_sum_of_all_blocks:
      raise ValueError(
          f"The inputs have N_B = ceil({query.shape[1]} / {self.block_size}) = {blocks} blocks but "
          f"Sinkhorn's sort network has max_num_blocks = {width} outputs"
          + (" (set by the initialisation length)" if self.max_num_blocks is None else "")
          + f": set max_num_blocks >= {blocks}, a block_size >= "
          f"{-(-query.shape[1] // width)}, or initialise the model at this length.")
    sort_kernel = self.param("sort_kernel", nn.initializers.xavier_uniform(), (head_dim, width),
                             jnp.float32)
    return sinkhorn_attention(
        query, key, value, mask, sort_kernel=sort_kernel, block_size=self.block_size,
        sinkhorn_iterations=self.sinkhorn_iterations, temperature=self.temperature,
        sort_activation=self.sort_activation, block_summary=self.block_summary,
        strided_blocks=self.strided_blocks, sorted_sum_of_all_blocks=self.sorted_sum_of_all_blocks,
        dropout_rate=self.dropout_rate,
        dropout_rng=_dropout_rng(self, self.dropout_rate, deterministic))


# Contract-test inputs have length 24: three blocks of 8 (the padded sequence's
# last block is all padding).
registry.register("sinkhorn", sinkhorn_attention, SinkhornAttention,
                  small_input_kwargs=dict(block_size=8))
