"""The sweep launcher: its plan (start / resume / skip) and one tiny real sweep."""

from __future__ import annotations

import json
import subprocess

import pytest

from lra_jax import errors, sweep

# ListOps generated on the fly and a one-layer model: seconds per run on a CPU.
TINY = ["--config.data.generate_if_missing=True", "--config.data.max_length=48",
        "--config.data.padded_length=48", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.data.shuffle_buffer_size=64",
        "--config.data.listops_generator.num_train=64", "--config.data.listops_generator.num_val=8",
        "--config.data.listops_generator.num_test=8",
        "--config.data.listops_generator.min_length=8",
        "--config.data.listops_generator.max_length=48",
        "--config.data.listops_generator.max_depth=4", "--config.data.listops_generator.max_args=4",
        "--config.model.emb_dim=16", "--config.model.num_heads=2", "--config.model.num_layers=1",
        "--config.model.qkv_dim=16", "--config.model.mlp_dim=32",
        "--config.model.classifier_hidden_dims=(32,)", "--config.train.num_train_steps=2",
        "--config.train.eval_every_steps=2", "--config.train.log_every_steps=2",
        "--config.train.checkpoint_every_steps=2", "--config.train.warmup_steps=1"]


def _plan(root, **kwargs):
  return sweep.plan(root=root, tasks=kwargs.pop("tasks", ["listops"]),
                    methods=kwargs.pop("methods", ["softmax"]), **kwargs)


def test_plan_starts_resumes_and_skips(tmp_path):
  finished = sweep.workdir_for(tmp_path, "listops", "softmax", "official", 0)
  finished.mkdir(parents=True)
  (finished / "results.json").write_text("{}")
  stopped = sweep.workdir_for(tmp_path, "listops", "softmax", "official", 1)
  (stopped / "checkpoints" / "40").mkdir(parents=True)
  (stopped / "checkpoints" / "20").mkdir()
  (stopped / "checkpoints" / "60.orbax-checkpoint-tmp-1700000000").mkdir()  # an unfinished save
  planned = _plan(tmp_path, seeds=[0, 1, 2])
  assert [(r.seed, r.action, r.step) for r in planned] == [
      (0, sweep.SKIP, None), (1, sweep.RESUME, 40), (2, sweep.START, None)]
  assert planned[2].workdir == tmp_path / "listops_softmax_official_seed2"
  order = _plan(tmp_path, tasks=["listops", "text"], methods=["softmax", "nystrom"], seeds=[0],
                protocol="pytorch_lra")
  assert [(r.task, r.method) for r in order] == [
      ("listops", "softmax"), ("listops", "nystrom"), ("text", "softmax"), ("text", "nystrom")]


def test_plan_refuses_a_workdir_trained_with_other_settings(tmp_path):
  config_file = sweep.find_config_file()
  config = sweep.build_config(config_file, "listops", "softmax", "official", 0,
                              ["--config.train.num_train_steps=10"])
  assert config.seed == 0 and config.train.num_train_steps == 10
  workdir = sweep.workdir_for(tmp_path, "listops", "softmax", "official", 0)
  workdir.mkdir(parents=True)
  stored = config.to_dict()
  stored["data"]["data_dir"] = "/elsewhere"  # data locations may differ
  (workdir / "config.json").write_text(json.dumps(stored))
  (planned,) = _plan(tmp_path, seeds=[0], overrides=["--config.train.num_train_steps=10"])
  assert planned.action == sweep.START
  with pytest.raises(errors.ConfigError, match=r"train\.num_train_steps: 10 there, 5000 here"):
    _plan(tmp_path, seeds=[0])


def test_bad_names_and_overrides_stop_the_plan(tmp_path):
  with pytest.raises(errors.ConfigError, match="Unknown attention method 'softmaks'"):
    _plan(tmp_path, methods=["softmax", "softmaks"], seeds=[0])
  with pytest.raises(errors.ConfigError, match="num_train_steps"):
    _plan(tmp_path, seeds=[0], overrides=["--config.train.num_train_stepz=3"])
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(["--tasks=listops", "--methods=softmax", "--verbose"])
  assert exit_info.value.code == 2
  assert sweep.main(["--tasks=listops", "--methods=softmax", "--seeds=a"]) == 2
  assert not list(tmp_path.iterdir())


def test_train_command_passes_seed_and_overrides(tmp_path):
  (run,) = _plan(tmp_path, seeds=[3], protocol="pytorch_lra")
  command = sweep.train_command(run, sweep.find_config_file(), ["--config.train.b1=0.8"])
  assert command[1:3] == ["-m", "lra_jax.train"]
  assert command[3].endswith("configs/lra.py:listops,softmax,pytorch_lra")
  assert command[4:] == [f"--workdir={run.workdir}", "--config.seed=3", "--config.train.b1=0.8"]


def test_tiny_sweep_trains_then_skips_and_prints_the_table(tmp_path, capsys, monkeypatch):
  root = tmp_path / "sweep"
  argv = ["--tasks=listops", "--methods=softmax", "--seeds=0", f"--root={root}",
          f"--config.data.data_dir={tmp_path / 'listops'}", *TINY]
  assert sweep.main(argv) == 0
  workdir = root / "listops_softmax_official_seed0"
  report = json.loads((workdir / "results.json").read_text())
  assert report["final"]["step"] == 2
  assert json.loads((workdir / "config.json").read_text())["seed"] == 0
  printed = capsys.readouterr().out
  assert "1 to start" in printed and "| softmax | defaults |" in printed
  assert (root / "lra_results.md").read_text().startswith("# LRA results")
  assert (root / "lra_results.png").read_bytes().startswith(b"\x89PNG")

  def no_training(*args, **kwargs):
    raise AssertionError(f"a finished run was trained again: {args}")

  monkeypatch.setattr(subprocess, "Popen", no_training)
  assert sweep.main(argv) == 0
  assert "0 to start, 0 to resume, 1 finished" in capsys.readouterr().out
