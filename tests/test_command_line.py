"""The commands a researcher types: python -m lra_jax.train and preprocess/generate_listops.py."""

import json
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]

# Small enough for seconds on a CPU: the quickstart config, shrunk.
TINY = ["--config.data.listops_generator.num_train=64", "--config.data.listops_generator.num_val=8",
        "--config.data.listops_generator.num_test=8", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.model.num_layers=1",
        "--config.train.num_train_steps=4", "--config.train.eval_every_steps=2",
        "--config.train.log_every_steps=2", "--config.train.checkpoint_every_steps=2",
        "--config.train.warmup_steps=2"]


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_train_generates_data_trains_and_prints_the_summary(tmp_path):
  workdir = tmp_path / "run"
  result = _run("-m", "lra_jax.train", "--config=configs/quickstart.py", f"--workdir={workdir}",
                f"--config.data.data_dir={tmp_path / 'listops'}", *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "majority-class baseline on test" in result.stdout
  assert "tensorboard --logdir=" in result.stdout
  report = json.loads((workdir / "results.json").read_text())
  assert report["final"]["step"] == 4
  assert (tmp_path / "listops" / "basic_train.tsv").exists()
  assert "orbax" not in result.stderr  # per-save INFO lines are hidden at default verbosity


def test_generate_listops_script_writes_the_release_files(tmp_path):
  result = _run("preprocess/generate_listops.py", f"--output_dir={tmp_path}", "--num_train=12",
                "--num_val=3", "--num_test=3", "--min_length=4", "--max_length=30",
                "--max_depth=4", "--max_args=3", "--seed=5")
  assert result.returncode == 0, result.stderr
  lines = (tmp_path / "basic_val.tsv").read_text().splitlines()
  assert lines[0] == "Source\tTarget" and len(lines) == 4
  assert "18/18" in result.stderr  # the progress bar reached every example


def test_out_of_memory_says_how_to_fit_and_exits_cleanly(tmp_path):
  listops = tmp_path / "listops"
  result = _run("-m", "lra_jax.train", "--config=configs/quickstart.py", f"--workdir={tmp_path / 'run'}",
                f"--config.data.data_dir={listops}", *TINY,
                "--config.data.padded_length=200000")  # terabytes of attention weights
  assert result.returncode == 1
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: out of device memory") and "grad_accum_steps" in error
