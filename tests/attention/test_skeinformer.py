"""Skeinformer family: draws, sampling distribution, estimators against numpy and exact softmax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import attention
from lra_jax.attention import skeinformer as sk

# Most tests share these shapes and nb_features, so each variant compiles once
# (compilation dominates the run time). head_dim = length lets one-hot values
# read off the attention matrix an estimator applies.
LENGTH, HEADS, HEAD_DIM, NB = 16, 2, 16, 6
LENGTHS = (16, 11, 4)  # sample sizes min(6, m - 1) = 6, 6, 3
ESTIMATORS = ("skeinformer", "skein_nopilot", "skein_uniform", "skein_simplenorm", "skein_nonorm")
SWITCHES = {
    "skeinformer": ("importance", "adaptive", True),
    "skein_nopilot": ("importance", "adaptive", False),
    "skein_uniform": ("uniform", "adaptive", False),
    "skein_simplenorm": ("importance", "simple", False),
    "skein_nonorm": ("importance", "exact", False),
}


def _inputs(lengths=LENGTHS, length=LENGTH, seed=0, head_dim=HEAD_DIM, holes=False):
  keys = jax.random.split(jax.random.key(seed), 3)
  shape = (len(lengths), length, HEADS, head_dim)
  q, k, v = (jax.random.normal(key, shape) for key in keys)
  mask = np.arange(length)[None] < np.asarray(lengths)[:, None]
  if holes:  # real tokens not all at the front: every third position of sequence 0 is padding
    mask[0, ::3] = False
  return q, k, v, jnp.asarray(mask)


@functools.partial(jax.jit, static_argnames=("name", "nb_features", "sample_size_from_batch"))
def _run(q, k, v, mask, rng, name, nb_features=NB, sample_size_from_batch=False):
  """(output, draws) of one variant; the draws are those the output used (same key)."""
  out = attention.get_method(name).fn(q, k, v, mask, rng=rng, nb_features=nb_features,
                                      sample_size_from_batch=sample_size_from_batch)
  draws = sk.skein_draws(rng, q, k, v, mask, nb_features=nb_features,
                         sampling=SWITCHES[name][0], sample_size_from_batch=sample_size_from_batch)
  return out, draws


def _real(x, mask):
  return np.asarray(x, np.float64)[np.asarray(mask)]


# ---------------------------------------------------------------------------
# Independent float64 numpy implementation, one (batch, head) at a time, from
# skyformer_skeinformer.md §1.10 given the drawn positions.


def _np_softmax_rows(logits, real):
  x = np.where(real[None, :], logits, -np.inf)
  x = np.exp(x - x.max(-1, keepdims=True))
  return x / x.sum(-1, keepdims=True)


def _np_probabilities(q, k, v, mask, pilot, sample_size):
  """Paper eq. 5: w_j = ||B_J[:, j]|| ||v_j|| / sum, B_J the pilot rows' exact softmax."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask, pilot = np.asarray(mask), np.asarray(pilot)
  batch, length, heads, head_dim = q.shape
  w = np.zeros((batch, heads, length))
  for b in range(batch):
    rows = pilot[b, :int(sample_size[b])]
    for h in range(heads):
      probs = _np_softmax_rows(q[b, rows, h] @ k[b, :, h].T / np.sqrt(head_dim), mask[b])
      score = np.linalg.norm(probs, axis=0) * np.linalg.norm(v[b, :, h], axis=-1) * mask[b]
      w[b, h] = score / score.sum()
  return w


def _np_skein(q, k, v, mask, draws, normalisation, pilot_replacement):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  mask = np.asarray(mask)
  batch, _, heads, head_dim = q.shape
  out = np.zeros_like(v)
  for b in range(batch):
    real = mask[b]
    m, d = real.sum(), int(draws.sample_size[b])
    for h in range(heads):
      logits = q[b, :, h] @ k[b, :, h].T / np.sqrt(head_dim)
      values = v[b, :, h] * real[:, None]
      columns = np.asarray(draws.columns[b, h, :d])
      a = np.exp(logits[:, columns])
      if normalisation == "adaptive":
        g = np.exp(logits[:, columns].mean(-1))
        others = [j for j in np.flatnonzero(real) if j not in columns]
        numerator = a @ values[columns] + g[:, None] * values[others].sum(0)
        out[b, :, h] = numerator / (a.sum(-1) + (m - d) * g)[:, None]
      elif normalisation == "simple":
        out[b, :, h] = (a / a.sum(-1, keepdims=True)) @ values[columns]
      else:
        denominator = np.exp(logits[:, real]).sum(-1)
        out[b, :, h] = a @ values[columns] / denominator[:, None]
      if pilot_replacement:
        probs = _np_softmax_rows(logits, real)
        for row in np.asarray(draws.pilot[b, :d]):
          out[b, row, h] = probs[row] @ values
  return out


def test_sample_sizes_per_sequence_and_from_batch():
  mask = jnp.arange(24)[None] < jnp.asarray([24, 15, 5, 1, 0])[:, None]
  np.testing.assert_array_equal(sk.skein_sample_sizes(mask, 8), [8, 8, 4, 1, 1])
  np.testing.assert_array_equal(sk.skein_sample_sizes(mask, 8, True), [1] * 5)
  np.testing.assert_array_equal(sk.skein_sample_sizes(mask[:3], 8, True), [4] * 3)
  np.testing.assert_array_equal(sk.skein_sample_sizes(mask[:2], 100), [23, 14])
  assert sk.skein_num_samples(24, 8) == 8 and sk.skein_num_samples(24, 256) == 23


@pytest.mark.parametrize("holes", [False, True])
def test_draws_are_real_distinct_and_sized(holes):
  q, k, v, mask = _inputs(holes=holes)
  real = np.asarray(mask)
  for name in ("skeinformer", "skein_uniform"):
    draws = _run(q, k, v, mask, jax.random.key(3), name)[1]
    sizes = np.asarray(draws.sample_size)
    np.testing.assert_array_equal(sizes, np.minimum(NB, real.sum(-1) - 1))
    assert (draws.pilot is None) == (name == "skein_uniform")
    for b, d in enumerate(sizes):
      if draws.pilot is not None:
        assert np.all(real[b, np.asarray(draws.pilot[b, :d])])
      for h in range(HEADS):
        columns = np.asarray(draws.columns[b, h, :d])
        assert len(set(columns)) == d  # without replacement
        assert np.all(real[b, columns])


def test_one_compiled_program_serves_every_mask():
  q, k, v, mask = _inputs()
  _run(q, k, v, mask, jax.random.key(0), "skeinformer")
  size = _run._cache_size()
  _, draws = _run(q, k, v, jnp.roll(mask, 1, axis=0), jax.random.key(1), "skeinformer")
  assert _run._cache_size() == size
  np.testing.assert_array_equal(draws.sample_size, [3, 6, 6])


# ---------------------------------------------------------------------------
# The sampling distribution.


def _binomial_bound(p, num_draws):
  return 5 * np.sqrt(p * (1 - p) / num_draws) + 1e-3


def test_gumbel_top_k_draws_with_the_given_probabilities_without_replacement():
  w = np.array([0.4, 0.25, 0.2, 0.1, 0.05, 0.0, 0.3])
  mask = jnp.asarray([[True] * 6 + [False]])  # the last position is padding despite its weight
  num_draws = 20_000
  draw = jax.jit(jax.vmap(lambda r: sk.skein_column_indices(
      r, jnp.asarray(w, jnp.float32)[None, None], mask, 6)[0, 0]))
  samples = np.asarray(draw(jax.random.split(jax.random.key(0), num_draws)))  # [draws, 6]
  assert np.all(np.sort(samples, -1) == np.arange(6))  # distinct, never the padded position
  assert np.all(samples[:, 5] == 5)  # the zero-weight real column comes after every positive one
  p = w[:6] / w[:6].sum()
  first = np.bincount(samples[:, 0], minlength=6) / num_draws
  np.testing.assert_array_less(np.abs(first - p), _binomial_bound(p, num_draws))
  # Inclusion in the first 2 (a sample of 2 drawn successively without
  # replacement): P(j) = p_j + sum_{i != j} p_i p_j / (1 - p_i), not p_j.
  inclusion = p + np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(6) if i != j)
                            for j in range(6)])
  assert abs(inclusion.sum() - 2) < 1e-12
  included = np.bincount(samples[:, :2].ravel(), minlength=6) / num_draws
  np.testing.assert_array_less(np.abs(included - inclusion), _binomial_bound(inclusion, num_draws))


def test_column_frequencies_match_the_importance_probabilities_end_to_end():
  # nb_features = 1: one pilot row J, uniform over the real tokens, then one
  # column drawn with the eq. 5 probabilities of that pilot. The marginal
  # column frequency is the mean of those probabilities over J.
  q, k, v, mask = _inputs(lengths=(10, 6), length=10, seed=2, head_dim=8)
  q, k = 2 * q, 2 * k  # peakier rows: probabilities far from uniform
  num_draws = 20_000
  draw = jax.jit(jax.vmap(lambda r: sk.skein_draws(r, q, k, v, mask, nb_features=1)))
  draws = draw(jax.random.split(jax.random.key(1), num_draws))
  columns = np.asarray(draws.columns[..., 0])  # [draws, batch, heads]
  for b, m in enumerate(np.asarray(mask).sum(-1)):
    per_pilot = np.stack([_np_probabilities(q, k, v, mask, np.full((2, 1), j), [1, 1])[b]
                          for j in range(m)])  # [pilot, heads, length]
    expected = per_pilot.mean(0)
    pilot_frequency = np.bincount(np.asarray(draws.pilot[:, b, 0]), minlength=10) / num_draws
    np.testing.assert_array_less(np.abs(pilot_frequency - np.where(np.arange(10) < m, 1 / m, 0)),
                                 _binomial_bound(1 / m, num_draws))
    for h in range(HEADS):
      frequency = np.bincount(columns[:, b, h], minlength=10) / num_draws
      assert np.all(frequency[m:] == 0)  # padded positions never drawn
      np.testing.assert_array_less(np.abs(frequency - expected[h]),
                                   _binomial_bound(expected[h], num_draws))
      assert np.abs(expected[h, :m] - 1 / m).max() > 0.05  # not the uniform law in disguise


def test_uniform_sampling_is_uniform_over_real_tokens():
  q, k, v, mask = _inputs(lengths=(10, 4), length=10, head_dim=8)
  num_draws = 10_000
  draw = jax.jit(jax.vmap(lambda r: sk.skein_draws(r, q, k, v, mask, nb_features=1,
                                                   sampling="uniform").columns[..., 0]))
  columns = np.asarray(draw(jax.random.split(jax.random.key(2), num_draws)))
  for b, m in enumerate((10, 4)):
    frequency = np.bincount(columns[:, b].ravel(), minlength=10) / (num_draws * HEADS)
    expected = np.where(np.arange(10) < m, 1 / m, 0.0)
    np.testing.assert_array_less(np.abs(frequency - expected),
                                 _binomial_bound(expected, num_draws * HEADS))


def test_importance_probabilities_match_numpy():
  q, k, v, mask = _inputs(holes=True)
  draws = _run(q, k, v, mask, jax.random.key(4), "skeinformer")[1]
  w = jax.jit(sk.skein_column_probabilities)(q, k, v, mask, draws.pilot, draws.sample_size)
  expected = _np_probabilities(q, k, v, mask, draws.pilot, draws.sample_size)
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(w, -1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------
# The estimators.


@pytest.mark.parametrize("name", ESTIMATORS)
def test_matches_numpy_given_the_same_draws(name):
  for holes in (False, True):
    q, k, v, mask = _inputs(holes=holes)
    out, draws = _run(q, k, v, mask, jax.random.key(5), name)
    expected = _np_skein(q, k, v, mask, draws, *SWITCHES[name][1:])
    np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=2e-5, atol=2e-5)


def test_matches_numpy_with_the_batch_shared_sample_size():
  q, k, v, mask = _inputs()
  out, draws = _run(q, k, v, mask, jax.random.key(6), "skeinformer", sample_size_from_batch=True)
  np.testing.assert_array_equal(draws.sample_size, [3, 3, 3])
  expected = _np_skein(q, k, v, mask, draws, "adaptive", True)
  np.testing.assert_allclose(_real(out, mask), _real(expected, mask), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_error_to_softmax_shrinks_as_nb_features_grows(name):
  q, k, v, mask = _inputs(lengths=(LENGTH,) * 3, seed=1)
  exact = _real(attention.softmax_attention(q, k, v, mask), mask)
  errors = []
  for nb_features in (NB, LENGTH - 1):  # 6 of 16 columns, then all but one
    errors.append(np.mean([np.abs(_real(_run(q, k, v, mask, jax.random.key(seed), name,
                                             nb_features)[0], mask) - exact).mean()
                           for seed in range(6)]))
  assert errors[1] < 0.5 * errors[0], errors
  assert errors[1] < 0.05, errors


def test_vmean_is_the_masked_mean_of_values():
  q, k, v, mask = _inputs(lengths=(16, 11, 4, 0), holes=True)
  out = jax.jit(attention.vmean_attention)(q, k, v, mask)
  real = np.asarray(mask)[:, :, None, None]
  expected = (np.asarray(v) * real).sum(1, keepdims=True) / np.maximum(real.sum(1, keepdims=True), 1)
  np.testing.assert_allclose(out, np.broadcast_to(expected, v.shape), rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(out)[3] == 0)
  np.testing.assert_array_equal(out, jax.jit(attention.vmean_attention)(q * 3 + 1, -k, v, mask))


def _implied_weights(name, seed=0):
  """The attention matrix an estimator applies, read off with one-hot values."""
  q, k, _, mask = _inputs(seed=seed)
  v = jnp.broadcast_to(jnp.eye(LENGTH)[None, :, None, :], q.shape)  # v_j = e_j
  out, draws = _run(q, k, v, mask, jax.random.key(seed), name)
  return np.asarray(out, np.float64), draws, q, k, np.asarray(mask)  # [batch, query, heads, key]


@pytest.mark.parametrize("name", ["skeinformer", "skein_nopilot", "skein_uniform", "skein_simplenorm"])
def test_normalised_rows_sum_to_one_and_fill_unsampled_columns_as_documented(name):
  weights, draws, q, k, mask = _implied_weights(name)
  np.testing.assert_allclose(weights.sum(-1)[mask], 1.0, rtol=1e-5)
  for b in range(len(LENGTHS)):
    d = int(draws.sample_size[b])
    pilot = set() if name != "skeinformer" else set(np.asarray(draws.pilot[b, :d]).tolist())
    rows = [i for i in np.flatnonzero(mask[b]) if i not in pilot]
    for h in range(HEADS):
      w = weights[b, rows, h]  # [rows, key]
      sampled = np.zeros(LENGTH, bool)
      sampled[np.asarray(draws.columns[b, h, :d])] = True
      assert np.all(w[:, ~mask[b]] == 0)
      others = w[:, mask[b] & ~sampled]
      logits = np.asarray(q)[b, rows, h] @ np.asarray(k)[b, :, h].T / np.sqrt(HEAD_DIM)
      if name == "skein_simplenorm":
        assert np.all(others == 0)
      else:  # every un-sampled real column gets g_i / d_i, g_i the geometric mean of the sampled
        np.testing.assert_allclose(others, others[:, :1].repeat(others.shape[1], 1), rtol=1e-5)
        geometric = np.exp(logits[:, sampled].mean(-1, keepdims=True))
        np.testing.assert_allclose(w[:, sampled] / others[:, :1],
                                   np.exp(logits[:, sampled]) / geometric, rtol=1e-4)


def test_nonorm_divides_by_the_exact_softmax_denominators():
  # Its implied weights are the exact softmax probabilities on the sampled
  # columns and 0 elsewhere: numerators exp(l_ij), denominators sum_j exp(l_ij)
  # over all real keys. So its row sums are the sampled softmax mass (< 1).
  weights, draws, q, k, mask = _implied_weights("skein_nonorm")
  one_hot = jnp.broadcast_to(jnp.eye(LENGTH)[None, :, None, :], q.shape)
  exact = np.asarray(attention.softmax_attention(q, k, one_hot, mask), np.float64)
  for b in range(len(LENGTHS)):
    d = int(draws.sample_size[b])
    for h in range(HEADS):
      sampled = np.zeros(LENGTH, bool)
      sampled[np.asarray(draws.columns[b, h, :d])] = True
      w, p = weights[b, mask[b], h], exact[b, mask[b], h]
      np.testing.assert_allclose(w[:, sampled], p[:, sampled], rtol=1e-5, atol=1e-7)
      assert np.all(w[:, ~sampled] == 0)
      np.testing.assert_allclose(w.sum(-1), p[:, sampled].sum(-1), rtol=1e-5)
      assert np.all(w.sum(-1) < 1 - 1e-3)


def test_skeinformer_pilot_rows_are_exact_and_nopilot_rows_are_not():
  q, k, v, mask = _inputs()
  rng = jax.random.key(8)
  exact = np.asarray(attention.softmax_attention(q, k, v, mask))
  with_pilot, draws = _run(q, k, v, mask, rng, "skeinformer")
  without = np.asarray(_run(q, k, v, mask, rng, "skein_nopilot")[0])
  for b, d in enumerate(np.asarray(draws.sample_size)):
    pilot = np.unique(np.asarray(draws.pilot[b, :d]))
    others = np.setdiff1d(np.flatnonzero(np.asarray(mask)[b]), pilot)
    np.testing.assert_allclose(with_pilot[b, pilot], exact[b, pilot], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(with_pilot[b, others], without[b, others], rtol=1e-6, atol=1e-6)
    assert np.abs(without[b, pilot] - exact[b, pilot]).max() > 1e-2


@jax.jit
def _loss_and_grad(q, k, v, mask, rng, weights):
  """A skeinformer loss and its gradient in v (one program for the tests below)."""
  return jax.value_and_grad(
      lambda v: jnp.sum(weights * _run(q, k, v, mask, rng, "skeinformer")[0]))(v)


def test_duplicated_pilot_rows_are_differentiated_once():
  # Given the draws the output is linear in v, so a central difference along
  # any direction is exact up to rounding; a row written once per duplicate
  # pilot slot would count twice in the gradient.
  q, k, v, mask = _inputs()
  for seed in range(20):  # the case under test: sequence 2 draws a pilot row twice
    rng = jax.random.key(seed)
    draws = _run(q, k, v, mask, rng, "skeinformer")[1]
    if len(np.unique(np.asarray(draws.pilot[2, :3]))) < 3:
      break
  else:
    raise AssertionError("no duplicated pilot row in 20 keys")
  weights = jax.random.normal(jax.random.key(10), q.shape) * mask[:, :, None, None]
  direction = jax.random.normal(jax.random.key(11), v.shape) * mask[:, :, None, None]
  eps = 1e-2
  for sign in (1, -1):  # the sampled column sets must not move with the perturbation
    moved = _run(q, k, v + sign * eps * direction, mask, rng, "skeinformer")[1]
    for b, d in enumerate(np.asarray(draws.sample_size)):
      np.testing.assert_array_equal(np.sort(moved.columns[b, :, :d]), np.sort(draws.columns[b, :, :d]))
  plus, _ = _loss_and_grad(q, k, v + eps * direction, mask, rng, weights)
  minus, _ = _loss_and_grad(q, k, v - eps * direction, mask, rng, weights)
  _, grad = _loss_and_grad(q, k, v, mask, rng, weights)
  np.testing.assert_allclose(jnp.sum(grad * direction), (plus - minus) / (2 * eps), rtol=1e-3)


def test_each_sequence_ignores_the_others_unless_the_sample_size_is_shared():
  q, k, v, mask = _inputs()
  longer = jnp.asarray(mask).at[2, :8].set(True)  # sequence 2: 4 -> 8 real tokens
  rng = jax.random.key(12)
  for name in ESTIMATORS:
    a, b = (_run(q, k, v, m, rng, name)[0] for m in (mask, longer))
    np.testing.assert_allclose(a[:2], b[:2], rtol=1e-6, atol=1e-6)
  a, b = (_run(q, k, v, m, rng, "skeinformer", sample_size_from_batch=True)[0]
          for m in (mask, longer))
  assert np.abs(np.asarray(a[0]) - np.asarray(b[0])).max() > 1e-3


def test_sequences_with_one_or_no_real_token():
  q, k, v, mask = _inputs(lengths=(16, 1, 0))
  for name in ESTIMATORS:
    out = np.asarray(_run(q, k, v, mask, jax.random.key(13), name)[0])
    assert np.all(np.isfinite(out)) and np.all(out[2] == 0)
    np.testing.assert_allclose(out[1, 0], np.asarray(v)[1, 0], rtol=1e-6)  # one token: itself
  _, grad = _loss_and_grad(q, k, v, mask, jax.random.key(13), jnp.ones_like(q))
  assert np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------
# Modules, options and errors.


def _rngs(seed):
  return {"params": jax.random.key(0), attention.ATTENTION_RNG: jax.random.key(seed)}


def test_module_redraws_every_call_in_training_and_evaluation():
  q, k, v, mask = _inputs()
  module = attention.SkeinformerAttention(nb_features=NB)
  assert not jax.eval_shape(lambda: module.init(_rngs(1), q, k, v, mask, deterministic=True))
  # deterministic is unused by the module, so one program serves both values.
  apply = jax.jit(lambda rng, deterministic: module.apply(
      {}, q, k, v, mask, deterministic=deterministic, rngs={attention.ATTENTION_RNG: rng}))
  np.testing.assert_array_equal(apply(jax.random.key(2), True), apply(jax.random.key(2), False))
  assert not np.allclose(apply(jax.random.key(2), True), apply(jax.random.key(3), True))


def test_module_with_fixed_draws_keeps_one_key_in_constants():
  q, k, v, mask = _inputs()
  module = attention.SkeinformerAttention(nb_features=NB, redraw_samples=False)
  # The trainer initialises on one all-padding sequence of the full length.
  dummy = jnp.zeros((1, LENGTH, HEADS, HEAD_DIM))
  init = jax.jit(lambda seed: module.init(_rngs(seed), dummy, dummy, dummy,
                                          jnp.zeros((1, LENGTH), bool), deterministic=True))
  variables = init(1)
  assert set(variables) == {"constants"}
  key_data = variables["constants"]["sample_key"]
  assert key_data.dtype == jnp.uint32
  assert not np.array_equal(init(4)["constants"]["sample_key"], key_data)
  apply = jax.jit(lambda variables, rng: module.apply(variables, q, k, v, mask, deterministic=False,
                                                      rngs={attention.ATTENTION_RNG: rng}))
  outs = [apply(variables, jax.random.key(seed)) for seed in (2, 3)]
  np.testing.assert_array_equal(outs[0], outs[1])
  expected = _run(q, k, v, mask, jax.random.wrap_key_data(key_data), "skeinformer")[0]
  np.testing.assert_allclose(outs[0], expected, rtol=1e-6, atol=1e-6)


def test_each_module_runs_its_variant():
  # The modules share SkeinformerAttention.__call__ (tested above) and differ
  # only by the switches they pass to skein_attention.
  for name in ESTIMATORS:
    assert attention.get(name).switches == dict(
        zip(("sampling", "normalisation", "pilot_replacement"), SWITCHES[name]))
    assert issubclass(attention.get(name), attention.SkeinformerAttention)


def test_vmean_module_has_no_variables_and_no_randomness():
  q, k, v, mask = _inputs()
  module = attention.VmeanAttention()
  assert not module.init(_rngs(1), q, k, v, mask, deterministic=True)
  np.testing.assert_array_equal(module.apply({}, q, k, v, mask, deterministic=True),
                                attention.vmean_attention(q, k, v, mask))
  assert attention.default_hyperparameters("vmean") == {}


def test_default_hyperparameters_are_the_reference_values():
  for name in ESTIMATORS:
    assert attention.default_hyperparameters(name) == dict(
        nb_features=256, redraw_samples=True, sample_size_from_batch=False, chunk_size=1024)


def test_bad_arguments_raise_clear_errors():
  q, k, v, mask = _inputs()
  with pytest.raises(ValueError, match="PRNG key"):
    attention.skeinformer_attention(q, k, v, mask)
  with pytest.raises(ValueError, match="nb_features must be a positive"):
    attention.skeinformer_attention(q, k, v, mask, rng=jax.random.key(0), nb_features=0)
  with pytest.raises(ValueError, match="Unknown normalisation"):
    sk.skein_attention(q, k, v, mask, rng=jax.random.key(0), normalisation="none")
  with pytest.raises(ValueError, match="only sampling='importance'"):
    sk.skein_attention(q, k, v, mask, rng=jax.random.key(0), sampling="uniform")
  with pytest.raises(ValueError, match="self-attention"):
    attention.vmean_attention(q, k[:, :3], v, mask)
