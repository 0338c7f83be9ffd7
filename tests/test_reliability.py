"""Preemption, kill -9, unreadable checkpoints and non-finite steps."""

import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_jax import checkpointing, parallel, steps, trainer
from test_trainer import tiny_config  # pytest puts tests/ on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 40

# tiny_config's settings as a config file, for `python -m lra_jax.train`.
CONFIG_FILE = """
from lra_jax import base_config


def get_config():
  config = base_config.get_config("listops", "softmax", "official")
  config.data.update(data_dir={data_dir!r}, max_length=48, padded_length=48, batch_size=8,
                     eval_batch_size=8, shuffle_buffer_size=64, generate_if_missing=True)
  config.data.listops_generator.update(num_train=96, num_val=20, num_test=20, min_length=8,
                                       max_length=48, max_depth=4, max_args=4, seed=1)
  config.model.update(emb_dim=16, num_heads=2, num_layers=1, qkv_dim=16, mlp_dim=32,
                      classifier_hidden_dims=(32,))
  config.train.update(num_train_steps={num_steps}, eval_every_steps=20, log_every_steps=10,
                      checkpoint_every_steps=4, warmup_steps=2, learning_rate=0.5)
  return config
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("listops")


@pytest.fixture(scope="module")
def config_file(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "tiny.py"
  path.write_text(CONFIG_FILE.format(data_dir=str(data_dir), num_steps=NUM_STEPS))
  return path


def _load_config(path):
  spec = importlib.util.spec_from_file_location("tiny_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
  """Final parameters of the config file's run, trained in one go (in this process:
  the subprocesses inherit its device count and XLA flags)."""
  state = trainer.train_and_evaluate(_load_config(config_file), tmp_path_factory.mktemp("straight"))
  return jax.tree.map(np.asarray, state.params)


def _start(config_file, workdir):
  return subprocess.Popen(
      [sys.executable, "-m", "lra_jax.train", f"--config={config_file}", f"--workdir={workdir}"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _steps(directory):
  return sorted(int(p.name) for p in pathlib.Path(directory).glob("*") if p.name.isdigit())


def _wait_for_checkpoint(process, workdir, min_step, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    found = [s for s in _steps(workdir / "checkpoints") if s >= min_step]
    if found:
      return found[-1]
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.02)
  process.kill()
  raise AssertionError(f"no checkpoint >= {min_step} within {timeout} s")


def _final_params(config_file, workdir):
  run = trainer.Run(_load_config(config_file), workdir)
  try:
    state, _ = run.checkpoints.restore_latest(run.abstract_state)
  finally:
    run.checkpoints.close()
  assert int(state.step) == NUM_STEPS
  return jax.tree.map(np.asarray, state.params)


def _finish(config_file, workdir):
  result = subprocess.run(
      [sys.executable, "-m", "lra_jax.train", f"--config={config_file}", f"--workdir={workdir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((workdir / "results.json").read_text())["final"]["step"] == NUM_STEPS
  return result


def test_kill_9_mid_run_then_rerun_gives_bit_identical_parameters(config_file, uninterrupted,
                                                                   tmp_path):
  process = _start(config_file, tmp_path)
  _wait_for_checkpoint(process, tmp_path, 12)
  process.kill()  # SIGKILL: no handler, no clean-up; maybe mid-save
  process.communicate()
  killed_at = _steps(tmp_path / "checkpoints")
  assert killed_at[-1] < NUM_STEPS and not (tmp_path / "results.json").exists()

  result = _finish(config_file, tmp_path)
  assert f"Resumed from step {killed_at[-1]}" in result.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(config_file, tmp_path), uninterrupted)


def test_sigterm_checkpoints_the_current_step_exits_0_and_rerun_resumes(
    config_file, uninterrupted, tmp_path):
  process = _start(config_file, tmp_path)
  _wait_for_checkpoint(process, tmp_path, 8)
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  seconds = time.monotonic() - sent
  assert process.returncode == 0, stderr[-3000:]
  assert seconds < 10
  stopped_at = int(stderr.split("Preempted at step ")[1].split(":")[0])
  assert 8 <= stopped_at < NUM_STEPS
  assert _steps(tmp_path / "checkpoints")[-1] == stopped_at
  assert not (tmp_path / "results.json").exists()  # no report of an unfinished run

  result = _finish(config_file, tmp_path)
  assert f"Resumed from step {stopped_at}" in result.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(config_file, tmp_path), uninterrupted)


def test_sigterm_handler_is_restored_after_training(data_dir, tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=1), tmp_path)
  assert signal.getsignal(signal.SIGTERM) is before


def _corrupt(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, caplog):
  trainer.train_and_evaluate(tiny_config(data_dir), tmp_path)  # checkpoints 3 and 6
  assert _steps(tmp_path / "checkpoints") == [3, 6]
  _corrupt(tmp_path / "checkpoints" / "6")

  with caplog.at_level(logging.INFO):
    state = trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=9), tmp_path)
  assert int(state.step) == 9
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("step 6" in m and "unreadable" in m for m in warnings), warnings
  assert any("Resumed from step 3" in r.getMessage() for r in caplog.records)
  # Set aside, not deleted; the resumed run wrote step 6 afresh, then 9.
  assert [p.name.split("_")[:2] for p in (tmp_path / checkpointing.CORRUPT_DIR).iterdir()] == [
      ["checkpoints", "6"]]
  assert _steps(tmp_path / "checkpoints") == [6, 9]
  assert json.loads((tmp_path / trainer.RESULTS_FILE).read_text())["final"]["step"] == 9


def test_no_readable_checkpoint_is_an_error_and_nothing_is_moved(data_dir, tmp_path):
  trainer.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), tmp_path)
  _corrupt(tmp_path / "checkpoints" / "3")
  with pytest.raises(FileNotFoundError, match="could be read"):
    trainer.train_and_evaluate(tiny_config(data_dir), tmp_path)
  assert _steps(tmp_path / "checkpoints") == [3]
  assert not (tmp_path / checkpointing.CORRUPT_DIR).exists()


@pytest.fixture
def poison_step(monkeypatch):
  """poison_step(k): the update that makes step k sees NaN logits (a test-only fault)."""
  offset = {"value": 0.0}
  real_forward, real_train_step = steps._forward, steps.train_step

  def forward(*args, **kwargs):
    return real_forward(*args, **kwargs) + offset["value"]

  def poison(bad_step):
    def train_step(state, batch, rng, **kwargs):
      offset["value"] = jnp.where(state.step + 1 == bad_step, jnp.nan, 0.0)
      try:
        return real_train_step(state, batch, rng, **kwargs)
      finally:
        offset["value"] = 0.0

    monkeypatch.setattr(steps, "_forward", forward)
    monkeypatch.setattr(steps, "train_step", train_step)  # Run jits steps.train_step

  return poison


def test_nonfinite_step_stops_naming_it_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, poison_step):
  poison_step(5)
  config = tiny_config(data_dir, checkpoint_every_steps=2)
  with pytest.raises(trainer.NonFiniteError, match="at step 5 .*last good checkpoint \\(4\\)"):
    trainer.train_and_evaluate(config, tmp_path)
  assert _steps(tmp_path / "checkpoints") == [2, 4]  # step 6 (after the NaN) never saved
  assert all(s <= 4 for s in _steps(tmp_path / "best"))
  assert not (tmp_path / trainer.RESULTS_FILE).exists()
  run = trainer.Run(config, tmp_path)
  try:
    state, _ = run.checkpoints.restore_latest(run.abstract_state)
  finally:
    run.checkpoints.close()
  assert int(state.step) == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.tree.map(np.asarray, state)))


def test_skip_nonfinite_steps_completes_and_counts_the_skips(data_dir, tmp_path, poison_step):
  poison_step(5)
  state = trainer.train_and_evaluate(tiny_config(data_dir, skip_nonfinite_steps=True), tmp_path)
  assert int(state.step) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.tree.map(np.asarray, state.params)))
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  assert results["nonfinite_steps_skipped"] == 1
  assert np.isfinite(results["final"]["test"]["loss"])


def test_skipped_step_keeps_parameters_and_optimiser_state_and_advances_the_step(
    data_dir, tmp_path, poison_step):
  poison_step(1)
  config = tiny_config(data_dir, skip_nonfinite_steps=True)
  run = trainer.Run(config, tmp_path)
  before = jax.tree.map(np.asarray, run.initial_state)
  batch = {"inputs": np.ones((8, 48), np.int32), "targets": np.zeros(8, np.int32),
           "valid": np.ones(8, bool)}
  state, metrics = run.train_step(run.initial_state, parallel.global_batch(batch, run.mesh),
                                  run.train_rng)
  run.checkpoints.close()
  assert int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params),
               before.params)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.opt_state),
               before.opt_state)
  computed = metrics.compute()
  assert int(computed["nonfinite_steps"]) == 1 and int(computed["first_nonfinite_step"]) == 1
