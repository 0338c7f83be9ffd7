"""End-to-end training on tiny generated ListOps: results, resume, devices, accumulation."""

import functools
import json

import jax
import numpy as np
import pytest

from lra_jax import base_config, errors, models, parallel, steps, trainer


def tiny_config(data_dir, **train_overrides):
  """ListOps, official protocol, shrunk to seconds on a CPU."""
  config = base_config.get_config("listops", "softmax", "official")
  config.data.update(data_dir=str(data_dir), max_length=48, padded_length=48, batch_size=8,
                     eval_batch_size=8, shuffle_buffer_size=64, generate_if_missing=True)
  config.data.listops_generator.update(num_train=96, num_val=20, num_test=20, min_length=8,
                                       max_length=48, max_depth=4, max_args=4, seed=1)
  config.model.update(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=32,
                      classifier_hidden_dims=(32,))
  config.train.update(num_train_steps=6, eval_every_steps=3, log_every_steps=3,
                      checkpoint_every_steps=3, warmup_steps=2, learning_rate=0.5)
  config.train.update(**train_overrides)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("listops")


def _params(state):
  return jax.tree.map(np.asarray, state.params)


def test_train_and_evaluate_writes_results_checkpoints_and_logs(data_dir, tmp_path):
  state = trainer.train_and_evaluate(tiny_config(data_dir), tmp_path)
  assert int(state.step) == 6
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  for which in ("final", "best"):
    for split in ("validation", "test"):
      metrics = results[which][split]
      assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])
  assert results["final"]["step"] == 6
  assert results["best"]["step"] in (3, 6)
  assert 0.0 < results["test_majority_class_accuracy"] <= 1.0
  assert (tmp_path / "checkpoints" / "6").is_dir()
  assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard event file"

  evaluated = trainer.evaluate_checkpoints(tiny_config(data_dir), tmp_path)
  assert evaluated["final"] == results["final"]
  assert json.loads((tmp_path / trainer.EVAL_RESULTS_FILE).read_text())["best"] == results["best"]


def test_resume_reaches_the_same_parameters_as_one_run(data_dir, tmp_path):
  stopped_then_resumed = tmp_path / "resumed"
  trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), stopped_then_resumed)
  resumed = trainer.train_and_evaluate(tiny_config(data_dir), stopped_then_resumed)
  uninterrupted = trainer.train_and_evaluate(tiny_config(data_dir), tmp_path / "straight")
  assert int(resumed.step) == int(uninterrupted.step) == 6
  jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(uninterrupted))


def test_constants_are_fixed_checkpointed_and_restored(data_dir, tmp_path):
  # Performer with features drawn once at initialisation: a 'constants' variable.
  def config(**overrides):
    c = tiny_config(data_dir, **overrides)
    c.model.attention = "performer"
    c.model.attention_kwargs.update(nb_features=8, redraw_features=False)
    return c

  run = trainer.Run(config(), tmp_path / "straight")
  initial = jax.tree.map(np.asarray, run.initial_state.constants)
  assert jax.tree.leaves(initial), "performer with redraw_features=False has no constants"
  uninterrupted = trainer.train_and_evaluate(config(), tmp_path / "straight")
  jax.tree.map(np.testing.assert_array_equal,
               jax.tree.map(np.asarray, uninterrupted.constants), initial)  # never trained

  trainer.train_and_evaluate(config(num_train_steps=3), tmp_path / "resumed")
  resumed = trainer.train_and_evaluate(config(), tmp_path / "resumed")
  jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(uninterrupted))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed.constants), initial)


def _one_step(config, mesh, batch):
  model = models.create_model(config)
  state = trainer.create_train_state(config, model, jax.random.key(0), mesh)
  step = jax.jit(functools.partial(steps.train_step, model=model, input_names=("inputs",),
                                   grad_accum_steps=config.train.grad_accum_steps),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh),
                               parallel.replicated(mesh)))
  state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(1))
  return _params(state), metrics.compute()


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  size, length = config.data.batch_size, config.data.padded_length
  lengths = rng.integers(5, length, size)
  inputs = rng.integers(1, 17, (size, length)) * (np.arange(length)[None] < lengths[:, None])
  return {"inputs": inputs.astype(np.int32), "targets": rng.integers(0, 10, size).astype(np.int32),
          "valid": np.ones(size, bool)}


def test_one_step_is_the_same_on_one_and_four_devices(data_dir):
  config = tiny_config(data_dir)
  config.train.factors = "constant"  # a nonzero learning rate at step 0
  batch = _batch(config)
  params_1, metrics_1 = _one_step(config, parallel.create_mesh(jax.devices()[:1]), batch)
  params_4, metrics_4 = _one_step(config, parallel.create_mesh(jax.devices()), batch)
  assert len(jax.devices()) == 4
  np.testing.assert_allclose(metrics_4["loss"], metrics_1["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics_4["accuracy"], metrics_1["accuracy"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_4, params_1)


def test_gradient_accumulation_gives_the_same_update(data_dir):
  config = tiny_config(data_dir)
  config.train.factors = "constant"
  config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  mesh = parallel.create_mesh()
  batch = _batch(config, seed=3)
  params_1, metrics_1 = _one_step(config, mesh, batch)
  config.train.grad_accum_steps = 2
  params_2, metrics_2 = _one_step(config, mesh, batch)
  np.testing.assert_allclose(metrics_2["loss"], metrics_1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_2, params_1)
  assert not np.allclose(params_1["head"]["logits"]["bias"], 0.0)  # the step did update


def test_batch_not_divisible_by_devices_is_a_config_error(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.data.batch_size = 6
  with pytest.raises(errors.ConfigError, match="divisible by the number of devices"):
    trainer.train_and_evaluate(config, tmp_path)


def test_workdir_of_another_model_is_refused_and_kept(data_dir, tmp_path):
  trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), tmp_path)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  config = tiny_config(data_dir)
  config.model.num_layers = 2
  with pytest.raises(errors.ConfigError, match="different 'model'"):
    trainer.train_and_evaluate(config, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_eval_mode_without_checkpoint_says_to_train_first(data_dir, tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="train first"):
    trainer.evaluate_checkpoints(tiny_config(data_dir), tmp_path)



def test_early_stopping_counts_evaluations_without_a_lower_validation_loss():
  c = tiny_config(".", early_stopping_patience=2, early_stopping_min_steps=0).train
  meta = dict(trainer._EARLY_STOPPING_DEFAULTS)
  stopped = []
  for step, loss in enumerate([1.0, 0.9, 0.95, 0.9], start=1):
    meta.update(trainer._early_stopping_updates(c, meta, loss, step))
    stopped.append(meta["early_stopped_at_step"])
  # 0.9 is not below the best 0.9: the second evaluation without improvement.
  assert stopped == [None, None, None, 4]
  assert meta["best_validation_loss"] == 0.9
  c.early_stopping_min_steps = 6
  meta = dict(trainer._EARLY_STOPPING_DEFAULTS)
  for step, loss in enumerate([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], start=1):
    meta.update(trainer._early_stopping_updates(c, meta, loss, step))
    assert (meta["early_stopped_at_step"] is None) == (step < 6)


def test_early_stopped_run_reports_its_last_state_and_stays_stopped(data_dir, tmp_path, monkeypatch):
  scripted = iter([1.0, 0.5, 0.7, 0.6])  # validation losses at steps 2, 4, 6, 8
  evaluate = trainer.Run.evaluate

  def scripted_evaluate(self, state, dataset, num_steps=-1):
    metrics = evaluate(self, state, dataset, num_steps)
    return {**metrics, "loss": next(scripted, metrics["loss"])}

  monkeypatch.setattr(trainer.Run, "evaluate", scripted_evaluate)
  config = tiny_config(data_dir, num_train_steps=20, eval_every_steps=2, log_every_steps=2,
                       checkpoint_every_steps=100, early_stopping_patience=2)
  state = trainer.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 8
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  assert results["final"]["step"] == 8
  assert results["best_validation_during_training"]["early_stopped_at_step"] == 8
  assert (tmp_path / "checkpoints" / "8").is_dir()
  # Running the same command again resumes the stopped run: nothing more to train.
  assert int(trainer.train_and_evaluate(config, tmp_path).step) == 8


def test_non_positive_patience_is_a_config_error(data_dir, tmp_path):
  with pytest.raises(errors.ConfigError, match="early_stopping_patience"):
    trainer.train_and_evaluate(tiny_config(data_dir, early_stopping_patience=0), tmp_path)
