"""The Pathfinder generator: labels by connectivity, class-blind scenes, and the release layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from lra_jax.data import pathfinder_generator as pg

HARD32 = pg.settings_for(32, "curv_contour_length_14")
HARD128 = pg.settings_for(128, "hard")
SEED = 11


def _markers_joined(sample: pg.Sample) -> bool:
  """Whether a flood fill from one marker reaches the other, through the paths
  drawn without their gaps (4x finer than the image, 4-connected)."""
  paths = sample.path_masks(scale=4)
  markers = sample.marker_masks(scale=4)
  components, _ = scipy.ndimage.label(paths.any(axis=0) | markers.any(axis=0))
  first, second = (set(np.unique(components[m])) - {0} for m in markers)
  return bool(first & second)


def _paired(settings: pg.GeneratorSettings, index: int) -> tuple[pg.Sample, pg.Sample]:
  return (pg.sample(settings, SEED, index, label=0), pg.sample(settings, SEED, index, label=1))


@pytest.mark.parametrize("settings,count", [(HARD32, 24), (HARD128, 4)])
def test_labels_follow_connectivity_in_scenes_blind_to_the_label(settings, count):
  for index in range(count):
    negative, positive = _paired(settings, index)
    assert (negative.label, positive.label) == (0, 1)
    assert not _markers_joined(negative), index
    assert _markers_joined(positive), index
    # One scene for both labels: same paths, paddles and start marker, so ink
    # counts cannot tell the classes apart; only the second marker moves.
    assert len(negative.paths) == len(positive.paths)
    for a, b in zip(negative.paths, positive.paths):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(negative.markers[0], positive.markers[0])
    rows, cols = np.nonzero(negative.image != positive.image)
    centres = np.stack([rows, cols], axis=1) + 0.5
    near = np.min(np.linalg.norm(centres[:, None] - np.concatenate(
        [negative.markers[1:], positive.markers[1:]])[None], axis=-1), axis=1)
    assert np.all(near <= settings.marker_radius + 1.0)
    # Markers sit on ends of the two target paths.
    starts = [p[0] for p in positive.paths[:2]]
    ends = [p[-1] for p in positive.paths[:2]]
    assert any(np.array_equal(positive.markers[0], s) for s in starts)
    assert any(np.array_equal(positive.markers[1], e) for e in ends)
    if index < 2:  # an unforced label gives one of the two images
      drawn = pg.sample(settings, SEED, index)
      np.testing.assert_array_equal(drawn.image, (negative, positive)[drawn.label].image)


@pytest.mark.parametrize("settings,count", [(HARD32, 8), (HARD128, 3)])
def test_paths_and_markers_keep_their_distance(settings, count):
  """Different paths, and far-apart parts of one path, keep an ink gap of about
  2 * margin (the gap within a path); markers keep it from other paths."""
  for index in range(count):
    sample = pg.sample(settings, SEED, index)
    gap = 2 * sample.margin
    starts = np.concatenate([p[:-1] for p in sample.paths])
    ends = np.concatenate([p[1:] for p in sample.paths])
    owner = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(sample.paths)])
    number = np.concatenate([np.arange(len(p) - 1) for p in sample.paths])
    for a, b, path, k in zip(starts, ends, owner, number):
      points = a + np.linspace(0, 1, 200)[:, None] * (b - a)
      distance = pg._point_segment_distances(points[:, None], starts[None], ends[None]).min(axis=0)
      apart = (owner != path) | (np.abs(number - k) > 1)
      # The occupancy grid holds the clearance to within a fraction of a pixel.
      assert np.all(distance[apart] >= 0.9 * (settings.paddle_thickness + gap)), index
    for marker in sample.markers:
      distance = pg._point_segment_distances(marker, starts, ends)
      others = ~np.isin(owner, owner[distance < 1e-9])
      assert np.all(distance[others] >= 0.9 * gap + settings.marker_radius
                    + settings.paddle_thickness / 2), index


def test_images_show_the_paddles_gaps_and_markers():
  for index in range(3):
    sample = pg.sample(HARD128, SEED, index)
    s = sample.settings
    image = sample.image.astype(float)
    assert image.shape == (128, 128) and image.max() == 255
    rows, cols = np.mgrid[:128, :128] + 0.5
    centres = np.stack([rows.ravel(), cols.ravel()], axis=1)
    paddles = sample.paddles()
    to_ink = np.min(pg._point_segment_distances(centres[:, None], paddles[None, :, 0],
                                                 paddles[None, :, 1]), axis=1)
    to_marker = np.min(np.linalg.norm(centres[:, None] - sample.markers[None], axis=-1), axis=1)
    lit = image.ravel() > 0
    # Ink only where a paddle or a marker is, and every paddle is drawn.
    assert np.all((to_ink[lit] <= (s.paddle_thickness + 1) / 2 + 1e-9)
                  | (to_marker[lit] <= s.marker_radius + 0.5 + 1e-9))
    for start, end in paddles:
      middle = ((start + end) / 2).astype(int)
      assert image[middle[0] - 1:middle[0] + 2, middle[1] - 1:middle[1] + 2].max() > 100
    # The gaps between the paddles of a path are dark.
    for path in sample.paths:
      for a, b in zip(path[1:-1], path[2:]):
        gap = a + (b - a) / np.linalg.norm(b - a) * sample.margin
        assert image[int(gap[0]), int(gap[1])] == 0
    assert sample.paddles().shape[0] == sum(len(p) - 1 for p in sample.paths)


@pytest.mark.parametrize("difficulty,length", [("curv_baseline", 6), ("curv_contour_length_9", 9),
                                               ("curv_contour_length_14", 14)])
def test_difficulty_sets_the_length_of_the_paths(difficulty, length):
  settings = pg.settings_for(32, difficulty)
  sample = pg.sample(settings, SEED, 0)
  assert [len(p) - 1 for p in sample.paths[:2]] == [length, length]
  assert all(len(p) - 1 == length // 3 for p in sample.paths[2:])
  assert 0 < len(sample.paths) - 2 <= settings.num_distractors
  step = settings.paddle_length + 2 * sample.margin
  for path in sample.paths[:2]:
    lengths = np.linalg.norm(np.diff(path, axis=0), axis=1)
    np.testing.assert_allclose(lengths, [settings.paddle_length] + [step] * (length - 1))


def test_settings_follow_the_builders_per_resolution():
  s128 = pg.settings_for(128, "curv_contour_length_14")
  assert (s128.paddle_margins, s128.marker_radius, s128.seed_distance, s128.continuity,
          s128.paddle_thickness, s128.distractor_length, s128.num_distractors) == (
              (2.0, 3.0), 3.0, 20.0, 1.8, 1.5, 4, 8)
  assert HARD32.num_distractors == 5 and pg.settings_for(32, "easy").num_distractors == 10
  assert pg.settings_for(64, "intermediate").contour_length == 9
  with pytest.raises(ValueError):
    pg.settings_for(48, "hard")
  with pytest.raises(ValueError):
    pg.settings_for(32, "curv_contour_length_12")


def test_png_encoder_writes_standard_grayscale():
  image = np.random.default_rng(0).integers(0, 256, size=(7, 5), dtype=np.uint8)
  data = pg.encode_png(image)
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24:26] == b"\x08\x00"  # 8 bits, gray
  decoded = tf.io.decode_png(data).numpy()
  assert decoded.shape == (7, 5, 1) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded[..., 0], image)


def _builder_examples(directory):
  """(image path, label, fields) per metadata line, parsed as the LRA TFDS builder does."""
  examples = []
  for path in sorted(tf.io.gfile.glob(str(directory / "metadata" / "*.npy"))):
    for line in tf.io.read_file(path).numpy().decode("utf-8").split("\n")[:-1]:
      m = line.split(" ")
      examples.append((directory / m[0] / m[1], int(m[3]), m))
  return examples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """Pathfinder-32 baseline: 90 images in files of 40, 40 and 10."""
  out = tmp_path_factory.mktemp("pathfinder")
  done = []
  directory = pg.write_dataset(out, 32, "curv_baseline", num_images=90, images_per_file=40,
                               seed=SEED, progress=done.append)
  assert sum(done) == 90
  return out, directory


def test_dataset_has_the_release_layout_and_parses_like_the_builder(dataset):
  out, directory = dataset
  assert directory == out / "pathfinder32" / "curv_baseline"
  assert sorted(p.name for p in (directory / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
  examples = _builder_examples(directory)
  assert len(examples) == 90
  for n, (image_path, label, m) in enumerate(examples):
    k, j = divmod(n, 40)
    assert m[:4] == [f"imgs/{k}", f"sample_{j}.png", str(j), str(label)] and len(m) == 11
    assert label in (0, 1) and image_path.is_file()
  assert not list(directory.rglob("*.tmp"))
  # Images decode as the LRA pipeline does, and are the generator's images.
  settings = pg.settings_for(32, "curv_baseline")
  for n in (0, 41, 89):
    image_path, label, _ = examples[n]
    image = tf.io.decode_png(tf.io.read_file(str(image_path)), channels=1).numpy()
    assert image.shape == (32, 32, 1) and image.dtype == np.uint8
    expected = pg.sample(settings, SEED, n)
    np.testing.assert_array_equal(image[..., 0], expected.image)
    assert label == expected.label


def test_labels_are_balanced(dataset):
  labels = [label for _, label, _ in _builder_examples(dataset[1])]
  assert 30 <= sum(labels) <= 60  # 90 fair coin flips: mean 45, sd 4.7


def test_output_is_a_function_of_the_seed(tmp_path):
  def files(out, seed):
    directory = pg.write_dataset(out, 32, "hard", num_images=6, images_per_file=4, seed=seed)
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}

  first = files(tmp_path / "a", SEED)
  assert first == files(tmp_path / "b", SEED)
  assert len(first) == 6 + 2 + 1  # images, metadata files, generator.json
  other = files(tmp_path / "c", SEED + 1)
  assert [first[p] == other[p] for p in first if p.suffix == ".png"].count(True) == 0


def test_rerun_regenerates_only_missing_files(dataset, tmp_path):
  out = tmp_path / "copy"
  shutil.copytree(dataset[0], out)
  directory = out / "pathfinder32" / "curv_baseline"
  metadata = (directory / "metadata" / "1.npy").read_bytes()
  image = (directory / "imgs" / "1" / "sample_3.png").read_bytes()
  (directory / "metadata" / "1.npy").unlink()
  (directory / "imgs" / "1" / "sample_3.png").unlink()
  (directory / "imgs" / "0" / "sample_0.png").write_bytes(b"stale")  # complete files are kept
  done = []
  pg.write_dataset(out, 32, "curv_baseline", num_images=90, images_per_file=40, seed=SEED,
                   progress=done.append)
  assert sorted(done) == [10, 40, 40]
  assert (directory / "metadata" / "1.npy").read_bytes() == metadata
  assert (directory / "imgs" / "1" / "sample_3.png").read_bytes() == image
  assert (directory / "imgs" / "0" / "sample_0.png").read_bytes() == b"stale"
  # A larger data set completes the short last file and adds files.
  done.clear()
  pg.write_dataset(out, 32, "curv_baseline", num_images=100, images_per_file=40, seed=SEED,
                   progress=done.append)
  assert sorted(done) == [20, 40, 40]
  assert len(_builder_examples(directory)) == 100
  with pytest.raises(ValueError, match="generated with"):
    pg.write_dataset(out, 32, "curv_baseline", num_images=90, images_per_file=40, seed=SEED + 1)
