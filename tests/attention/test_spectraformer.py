"""Spectraformer attention: formulas (ours and the reference's), quirks, masking, the module's variables."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import component_functions as cf
from lra_jax.attention import weight_matrices

LENGTH, HEADS, HEAD_DIM = 12, 2, 4
MAPS = cf.COMPONENT_FUNCTIONS
GERF_A = np.asarray([-0.06, 0.08])  # per head


def _inputs(lengths=(LENGTH, 7), length=LENGTH, seed=0, scale=1.0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, HEADS, HEAD_DIM)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys)
  mask = jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]
  return (scale * q).astype(dtype), (scale * k).astype(dtype), v, mask


def _projection(num_features=8, seed=5, name="orf"):
  return weight_matrices.draw_weight_matrix(name, jax.random.key(seed), num_features, HEAD_DIM)


QUIRKS = ("per_token_key_stabilizer", "padded_keys_in_denominator", "drop_d_factor",
          "oprf_per_position_statistic", "reference_trigrf_renormalizer")


@functools.partial(jax.jit, static_argnames=("feature_map", "kernel") + QUIRKS)
def _attention(q, k, v, mask, projection, gerf_a=GERF_A, feature_map="posrf", kernel="gaussian",
               numerical_stabilizer=1e-4, **quirks):
  return attention.spectraformer_attention(
      q, k, v, mask, feature_map=feature_map, projection=projection, gerf_a=gerf_a, kernel=kernel,
      numerical_stabilizer=numerical_stabilizer, **quirks)


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


# ---------------------------------------------------------------------------
# Independent float64 numpy implementations, one (batch, head) at a time.


def _np_a_star(phi, d):
  rho = (np.sqrt((2 * phi + d) ** 2 + 8 * d * phi) - (2 * phi + d)) / (4 * phi)
  return (1 - 1 / rho) / 8


def _np_default(name, q, k, v, mask, w, gerf_a, eps=1e-4):
  """Correct by default: Gaussian-kernel estimators (textbook identities, §2) over real keys only.

  Stabilisers: each query's max and one max over the real keys of a (batch,
  head), of the whole log-feature; eps after exp, m^(-1/2) in front.
  """
  q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
  d, m = q.shape[-1], w.shape[0]
  out = np.zeros_like(v)
  for b in range(q.shape[0]):
    real = np.flatnonzero(np.asarray(mask)[b])
    for h in range(q.shape[2]):
      x, y = q[b, real, h] * d ** -0.25, k[b, real, h] * d ** -0.25  # real queries, keys
      xall = q[b, :, h] * d ** -0.25
      if name == "trigrf":
        def feats(z):
          return np.concatenate([np.cos(z @ w.T), np.sin(z @ w.T)], -1) / np.sqrt(m)
        qf, kf = feats(xall), feats(y)
      else:
        a, psi = 0.0, np.ones(d)
        if name == "oprf":
          a = _np_a_star((((x[:, None] + y[None]) ** 2).sum(-1)).mean(), d)
        elif name in ("gerf", "saderf"):
          a = gerf_a[h]
        if name == "saderf":
          psi = ((y ** 2).sum(0) / (x ** 2).sum(0)) ** 0.25

        def log_feats(z, scale):
          zs = z * scale
          return (a * (w ** 2).sum(-1) + np.sqrt(1 - 4 * a) * zs @ w.T - 0.5 * (zs ** 2).sum(-1)[:, None]
                  - 0.5 * (z ** 2).sum(-1)[:, None] + d / 4 * np.log(1 - 4 * a))

        lq, lk = log_feats(xall, psi), log_feats(y, 1 / psi)
        qf = (np.exp(lq - lq.max(-1, keepdims=True)) + eps) / np.sqrt(m)
        kf = (np.exp(lk - lk.max()) + eps) / np.sqrt(m)
      kernel = qf @ kf.T  # [length, real keys], only to check against
      out[b, :, h] = kernel @ v[b, real, h] / kernel.sum(-1, keepdims=True)
  return out


def _np_reference(name, q, k, v, mask, w, gerf_a, eps=1e-4):
  """Spectraformer's FastAttention + component functions, formula by formula (§1-2).

  q = Q / d^(1/4), k = K / d^(1/4) * M, v = V * M; phi = exp(E - max_f E) + eps
  per token (queries and keys), E = A ||w||^2 + B w.x' with A per (head,
  position), D dropped; no 1/sqrt(m); out = sum over every key / no eps.
  """
  q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
  real = np.asarray(mask, np.float64)[:, :, None, None]
  d = q.shape[-1]
  x, y, v = q / d ** 0.25, k / d ** 0.25 * real, v * real
  if name == "oprf":  # batch means per (position, head)
    phi = ((x ** 2).sum(-1).mean(0) + (y ** 2).sum(-1).mean(0)
           + 2 * (x.mean(0) * y.mean(0)).sum(-1))  # [L, h]
    a = _np_a_star(phi, d)
  elif name in ("gerf", "saderf"):
    a = np.minimum(np.asarray(gerf_a).T, 0.124999)  # [h, L] -> [L, h]
  else:
    a = np.zeros(x.shape[1:3])
  out = np.zeros_like(v)
  for b in range(x.shape[0]):
    for h in range(x.shape[2]):
      xs, ys = x[b, :, h], y[b, :, h]
      if name == "saderf":  # every query, zeroed keys
        psi = ((ys ** 2).sum(0) / (xs ** 2).sum(0)) ** 0.25
        xs, ys = xs * psi, ys / psi
      if name == "trigrf":
        def feats(z):
          zz = np.concatenate([np.cos(z @ w.T), np.sin(z @ w.T)], -1)
          return zz * np.exp(np.linalg.norm(z, axis=-1, keepdims=True) - zz.max(-1, keepdims=True))
        qf, kf = feats(xs), feats(ys)
      else:
        ah = a[:, h][:, None]

        def feats(z):
          e = ah * (w ** 2).sum(-1) + np.sqrt(1 - 4 * ah) * (z @ w.T)
          return np.exp(e - e.max(-1, keepdims=True)) + eps

        qf, kf = feats(xs), feats(ys)
      kernel = qf @ kf.T
      out[b, :, h] = kernel @ v[b, :, h] / kernel.sum(-1, keepdims=True)
  return out


@pytest.mark.parametrize("feature_map", MAPS)
def test_default_matches_numpy_formula(feature_map):
  q, k, v, mask = _inputs()
  w = _projection()
  np.testing.assert_allclose(_real(_attention(q, k, v, mask, w, feature_map=feature_map), mask),
                             _real(_np_default(feature_map, q, k, v, mask, w, GERF_A), mask),
                             rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("feature_map", MAPS)
def test_all_quirks_match_the_reference_formulas(feature_map):
  q, k, v, mask = _inputs()
  w = _projection()
  per_position_a = np.asarray(cf.draw_gerf_parameter(jax.random.key(1), (HEADS, LENGTH)))
  out = _attention(q, k, v, mask, w, per_position_a, feature_map=feature_map,
                   **{quirk: True for quirk in QUIRKS})
  expected = _np_reference(feature_map, q, k, v, mask, w, per_position_a)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=2e-4, atol=2e-5)
  # The quirks matter: the default is another function.
  default = _real(_attention(q, k, v, mask, w, feature_map=feature_map), mask)
  assert np.abs(default - _real(out, mask)).max() > 1e-2


# Each quirk alone, on a map it applies to: (quirk, feature map, changes real outputs).
@pytest.mark.parametrize("quirk, feature_map", [
    ("per_token_key_stabilizer", "posrf"), ("padded_keys_in_denominator", "oprf"),
    ("oprf_per_position_statistic", "oprf"), ("reference_trigrf_renormalizer", "trigrf")])
def test_each_quirk_alone_changes_the_attention(quirk, feature_map):
  q, k, v, mask = _inputs()
  w = _projection()
  default = _real(_attention(q, k, v, mask, w, feature_map=feature_map), mask)
  changed = _real(_attention(q, k, v, mask, w, feature_map=feature_map, **{quirk: True}), mask)
  assert np.abs(default - changed).max() > 1e-3


def test_drop_d_factor_matters_only_when_keys_have_different_a():
  q, k, v, mask = _inputs()
  w = _projection()
  per_position_a = np.asarray(cf.draw_gerf_parameter(jax.random.key(1), (HEADS, LENGTH)))
  for gerf_a, changes in ((GERF_A, False), (per_position_a, True)):
    default = _real(_attention(q, k, v, mask, w, gerf_a, feature_map="gerf",
                               numerical_stabilizer=0.0), mask)
    dropped = _real(_attention(q, k, v, mask, w, gerf_a, feature_map="gerf", numerical_stabilizer=0.0,
                               drop_d_factor=True), mask)
    if changes:
      assert np.abs(default - dropped).max() > 1e-3
    else:  # one D per head cancels in out / den
      np.testing.assert_allclose(dropped, default, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Approximation, Performer, masking, cost.


def test_error_against_exact_attention_shrinks_with_more_features():
  # Moderate norms: the positive estimators' variance grows like exp(2 ||x + y||^2).
  q, k, v, mask = _inputs(scale=0.4)
  exact = {kernel: _real(_np_exact(q, k, v, mask, kernel), mask) for kernel in ("gaussian", "softmax")}
  sizes = (16, 256, 4096)

  @jax.jit
  def outputs(key):
    w = weight_matrices.draw_weight_matrix("orf", key, sizes[-1], HEAD_DIM)  # whole blocks
    return [[attention.spectraformer_attention(q, k, v, mask, projection=w[:size], gerf_a=GERF_A,
                                               feature_map=name) for size in sizes]
            for name in MAPS] + [[attention.spectraformer_attention(
                q, k, v, mask, projection=w[:size], kernel="softmax") for size in sizes]]

  outs = jax.vmap(outputs)(jax.random.split(jax.random.key(0), 3))
  for name, kernel, per_size in zip(MAPS + ("posrf",), ("gaussian",) * 5 + ("softmax",), outs):
    errors = [np.mean([np.sqrt(np.mean((_real(out, mask) - exact[kernel]) ** 2)) for out in draws])
              for draws in per_size]
    assert errors[0] > 1.6 * errors[1] > 1.6 ** 2 * errors[2], (name, kernel, errors)
    assert errors[2] < 0.015, (name, kernel, errors)


def _np_exact(q, k, v, mask, kernel):
  """softmax over real keys of x.y - ||y||^2 / 2 (Gaussian kernel, the query factor cancels) or x.y."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  x, y = q * HEAD_DIM ** -0.25, k * HEAD_DIM ** -0.25
  logits = np.einsum("bihd,bjhd->bhij", x, y)
  if kernel == "gaussian":
    logits = logits - 0.5 * (y ** 2).sum(-1).transpose(0, 2, 1)[:, :, None, :]
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", weights, v)


def test_posrf_orf_with_the_softmax_kernel_is_performer():
  q, k, v, mask = _inputs()
  w = _projection(16)
  for quirks in (dict(), dict(padded_keys_in_denominator=True)):
    ours = _attention(q, k, v, mask, w, kernel="softmax", numerical_stabilizer=0.0, **quirks)
    performer = attention.performer_attention(q, k, v, mask, projection=w, numerical_stabilizer=0.0,
                                              **quirks)
    np.testing.assert_allclose(ours, performer, rtol=1e-5, atol=1e-6)
  # (With eps they differ through the stabilisers' form: Performer keeps each
  # query's exp(-||x||^2 / 2) inside exp, so eps weighs more there.)


@pytest.mark.parametrize("feature_map", MAPS)
def test_real_outputs_ignore_garbage_in_padded_positions(feature_map):
  q, k, v, mask = _inputs(lengths=(LENGTH, 5))
  garbage = _inputs(lengths=(LENGTH, 5), seed=1)
  padded = ~mask[:, :, None, None]
  q2, k2, v2 = (jnp.where(padded, 100.0 * g, x) for x, g in zip((q, k, v), garbage))
  w = _projection()
  np.testing.assert_allclose(_real(_attention(q2, k2, v2, mask, w, feature_map=feature_map), mask),
                             _real(_attention(q, k, v, mask, w, feature_map=feature_map), mask),
                             rtol=1e-5, atol=1e-6)


def test_more_padding_changes_nothing_unless_padded_keys_count_in_the_denominator():
  q, k, v, mask = _inputs()
  w = _projection()

  def extend(x):  # 6 more padded positions
    return jnp.concatenate([x, jnp.zeros((2, 6) + x.shape[2:], x.dtype)], axis=1)

  longer = [extend(x) for x in (q, k, v)] + [extend(mask)]
  for quirks, changes in ((dict(), False), (dict(padded_keys_in_denominator=True), True)):
    short = _real(_attention(q, k, v, mask, w, feature_map="oprf", **quirks)[1], mask[1])
    long = _real(_attention(*longer, w, feature_map="oprf", **quirks)[1], longer[3][1])
    assert (not np.allclose(long, short, atol=1e-4)) == changes, quirks
    if not changes:
      np.testing.assert_allclose(long, short, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feature_map", MAPS)
def test_cost_is_linear_and_exponentials_are_float32(feature_map):
  length = 64
  q, k, v, mask = _inputs(length=length, lengths=(length, 40), dtype=jnp.bfloat16)
  w = _projection()

  def loss(q, k, v):
    out = attention.spectraformer_attention(q, k, v, mask, projection=w, gerf_a=GERF_A,
                                            feature_map=feature_map)
    return jnp.sum(out.astype(jnp.float32) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  eqns = jaxpr.jaxpr.eqns
  shapes = [var.aval.shape for eqn in eqns for var in eqn.outvars]
  assert not any(list(shape).count(length) >= 2 for shape in shapes)
  exp_dtypes = {str(eqn.outvars[0].aval.dtype) for eqn in eqns if eqn.primitive.name == "exp"}
  assert exp_dtypes <= {"float32"}


def test_bad_arguments_raise_clear_errors():
  q, k, v, mask = _inputs()
  for kwargs, message in ((dict(feature_map="softmax"), "Unknown feature_map 'softmax'; valid "
                           "values: trigrf, posrf, oprf, gerf, saderf"),
                          (dict(weight_matrix="hadamard"), "Unknown weight_matrix 'hadamard'; "
                           "valid values: gaus, orf"),
                          (dict(kernel="rbf"), "valid values: gaussian, softmax"),
                          (dict(), "needs a PRNG key"),
                          (dict(rng=jax.random.key(0), nb_features=0), "positive integer"),
                          (dict(projection=_projection(), nb_features=16), "disagrees")):
    with pytest.raises(ValueError, match=message):
      attention.spectraformer_attention(q, k, v, mask, **kwargs)
  with pytest.raises(ValueError, match="valid values: gaus, orf"):
    attention.SpectraformerAttention(weight_matrix="ORF").init(_rngs(0), q, k, v, mask,
                                                               deterministic=True)


def test_pure_function_draws_from_its_key():
  q, k, v, mask = _inputs()
  draw = jax.jit(lambda rng: attention.spectraformer_attention(
      q, k, v, mask, rng=rng, feature_map="gerf", weight_matrix="qmc", nb_features=8))
  projection_key, parameter_key = jax.random.split(jax.random.key(5))
  expected = _attention(q, k, v, mask,
                        weight_matrices.draw_weight_matrix("qmc", projection_key, 8, HEAD_DIM),
                        cf.draw_gerf_parameter(parameter_key, (HEADS,)), feature_map="gerf")
  np.testing.assert_allclose(draw(jax.random.key(5)), expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(draw(jax.random.key(5)), draw(jax.random.key(6)))


# ---------------------------------------------------------------------------
# The linen module.


def _rngs(seed):
  return {"params": jax.random.key(100 + seed), attention.ATTENTION_RNG: jax.random.key(seed)}


def _apply(module, variables, q, k, v, mask, seed=2):
  return module.apply(variables, q, k, v, mask, deterministic=False,
                      rngs={attention.ATTENTION_RNG: jax.random.key(seed)})


def test_module_default_keeps_one_fixed_projection_in_constants():
  q, k, v, mask = _inputs()
  module = attention.SpectraformerAttention(nb_features=8)
  variables = module.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert jax.tree.map(jnp.shape, dict(variables)) == {"constants": {"projection": (8, HEAD_DIM)}}
  w = variables["constants"]["projection"]
  np.testing.assert_array_equal(_apply(module, variables, q, k, v, mask, 2),
                                _apply(module, variables, q, k, v, mask, 3))
  np.testing.assert_allclose(_apply(module, variables, q, k, v, mask), _attention(q, k, v, mask, w),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="re-initialise"):
    attention.SpectraformerAttention(nb_features=16).apply(variables, q, k, v, mask,
                                                           deterministic=True)
  # Redrawn per call from the attention stream: nothing stored.
  redraw = attention.SpectraformerAttention(nb_features=8, redraw_features=True)
  assert not redraw.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert not np.allclose(_apply(redraw, {}, q, k, v, mask, 2), _apply(redraw, {}, q, k, v, mask, 3))


def test_module_learnable_parameters_train_and_fixed_draws_are_constants():
  q, k, v, mask = _inputs()
  module = attention.SpectraformerAttention(feature_map="saderf", weight_matrix="fastfood_learnable",
                                            nb_features=8)
  variables = module.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert set(variables["params"]) == {"fastfood", "gerf_a"}
  assert set(variables["params"]["fastfood"]) == {"S", "G", "B"}
  assert variables["params"]["gerf_a"].shape == (HEADS,)
  assert set(variables["constants"]) == {"fastfood_permutation"}

  def loss(params):
    out = _apply(module, {**variables, "params": params}, q, k, v, mask)
    return jnp.sum(jnp.where(mask[:, :, None, None], out, 0.0) ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-6, path
  # The reference's A: fixed random per (head, position), a constant.
  fixed = attention.SpectraformerAttention(feature_map="gerf", nb_features=8,
                                           fixed_gerf_parameters=True)
  fixed_variables = fixed.init(_rngs(1), q, k, v, mask, deterministic=True)
  assert "params" not in fixed_variables
  a = fixed_variables["constants"]["gerf_a"]
  assert a.shape == (HEADS, LENGTH) and np.abs(a).max() < 0.125
  np.testing.assert_allclose(_apply(fixed, fixed_variables, q, k, v, mask),
                             _attention(q, k, v, mask, fixed_variables["constants"]["projection"], a,
                                        feature_map="gerf"), rtol=1e-6, atol=1e-6)


def test_module_reference_weight_matrix_reproduces_the_zero_scrf():
  q, k, v, mask = _inputs()
  for reference, zero in ((True, True), (False, False)):
    module = attention.SpectraformerAttention(weight_matrix="scrf", nb_features=16,
                                              reference_weight_matrix=reference)
    w = module.init(_rngs(1), q, k, v, mask, deterministic=True)["constants"]["projection"]
    assert np.all(np.asarray(w) == 0) == zero  # m = 16 > 2 d: round(d / m) = 0 blocks


def test_module_builds_every_combination():
  q, k, v, mask = _inputs()
  for feature_map in MAPS:
    for weight_matrix in weight_matrices.WEIGHT_MATRICES:
      module = attention.SpectraformerAttention(feature_map=feature_map, weight_matrix=weight_matrix,
                                                nb_features=8)
      variables = jax.eval_shape(
          lambda: module.init(_rngs(1), q, k, v, mask, deterministic=True))
      out = jax.eval_shape(lambda variables: module.apply(variables, q, k, v, mask,
                                                          deterministic=False, rngs=_rngs(2)),
                           variables)
      assert out.shape == q.shape and out.dtype == q.dtype
      learnable = (weight_matrix in weight_matrices.LEARNABLE_WEIGHT_MATRICES
                   or feature_map in cf.GERF_PARAMETER_FUNCTIONS)
      assert ("params" in variables) == learnable
