"""Spectraformer's ten random weight matrices W = [omega_1; ...; omega_m] of random-feature attention.

Spectraformer (Nguyen et al. 2024) combines a component function phi (trigrf,
posrf, oprf, gerf, saderf) with a weight matrix W in R^{m x d}: every
estimator E[phi(x) . phi(y)] = K(x, y) of the framework needs rows omega_f
that are marginally N(0, I_d); the constructions below differ in how the rows
depend on one another (independent, orthogonal blocks, structured Hadamard or
circulant products, quasi-Monte-Carlo point sets, quadrature atoms, moment
matching), which changes the variance of the estimator, not its target. This
module is a library (it registers no attention method): the attention module
of the framework draws W from here and combines it with its feature maps.

  draw_weight_matrix(name, key, m, d)  -> [m, d] float32, a pure function of
      `key`, jittable (sizes static), for every name but fastfood_learnable;
  fastfood_learnable: init_fastfood_parameters (trainable S, G, B),
      draw_fastfood_permutation (its fixed part) and fastfood_weight_matrix
      (the dense W, differentiable with respect to S, G and B).

Constructions (d = dim, m = num_features, n = next power of two >= d, blocks
of n rows stacked ceil(m / n) times and cut to m rows; "chi_n radii" means row
norms drawn as the norms of independent N(0, I_n) vectors):
  gaus  i.i.d. N(0, 1) entries.
  orf   Orthogonal random features (Yu et al. 2016): Haar-orthogonal d x d
        blocks with chi_d radii, `random_features.gaussian_orthogonal_random_matrix`.
  scrf  Signed circulant random features (Feng et al. 2015): per d x d block a
        circulant whose rows are the cyclic shifts of one Gaussian vector w,
        each row multiplied by a random sign; the rows are then given chi_d
        radii (the reference's computed but unapplied "chi multiplier"), since
        equal norms across a block (all ||w||) correlate the features: with
        them the estimator's error is that of gaus, without them ~1.6x higher
        (trig estimator, d = 8..32).
  sorf  Structured orthogonal random features (Yu et al. 2016): rows of
        D3 H D2 H D1 H (H the orthonormal Walsh-Hadamard matrix, D_i
        Rademacher diagonals) with chi_n radii, first d columns. The paper's
        SORF gives every row the norm sqrt(d); fixed norms bias the kernel
        estimators (Gaussian kernel at d = 8, ||x - y|| = 1.5: 0.26..0.27
        instead of 0.325), chi radii restore the radial law as orf's do. What
        remains is the bias of the Hadamard directions, which are not uniform:
        visible at d = 4 (up to 0.13 on the Gaussian kernel), within the
        Monte-Carlo noise (~0.01) from d = 8.
  rom   Random orthogonal matrices (ROM, Choromanski, Rowland, Weller 2017),
        real: diag(s) H D2 H D1 H with a random positive diagonal s on the left
        (chi_n radii, the law that makes rows Gaussian) where the reference puts
        a complex one (see quirks): the same marginal law as sorf, other draws.
  sgq   Gauss-Hermite quadrature sampled per entry: every entry is one of the 8
        probabilists' Gauss-Hermite nodes with probability its normalised
        weight; the discrete law has the moments of N(0, 1) up to order 15.
  qmc   Randomised quasi-Monte Carlo: the first m points of the d-dimensional
        Sobol' sequence (scipy.stats.qmc, a trace-time constant) with a random
        digital shift (XOR of every coordinate's 32-bit expansion with one
        uniform word per dimension, from the key; Dick & Pillichshammer 2010,
        Digital Nets and Sequences), mapped through the inverse normal CDF.
        Each point is exactly
        uniform on the 2^-23 grid, the point set keeps its net structure.
        Rows are points, columns dimensions.
  mm    Moment matching: Gaussian rows, centred by their mean over the m rows
        and whitened by the Cholesky factor of their sample covariance
        (+ 1e-6 I, as the reference), so the sample mean is 0 and the sample
        covariance I. Needs m > d.
  fastfood_fixed  Fastfood (Le, Sarlos, Smola 2013):
        V = sqrt(n) S H G P H B per n x n block (H orthonormal, so this is the
        paper's (1 / sqrt(n)) S H G P H B with the +-1 Hadamard matrix), B
        Rademacher, G Gaussian, P a random permutation, S = s / ||G|| with s
        chi_n radii: every row is exactly N(0, I_n) before keeping d columns.
        Not a variance reducer: the rows of a block share G (and ||G||), and
        the trig estimator's error is ~1.4x that of gaus (d = 8..32).
  fastfood_learnable  the same operator with S, G, B trainable (P fixed),
        initialised by default as a fastfood_fixed draw.

Dense matrices, not per-token transforms: the structured matrices are
materialised once by applying the fast Walsh-Hadamard transform
(`fast_walsh_hadamard_transform`, O(n log n) per row) to the identity; at
head_dim 32 a dense [m, 32] projection (one matmul on the MXU / BLAS) is faster
than log2(32) = 5 butterfly passes per token and per feature block.

Randomness: everything is drawn from the `key` argument (split per component
as each docstring says), so the caller decides the redraw policy (§1.6 of
spectraformer_schoenbat.md: the reference draws W once at construction and
never redraws it; Fastfood's fixed parts there are plain attributes, not even
checkpointed).

Reference quirks (spectraformer_schoenbat.md §3, `weight_matrices_approx.py`,
`weight_matrices_learner.py`), each reproduced by `reference_construction=True`
where a weight matrix can express it:
  * scrf: `round(d / m)` circulant m x m blocks side by side in the columns,
    without signs or radii; for m >= 2d this rounds to 0 blocks and W is all
    zeros (m = 128, d = 32 in every config). Reproduced (columns past d cut,
    missing columns zero).
  * sorf: n = max(d, m) (asserted a power of two; padded here to the next
    one), M = sqrt(d) D0 H D1 H D2 H with the UNNORMALISED +-1 Hadamard
    matrix, m rows chosen without replacement, first d columns: rows have norm
    ~ d n = 4096 (8192 before the cut) instead of ~ sqrt(d). Reproduced.
  * rom: as sorf with the first diagonal complex, u = a + ib, a, b ~ U(0, pi)
    (not unit modulus); the component functions keep Re(x W^T), so the
    effective matrix Re(M) = sqrt(d) diag(a) H D1 H D2 H: rows of norm
    ~ a d n. Reproduced as that real matrix; the reference's ||omega||^2 for
    the GERF A-term uses the complex magnitude |u|, which a real matrix
    cannot carry.
  * sgq: chaospy's sparse order-1 rule on N(0, 1) pushed through a
    Gauss-Hermite conversion meant for the weight exp(-x^2): nodes
    (-11.625, 0, 11.625), weights (5.3e-16, 1, 5.3e-16) / sqrt(pi), sampled by
    cumulative bins with uniforms past the total (0.5642) going to bin 0: every
    entry is -11.625 with probability ~0.436, else 0 (chaospy 4.3.21).
    Reproduced with those constants.
  * qmc: Sobol' in next_pow2(m) dimensions, d points, transposed, so row f
    is coordinate f of the first d points (each row a stratified 1-D sample,
    norm ~ sqrt(d) nearly fixed, rows not Gaussian), and next_pow2(m) rows
    returned. The layout is reproduced (rows cut to m; the randomisation is
    the digital shift above, not torch's scrambling);
    `reference_num_features` gives the reference's row count.
  * fastfood (both): the operator is applied to inputs scaled by d^(-1/4) a
    second time, i.e. W is scaled by d^(-1/4): reproduced. The reference
    ignores nb_features and returns d features plus a constant column 1.0
    ("smoothing"): pass num_features=dim (`reference_num_features`); the
    constant column is a feature, not a row of W, and belongs to the attention
    module. The learnable reference initialises S, G, B ~ N(0, 1/d) each, so
    rows start with norm ~0.02 and the features almost constant:
    `init_fastfood_parameters(..., reference_construction=True)`.
  * orf: the reference's QR lacks the sign correction (directions not
    uniform); not reproduced (see `gaussian_orthogonal_random_matrix`).
    gaus and mm: the reference's constructions are the ones here.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import qmc as scipy_qmc

from lra_jax.attention.random_features import gaussian_orthogonal_random_matrix

WEIGHT_MATRICES: tuple[str, ...] = ("gaus", "orf", "scrf", "sorf", "rom", "sgq", "qmc", "mm",
                                    "fastfood_fixed", "fastfood_learnable")
LEARNABLE_WEIGHT_MATRICES: tuple[str, ...] = ("fastfood_learnable",)

# Nodes of the Gauss-Hermite rule sampled by sgq (the reference's unused
# `gq_matrix` uses 8 as well).
SGQ_NUM_NODES = 8
# The reference's degenerate sgq rule (§3: chaospy 4.3.21, sparse order 1).
REFERENCE_SGQ_NODES = (-11.625, 0.0, 11.625)
REFERENCE_SGQ_WEIGHTS = tuple(w / math.sqrt(math.pi) for w in (5.3e-16, 1.0, 5.3e-16))
# Ridge added to mm's sample covariance before the Cholesky factorisation (reference value).
MOMENT_MATCHING_RIDGE = 1e-6
# Bits of a shifted Sobol' coordinate kept in float32 (see `_shifted_sobol_uniforms`).
_SOBOL_FLOAT_BITS = 23


def _next_power_of_two(n: int) -> int:
  return 1 << (n - 1).bit_length()


def _check_sizes(**sizes: int) -> None:
  for name, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
      raise ValueError(f"{name} must be a positive integer, got {size!r}.")


def _check_name(name: str) -> None:
  if name not in WEIGHT_MATRICES:
    raise ValueError(f"Unknown weight matrix {name!r}. Valid names: {', '.join(WEIGHT_MATRICES)}.")


def reference_num_features(name: str, num_features: int, dim: int) -> int:
  """Rows the reference's construction of `name` returns for nb_features = num_features (§3).

  qmc: next_pow2(num_features) (its Sobol' dimension); fastfood_fixed and
  fastfood_learnable: dim (nb_features ignored; the reference's extra constant
  feature is not a row); every other name: num_features.
  """
  _check_name(name)
  _check_sizes(num_features=num_features, dim=dim)
  if name == "qmc":
    return _next_power_of_two(num_features)
  if name.startswith("fastfood"):
    return dim
  return num_features


def fast_walsh_hadamard_transform(x: jax.Array, *, normalized: bool = True) -> jax.Array:
  """Walsh-Hadamard transform along the last axis, O(n log n) butterflies.

  Returns x H (equivalently H x per row, H symmetric) with H the Sylvester
  Hadamard matrix of order n = x.shape[-1] (`scipy.linalg.hadamard(n)`
  ordering), divided by sqrt(n) when `normalized` (then H is orthogonal).
  Each of the log2(n) stages reshapes the axis to [n / 2h, 2, h] and replaces
  the pairs (a, b) at distance h by (a + b, a - b); differentiable, jittable.

  Args:
    x: [..., n] with n a power of two.
    normalized: divide by sqrt(n).

  Returns:
    [..., n], the dtype of x.

  Raises:
    ValueError: n is not a power of two.
  """
  n = x.shape[-1]
  if n <= 0 or n & (n - 1):
    raise ValueError(f"The Walsh-Hadamard transform needs a power-of-two length, got {n}; "
                     f"zero-pad the last axis to {_next_power_of_two(max(n, 1))}.")
  lead = x.shape[:-1]
  h = 1
  while h < n:
    pairs = x.reshape(lead + (n // (2 * h), 2, h))
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(lead + (n,))
    h *= 2
  return x * jnp.asarray(n ** -0.5, x.dtype) if normalized else x


def _hadamard_left(a: jax.Array) -> jax.Array:
  """H a for a [..., n, k] (the transform along the second-to-last axis)."""
  return jnp.swapaxes(fast_walsh_hadamard_transform(jnp.swapaxes(a, -1, -2)), -1, -2)


def _hadamard_chain(diagonals: jax.Array, dim: int) -> jax.Array:
  """The first `dim` columns of H diag(d_1) H diag(d_2) ... H diag(d_k) H, orthonormal H.

  Args:
    diagonals: [k, blocks, n].
    dim: columns kept (<= n).

  Returns:
    [blocks, n, dim] float32; with dim = n every block is orthogonal.
  """
  n = diagonals.shape[-1]
  columns = fast_walsh_hadamard_transform(jnp.eye(n, dtype=jnp.float32)[:dim]).T  # H[:, :dim]
  a = jnp.broadcast_to(columns, diagonals.shape[1:] + (dim,))
  for diagonal in diagonals[::-1]:
    a = _hadamard_left(diagonal[..., None] * a)
  return a


def _rademacher(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.rademacher(key, shape, dtype=jnp.float32)


def _chi_radii(key: jax.Array, shape: tuple[int, ...], degrees: int) -> jax.Array:
  """Norms of independent N(0, I_degrees) vectors: chi(degrees) samples of `shape`."""
  return jnp.linalg.norm(jax.random.normal(key, shape + (degrees,), jnp.float32), axis=-1)


def _gaus(key, num_features, dim):
  return jax.random.normal(key, (num_features, dim), jnp.float32)


def _scrf(key, num_features, dim):
  """Signed circulant blocks with chi radii: row i of block b is
  sign_{b,i} s_{b,i} roll(w_b, i) / ||w_b||, w_b ~ N(0, I_d), s chi_d."""
  vector_key, sign_key, radius_key = jax.random.split(key, 3)
  num_blocks = -(-num_features // dim)
  vectors = jax.random.normal(vector_key, (num_blocks, dim), jnp.float32)
  # Row i, column j holds w[(j - i) mod d]: row i is w shifted right by i.
  shifts = (np.arange(dim)[None, :] - np.arange(dim)[:, None]) % dim
  directions = vectors[:, shifts] / jnp.linalg.norm(vectors, axis=-1)[:, None, None]
  radii = _rademacher(sign_key, (num_blocks, dim)) * _chi_radii(radius_key, (num_blocks, dim), dim)
  return (radii[..., None] * directions).reshape(num_blocks * dim, dim)[:num_features]


def _reference_scrf(key, num_features, dim):
  """round(d / m) circulants with first column w ~ N(0, I_m), side by side in the columns."""
  num_blocks = round(dim / num_features)  # Python rounds half to even: 0 whenever m >= 2d.
  matrix = jnp.zeros((num_features, dim), jnp.float32)
  if num_blocks == 0:
    return matrix
  vectors = jax.random.normal(key, (num_blocks, num_features), jnp.float32)
  # (1/m) F^H diag(F w) F is the circulant C[r, c] = w[(r - c) mod m].
  shifts = (np.arange(num_features)[:, None] - np.arange(num_features)[None, :]) % num_features
  circulants = vectors[:, shifts]  # [blocks, m, m]
  wide = jnp.concatenate(list(circulants), axis=1)[:, :dim]
  return matrix.at[:, :wide.shape[1]].set(wide)


def _structured_blocks(num_features, dim):
  n = _next_power_of_two(dim)
  return n, -(-num_features // n)


def _sorf(key, num_features, dim):
  """chi_n radii times the rows of D3 H D2 H D1 H (orthonormal H), first d columns."""
  diagonal_key, radius_key = jax.random.split(key)
  n, num_blocks = _structured_blocks(num_features, dim)
  diagonals = _rademacher(diagonal_key, (3, num_blocks, n))
  rows = diagonals[0][..., None] * _hadamard_chain(diagonals[1:], dim)
  radii = _chi_radii(radius_key, (num_blocks, n), n)
  return (radii[..., None] * rows).reshape(num_blocks * n, dim)[:num_features]


def _rom(key, num_features, dim):
  """diag(chi_n radii) H D2 H D1 H (orthonormal H), first d columns."""
  diagonal_key, radius_key = jax.random.split(key)
  n, num_blocks = _structured_blocks(num_features, dim)
  rows = _hadamard_chain(_rademacher(diagonal_key, (2, num_blocks, n)), dim)
  radii = _chi_radii(radius_key, (num_blocks, n), n)
  return (radii[..., None] * rows).reshape(num_blocks * n, dim)[:num_features]


def _reference_sorf_or_rom(key, num_features, dim, complex_first_diagonal):
  """sqrt(d) (D0 H)(D1 H)(D2 H) with the +-1 Hadamard matrix, m random rows, first d columns.

  With `complex_first_diagonal` (rom) D0 is replaced by the real part a ~
  U(0, pi) of the reference's complex diagonal a + ib.
  """
  diagonal_key, first_key, row_key = jax.random.split(key, 3)
  n = _next_power_of_two(max(dim, num_features))
  diagonals = _rademacher(diagonal_key, (2, 1, n))
  if complex_first_diagonal:
    first = jax.random.uniform(first_key, (n,), jnp.float32, 0.0, jnp.pi)
  else:
    first = _rademacher(first_key, (n,))
  # The unnormalised Hadamard matrix is sqrt(n) times the orthonormal one, three times.
  scale = math.sqrt(dim) * n ** 1.5
  full = scale * first[:, None] * _hadamard_chain(diagonals, dim)[0]
  rows = jax.random.permutation(row_key, n)[:num_features]
  return full[rows]


def _sgq(key, num_features, dim):
  nodes, weights = np.polynomial.hermite_e.hermegauss(SGQ_NUM_NODES)
  log_probabilities = np.log(weights / weights.sum()).astype(np.float32)
  atoms = jax.random.categorical(key, log_probabilities, shape=(num_features, dim))
  return jnp.asarray(nodes, jnp.float32)[atoms]


def _reference_sgq(key, num_features, dim):
  """The reference's bin lookup: u in [c_{i-1}, c_i) -> node i, u >= total -> node 0."""
  bounds = jnp.asarray(np.cumsum(REFERENCE_SGQ_WEIGHTS), jnp.float32)
  uniforms = jax.random.uniform(key, (num_features, dim), jnp.float32)
  atoms = jnp.searchsorted(bounds, uniforms, side="right")
  atoms = jnp.where(atoms == len(REFERENCE_SGQ_NODES), 0, atoms)
  return jnp.asarray(REFERENCE_SGQ_NODES, jnp.float32)[atoms]


@functools.lru_cache(maxsize=None)
def _sobol_words(num_points: int, dimension: int) -> np.ndarray:
  """First `num_points` unscrambled Sobol' points in `dimension` dims as 32-bit words."""
  engine = scipy_qmc.Sobol(dimension, scramble=False, bits=32)
  with warnings.catch_warnings():
    # Balance warning for non-powers of two: the first m points are still a
    # low-discrepancy set, the shift keeps them exactly uniform marginally.
    warnings.simplefilter("ignore", UserWarning)
    points = engine.random(num_points)
  words = np.round(points * 2.0 ** 32).astype(np.uint32)
  words.flags.writeable = False
  return words


def _shifted_sobol_uniforms(key, num_points, dimension):
  """[num_points, dimension] digitally shifted Sobol' points in (0, 1), float32.

  y = x XOR s with one uniform 32-bit word s per dimension, so each point is
  uniform on the 32-bit grid; the top 23 bits plus half a cell give the
  midpoints of the 2^23-cell grid, all in [2^-24, 1 - 2^-24], exactly
  representable in float32, so the inverse CDF stays finite.
  """
  words = jnp.asarray(_sobol_words(num_points, dimension))
  shifted = words ^ jax.random.bits(key, (dimension,), jnp.uint32)
  cells = (shifted >> (32 - _SOBOL_FLOAT_BITS)).astype(jnp.float32)
  return (cells + 0.5) * jnp.float32(2.0 ** -_SOBOL_FLOAT_BITS)


def _qmc(key, num_features, dim):
  return jax.scipy.special.ndtri(_shifted_sobol_uniforms(key, num_features, dim))


def _reference_qmc(key, num_features, dim):
  points = _shifted_sobol_uniforms(key, dim, _next_power_of_two(num_features))  # [d, P]
  return jax.scipy.special.ndtri(points).T[:num_features]


def _mm(key, num_features, dim):
  if num_features <= dim:
    raise ValueError(f"Moment matching (mm) whitens the sample covariance of the m rows, which "
                     f"needs num_features > dim; got num_features={num_features}, dim={dim}. "
                     f"Use more features or another weight matrix.")
  rows = jax.random.normal(key, (num_features, dim), jnp.float32)
  centred = rows - jnp.mean(rows, axis=0, keepdims=True)
  covariance = centred.T @ centred / num_features
  factor = jnp.linalg.cholesky(covariance + MOMENT_MATCHING_RIDGE * jnp.eye(dim, dtype=jnp.float32))
  return jax.scipy.linalg.solve_triangular(factor, centred.T, lower=True).T


def _fastfood_shapes(num_features: int, dim: int) -> tuple[int, int]:
  """(n, blocks): the padded block size and the number of n x n blocks."""
  n = _next_power_of_two(dim)
  return n, -(-num_features // n)


@functools.partial(jax.jit, static_argnames=("num_features", "dim", "reference_construction"))
def init_fastfood_parameters(key: jax.Array, num_features: int, dim: int, *,
                             reference_construction: bool = False) -> dict[str, jax.Array]:
  """Trainable diagonals of fastfood_learnable (Le et al. 2013): S, G, B per block.

  Default (correct by default): a fastfood_fixed draw, so the initial W has
  rows exactly N(0, I): B Rademacher (as floats), G ~ N(0, 1) and
  S = s / ||G|| with s chi_n radii (Le et al.'s S, making the row norms
  independent chi_n). `reference_construction=True`: the reference's init,
  S, G, B ~ N(0, 1/d) each, whose rows start near zero (norm ~0.02 at d = 32
  with its d^(-1/4) scaling).

  Randomness: `key` split in three, for B, G and s (in that order).

  Args:
    key: PRNG key.
    num_features: rows m of W (ceil(m / n) blocks, n = next_pow2(dim)).
    dim: columns d (head_dim).
    reference_construction: the reference's N(0, 1/d) init.

  Returns:
    {"S": [blocks, n], "G": [blocks, n], "B": [blocks, dim]} float32 (B only
    multiplies the d real input coordinates; the padded ones are zero).
  """
  _check_sizes(num_features=num_features, dim=dim)
  n, num_blocks = _fastfood_shapes(num_features, dim)
  b_key, g_key, s_key = jax.random.split(key, 3)
  if reference_construction:
    std = dim ** -0.5
    return {"S": std * jax.random.normal(s_key, (num_blocks, n), jnp.float32),
            "G": std * jax.random.normal(g_key, (num_blocks, n), jnp.float32),
            "B": std * jax.random.normal(b_key, (num_blocks, dim), jnp.float32)}
  gaussian = jax.random.normal(g_key, (num_blocks, n), jnp.float32)
  radii = _chi_radii(s_key, (num_blocks, n), n)
  return {"S": radii / jnp.linalg.norm(gaussian, axis=-1, keepdims=True),
          "G": gaussian,
          "B": _rademacher(b_key, (num_blocks, dim))}


@functools.partial(jax.jit, static_argnames=("num_features", "dim"))
def draw_fastfood_permutation(key: jax.Array, num_features: int, dim: int) -> jax.Array:
  """Fastfood's fixed permutation P, one uniform permutation of range(n) per block.

  Returns:
    [blocks, n] int32 (n = next_pow2(dim), blocks = ceil(num_features / n)).
  """
  _check_sizes(num_features=num_features, dim=dim)
  n, num_blocks = _fastfood_shapes(num_features, dim)
  # Ranks of i.i.d. 32-bit words: a uniform permutation up to ties (probability < n^2 / 2^33).
  return jnp.argsort(jax.random.bits(key, (num_blocks, n), jnp.uint32), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_features", "reference_construction"))
def fastfood_weight_matrix(parameters: dict, permutation: jax.Array, num_features: int, *,
                           reference_construction: bool = False) -> jax.Array:
  """Dense Fastfood matrix V = sqrt(n) diag(S) H diag(G) P H diag(B) per block (Le et al. 2013).

  H is the orthonormal Walsh-Hadamard matrix of order n, so this is the
  paper's (1 / (sigma sqrt(n))) S H G P H B with the +-1 matrix, sigma = 1 and
  S holding its 1 / ||G|| factor; (P y)_k = y_{P[k]}. Only the first
  d = B.shape[-1] columns are built (inputs padded to n are zero there). The
  blocks are stacked and cut to num_features rows. Differentiable with respect
  to S, G and B.

  Args:
    parameters: {"S": [blocks, n], "G": [blocks, n], "B": [blocks, d]}.
    permutation: [blocks, n] int.
    num_features: rows m kept, <= blocks * n.
    reference_construction: scale by d^(-1/4), the reference's second scaling
      of the Fastfood inputs (§3.1).

  Returns:
    [num_features, d] float32.

  Raises:
    ValueError: inconsistent shapes or too few blocks.
  """
  s, g, b = (jnp.asarray(parameters[name], jnp.float32) for name in ("S", "G", "B"))
  if s.ndim != 2 or s.shape != g.shape or permutation.shape != s.shape or b.ndim != 2:
    raise ValueError(f"Fastfood parameters must be S, G, permutation [blocks, n] and B "
                     f"[blocks, dim]; got S {s.shape}, G {g.shape}, B {b.shape}, permutation "
                     f"{permutation.shape}.")
  num_blocks, n = s.shape
  dim = b.shape[-1]
  if b.shape[0] != num_blocks or dim > n or n & (n - 1):
    raise ValueError(f"B must be [{num_blocks}, dim <= {n}] with n a power of two; got {b.shape}.")
  if not 0 < num_features <= num_blocks * n:
    raise ValueError(f"num_features={num_features} needs 1..{num_blocks * n} rows: "
                     f"{num_blocks} blocks of {n}.")
  columns = fast_walsh_hadamard_transform(jnp.eye(n, dtype=jnp.float32)[:dim]).T  # H[:, :d]
  a = columns[None] * b[:, None, :]  # H diag(B), [blocks, n, d]
  a = jnp.take_along_axis(a, permutation[..., None].astype(jnp.int32), axis=1)
  a = _hadamard_left(g[..., None] * a)
  matrix = (math.sqrt(n) * s[..., None] * a).reshape(num_blocks * n, dim)[:num_features]
  if reference_construction:
    matrix = matrix * jnp.float32(dim ** -0.25)
  return matrix


def _fastfood_fixed(key, num_features, dim, reference_construction):
  parameter_key, permutation_key = jax.random.split(key)
  return fastfood_weight_matrix(
      init_fastfood_parameters(parameter_key, num_features, dim),
      draw_fastfood_permutation(permutation_key, num_features, dim), num_features,
      reference_construction=reference_construction)


@functools.partial(jax.jit,
                   static_argnames=("name", "num_features", "dim", "reference_construction"))
def draw_weight_matrix(name: str, key: jax.Array, num_features: int, dim: int, *,
                       reference_construction: bool = False) -> jax.Array:
  """Draws the weight matrix `name` of Spectraformer (see the module docstring).

  Randomness: a pure function of `key`; each construction splits it as its
  helper says (orf: `gaussian_orthogonal_random_matrix(key, m, d, 0)`;
  fastfood_fixed: split in two, `init_fastfood_parameters` and
  `draw_fastfood_permutation`, so it equals fastfood_learnable's default
  initial matrix for the same key).

  Args:
    name: one of WEIGHT_MATRICES except fastfood_learnable (static).
    key: PRNG key.
    num_features: rows m (static).
    dim: columns d, the head dimension (static).
    reference_construction: reproduce the reference's construction and its
      defects (module docstring; no effect for gaus, orf, mm).

  Returns:
    [num_features, dim] float32; by default rows marginally N(0, I_dim)
    (exactly for gaus, orf, scrf, qmc, fastfood_fixed; sorf and rom up to the
    non-uniform directions of Hadamard products; sgq up to its discrete
    entries, which match the Gaussian moments to order 15; mm up to its
    whitening).

  Raises:
    ValueError: an unknown name, fastfood_learnable, bad sizes, or mm with
      num_features <= dim.
  """
  _check_name(name)
  _check_sizes(num_features=num_features, dim=dim)
  if name in LEARNABLE_WEIGHT_MATRICES:
    raise ValueError(f"{name} is trainable: create its parameters with init_fastfood_parameters "
                     f"(linen params) and its fixed permutation with draw_fastfood_permutation, "
                     f"and build W with fastfood_weight_matrix(parameters, permutation, m).")
  if name == "gaus":
    return _gaus(key, num_features, dim)
  if name == "orf":
    return gaussian_orthogonal_random_matrix(key, num_features, dim, scaling=0)
  if name == "scrf":
    return (_reference_scrf if reference_construction else _scrf)(key, num_features, dim)
  if name == "sorf":
    if reference_construction:
      return _reference_sorf_or_rom(key, num_features, dim, complex_first_diagonal=False)
    return _sorf(key, num_features, dim)
  if name == "rom":
    if reference_construction:
      return _reference_sorf_or_rom(key, num_features, dim, complex_first_diagonal=True)
    return _rom(key, num_features, dim)
  if name == "sgq":
    return (_reference_sgq if reference_construction else _sgq)(key, num_features, dim)
  if name == "qmc":
    return (_reference_qmc if reference_construction else _qmc)(key, num_features, dim)
  if name == "mm":
    return _mm(key, num_features, dim)
  return _fastfood_fixed(key, num_features, dim, reference_construction)
