"""The generic encoder and its classifiers: sizes, padding, pooling, init styles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import base_config, errors, models
from lra_jax.models import encoder as encoder_lib

# Parameter counts the references state. PyTorch LRA harness: exact
# (skyformer_skeinformer.md §2); official LRA: rounded (lra_official_jax.md §4.6).
PYTORCH_LRA_PARAMS = {"listops": 209_802, "text": 370_562, "retrieval": 395_138,
                      "pathfinder": 173_954, "image": 158_602}
OFFICIAL_PARAMS_MILLIONS = {"listops": 8.95, "text": 3.49, "retrieval": 1.09, "image": 0.25,
                            "pathfinder": 0.027}


def _param_count(config):
  model = models.create_model(config)
  dummy = [jnp.zeros((1, config.data.padded_length), jnp.int32) for _ in models.input_names(config)]
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy, deterministic=True))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("task", sorted(base_config.TASKS))
def test_parameter_counts_match_the_references(task):
  pytorch_lra = base_config.get_config(task, "softmax", "pytorch_lra")
  if task in base_config.PIXEL_TASKS:
    # The harness's pixel ids (black = padding): one embedding row fewer than ours.
    pytorch_lra.data.black_pixels_are_padding = True
  assert _param_count(pytorch_lra) == PYTORCH_LRA_PARAMS[task]
  millions = _param_count(base_config.get_config(task, "softmax", "official")) / 1e6
  expected = OFFICIAL_PARAMS_MILLIONS[task]
  assert abs(millions - expected) <= 0.006 * max(1.0, expected), millions


def _tiny(**model_overrides):
  config = base_config.get_config("listops", "softmax", "official")
  config.data.padded_length = 32
  config.model.update(emb_dim=16, num_heads=2, num_layers=2, qkv_dim=16, mlp_dim=32,
                      classifier_hidden_dims=(32,), **model_overrides)
  return config


def _logits(config, inputs, params=None):
  model = models.create_model(config)
  if params is None:
    params = model.init(jax.random.key(0), inputs, deterministic=True)["params"]
  return model.apply({"params": params}, inputs, deterministic=True), params


def _padded(tokens, length):
  return jnp.asarray([tokens + [0] * (length - len(tokens))], jnp.int32)


@pytest.mark.parametrize("pooling,position_embedding",
                         [("CLS", "sinusoidal"), ("MEAN", "learned"), ("MEAN", "sinusoidal")])
def test_logits_do_not_depend_on_padding(pooling, position_embedding):
  config = _tiny(pooling=pooling, position_embedding=position_embedding)
  tokens = [3, 5, 1, 2, 9, 4, 4, 7, 11]
  long, params = _logits(config, _padded(tokens, 32))
  short, _ = _logits(config, _padded(tokens, 12), params)
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-5)


def test_reference_mean_poolings_differ_as_documented():
  encoded = jax.random.normal(jax.random.key(0), (2, 6, 4))
  mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], bool)
  real = models.pool(encoded, mask, "MEAN", "real_tokens")
  np.testing.assert_allclose(real[1], encoded[1, :2].mean(0), rtol=1e-6)
  np.testing.assert_allclose(models.pool(encoded, mask, "MEAN", "zeroed_padding")[1],
                             real[1] * 2 / 6, rtol=1e-6)
  np.testing.assert_allclose(models.pool(encoded, mask, "MEAN", "all_positions")[1],
                             encoded[1].mean(0), rtol=1e-6)
  np.testing.assert_allclose(models.pool(encoded, mask, "CLS", "real_tokens"), encoded[:, 0])


def test_sinusoidal_table_is_interleaved_sin_cos():
  table = encoder_lib.sinusoidal_table(50, 8)
  position, i = 17, 2
  frequency = 10_000.0 ** (-2 * i / 8)
  np.testing.assert_allclose(table[position, 2 * i], np.sin(position * frequency), rtol=1e-6)
  np.testing.assert_allclose(table[position, 2 * i + 1], np.cos(position * frequency), rtol=1e-6)


def test_cls_token_is_zero_initialised_and_counted_real():
  config = _tiny()
  model = models.create_model(config)
  params = model.init(jax.random.key(0), _padded([1, 2], 32), deterministic=True)["params"]
  np.testing.assert_array_equal(params["encoder"]["cls"], 0.0)
  encoder = models.Encoder(model.config)
  _, mask = encoder.apply({"params": params["encoder"]}, _padded([0, 2], 32), deterministic=True)
  assert mask.shape == (1, 33) and bool(mask[0, 0])


def test_dual_encoder_shares_one_encoder():
  config = base_config.get_config("retrieval", "softmax", "pytorch_lra")
  config.data.padded_length = 16
  model = models.create_model(config)
  x1 = _padded([1, 2, 3], 16)
  x2 = _padded([4, 5, 6, 7], 16)
  params = model.init(jax.random.key(0), x1, x2, deterministic=True)["params"]
  assert set(params) == {"encoder", "head"}
  assert params["head"]["hidden_0"]["kernel"].shape == (4 * 64, 128)  # [u, v, u*v, u-v]
  logits = model.apply({"params": params}, x1, x2, deterministic=True)
  swapped = model.apply({"params": params}, x2, x1, deterministic=True)
  assert logits.shape == (1, 2)
  assert not np.allclose(logits, swapped)


def test_pytorch_init_is_uniform_within_inverse_sqrt_fan_in():
  config = _tiny(init="pytorch", attention_bias=True)
  model = models.create_model(config)
  params = model.init(jax.random.key(0), _padded([1], 32), deterministic=True)["params"]
  mlp = params["encoder"]["block_0"]["mlp"]
  for name, fan_in in (("dense_in", 16), ("dense_out", 32)):
    for leaf in (mlp[name]["kernel"], mlp[name]["bias"]):
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.5 * bound
  assert "bias" in params["encoder"]["block_0"]["attention"]["query"]


def test_jax_init_has_tiny_mlp_biases_and_no_attention_bias():
  config = _tiny()
  model = models.create_model(config)
  params = model.init(jax.random.key(0), _padded([1], 32), deterministic=True)["params"]
  bias = params["encoder"]["block_0"]["mlp"]["dense_in"]["bias"]
  assert 0 < np.abs(bias).max() < 1e-4
  assert "bias" not in params["encoder"]["block_0"]["attention"]["query"]


def test_bfloat16_model_runs_with_float32_params_and_logits():
  config = _tiny(dtype="bfloat16")
  logits, params = _logits(config, _padded([1, 2, 3], 32))
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("field,value", [("pooling", "MAX"), ("mean_pooling", "nope"),
                                         ("init", "torch"), ("attention", "nope")])
def test_bad_model_settings_fail_with_valid_values(field, value):
  config = _tiny()
  config.model[field] = value
  with pytest.raises(errors.ConfigError, match="alid"):
    models.create_model(config)


