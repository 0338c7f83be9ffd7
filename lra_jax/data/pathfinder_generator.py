"""An offline Pathfinder generator (lra_official_jax.md §1.5), seeded and deterministic.

Pathfinder is the contour-integration task of Linsley, Kim et al., "Learning
long-range spatial dependencies with horizontal gated recurrent units" (NeurIPS
2018) and Kim*, Linsley* et al., "Disentangling neural mechanisms for perceptual
grouping" (ICLR 2020), which LRA uses as Pathfinder (32x32) and Path-X
(128x128). An image shows dashed, smoothly bending paths made of short line
segments ("paddles") separated by gaps, and two small discs ("markers"); the
label is 1 when both markers sit on the ends of one path and 0 when they sit on
ends of two different paths.

How an image is made, following the published generator (drewlinsley/pathfinder,
`snakes2.py`) in its algorithm and parameters:

* Two target paths of `contour_length` paddles (6, 9 or 14: the release's
  `curv_baseline`, `curv_contour_length_9` and `curv_contour_length_14`). The
  first starts near the centre (at least 2 * `seed_distance` from the border,
  where the canvas allows), the second `seed_distance` away from it; they grow
  one paddle each in turn. A scene whose target paths cannot both reach their
  full length is drawn again.
* A path grows by a gap of 2 * margin and a paddle of `paddle_length` pixels. The
  new heading differs from the old by an angle d drawn with density
  cos(min(|d| * continuity, pi/2))^2 among the headings that fit, so
  `continuity` bounds the curvature: no turn beyond 90 / continuity degrees, and
  the larger it is, the straighter the paths.
* Every paddle keeps its ink about 2 * margin (the gap within a path) clear of
  every other path and of its own path's earlier paddles (the one it follows
  excepted); a candidate that would leave the canvas (less `padding`) or come
  closer is not drawn.
* Then up to `num_distractors` distractor paths of `distractor_length` =
  contour_length // 3 paddles, with the same look and rules, kept clear of the
  target paths and of the four ends where markers may go. As in the original, a
  distractor that fails 4 times (no room to start, or stuck) is left out, so
  crowded images (32x32 at contour length 14) hold fewer.
* Markers: one on the start of a target path chosen at random; the other on the
  far end of the same path (label 1) or of the other target path (label 0). The
  paths are drawn before, and independently of, the label, so a positive and a
  negative image are the same scene with the second marker moved: counts of
  paths, paddles and ink carry no information about the label.

The per-resolution parameters are those of the LRA TFDS builders' docstrings
(lra_official_jax.md §1.5.1), with the generator's own defaults where the table
says "default" (paddle length 5, padding 22 and seed distance 27 at 256).

Where it differs from the original, deliberately:

* Geometry is continuous (paddles are line segments between float points).
  Clearance is checked on an occupancy grid a few cells per pixel (each segment
  marks the cells within the clearance of it; a candidate is checked at points
  one cell apart), instead of pixel masks dilated with morphological kernels and
  an overlap threshold; it holds to within about a cell.
* Rendering is analytic antialiasing: a pixel's value is the overlap of a
  pixel-wide box filter with a line of the paddle's thickness (a disc for
  markers), scaled so that lines thinner than a pixel still peak at full
  intensity, as the original's per-paddle Lanczos resize does; there is no
  supersampling.
* A target path that gets stuck takes back its newest paddles (one more each
  time it is stuck again, up to a budget per scene) before the scene is given
  up; a distractor starts preferably where a straight run of its full length is
  free. Both only save work: the original retried whole scenes and distractors.
* `num_distractors` = distractor_paddles // distractor_length at every
  difficulty (20, 22, 35, 30 paddles at 32, 64, 128, 256 as in the builders),
  so distractor ink is about the same at all three difficulties; the original
  script computed the count once for its first condition.
* Intensities follow the original's arithmetic: target paddles at
  snake_contrast * paddle_contrast, distractor paddles at snake_contrast (the
  original draws distractors without the paddle contrast), markers at 1; the
  image is then scaled so its brightest pixel is 255, as `scipy.misc.imsave`
  (the original's PNG writer) does. At 32x32 the markers are therefore dimmer
  than the paths.
* Randomness comes from `numpy.random.Generator`s seeded by (seed, resolution,
  contour length, image index), one for the scene and one for the label and
  marker choice, so every image can be made on its own, in any order, and
  batches can be generated in parallel or resumed.
* The metadata files are text, as the LRA builders read them, not `np.save`
  arrays.

Output layout (that of the LRA release, lra_official_jax.md §0.1):

    <out>/pathfinder<R>/<difficulty>/imgs/<k>/sample_<j>.png
    <out>/pathfinder<R>/<difficulty>/metadata/<k>.npy   (text despite the name)
    <out>/pathfinder<R>/<difficulty>/generator.json     (the settings; ours only)

Each metadata line describes one image with 11 space-separated fields, in the
original generator's order: `imgs/<k>`, `sample_<j>.png`, j (the image's index
in its file), the label (0 or 1), continuity, contour_length, distractor_length,
paddle_length, paddle_thickness, the image's paddle margin, and the number of
paddle contrasts (always 1). Image j of file k is image number
k * images_per_file + j of the data set. Byte-identical output needs the same
seed, settings and numpy version.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import pathlib
import struct
import zlib
from typing import Callable, Optional

import numpy as np

# Release directory of each difficulty -> target path length in paddles.
DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
# The LRA TFDS split names of the same directories (§1.5.1).
SPLIT_DIRECTORIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9",
                     "hard": "curv_contour_length_14"}
RESOLUTIONS = (32, 64, 128, 256)

# Written into generator.json; bump when the images a seed gives change.
FORMAT_VERSION = 1

# Random turns tried for each new paddle; the path is stuck if none fits.
_TURN_TRIES = 128
# Candidate places tried at once when starting a path.
_NUM_SEEDS = 64
# Attempts at one distractor before it is left out (the original's 4).
_DISTRACTOR_ATTEMPTS = 4
# Paddles the target paths of a scene may take back when stuck, per paddle.
_TARGET_RETRACTIONS = 3
# Attempts at a whole scene before giving up (never reached with the settings here).
_SCENE_ATTEMPTS = 1000


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
  """How the images of one resolution and difficulty look (pixels as units).

  Defaults are Pathfinder-32 hard, the LRA Pathfinder task; `settings_for`
  gives every resolution and difficulty.
  """

  resolution: int = 32
  contour_length: int = 14  # paddles per target path
  padding: float = 1.0  # ink stays this far inside the border
  paddle_length: float = 2.0
  paddle_thickness: float = 0.5
  paddle_margins: tuple[float, ...] = (1.0,)  # one drawn per image; gaps are twice it
  marker_radius: float = 1.5
  seed_distance: float = 7.0  # between the starts of the two target paths
  continuity: float = 1.0  # >= 1; larger means straighter paths
  distractor_paddles: int = 20  # paddles shared out among distractor paths
  snake_contrast: float = 2.0
  paddle_contrast: float = 0.75

  @property
  def distractor_length(self) -> int:
    return max(1, self.contour_length // 3)

  @property
  def num_distractors(self) -> int:
    return self.distractor_paddles // self.distractor_length


# The builders' docstring values per resolution (§1.5.1), the script's
# defaults filling the gaps; the contour length comes from the difficulty.
_RESOLUTION_SETTINGS = {
    32: dict(padding=1.0, paddle_length=2.0, paddle_thickness=0.5, paddle_margins=(1.0,),
             marker_radius=1.5, seed_distance=7.0, continuity=1.0, distractor_paddles=20,
             snake_contrast=2.0, paddle_contrast=0.75),
    64: dict(padding=1.0, paddle_length=5.0, paddle_thickness=1.0, paddle_margins=(1.0,),
             marker_radius=2.5, seed_distance=12.0, continuity=1.8, distractor_paddles=22,
             snake_contrast=0.8, paddle_contrast=1.0),
    128: dict(padding=1.0, paddle_length=5.0, paddle_thickness=1.5, paddle_margins=(2.0, 3.0),
              marker_radius=3.0, seed_distance=20.0, continuity=1.8, distractor_paddles=35,
              snake_contrast=0.9, paddle_contrast=1.0),
    256: dict(padding=22.0, paddle_length=5.0, paddle_thickness=2.0, paddle_margins=(3.0,),
              marker_radius=5.0, seed_distance=27.0, continuity=1.8, distractor_paddles=30,
              snake_contrast=1.0, paddle_contrast=1.0),
}


def difficulty_directory(difficulty: str) -> str:
  """The release directory for a difficulty given by directory or TFDS split name."""
  difficulty = SPLIT_DIRECTORIES.get(difficulty, difficulty)
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"Unknown Pathfinder difficulty {difficulty!r}; expected one of "
                     f"{sorted(DIFFICULTIES) + sorted(SPLIT_DIRECTORIES)}.")
  return difficulty


def settings_for(resolution: int, difficulty: str) -> GeneratorSettings:
  """The settings of `pathfinder<resolution>/<difficulty>` (e.g. 32, 'curv_contour_length_14')."""
  if resolution not in _RESOLUTION_SETTINGS:
    raise ValueError(f"Unsupported Pathfinder resolution {resolution}; expected one of "
                     f"{RESOLUTIONS}.")
  return GeneratorSettings(resolution=resolution,
                           contour_length=DIFFICULTIES[difficulty_directory(difficulty)],
                           **_RESOLUTION_SETTINGS[resolution])


@dataclasses.dataclass(frozen=True)
class Sample:
  """One generated image and the geometry behind it.

  Points are (row, column) in pixels: pixel (i, j) covers [i, i+1) x [j, j+1).

  Attributes:
    image: uint8 [R, R], background 0.
    label: 1 when both markers are on one path, else 0.
    markers: float [2, 2], the centres of the two markers.
    paths: one float [num_paddles + 1, 2] polyline per path, the two target paths
      first, then the distractors. Segment 0 is the first paddle; every later
      segment is a gap of 2 * margin followed by a paddle, so the polyline is the
      path drawn without its gaps.
    margin: the paddle margin of this image (half the gap between paddles).
    settings: the settings it was drawn with.
  """

  image: np.ndarray
  label: int
  markers: np.ndarray
  paths: tuple[np.ndarray, ...]
  margin: float
  settings: GeneratorSettings

  def paddles(self) -> np.ndarray:
    """float [num_paddles, 2, 2]: the inked part (start, end) of every paddle."""
    return _paddles(self.paths, self.margin)

  def path_masks(self, scale: int = 4) -> np.ndarray:
    """bool [num_paths, R * scale, R * scale]: each path as a solid line without gaps.

    The lines are `paddle_thickness` wide (at least two cells), drawn on a grid
    `scale` times finer than the image, so separate paths stay separate.
    """
    radius = max(self.settings.paddle_thickness / 2, 1.0 / scale)
    size = self.settings.resolution * scale
    masks = np.zeros((len(self.paths), size, size), bool)
    for mask, path in zip(masks, self.paths):
      for start, end in zip(path[:-1], path[1:]):
        _paint(mask, start * scale, end * scale, lambda d: d <= radius * scale, radius * scale)
    return masks

  def marker_masks(self, scale: int = 4) -> np.ndarray:
    """bool [2, R * scale, R * scale]: the two marker discs on the same grid as `path_masks`."""
    size = self.settings.resolution * scale
    masks = np.zeros((2, size, size), bool)
    for mask, centre in zip(masks, self.markers):
      radius = self.settings.marker_radius * scale
      _paint(mask, centre * scale, centre * scale, lambda d: d <= radius, radius)
    return masks


def image_seeds(seed: int, settings: GeneratorSettings, index: int) -> tuple[np.random.Generator,
                                                                             np.random.Generator]:
  """The (scene, label) generators of image `index`: independent streams, so the
  scene never depends on the label."""
  sequence = np.random.SeedSequence([seed, settings.resolution, settings.contour_length, index])
  scene, label = sequence.spawn(2)
  return np.random.default_rng(scene), np.random.default_rng(label)


def sample(settings: GeneratorSettings, seed: int, index: int,
           label: Optional[int] = None) -> Sample:
  """Image `index` of the data set drawn with `seed`.

  Args:
    settings: resolution and difficulty, e.g. `settings_for(32, 'curv_contour_length_14')`.
    seed: the data set's seed.
    index: the image's number in the data set; images are independent of each other.
    label: forces the label (0 or 1); the scene is the same either way.

  Returns:
    The image, its label, the marker centres and the paths.
  """
  scene_rng, label_rng = image_seeds(seed, settings, index)
  margin, paths = _draw_scene(scene_rng, settings)
  drawn_label = int(label_rng.integers(2))
  first = int(label_rng.integers(2))  # which target path carries the start marker
  label = drawn_label if label is None else int(label)
  if label not in (0, 1):
    raise ValueError(f"label must be 0 or 1, got {label}.")
  other = first if label == 1 else 1 - first
  markers = np.stack([paths[first][0], paths[other][-1]])
  return Sample(image=_render(settings, _paddles(paths, margin), markers), label=label,
                markers=markers, paths=tuple(paths), margin=margin, settings=settings)


def _paddles(paths, margin: float) -> np.ndarray:
  segments = []
  for path in paths:
    segments.append((path[0], path[1]))
    for start, end in zip(path[1:-1], path[2:]):
      direction = (end - start) / np.linalg.norm(end - start)
      segments.append((start + 2 * margin * direction, end))
  return np.asarray(segments, np.float64)


def _point_segment_distances(points, starts, ends):
  """Distances between points [..., 2] and segments starts->ends [..., 2] (broadcast)."""
  direction = ends - starts
  length2 = np.sum(direction * direction, axis=-1)
  t = np.sum((points - starts) * direction, axis=-1) / np.where(length2 > 0, length2, 1.0)
  closest = starts + np.clip(t, 0.0, 1.0)[..., None] * direction
  return np.linalg.norm(points - closest, axis=-1)


def _unit(angles: np.ndarray) -> np.ndarray:
  """Unit vectors (row, column) [N, 2] at `angles` [N] (radians; 0 points along a row)."""
  vectors = np.empty((len(angles), 2))
  np.sin(angles, out=vectors[:, 0])
  np.cos(angles, out=vectors[:, 1])
  return vectors


@functools.lru_cache(maxsize=None)
def _turn_quantiles(continuity: float) -> np.ndarray:
  """float [1024]: evenly spaced quantiles of the turn between paddles, whose
  density is cos(min(|turn| * continuity, pi/2))^2; a uniformly drawn entry is
  a draw of the turn (to within 1/1024 of its distribution)."""
  max_turn = min(math.pi, math.pi / (2 * continuity))
  turn = np.linspace(-max_turn, max_turn, 4097)
  density = np.cos(np.minimum(np.abs(turn) * continuity, math.pi / 2)) ** 2
  cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
  return np.interp((np.arange(1024) + 0.5) / 1024, cdf / cdf[-1], turn)


# Bits of the occupancy grid: the settled segments of path p (all but its
# newest), the newest segment of each target path (visible to the other target,
# not to itself), and the marker places at the ends of the target paths.
_MAX_PATHS = 40


def _body_bit(path: int) -> int:
  return 1 << path


def _newest_bit(path: int) -> int:
  return 1 << (_MAX_PATHS + path)


def _disc_bit(path: int) -> int:
  return 1 << (_MAX_PATHS + 2 + path)


class _Scene:
  """The paths of one image as they grow, and the rules they grow by.

  The ink drawn so far is kept as an occupancy grid, `scale` cells per pixel.
  Every segment (a paddle with the gap before it, or a marker place) marks the
  cells within `clearance` of it with its path's bit, so a candidate segment is
  checked by looking up the cells under points along it: it must keep
  `clearance` (to within about a cell) from every other path, from its own path
  but the segment it continues, and from the marker places of other paths.
  """

  def __init__(self, rng: np.random.Generator, settings: GeneratorSettings, margin: float):
    self.rng, self.s, self.margin = rng, settings, margin
    half_thickness = settings.paddle_thickness / 2
    # The ink of different paths keeps at least the gap between paddles of one path.
    self.clearance = 2 * margin + half_thickness
    self.low = settings.padding + half_thickness
    self.high = settings.resolution - self.low
    self.centre, self.half_width = settings.resolution / 2, settings.resolution / 2 - self.low
    self.step = settings.paddle_length + 2 * margin
    self.scale = max(1, math.ceil(8 / self.clearance))
    size = settings.resolution * self.scale
    self.bits = np.zeros((size, size), np.int64)
    self.flat_bits = self.bits.reshape(-1)  # a view, for lookups by flat index
    self.counts = {}  # target path -> int16 [size, size]: its settled segments per cell
    self.paths: list[list[np.ndarray]] = []
    self.zones: list[list[tuple]] = []  # per path, per segment: its cells
    self.discs: list[tuple[np.ndarray, int]] = []  # marker places (centre, path)
    self.turns = _turn_quantiles(settings.continuity)
    self.fractions = {}

  def _zone(self, start, end, radius: float) -> tuple:
    """(row slice, column slice, bool mask): the cells whose centres lie within
    `radius` + clearance of the segment start->end."""
    reach = radius + self.clearance
    g, size = self.scale, self.bits.shape[0]
    lo = [max(0, math.floor((min(a, b) - reach) * g)) for a, b in zip(start, end)]
    hi = [min(size, math.ceil((max(a, b) + reach) * g)) for a, b in zip(start, end)]
    distance2 = _distance_field(lo, hi, g, start, end, squared=True)
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), distance2 < reach * reach

  def _mark(self, zone: tuple, bit: int) -> None:
    rows, cols, mask = zone
    self.bits[rows, cols] |= np.where(mask, bit, 0)

  def _unmark(self, zone: tuple, bit: int) -> None:
    rows, cols, mask = zone
    self.bits[rows, cols] &= np.where(mask, ~bit, -1)

  def _settle(self, path: int, segment: int) -> None:
    """Makes a segment that is no longer its path's newest an obstacle to its own path."""
    zone = self.zones[path][segment]
    if path < 2:
      self._unmark(zone, _newest_bit(path))
      counts = self.counts.setdefault(path, np.zeros(self.bits.shape, np.int16))
      counts[zone[0], zone[1]] += zone[2]
    self._mark(zone, _body_bit(path))

  def _unsettle(self, path: int, segment: int) -> None:
    """Undoes `_settle` for a target path's segment (it becomes the newest again)."""
    rows, cols, mask = zone = self.zones[path][segment]
    counts = self.counts[path]
    counts[rows, cols] -= mask
    self._unmark((rows, cols, mask & (counts[rows, cols] == 0)), _body_bit(path))
    self._mark(zone, _newest_bit(path))

  def _segments_free(self, starts: np.ndarray, vectors: np.ndarray, path: int) -> np.ndarray:
    """bool [N]: whether the segments from `starts` [N, 2] (or one start [2]) along
    `vectors` [N, 2], all of one length, are inside the canvas and clear of the
    scene for `path` (checked at points one cell apart)."""
    count = int(math.ceil(math.hypot(*vectors[0]) * self.scale)) + 1
    if count not in self.fractions:
      self.fractions[count] = np.linspace(0.0, self.scale, count)
    fractions = self.fractions[count]
    ends = starts + vectors
    # Within the canvas: both ends (for a single start, the caller's tip is inside).
    ok = np.abs(ends - self.centre).max(axis=-1) <= self.half_width
    if starts.ndim == 2:
      ok &= np.abs(starts - self.centre).max(axis=-1) <= self.half_width
      starts = starts.T[:, :, None]
    else:
      starts = starts[:, None, None]
    # Cells under points along each segment, [2, N, count] -> flat indices [N, count].
    cells = (starts * self.scale + vectors.T[:, :, None] * fractions).astype(np.intp)
    values = self.flat_bits.take(cells[0] * self.bits.shape[1] + cells[1], mode="clip")
    forbidden = ~(_disc_bit(path) | _newest_bit(path)) if path < 2 else -1
    return ok & ~(values & forbidden).any(axis=1)

  def _marker_fits(self, centres: np.ndarray, path: int) -> np.ndarray:
    """bool [N]: a marker at each of centres [N, 2] would be clear of all other paths."""
    starts, ends, radii = [], [], []
    for other, points in enumerate(self.paths):
      if other != path:
        starts.append(points[:-1])
        ends.append(points[1:])
        radii.append(np.full(len(points) - 1, self.s.paddle_thickness / 2))
    for centre, other in self.discs:
      if other != path:
        starts.append(centre[None])
        ends.append(centre[None])
        radii.append(np.array([self.s.marker_radius]))
    if not starts:
      return np.ones(len(centres), bool)
    starts, ends, radii = np.concatenate(starts), np.concatenate(ends), np.concatenate(radii)
    gaps = _point_segment_distances(centres[:, None, :], starts, ends) - radii
    return np.all(gaps >= self.s.marker_radius + 2 * self.margin, axis=1)

  def _add_disc(self, centre: np.ndarray, path: int) -> None:
    self.discs.append((centre, path))
    self._mark(self._zone(centre, centre, self.s.marker_radius), _disc_bit(path))

  def _add_segment(self, path: int, start, end) -> None:
    if self.zones[path]:
      self._settle(path, len(self.zones[path]) - 1)
    zone = self._zone(start, end, self.s.paddle_thickness / 2)
    self.zones[path].append(zone)
    if path < 2:  # the other target path grows meanwhile and must see it
      self._mark(zone, _newest_bit(path))

  def start_path(self, starts: np.ndarray, headings: np.ndarray,
                 marker_at_start: bool = False, room: float = 0.0) -> bool:
    """Starts a new path with the first of the candidate first paddles that fits
    (and, with `marker_at_start`, leaves room for a marker at its start).

    With `room`, candidates with a free straight run of that length ahead come
    first: a path started there is likelier to grow to its full length.
    """
    path = len(self.paths)
    if path >= _MAX_PATHS:
      raise ValueError(f"At most {_MAX_PATHS} paths per image.")
    directions = _unit(headings)
    ends = starts + self.s.paddle_length * directions
    fits = self._segments_free(starts, ends - starts, path)
    if room > self.s.paddle_length and fits.any():
      roomy = fits & self._segments_free(starts, room * directions, path)
      if roomy.any():
        fits = roomy
    if marker_at_start and fits.any():
      fits[fits] = self._marker_fits(starts[fits], path)
    if not fits.any():
      return False
    i = int(np.argmax(fits))
    self.paths.append([starts[i], ends[i]])
    self.zones.append([])
    self._add_segment(path, starts[i], ends[i])
    if marker_at_start:
      self._add_disc(starts[i], path)
    return True

  def extend(self, path: int, marker_at_end: bool = False) -> bool:
    """Adds a gap and a paddle to `path`, turning by a random angle drawn from the
    continuity prior among the directions that fit (up to _TURN_TRIES of them
    are tried), like rejection sampling with a bounded number of trials.

    With `marker_at_end`, the new end must also leave room for a marker clear of
    all other paths, and gets one (the far ends of target paths).
    """
    points = self.paths[path]
    tip = points[-1]
    heading = math.atan2(*(tip - points[-2]))
    turns = self.turns[self.rng.integers(len(self.turns), size=_TURN_TRIES)]
    ends = tip + self.step * _unit(heading + turns)
    # The first fitting draw is the sample; most often it is among the first
    # few, so they are checked on their own first.
    for tries in (slice(0, _TURN_TRIES // 8), slice(_TURN_TRIES // 8, None)):
      fits = self._segments_free(tip, ends[tries] - tip, path)
      if marker_at_end and fits.any():
        fits[fits] = self._marker_fits(ends[tries][fits], path)
      if fits.any():
        break
    else:
      return False
    end = ends[tries][int(np.argmax(fits))]
    points.append(end)
    self._add_segment(path, tip, end)
    if marker_at_end:
      self._add_disc(end, path)
    return True

  def retract(self, path: int) -> None:
    """Takes back the newest paddle of target path `path` (never its first)."""
    self.paths[path].pop()
    self._unmark(self.zones[path].pop(), _newest_bit(path))
    self._unsettle(path, len(self.zones[path]) - 1)

  def finish(self, path: int) -> None:
    """Settles the newest segment of a complete path."""
    self._settle(path, len(self.zones[path]) - 1)

  def remove_last_path(self) -> None:
    """Forgets the newest path, a distractor that could not grow."""
    path = len(self.paths) - 1
    self.bits &= ~_body_bit(path)
    self.paths.pop()
    self.zones.pop()


def _try_targets(scene: _Scene) -> bool:
  """Two target paths whose starts are seed_distance apart, grown in turns; a
  path that is stuck takes back paddles, up to a budget for the scene."""
  s, rng = scene.s, scene.rng
  # The first start keeps 2 * seed_distance from the border, as in the original,
  # unless the canvas is too small for that.
  border = min(2 * s.seed_distance, s.resolution / 2 - 1)
  first = rng.uniform(border, s.resolution - border, size=(1, 2))
  if not scene.start_path(first, rng.uniform(-math.pi, math.pi, size=1), marker_at_start=True):
    return False
  second = first + s.seed_distance * _unit(rng.uniform(-math.pi, math.pi, size=_NUM_SEEDS))
  if not scene.start_path(second, rng.uniform(-math.pi, math.pi, size=_NUM_SEEDS),
                          marker_at_start=True):
    return False
  retractions = _TARGET_RETRACTIONS * s.contour_length
  for length in range(2, s.contour_length + 1):
    for path in (0, 1):
      # A path stuck again soon after being stuck takes back more paddles: one
      # more each time, since a dead end is often entered several paddles back.
      streak = 0
      while len(scene.paths[path]) - 1 < length:
        # The far end of a full-length path may carry a marker.
        if scene.extend(path, marker_at_end=len(scene.paths[path]) == s.contour_length):
          continue
        streak += 1
        for _ in range(streak):
          if retractions == 0 or len(scene.paths[path]) == 2:
            return False
          retractions -= 1
          scene.retract(path)
  scene.finish(0)
  scene.finish(1)
  return True


def _try_distractor(scene: _Scene) -> bool:
  """One distractor path from a random free place; abandoned if it gets stuck."""
  s, rng = scene.s, scene.rng
  starts = rng.uniform(scene.low, scene.high, size=(_NUM_SEEDS, 2))
  length = s.paddle_length + (s.distractor_length - 1) * scene.step
  if not scene.start_path(starts, rng.uniform(-math.pi, math.pi, size=_NUM_SEEDS), room=length):
    return False
  path = len(scene.paths) - 1
  if all(scene.extend(path) for _ in range(s.distractor_length - 1)):
    scene.finish(path)
    return True
  scene.remove_last_path()
  return False


def _draw_scene(rng: np.random.Generator,
                settings: GeneratorSettings) -> tuple[float, list[np.ndarray]]:
  """(margin, paths): two target paths, then the distractors that fit."""
  margin = float(settings.paddle_margins[rng.integers(len(settings.paddle_margins))])
  for _ in range(_SCENE_ATTEMPTS):
    scene = _Scene(rng, settings, margin)
    if not _try_targets(scene):
      continue
    for _ in range(settings.num_distractors):
      any(_try_distractor(scene) for _ in range(_DISTRACTOR_ATTEMPTS))
    return margin, [np.asarray(path) for path in scene.paths]
  raise RuntimeError(f"Could not fit the paths of {settings} in {_SCENE_ATTEMPTS} attempts.")


def _distance_field(lo, hi, scale: float, start, end, squared: bool = False) -> np.ndarray:
  """[hi - lo]: distances from the centres of cells lo..hi (a grid `scale` cells
  per pixel) to the segment start->end, in pixels (or their squares)."""
  rows = (np.arange(lo[0], hi[0])[:, None] + (0.5 - scale * start[0])) / scale
  cols = (np.arange(lo[1], hi[1])[None, :] + (0.5 - scale * start[1])) / scale
  d0, d1 = end[0] - start[0], end[1] - start[1]
  length2 = d0 * d0 + d1 * d1
  if length2 > 0:
    t = (rows * (d0 / length2) + cols * (d1 / length2)).clip(0.0, 1.0)
    rows = rows - t * d0
    cols = cols - t * d1
  distance2 = rows * rows + cols * cols
  return distance2 if squared else np.sqrt(distance2)


def _paint(canvas: np.ndarray, start, end, value: Callable[[np.ndarray], np.ndarray],
           reach: float) -> None:
  """canvas = max(canvas, value(distance to the segment start->end)) on the cells
  within `reach` + 2 cells of the segment's bounding box (value is 0 beyond)."""
  lo = [max(0, math.floor(min(a, b) - reach - 2)) for a, b in zip(start, end)]
  hi = [min(n, math.ceil(max(a, b) + reach + 2)) for a, b, n in zip(start, end, canvas.shape)]
  if hi[0] <= lo[0] or hi[1] <= lo[1]:
    return
  window = canvas[lo[0]:hi[0], lo[1]:hi[1]]
  np.maximum(window, value(_distance_field(lo, hi, 1.0, start, end)), out=window)


def _coverage(width: float) -> Callable[[np.ndarray], np.ndarray]:
  """Pixel value at a distance from a line `width` wide: a one-pixel box filter
  over the line's cross-section, scaled to peak at 1 even for lines thinner
  than a pixel."""
  return lambda d: np.clip(((width + 1) / 2 - d) / min(width, 1.0), 0.0, 1.0)


def _render(settings: GeneratorSettings, paddles: np.ndarray, markers: np.ndarray) -> np.ndarray:
  """uint8 [R, R]: the paddles (target paths' first) and the markers."""
  s = settings
  canvas = np.zeros((s.resolution, s.resolution))
  line = _coverage(s.paddle_thickness)
  target_paddles = 2 * s.contour_length
  for i, (start, end) in enumerate(paddles):
    contrast = s.snake_contrast * (s.paddle_contrast if i < target_paddles else 1.0)
    _paint(canvas, start, end, lambda d: contrast * line(d), s.paddle_thickness)
  disc = _coverage(2 * s.marker_radius)
  for centre in markers:
    _paint(canvas, centre, centre, disc, s.marker_radius)
  # Brightest pixel at 255, as the original's scipy.misc.imsave scales images.
  return np.round(canvas * (255.0 / canvas.max())).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """A standard 8-bit grayscale PNG of a uint8 [H, W] image (no filtering)."""
  image = np.ascontiguousarray(image, np.uint8)
  height, width = image.shape

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  rows = np.zeros((height, width + 1), np.uint8)  # each row starts with filter type 0
  rows[:, 1:] = image
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_bytes(data)
  tmp.replace(path)


def dataset_directory(out_dir: str | os.PathLike, resolution: int, difficulty: str) -> pathlib.Path:
  """`<out_dir>/pathfinder<resolution>/<difficulty directory>`, as in the release."""
  return pathlib.Path(out_dir) / f"pathfinder{resolution}" / difficulty_directory(difficulty)


def metadata_path(directory: pathlib.Path, batch: int) -> pathlib.Path:
  """Where the metadata of image file (batch) `batch` goes, `<directory>/metadata/<batch>.npy`."""
  return directory / "metadata" / f"{batch}.npy"


def _complete(directory: pathlib.Path, batch: int, count: int) -> bool:
  """Whether batch `batch` is on disk with `count` images (a data set grown
  since may want more in its last batch)."""
  path = metadata_path(directory, batch)
  return path.exists() and path.read_bytes().count(b"\n") == count


def _metadata_line(sample_: Sample, batch: int, j: int) -> str:
  s = sample_.settings
  fields = [f"imgs/{batch}", f"sample_{j}.png", j, sample_.label, s.continuity,
            s.contour_length, s.distractor_length, s.paddle_length, s.paddle_thickness,
            sample_.margin, 1]
  return " ".join(f"{f:g}" if isinstance(f, float) else str(f) for f in fields)


def write_batch(directory: pathlib.Path, settings: GeneratorSettings, seed: int, batch: int,
                first_index: int, count: int) -> int:
  """Writes images first_index .. first_index + count - 1 as file `batch`, then
  its metadata (atomically, so a metadata file means a complete batch)."""
  image_dir = directory / "imgs" / str(batch)
  image_dir.mkdir(parents=True, exist_ok=True)
  lines = []
  for j in range(count):
    sample_ = sample(settings, seed, first_index + j)
    _write_atomically(image_dir / f"sample_{j}.png", encode_png(sample_.image))
    lines.append(_metadata_line(sample_, batch, j) + "\n")
  path = metadata_path(directory, batch)
  path.parent.mkdir(parents=True, exist_ok=True)
  _write_atomically(path, "".join(lines).encode())
  return count


def _check_manifest(directory: pathlib.Path, manifest: dict) -> None:
  """Refuses to add to a directory written with other settings or another seed."""
  path = directory / "generator.json"
  if path.exists():
    existing = json.loads(path.read_text())
    if existing != manifest:
      raise ValueError(f"{directory} was generated with {existing}, not {manifest}; "
                       "use another output directory or delete it.")
    return
  directory.mkdir(parents=True, exist_ok=True)
  _write_atomically(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def write_dataset(out_dir: str | os.PathLike, resolution: int, difficulty: str, num_images: int,
                  images_per_file: int = 1000, seed: int = 0,
                  progress: Optional[Callable[[int], object]] = None,
                  workers: int = 1) -> pathlib.Path:
  """Writes a Pathfinder data set in the LRA release's layout, resuming a partial one.

  Args:
    out_dir: the directory to hold `pathfinder<resolution>/`.
    resolution: 32, 64, 128 or 256.
    difficulty: 'curv_baseline', 'curv_contour_length_9' or 'curv_contour_length_14'
      (or 'easy', 'intermediate', 'hard').
    num_images: images in all (the release: 200,000).
    images_per_file: images per metadata file and image directory (the release: 1,000).
    seed: the data set's seed; the output is a function of the arguments.
    progress: called with a number of images each time that many are done
      (batches already on disk included), e.g. `tqdm.update`.
    workers: processes to generate batches in parallel.

  Returns:
    The `<out_dir>/pathfinder<R>/<difficulty>` directory.

  Raises:
    ValueError: the directory holds data from other settings or another seed.
  """
  settings = settings_for(resolution, difficulty)
  directory = dataset_directory(out_dir, resolution, difficulty)
  manifest = dict(format_version=FORMAT_VERSION, seed=seed, images_per_file=images_per_file,
                  settings=dataclasses.asdict(settings))
  manifest["settings"]["paddle_margins"] = list(settings.paddle_margins)
  _check_manifest(directory, manifest)
  batches = [(k, first, min(images_per_file, num_images - first))
             for k, first in enumerate(range(0, num_images, images_per_file))]
  todo = []
  for batch in batches:
    if _complete(directory, batch[0], batch[2]):
      if progress:
        progress(batch[2])
    else:
      todo.append(batch)
  if workers <= 1:
    for batch in todo:
      done = write_batch(directory, settings, seed, *batch)
      if progress:
        progress(done)
    return directory
  # Spawned rather than forked: the caller may hold TensorFlow or JAX threads.
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    futures = [pool.submit(write_batch, directory, settings, seed, *batch) for batch in todo]
    for future in concurrent.futures.as_completed(futures):
      done = future.result()
      if progress:
        progress(done)
  return directory
