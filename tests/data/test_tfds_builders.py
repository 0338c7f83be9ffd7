"""The lra_listops, lra_retrieval and lra_pathfinder TFDS builders on a small written release."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lra_jax import errors
from lra_jax.data import release, tfds_builders, tfds_source

from release_files import AAN_SIZES, PATHFINDER_NON_EMPTY, write_aan, write_pathfinder

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "preprocess" / "build_tfds.py"
_SPEC = importlib.util.spec_from_file_location("build_tfds", _SCRIPT)
build_tfds = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build_tfds)


def _examples(name, data_dir, split):
  return list(tfds.builder(name, data_dir=data_dir).as_dataset(split=split).as_numpy_iterator())


def test_listops_builder_stores_the_tsv_rows(lra_release, tfds_dir):
  tfds_source.prepare("lra_listops", tfds_dir, lra_release.root)
  for split, suffix in tfds_builders.LraListops.FILE_SPLITS.items():
    stored = sorted((x["source"].decode(), int(x["target"]))
                    for x in _examples("lra_listops", tfds_dir, split))
    assert stored == sorted(lra_release.listops[suffix])


def test_retrieval_builder_keeps_raw_bytes_and_float_labels(lra_release, tfds_dir):
  tfds_source.prepare("lra_retrieval", tfds_dir, lra_release.root)
  info = tfds.builder("lra_retrieval", data_dir=tfds_dir).info
  for split, size in AAN_SIZES.items():
    assert info.splits[split].num_examples == size
    stored = sorted((int(x["label"]), x["text1"], x["text2"])
                    for x in _examples("lra_retrieval", tfds_dir, split))
    assert stored == sorted(lra_release.aan[split])
  assert any(not text.isascii() for _, text, _ in lra_release.aan["train"])  # bytes >= 128 kept


def test_pathfinder_builder_skips_empty_pngs_and_keeps_pixels_and_labels(lra_release, tfds_dir):
  tfds_source.prepare("lra_pathfinder/32_hard", tfds_dir, lra_release.root)
  examples = _examples("lra_pathfinder/32_hard", tfds_dir, "train")
  assert len(examples) == PATHFINDER_NON_EMPTY
  written = lra_release.pathfinder[(32, "hard")]
  for x in examples:
    assert x["image"].shape == (32, 32, 1) and x["image"].dtype == np.uint8
    assert written[x["image"].tobytes()] == x["label"]
  assert len({x["image"].tobytes() for x in examples}) == PATHFINDER_NON_EMPTY


def test_pathfinder_builder_reads_the_flat_layout_of_any_config(tmp_path):
  written = write_pathfinder(str(tmp_path / "flat"), 64, "baseline", nested=False,
                             lines_per_file=(3, 2), empty=())
  tfds_source.prepare("lra_pathfinder/64_baseline", str(tmp_path / "tfds"), str(tmp_path / "flat"))
  examples = _examples("lra_pathfinder/64_baseline", str(tmp_path / "tfds"), "train")
  assert sorted(x["image"].tobytes() for x in examples) == sorted(written)
  assert examples[0]["image"].shape == (64, 64, 1)


def test_metadata_file_without_final_newline_loses_its_last_line_as_officially(tmp_path):
  root = str(tmp_path / "release")
  write_pathfinder(root, lines_per_file=(3, 2), empty=())
  metadata = pathlib.Path(root, "lra_release", "pathfinder32", "curv_contour_length_14",
                          "metadata", "1.npy")
  metadata.write_text(metadata.read_text().rstrip("\n"))
  tfds_source.prepare("lra_pathfinder/32_hard", str(tmp_path / "tfds"), root)
  assert len(_examples("lra_pathfinder/32_hard", str(tmp_path / "tfds"), "train")) == 4


def test_png_of_another_resolution_is_an_error(tmp_path):
  root = str(tmp_path / "release")
  write_pathfinder(root, resolution=64, lines_per_file=(2,), empty=())
  small = write_pathfinder(str(tmp_path / "other"), resolution=32, lines_per_file=(1,), empty=())
  assert small
  images = "lra_release/pathfinder{}/curv_contour_length_14/imgs/0"
  os.replace(tmp_path / "other" / images.format(32) / "sample_0.png",
             tmp_path / "release" / images.format(64) / "sample_1.png")
  with pytest.raises(ValueError, match="is 32x32, expected 64x64"):
    tfds_source.prepare("lra_pathfinder/64_hard", str(tmp_path / "tfds"), root)


def test_png_listed_but_absent_is_an_incomplete_release(tmp_path):
  root = str(tmp_path / "release")
  write_pathfinder(root, lines_per_file=(2,), empty=())
  os.remove(os.path.join(root, "lra_release", "pathfinder32", "curv_contour_length_14", "imgs",
                         "0", "sample_1.png"))
  with pytest.raises(errors.DataNotFoundError, match="is incomplete: .*sample_1.png"):
    tfds_source.prepare("lra_pathfinder/32_hard", str(tmp_path / "tfds"), root)


def _assert_one_paragraph_with_the_way_out(message, dataset):
  assert "\n" not in message
  assert f"Cannot prepare TFDS dataset {dataset!r}" in message
  assert release.URL in message
  command = "python preprocess/build_tfds.py --release_dir=RELEASE_DIR --data_dir=TFDS_DIR"
  assert f"{command} {dataset}" in message
  assert "--config.data.release_dir" in message and "rerun" in message


@pytest.mark.parametrize("dataset", ["lra_listops", "lra_retrieval", "lra_pathfinder/128_hard"])
def test_missing_release_directory_says_where_to_get_it(tmp_path, dataset):
  with pytest.raises(errors.DataNotFoundError) as raised:
    tfds_source.prepare(dataset, str(tmp_path / "tfds"), str(tmp_path / "no_such_dir"))
  message = str(raised.value)
  _assert_one_paragraph_with_the_way_out(message, dataset)
  assert f"{str(tmp_path / 'no_such_dir')!r}, which does not exist" in message


def test_incomplete_release_names_the_missing_file(tmp_path):
  root = str(tmp_path / "release")
  write_aan(root)
  os.remove(os.path.join(root, "lra_release", "tsv_data", "new_aan_pairs.eval.tsv"))
  with pytest.raises(errors.DataNotFoundError) as raised:
    tfds_source.prepare("lra_retrieval", str(tmp_path / "tfds"), root)
  message = str(raised.value)
  _assert_one_paragraph_with_the_way_out(message, "lra_retrieval")
  assert "tsv_data/new_aan_pairs.eval.tsv is missing from the LRA release directory" in message
  assert not tfds_source.is_prepared("lra_retrieval", str(tmp_path / "tfds"))


def test_missing_pathfinder_directory_also_says_how_to_generate_it(tmp_path):
  root = tmp_path / "release"
  root.mkdir()
  (root / "README").write_text("not the release")
  with pytest.raises(errors.DataNotFoundError) as raised:
    tfds_source.prepare("lra_pathfinder/32_hard", str(tmp_path / "tfds"), str(root))
  message = str(raised.value)
  _assert_one_paragraph_with_the_way_out(message, "lra_pathfinder/32_hard")
  assert "pathfinder32/curv_contour_length_14 is missing" in message
  assert "generate_if_missing" in message


def test_interrupted_preparation_leaves_nothing_and_can_be_rerun(tmp_path, lra_release,
                                                                 monkeypatch):
  data_dir = str(tmp_path / "tfds")
  generate = tfds_builders.LraPathfinder._generate_examples

  def interrupted(self, *args):
    for index, example in enumerate(generate(self, *args)):
      if index == 5:
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
      yield example

  monkeypatch.setattr(tfds_builders.LraPathfinder, "_generate_examples", interrupted)
  with pytest.raises(KeyboardInterrupt):
    tfds_source.prepare("lra_pathfinder/32_hard", data_dir, lra_release.root)
  config_dir = pathlib.Path(data_dir, "lra_pathfinder", "32_hard")
  assert not tfds_source.is_prepared("lra_pathfinder/32_hard", data_dir)
  assert not list(config_dir.glob("*1.0.0*")), "a partial dataset was left behind"
  # A killed process (no clean-up at all) leaves an 'incomplete.*' directory.
  (config_dir / "incomplete.ABC123_1.0.0").mkdir(parents=True)
  (config_dir / "incomplete.ABC123_1.0.0" / "partial.tfrecord").write_bytes(b"garbage")

  monkeypatch.setattr(tfds_builders.LraPathfinder, "_generate_examples", generate)
  tfds_source.prepare("lra_pathfinder/32_hard", data_dir, lra_release.root)
  assert len(_examples("lra_pathfinder/32_hard", data_dir, "train")) == PATHFINDER_NON_EMPTY


def test_build_tfds_script_prepares_the_named_datasets_and_reports_missing_ones(
    tmp_path, lra_release, capsys):
  data_dir = str(tmp_path / "tfds")
  args = [f"--release_dir={lra_release.root}", f"--data_dir={data_dir}",
          "lra_listops", "lra_pathfinder/32_hard"]
  assert build_tfds.main(args) == 0
  assert all(tfds_source.is_prepared(name, data_dir) for name in args[2:])
  assert build_tfds.main(args) == 0  # already prepared: skipped
  assert build_tfds.main([f"--release_dir={tmp_path / 'nothing'}", f"--data_dir={data_dir}",
                          "lra_retrieval"]) == 2
  assert release.URL in capsys.readouterr().err
