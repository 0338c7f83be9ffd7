"""Learning-rate schedules and the optimiser against the references' numbers."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lra_jax import base_config, errors, optim, schedules


def test_official_listops_rsqrt_schedule():
  lr = schedules.create_learning_rate_fn(base_config.get_config("listops").train)
  assert float(lr(0)) == 0.0  # linear warm-up starts at zero
  np.testing.assert_allclose(lr(500), 0.05 * 0.5 / np.sqrt(1000), rtol=1e-6)
  np.testing.assert_allclose(lr(1000), 1.581e-3, rtol=1e-3)  # the documented peak
  np.testing.assert_allclose(lr(5000), 7.07e-4, rtol=1e-3)


def test_official_image_cosine_schedule():
  train = base_config.get_config("image").train
  lr = schedules.create_learning_rate_fn(train)
  np.testing.assert_allclose(lr(train.warmup_steps), train.learning_rate, rtol=1e-6)
  halfway = train.warmup_steps + train.steps_per_cycle // 2
  np.testing.assert_allclose(lr(halfway), train.learning_rate / 2, rtol=1e-3)
  assert float(lr(train.num_train_steps)) < 0.01 * train.learning_rate


def test_one_cycle_matches_torch_onecycle_linear():
  # Nystromformer ListOps, verified there numerically: 4e-6 at step 0, 1e-4 at
  # warm-up - 1, 4e-10 at the last step.
  train = base_config.get_config("listops", protocol="pytorch_lra").train
  train.update(num_train_steps=5_000, warmup_steps=1_000)
  lr = schedules.create_learning_rate_fn(train)
  np.testing.assert_allclose(lr(0), 4e-6, rtol=1e-6)
  np.testing.assert_allclose(lr(999), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(lr(4999), 4e-10, rtol=1e-3)
  np.testing.assert_allclose(lr(499.5), (4e-6 + 1e-4) / 2, rtol=1e-6)
  b1 = schedules.create_b1_fn(train)
  np.testing.assert_allclose([b1(0), b1(999), b1(4999)], [0.95, 0.85, 0.95], rtol=1e-6)


def test_unknown_factor_is_a_config_error():
  train = base_config.get_config("listops").train
  train.factors = "constant * linear_warmup * inverse_sqrt"
  with pytest.raises(errors.ConfigError, match="rsqrt_decay"):
    schedules.create_learning_rate_fn(train)


def test_adamw_is_flax_adam_with_decoupled_weight_decay():
  """flax.optim.Adam: p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p)."""
  train = base_config.get_config("listops").train
  tx = optim.create_optimizer(train)
  params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  grads = {"w": jnp.asarray([0.5, 0.1, -0.3])}
  state = tx.init(params)
  for _ in range(2):  # step 0 has learning rate 0; check step 1
    updates, state = tx.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    if _ == 0:
      np.testing.assert_array_equal(new_params["w"], params["w"])
  lr = 0.05 * (1 / 1000) / np.sqrt(1000)
  g = np.asarray(grads["w"])
  m = (1 - 0.9) * g * (1 + 0.9)  # two identical gradients
  v = (1 - 0.98) * g**2 * (1 + 0.98)
  m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.98**2)
  expected = np.asarray(params["w"]) - lr * (m_hat / (np.sqrt(v_hat) + 1e-9) + 0.1 * np.asarray(params["w"]))
  np.testing.assert_allclose(new_params["w"], expected, rtol=1e-5)


def test_pytorch_lra_clips_gradient_values():
  train = base_config.get_config("listops", protocol="pytorch_lra").train
  tx = optim.create_optimizer(train)
  params = {"w": jnp.zeros(2)}
  small = tx.update({"w": jnp.asarray([1.0, -1.0])}, tx.init(params), params)[0]
  huge = tx.update({"w": jnp.asarray([1e6, -1e6])}, tx.init(params), params)[0]
  np.testing.assert_allclose(huge["w"], small["w"], rtol=1e-6)


