"""data.content_resolution: the same content at growing resolution, for every source.

Images are made at the content resolution (shapes rendered there, files downsampled to it) and
upsampled with data.upsample; the evaluation also scores such a run's samples box-downsampled
to the content resolution.
"""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from core.data import pipeline, sources
from core.config import ConfigError, DataConfig
from core.evaluate import scored_content
from core.metrics.reference import box_downsample
from core.experiment import resolve, train_key
from core.data.shapes import ShapesSource
from core.data.sources import RenderedShapes, Upsampled, render_cached


def _blocks(x, f):
  r = x.shape[0] // f
  return x.reshape(r, f, r, f, 3).astype(np.float64).mean((1, 3))


def test_nearest_upsampled_shapes_carry_the_content_exactly():
  """With nearest and factor 4, every 4 x 4 block mean is the 16-px render (the paper's
  thought experiment made exact); bicubic keeps it close."""
  content = ShapesSource(6, 16, "train", style="simple")
  for method, tol in (("nearest", 0.0), ("bicubic", 30.0)):
    cfg = DataConfig(source="shapes_simple", size=6, content_resolution=16, upsample=method)
    src = sources.make_source(cfg, 64, "train")
    assert isinstance(src, Upsampled) and len(src) == 6
    for i in range(6):
      ex = src[i]
      assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
      assert int(ex["label"]) == int(content[i]["label"])
      err = np.abs(_blocks(ex["image"], 4) - content[i]["image"]).max()
      assert err <= tol, (method, err)
  # bicubic is not nearest: it interpolates between the content's pixels
  near = sources.make_source(DataConfig(source="shapes_simple", size=6, content_resolution=16,
                                     upsample="nearest"), 64, "train")[0]["image"]
  cub = sources.make_source(DataConfig(source="shapes_simple", size=6, content_resolution=16),
                         64, "train")[0]["image"]
  assert not np.array_equal(near, cub)


def test_content_at_or_above_the_resolution_changes_nothing():
  plain = sources.make_source(DataConfig(source="shapes_simple", size=4), 16, "train")
  for c in (16, 32):
    src = sources.make_source(DataConfig(source="shapes_simple", size=4, content_resolution=c),
                           16, "train")
    assert isinstance(src, ShapesSource)
    assert np.array_equal(src[2]["image"], plain[2]["image"])


def test_files_are_downsampled_to_the_content_then_upsampled(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "imgs" / "train" / "a"
  os.makedirs(root)
  big = rng.integers(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(big).save(root / "0.png")
  cfg = DataConfig(source="folder", path=str(tmp_path / "imgs"), content_resolution=8,
                   upsample="nearest")
  got = sources.make_source(cfg, 32, "train")[0]["image"]
  at8 = sources.make_source(DataConfig(source="folder", path=str(tmp_path / "imgs")), 8,
                         "train")[0]["image"]
  assert got.shape == (32, 32, 3)
  np.testing.assert_array_equal(_blocks(got, 4), at8)   # no detail above 8 px survives


def test_render_cache_renders_the_content_once(tmp_path, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("SIMPLEDIFF_SHAPES_CACHE", raising=False)
  cfg = DataConfig(source="shapes_simple", size=12, content_resolution=16)
  src = sources.make_source(cfg, 64, "train")
  got = render_cached(src)
  assert isinstance(got, Upsampled) and isinstance(got.src, RenderedShapes)
  assert got.src.resolution == 16   # 16-px renders: 1/16 of the bytes of the 64-px images
  for i in (0, 11):
    assert np.array_equal(got[i]["image"], src[i]["image"])
  again = pickle.loads(pickle.dumps(got))   # grain workers
  assert np.array_equal(again[5]["image"], src[5]["image"])
  ds = pipeline.make_dataset(cfg, 64, 4, seed=0)
  assert next(iter(ds))["image"].shape == (4, 64, 64, 3)


def test_config_names_the_bad_key():
  with pytest.raises(ConfigError, match="data.upsample"):
    resolve({"data": {"upsample": "cubic"}})
  with pytest.raises(ConfigError, match="data.content_resolution"):
    resolve({"data": {"content_resolution": -16}})
  with pytest.raises(ConfigError, match="model.prediction"):
    resolve({"model": {"prediction": "score"}})


def test_content_settings_split_models_only_where_they_act():
  key = lambda **d: train_key(resolve({"resolution": 32, "data": d}))
  assert key() == key(content_resolution=32) == key(content_resolution=64, upsample="nearest")
  assert key(content_resolution=16) != key()
  assert key(content_resolution=16) != key(content_resolution=16, upsample="nearest")


def test_reference_data_of_another_content_is_another_cache_entry():
  fp = lambda **d: sources.data_fingerprint(DataConfig(source="shapes_simple", **d), "test", 8)
  assert len({fp(), fp(content_resolution=16), fp(content_resolution=16, upsample="nearest"),
              fp(content_resolution=8)}) == 4


def test_samples_are_scored_at_the_content_resolution():
  cfg = resolve({"resolution": 64, "data": {"content_resolution": 16}})
  assert scored_content(cfg) == 16
  assert scored_content(resolve({"resolution": 16, "data": {"content_resolution": 16}})) is None
  assert scored_content(resolve({"resolution": 64})) is None
  x = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), np.uint8)
  got = box_downsample(x, 16)
  assert got.dtype == np.uint8 and got.shape == (2, 16, 16, 3)
  np.testing.assert_allclose(got[0], _blocks(x[0], 4), atol=0.5)
