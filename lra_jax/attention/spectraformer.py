"""Spectraformer: any component function with any weight matrix, one linear attention.

Nguyen et al., "Spectraformer: A Unified Random Feature Framework for
Transformer" (2024): attention is approximated by random features
phi(x) = f(W x) of a weight matrix W [m, d] (rows marginally N(0, I): gaus,
orf, scrf, sorf, rom, sgq, qmc, mm, fastfood_fixed, fastfood_learnable;
`weight_matrices`) and a component function f (trigrf, posrf, oprf, gerf,
saderf; `component_functions`), on q / d^(1/4) and k / d^(1/4); then
out = phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1), O(n m d)
(spectraformer_schoenbat.md §1). The target kernel of the whole family is
the Gaussian kernel exp(-||x - y||^2 / 2) (§2), so with many features the
attention tends to softmax(q.k / sqrt(d) - ||k||^2 / (2 sqrt(d))) V, the
Gaussian-kernel attention of `kernelized` normalised over the keys;
kernel='softmax' targets exp(x.y) instead (posrf x orf is then Performer,
`random_features.performer_attention`, which runs through the same
`random_features.random_feature_attention`).

The reference's (§1.1) `--feat` is the weight matrix and `--kernel_type` the
component function (its README swaps them); here `weight_matrix` and
`feature_map`.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from lra_jax.attention import chunking, component_functions, random_features, registry
from lra_jax.attention import weight_matrices


def _check_names(feature_map: str, weight_matrix: str, kernel: str) -> None:
  component_functions.check_choice("feature_map", feature_map,
                                   component_functions.COMPONENT_FUNCTIONS)
  component_functions.check_choice("weight_matrix", weight_matrix, weight_matrices.WEIGHT_MATRICES)
  component_functions.check_choice("kernel", kernel, component_functions.KERNELS)


def draw_projection(key: jax.Array, weight_matrix: str, num_features: int, dim: int, *,
                    reference_construction: bool = False) -> jax.Array:
  """A draw of any weight matrix as a dense [num_features, dim] float32 matrix.

  fastfood_learnable: its initial parameters from the first half of
  `jax.random.split(key)` and its permutation from the second (so it equals
  fastfood_fixed's draw from the same key); every other matrix:
  `weight_matrices.draw_weight_matrix(weight_matrix, key, ...)`.
  `reference_construction` is passed on (for fastfood_learnable: the
  reference's N(0, 1/d) init and extra d^(-1/4)).
  """
  component_functions.check_choice("weight_matrix", weight_matrix, weight_matrices.WEIGHT_MATRICES)
  if weight_matrix in weight_matrices.LEARNABLE_WEIGHT_MATRICES:
    parameter_key, permutation_key = jax.random.split(key)
    parameters = weight_matrices.init_fastfood_parameters(
        parameter_key, num_features, dim, reference_construction=reference_construction)
    permutation = weight_matrices.draw_fastfood_permutation(permutation_key, num_features, dim)
    return weight_matrices.fastfood_weight_matrix(parameters, permutation, num_features,
                                                  reference_construction=reference_construction)
  return weight_matrices.draw_weight_matrix(weight_matrix, key, num_features, dim,
                                            reference_construction=reference_construction)


def spectraformer_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *,
                            rng: jax.Array | None = None, feature_map: str = "posrf",
                            weight_matrix: str = "orf", nb_features: int | None = None,
                            projection: jax.Array | None = None, gerf_a: jax.Array | None = None,
                            kernel: str = "gaussian", numerical_stabilizer: float = 1e-4,
                            per_token_key_stabilizer: bool = False,
                            padded_keys_in_denominator: bool = False, drop_d_factor: bool = False,
                            oprf_per_position_statistic: bool = False,
                            reference_trigrf_renormalizer: bool = False,
                            reference_weight_matrix: bool = False,
                            chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Spectraformer random-feature attention (any component function x weight matrix), O(n m d).

  Args:
    query: [batch, q_length, heads, head_dim].
    key: [batch, kv_length, heads, head_dim].
    value: [batch, kv_length, heads, head_dim].
    mask: [batch, kv_length] bool, True for real tokens; queries are not
      masked (outputs at padded positions are unused).
    rng: PRNG key, split in two: the first half draws the weight matrix
      (`draw_projection`) when `projection` is None, the second GERF/SADERF's
      A per head (`component_functions.draw_gerf_parameter`) when `gerf_a` is
      None. Unused when both are given (or A is not needed).
    feature_map: component function, one of
      `component_functions.COMPONENT_FUNCTIONS`.
    weight_matrix: one of `weight_matrices.WEIGHT_MATRICES`; used to draw W,
      and gradients reach a given `projection` only for the learnable ones.
    nb_features: m, rows of W (None: 128, the reference's rp_dim; with a
      projection it must equal its rows or be None).
    projection: [m, head_dim] weight matrix, or None to draw it from `rng`.
    gerf_a: GERF/SADERF's A: a number, [heads] (learned, the module's
      default) or [heads, kv_length] (the reference's per-position draw).
    kernel: 'gaussian' (Spectraformer's target) or 'softmax'.
    numerical_stabilizer: eps added to every positive feature (reference 1e-4).
    per_token_key_stabilizer: quirk: each key's own max is subtracted
      (reweights keys by exp(-max), §1.5) instead of one max per (batch, head).
    padded_keys_in_denominator: quirk: the reference's zeroed padded keys and
      values, whose features stay in the normaliser (§1.7); the OPRF/SADERF
      statistics then include padded queries and zeroed keys.
    drop_d_factor: quirk: D = (1 - 4A)^(d/4) left out (§2).
    oprf_per_position_statistic: quirk: OPRF's A per (head, position) from
      batch means pairing query j with key j (§2.3).
    reference_trigrf_renormalizer: quirk: TrigRF's exp(||x|| - max z) (§2.1).
    reference_weight_matrix: quirk: the reference's matrix constructions
      (`weight_matrices.draw_weight_matrix(..., reference_construction=True)`,
      §3) when W is drawn here.
    chunk_size: tokens per block of the feature computation
      (`random_features.random_feature_attention`; None: no blocks).

  Returns:
    [batch, q_length, heads, head_dim] in `value.dtype`; features and
    products in float32.

  Raises:
    ValueError: unknown names, a missing key, a projection of the wrong shape.
  """
  _check_names(feature_map, weight_matrix, kernel)
  head_dim = query.shape[-1]
  needs_a = feature_map in component_functions.GERF_PARAMETER_FUNCTIONS and gerf_a is None
  if (projection is None or needs_a) and rng is None:
    raise ValueError("spectraformer_attention needs a PRNG key (rng=jax.random.key(...)) to draw "
                     "its weight matrix or GERF's A, or both passed as projection= and gerf_a=.")
  if rng is not None:
    projection_key, parameter_key = jax.random.split(rng)
  if projection is None:
    num_features = 128 if nb_features is None else nb_features
    if not isinstance(num_features, int) or num_features <= 0:
      raise ValueError(f"nb_features must be a positive integer, got {num_features!r}.")
    projection = draw_projection(projection_key, weight_matrix, num_features, head_dim,
                                 reference_construction=reference_weight_matrix)
  elif nb_features is not None and projection.shape[0] != nb_features:
    raise ValueError(f"nb_features={nb_features} disagrees with the projection's "
                     f"{projection.shape[0]} rows; pass nb_features=None with an explicit projection.")
  if weight_matrix not in weight_matrices.LEARNABLE_WEIGHT_MATRICES:
    projection = jax.lax.stop_gradient(projection)
  if needs_a:
    gerf_a = component_functions.draw_gerf_parameter(parameter_key, (query.shape[2],))
  return random_features.random_feature_attention(
      query, key, value, mask, projection, feature_map=feature_map, kernel=kernel, gerf_a=gerf_a,
      numerical_stabilizer=numerical_stabilizer,
      key_stabilizer="token" if per_token_key_stabilizer else "sequence",
      padded_keys_in_denominator=padded_keys_in_denominator, drop_d_factor=drop_d_factor,
      oprf_per_position_statistic=oprf_per_position_statistic,
      reference_trigrf_renormalizer=reference_trigrf_renormalizer, chunk_size=chunk_size)


class SpectraformerAttention(nn.Module):
  """Module around `spectraformer_attention`: W and A as parameters or constants.

  Variables:
    * fixed weight matrices (every one but fastfood_learnable): with
      `redraw_features` False (default, the reference's buffer drawn once at
      construction, §1.6) drawn at init from the `registry.ATTENTION_RNG`
      stream into the non-trainable 'constants' collection as 'projection'
      [nb_features, head_dim]; with True, redrawn on every call (training and
      evaluation) from that stream, and nothing is stored.
    * fastfood_learnable: its S, G, B are the parameter 'fastfood' (a dict,
      `weight_matrices.init_fastfood_parameters`, from the 'params' stream);
      its permutation is the constant 'fastfood_permutation' (or redrawn per
      call with `redraw_features`).
    * gerf / saderf: A per head, the parameter 'gerf_a' [heads] initialised
      from the reference's law U(-0.124999, 0.124999) and clamped at 0.124999
      (< 1/8, finite variance); the Chefs' Random Tables and DERF papers
      learn these parameters.

  Reference quirks (Spectraformer `FastAttention` and its component functions,
  spectraformer_schoenbat.md §1-3), each off by default:
    * Per-token max subtracted from every key's exponents (§1.5), so each key
      is reweighted by its own exp(-max): `per_token_key_stabilizer=True`.
    * Padded keys and values zeroed, zero keys' features kept in the
      normaliser, padded queries in the OPRF/SADERF statistics (§1.7):
      `padded_keys_in_denominator=True`.
    * |D| = (1 - 4A)^(d/4) dropped (§2; it cancels when A is shared by all
      keys, but biases the kernel estimate and per-position A):
      `drop_d_factor=True`.
    * OPRF's statistic per (head, position) from batch means, pairing query j
      with key j (§2.3): `oprf_per_position_statistic=True`.
    * GERF/SADERF's A is an nn.Parameter wrapped in a tuple, hence never
      registered, trained or saved: a fixed random U(-0.124999, 0.124999) per
      (head, position) (§1.6, §2.4): `fixed_gerf_parameters=True` (drawn at
      init from the attention stream into the constant 'gerf_a'
      [heads, length]; the model must then run at the length it was built with).
    * TrigRF's renormaliser exp(||x|| - max z) (§2.1):
      `reference_trigrf_renormalizer=True`.
    * The reference's weight matrix constructions (zero SCRF, unnormalised
      SORF/ROM, degenerate SGQ, ...; §3): `reference_weight_matrix=True`.
    * eps 1e-4 after exp: `numerical_stabilizer=1e-4` (the default here too).
    * No attention dropout on this path (§1.1): `dropout_rate` is accepted for
      the registry protocol and ignored.
  Reference behaviour not reproduced: SADERF's C ||x||^2 on the norm before
  the Psi scaling and the missing 1/sqrt(m) (no effect on any output: the
  per-token max and out / den cancel them); Fastfood's width d + 1 whatever
  nb_features (nb_features=head_dim gives its d rows; the extra constant
  "smoothing" column and the single ||S G B||^2 of its GERF A-term, §3.1,
  are not rows of a matrix W); ROM's complex magnitudes in the A-term
  (`weight_matrices`, quirks).

  Attributes:
    dropout_rate: ignored (see above).
    feature_map: component function: trigrf, posrf, oprf, gerf or saderf
      (the reference's --kernel_type).
    weight_matrix: gaus, orf, scrf, sorf, rom, sgq, qmc, mm, fastfood_fixed or
      fastfood_learnable (the reference's --feat).
    nb_features: m, rows of the weight matrix (reference 128).
    redraw_features: fresh fixed weight matrix per call (True) or one drawn
      at init (False, the reference).
    kernel: target kernel, 'gaussian' (Spectraformer) or 'softmax' (Performer).
    numerical_stabilizer: eps added to every positive feature.
    per_token_key_stabilizer, padded_keys_in_denominator, drop_d_factor,
    oprf_per_position_statistic, fixed_gerf_parameters,
    reference_trigrf_renormalizer, reference_weight_matrix: the quirks above.
    chunk_size: tokens per block of the feature computation (a speed setting:
      the outputs agree to float rounding; None computes the whole length at
      once).
  """

  dropout_rate: float = 0.0
  feature_map: str = "posrf"
  weight_matrix: str = "orf"
  nb_features: int = 128
  redraw_features: bool = False
  kernel: str = "gaussian"
  numerical_stabilizer: float = 1e-4
  per_token_key_stabilizer: bool = False
  padded_keys_in_denominator: bool = False
  drop_d_factor: bool = False
  oprf_per_position_statistic: bool = False
  fixed_gerf_parameters: bool = False
  reference_trigrf_renormalizer: bool = False
  reference_weight_matrix: bool = False
  chunk_size: int | None = chunking.DEFAULT_CHUNK_SIZE

  def _constant(self, name: str, shape: tuple[int, ...], draw):
    """A draw fixed at init in 'constants'; a stored one of another shape is an error."""
    if self.has_variable(registry.CONSTANTS, name):
      stored = tuple(self.get_variable(registry.CONSTANTS, name).shape)
      if stored != tuple(shape):
        raise ValueError(f"Spectraformer's fixed {name!r} has shape {stored} but these inputs and "
                         f"settings need {tuple(shape)}: re-initialise the model.")
    return self.variable(registry.CONSTANTS, name, draw).value

  @nn.compact
  def __call__(self, query, key, value, mask, *, deterministic: bool):
    del deterministic
    _check_names(self.feature_map, self.weight_matrix, self.kernel)
    if not isinstance(self.nb_features, int) or self.nb_features <= 0:
      raise ValueError(f"nb_features must be a positive integer, got {self.nb_features!r}.")
    num_features, head_dim = self.nb_features, query.shape[-1]
    if self.weight_matrix in weight_matrices.LEARNABLE_WEIGHT_MATRICES:
      parameters = self.param("fastfood", weight_matrices.init_fastfood_parameters, num_features,
                              head_dim, reference_construction=self.reference_weight_matrix)

      def draw_permutation():
        return weight_matrices.draw_fastfood_permutation(self.make_rng(registry.ATTENTION_RNG),
                                                         num_features, head_dim)

      if self.redraw_features:
        permutation = draw_permutation()
      else:
        shape = jax.eval_shape(
            lambda k: weight_matrices.draw_fastfood_permutation(k, num_features, head_dim),
            jax.random.key(0)).shape
        permutation = self._constant("fastfood_permutation", shape, draw_permutation)
      projection = weight_matrices.fastfood_weight_matrix(
          parameters, permutation, num_features,
          reference_construction=self.reference_weight_matrix)
    else:
      def draw_matrix():
        return weight_matrices.draw_weight_matrix(
            self.weight_matrix, self.make_rng(registry.ATTENTION_RNG), num_features, head_dim,
            reference_construction=self.reference_weight_matrix)

      if self.redraw_features:
        projection = draw_matrix()
      else:
        projection = self._constant("projection", (num_features, head_dim), draw_matrix)
    gerf_a = None
    if self.feature_map in component_functions.GERF_PARAMETER_FUNCTIONS:
      heads, length = query.shape[2], key.shape[1]
      if self.fixed_gerf_parameters:
        gerf_a = self._constant(
            "gerf_a", (heads, length),
            lambda: component_functions.draw_gerf_parameter(self.make_rng(registry.ATTENTION_RNG),
                                                            (heads, length)))
      else:
        gerf_a = self.param("gerf_a", component_functions.draw_gerf_parameter, (heads,))
    return spectraformer_attention(
        query, key, value, mask, feature_map=self.feature_map, weight_matrix=self.weight_matrix,
        projection=projection, gerf_a=gerf_a, kernel=self.kernel,
        numerical_stabilizer=self.numerical_stabilizer,
        per_token_key_stabilizer=self.per_token_key_stabilizer,
        padded_keys_in_denominator=self.padded_keys_in_denominator,
        drop_d_factor=self.drop_d_factor,
        oprf_per_position_statistic=self.oprf_per_position_statistic,
        reference_trigrf_renormalizer=self.reference_trigrf_renormalizer,
        chunk_size=self.chunk_size)


# Contract-test inputs have head_dim 8: 16 features are two whole blocks.
registry.register("spectraformer", spectraformer_attention, SpectraformerAttention,
                  small_input_kwargs=dict(nb_features=16))
