"""Bad input through the command line: one paragraph, exit status 2, no traceback, workdir kept.

Every case stops before a model is built or data is read, so each run costs
only the interpreter's start (and, past flag parsing, importing TensorFlow).
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from lra_jax import attention, base_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The quickstart config, shrunk; data_dir is set per test.
TINY = ["--config=configs/quickstart.py", "--config.model.num_layers=1",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.data.generate_if_missing=False"]


def _train(*args):
  """python -m lra_jax.train ARGS (4 simulated devices, inherited from conftest)."""
  return subprocess.run([sys.executable, "-m", "lra_jax.train", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=180,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def _error(result) -> str:
  """The one-paragraph error, after checking the exit status and that no traceback shows."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: "), result.stderr[-3000:]
  return error


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
  """Relative path -> content digest of every file under `directory`."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_run(tmp_path) -> pathlib.Path:
  """A workdir holding the checkpoint and config.json of an earlier run (num_layers=3)."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "checkpoints" / "3" / "state").write_bytes(b"parameters of step 3")
  spec = importlib.util.spec_from_file_location("quickstart", ROOT / "configs" / "quickstart.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.num_layers = 3
  (workdir / "config.json").write_text(json.dumps(config.to_dict(), default=str))
  return workdir


def _train_in(workdir, *args):
  before = _snapshot(workdir)
  result = _train(f"--workdir={workdir}", *args)
  assert _snapshot(workdir) == before, "the workdir was changed"
  return result


def test_unknown_task_lists_the_tasks(existing_run):
  error = _error(_train_in(existing_run, "--config=configs/lra.py:listopz,softmax"))
  assert "Unknown task 'listopz'" in error
  for task in base_config.TASKS:
    assert task in error


def test_unknown_attention_lists_the_methods(existing_run):
  error = _error(_train_in(existing_run, "--config=configs/lra.py:listops,nystromformer"))
  assert "Unknown attention method 'nystromformer'" in error
  for name in attention.names():
    assert name in error


@pytest.mark.parametrize("override, suggestion", [
    ("model.num_layerz", "model.num_layers"),
    ("modle.num_layers", "model.num_layers"),
    ("train.learning_rat", "train.learning_rate"),
])
def test_misspelt_config_field_names_the_nearest_field(existing_run, override, suggestion):
  error = _error(_train_in(existing_run, *TINY, f"--config.{override}=2"))
  assert f"no field {override}" in error and f"Did you mean {suggestion}?" in error


def test_unparsable_value_and_unknown_flag_are_one_line(existing_run):
  error = _error(_train_in(existing_run, *TINY, "--config.model.num_layers=two"))
  assert "config.model.num_layers" in error and "'two'" in error
  error = _error(_train_in(existing_run, *TINY, "--workdri=elsewhere"))
  assert "workdri" in error and "workdir" in error


def test_verbose_shows_the_traceback(existing_run):
  result = _train_in(existing_run, *TINY, "--config.model.num_layerz=2", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr
  result = _train_in(existing_run, *TINY, "--config.model.qkv_dim=30", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "ConfigError" in result.stderr


def test_head_dimension_that_does_not_split(existing_run):
  error = _error(_train_in(existing_run, *TINY, "--config.model.qkv_dim=30",
                           "--config.model.num_heads=4"))
  assert "model.qkv_dim=30" in error and "model.num_heads=4" in error
  assert "multiple of 4" in error


def test_batch_not_divisible_by_the_devices(existing_run):
  error = _error(_train_in(existing_run, *TINY, "--config.data.batch_size=6"))
  assert "data.batch_size=6" in error and "number of devices (4)" in error


def test_workdir_of_another_config_is_not_resumed(existing_run):
  error = _error(_train_in(existing_run, *TINY))
  assert str(existing_run) in error and "different 'model'" in error
  assert "--workdir" in error


def test_missing_data_names_the_preparing_command_and_landmark_fallback_warns(tmp_path):
  workdir = tmp_path / "run"
  result = _train(f"--workdir={workdir}", "--config=configs/lra.py:listops,nystrom",
                  "--config.model.num_layers=1", "--config.model.emb_dim=16",
                  "--config.model.qkv_dim=16", "--config.model.mlp_dim=16",
                  "--config.model.num_heads=2", "--config.data.batch_size=8",
                  "--config.data.max_length=64", "--config.data.padded_length=64",
                  "--config.model.attention_kwargs.num_landmarks=64",
                  f"--config.data.data_dir={tmp_path / 'nothing'}")
  error = _error(result)
  assert "generate_listops.py" in error and "lra_release.gz" in error
  # num_landmarks >= length is a documented fallback (exact softmax), announced, not an error.
  assert "num_landmarks=64 >= data.padded_length=64: nystrom computes exact softmax" in (
      result.stderr)
  assert not workdir.exists(), "the workdir was created although the data are missing"
