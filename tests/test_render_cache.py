"""The procedural set's render cache (core.data.sources.render_cached): same batches, rendered once."""
import os
import pickle

import numpy as np
import pytest

from core.data import pipeline
from core.config import DataConfig
from core.data.shapes import ShapesSource
from core.data.sources import RenderedShapes, render_cached


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("SIMPLEDIFF_SHAPES_CACHE", raising=False)
  return tmp_path / "cache" / "shapes"


def test_render_equals_on_the_fly_and_is_read_back(cache, monkeypatch):
  src = ShapesSource(40, 16, "train", style="simple")
  got = render_cached(src)
  assert isinstance(got, RenderedShapes) and len(got) == 40
  for i in range(40):
    a, b = src[i], got[i]
    assert b["image"].dtype == np.uint8 and np.array_equal(a["image"], b["image"])
    assert int(a["label"]) == int(b["label"])
  assert np.array_equal(pickle.loads(pickle.dumps(got))[7]["image"], src[7]["image"])
  # The second run reads the render: the renderer is never called.
  monkeypatch.setattr(ShapesSource, "__getitem__", lambda self, i: 1 / 0)
  again = render_cached(ShapesSource(40, 16, "train", style="simple"))
  assert np.array_equal(again[3]["image"], got[3]["image"])
  # Another split, style, size or resolution is another render.
  assert len(os.listdir(cache)) == 1


def test_torn_render_is_made_again(cache):
  src = ShapesSource(24, 16, "train", style="simple")
  render_cached(src)
  (folder,) = cache.iterdir()
  with open(folder / "images.npy", "r+b") as f:
    f.truncate(200)
  got = render_cached(src)
  assert np.array_equal(got[23]["image"], src[23]["image"])


def test_off_and_other_sources_are_left_alone(cache, monkeypatch):
  src = ShapesSource(8, 16, "train")
  monkeypatch.setenv("SIMPLEDIFF_SHAPES_CACHE", "0")
  assert render_cached(src) is src
  assert not cache.exists()
  monkeypatch.delenv("SIMPLEDIFF_SHAPES_CACHE")
  other = [1, 2, 3]
  assert render_cached(other) is other
  monkeypatch.setattr("core.data.sources.MAX_RENDER_CACHE_BYTES", 8 * 16 * 16 * 3 - 1)
  assert render_cached(src) is src


def test_training_batches_unchanged(cache, monkeypatch):
  """The pipeline's batches (shuffle, flip, epochs) are the same with the render as without."""
  cfg = DataConfig(source="shapes_simple", size=20, num_classes=10)

  def batches():
    it = iter(pipeline.make_dataset(cfg, 16, 8, seed=3, train=True))
    return [next(it) for _ in range(6)]   # 48 images: past the first epoch of 20
  monkeypatch.setenv("SIMPLEDIFF_SHAPES_CACHE", "0")
  plain = batches()
  monkeypatch.setenv("SIMPLEDIFF_SHAPES_CACHE", "1")
  cached = batches()
  assert cache.exists() and len(os.listdir(cache)) == 1
  for a, b in zip(plain, cached):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
