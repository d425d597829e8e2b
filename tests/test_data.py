"""Data sources and the grain pipeline: determinism, sharding, resumption, error messages."""
import gc
import os
import sys

import numpy as np
import pytest
from PIL import Image

from core.data import images, pipeline, sources
from core.data.sources import subset
from core.config import ConfigError, DataConfig
from core.data.shapes import KINDS, ShapesSource


def _box_down(x, f):
  r = x.shape[0] // f
  return x.reshape(r, f, r, f, 3).astype(np.float64).mean((1, 3))


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
             for x, y in zip(a, b))


# --- shapes ---------------------------------------------------------------------------

def test_shapes_deterministic_and_distinct():
  cfg = DataConfig(source="shapes", size=100)
  a = sources.make_source(cfg, 32, "train")
  b = sources.make_source(cfg, 32, "train")
  assert np.array_equal(a[7]["image"], a[7]["image"])
  assert np.array_equal(a[7]["image"], b[7]["image"]) and a[7]["label"] == b[7]["label"]
  assert a[7]["image"].shape == (32, 32, 3) and a[7]["image"].dtype == np.uint8
  assert a[7]["label"].dtype == np.int32
  imgs = [a[i]["image"] for i in range(20)]
  assert all(not np.array_equal(imgs[i], imgs[j]) for i in range(20) for j in range(i))
  test = sources.make_source(cfg, 32, "test")
  assert all(not np.array_equal(a[i]["image"], test[i]["image"]) for i in range(20))
  assert len(a) == 100
  with pytest.raises(IndexError):
    a[100]


def test_shapes_labels_cover_all_classes():
  src = ShapesSource(size=200, resolution=16)
  labels = np.array([src[i]["label"] for i in range(200)])
  assert labels.min() >= 0 and labels.max() < len(KINDS) == 10
  assert set(labels.tolist()) == set(range(10))


def test_shapes_same_content_across_resolutions():
  hi, lo = ShapesSource(50, 256), ShapesSource(50, 64)
  diffs = [np.abs(_box_down(hi[i]["image"], 4) - lo[i]["image"]).mean() for i in range(8)]
  # Measured: mean 0.29, worst 0.94 uint8 levels over 100 images (a different image: ~50).
  assert np.mean(diffs) < 1.0 and max(diffs) < 2.5, diffs
  other = np.abs(_box_down(hi[0]["image"], 4) - lo[1]["image"]).mean()
  assert other > 10


def test_shapes_extreme_resolutions():
  for r in (16, 1024):
    ex = ShapesSource(10, r)[3]
    assert ex["image"].shape == (r, r, 3) and ex["image"].dtype == np.uint8
    assert ex["label"] == ShapesSource(10, 32)[3]["label"]
  assert ShapesSource(10, 1024)[3]["image"].std() > 5   # not blank


# --- folder -----------------------------------------------------------------------------

def _write(path, arr, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path, format=fmt)


def _centred(h, w, rng):
  """Blue borders around a red centre square: a centre crop is all red."""
  a = np.zeros((h, w, 3), np.uint8)
  a[..., 2] = 255
  s = min(h, w)
  t, l = (h - s) // 2, (w - s) // 2
  a[t:t + s, l:l + s] = (255, 0, 0)
  a[t + s // 4:t + s // 2, l + s // 4:l + s // 2, 1] = rng.integers(0, 255)  # distinct images
  return a


@pytest.fixture
def folder(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "imgs"
  for split, n in (("train", 3), ("test", 2)):
    for cls in ("dog", "cat"):
      for i in range(n):
        _write(str(root / split / cls / f"{i}.png"), _centred(24, 40, rng), "PNG")
      _write(str(root / split / cls / f"j{i}.jpg"), _centred(48, 32, rng), "JPEG")
  return root


def test_folder_labels_and_crop(folder):
  cfg = DataConfig(source="folder", path=str(folder), num_classes=10)
  src = sources.make_source(cfg, 16, "train")
  assert src.classes == ["cat", "dog"] and len(src) == 8
  assert [int(src[i]["label"]) for i in range(8)] == [0] * 4 + [1] * 4
  assert os.path.basename(src.name(0)) == "0.png" and "cat" in src.name(0)
  for i in range(8):
    im = src[i]["image"]
    assert im.shape == (16, 16, 3) and im.dtype == np.uint8
    assert im[..., 0].min() > 200 and im[..., 2].max() < 60  # no blue border survived
  test = sources.make_source(cfg, 16, "test")
  assert len(test) == 6 and test.classes == ["cat", "dog"]
  with pytest.raises(sources.DataError, match="split 'val' not found"):
    sources.make_source(cfg, 16, "val")


def test_folder_corrupt_file(folder):
  bad = folder / "train" / "dog" / "x.jpg"
  bad.write_bytes(np.random.default_rng(1).bytes(300))
  cfg = DataConfig(source="folder", path=str(folder), shuffle_seed=3)
  src = sources.make_source(cfg, 16, "train")
  i = [src.name(k) for k in range(len(src))].index(str(bad))
  with pytest.raises(sources.DataError, match="cannot decode image") as e:
    src[i]
  assert str(bad) in str(e.value) and "\n" not in str(e.value)
  ds = pipeline.make_dataset(cfg, 16, len(src), seed=0, train=False)
  with pytest.raises(Exception, match="x.jpg"):
    next(iter(ds))

  cfg = DataConfig(source="folder", path=str(folder), skip_corrupt=True)
  src = sources.make_source(cfg, 16, "train")
  assert np.array_equal(src[i]["image"], src[(i + 1) % len(src)]["image"])   # substituted
  assert src.skipped == {i}
  ds = pipeline.make_dataset(cfg, 16, 3, seed=0, train=False)
  batches = list(iter(ds))
  assert len(batches) == 3 and ds.skip_counter.count == 1
  assert ds.skip_counter.names() == [str(bad)]
  ds = pipeline.make_dataset(cfg, 16, 4, seed=0)
  it = iter(ds)
  _take(it, 3)                                      # > 1 epoch of 9 files
  assert ds.skip_counter.count == 1 and ds.skip_counter.events >= 1


def test_folder_listing_cache(folder, tmp_path, monkeypatch):
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(sources, "_CACHE_MIN_FILES", 0)
  cfg = DataConfig(source="folder", path=str(folder))
  n = len(sources.make_source(cfg, 16, "train"))
  assert len(os.listdir(tmp_path / "cache" / "filelists")) == 1
  sources._LISTINGS.clear()
  scan = sources._scan
  monkeypatch.setattr(sources, "_scan", None)            # must come from the disk cache
  assert len(sources.make_source(cfg, 16, "train")) == n
  monkeypatch.setattr(sources, "_scan", scan)
  _write(str(folder / "train" / "cat" / "new.png"), np.zeros((8, 8, 3), np.uint8), "PNG")
  assert len(sources.make_source(cfg, 16, "train")) == n + 1   # a new file invalidates both


def test_bad_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="choose one of: .*folder.*shapes"):
    sources.make_source(DataConfig(source="nope"), 32, "train")
  missing = str(tmp_path / "missing")
  with pytest.raises(sources.DataError, match="data.path") as e:
    sources.make_source(DataConfig(source="folder", path=missing), 32, "train")
  assert missing in str(e.value)
  with pytest.raises(sources.DataError, match="set data.path"):
    sources.make_source(DataConfig(source="folder"), 32, "train")
  with pytest.raises(ConfigError, match="data.num_classes=5"):
    sources.make_source(DataConfig(source="shapes", num_classes=5), 32, "train")


def test_tfds_missing_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)   # import fails
  with pytest.raises(sources.DataError) as e:
    sources.make_source(DataConfig(source="tfds", path="imagenet2012"), 64, "train")
  msg = str(e.value)
  assert "simplediff[tfds]" in msg and "tensorflow-datasets" in msg and "\n" not in msg


# --- npz and array_record ----------------------------------------------------------------

def test_npz_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
  labels = np.array([3, 1, 4, 1, 5])
  np.savez(tmp_path / "d_train.npz", images=images, labels=labels)
  cfg = DataConfig(source="npz", path=str(tmp_path / "d_{split}.npz"))
  src = sources.make_source(cfg, 20, "train")
  assert len(src) == 5
  for i in range(5):
    assert np.array_equal(src[i]["image"], images[i]) and src[i]["label"] == labels[i]
  assert sources.make_source(cfg, 8, "train")[2]["image"].shape == (8, 8, 3)
  np.savez(tmp_path / "bad.npz", pixels=images)
  with pytest.raises(sources.DataError, match="no 'images' array"):
    sources.make_source(DataConfig(source="npz", path=str(tmp_path / "bad.npz")), 20, "train")


def test_array_record_round_trip(tmp_path):
  pytest.importorskip("array_record.python.array_record_data_source")
  import io
  rng = np.random.default_rng(0)
  arrs, recs = [], []
  for i in range(4):
    a = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    arrs.append(a)
    recs.append((buf.getvalue(), i * 2))
  assert sources.write_array_record(str(tmp_path / "train-00000.array_record"), recs) == 4
  cfg = DataConfig(source="array_record", path=str(tmp_path))
  src = sources.make_source(cfg, 12, "train")
  assert len(src) == 4
  for i in range(4):
    assert np.array_equal(src[i]["image"], arrs[i]) and src[i]["label"] == 2 * i


# --- make_dataset ------------------------------------------------------------------------

SHAPES = DataConfig(source="shapes", size=40)


def test_batches_shapes_and_seeds():
  it = iter(pipeline.make_dataset(SHAPES, 16, 8, seed=0))
  b = next(it)
  assert set(b) == {"image", "label"}
  assert b["image"].shape == (8, 16, 16, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  assert b["image"].min() >= -1 and b["image"].max() <= 1 and b["image"].min() < -0.5
  first = [b] + _take(it, 9)                         # two epochs of 5 batches
  again = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=0)), 10)
  other = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=1)), 10)
  assert _same(first, again) and not _same(first, other)
  epoch = lambda bs: np.concatenate([x["image"] for x in bs]).reshape(40, -1)
  e1, e2 = epoch(first[:5]), epoch(first[5:])
  assert not np.array_equal(e1, e2)                  # reshuffled (or reflipped) per epoch
  # Every image once per epoch (modulo flips): the sets of labels match the data set's.
  labels = sorted(int(ShapesSource(40, 16)[i]["label"]) for i in range(40))
  assert sorted(np.concatenate([x["label"] for x in first[5:]]).tolist()) == labels


def test_eval_order_and_uint8():
  src = ShapesSource(40, 16)
  bs = list(iter(pipeline.make_dataset(SHAPES, 16, 16, seed=0, train=False)))
  assert len(bs) == 2                                # 40 // 16, remainder dropped
  want = np.stack([src[i]["image"] for i in range(32)]).astype(np.float32) / 127.5 - 1
  assert np.allclose(np.concatenate([b["image"] for b in bs]), want, atol=1e-6)
  got = list(pipeline.iterate_uint8(SHAPES, 16, "train", 37, 16))
  assert [len(g) for g in got] == [16, 16, 5] and got[0].dtype == np.uint8
  # 37 of 40: sources.subset's fixed random draw, in index order (not the first 37 of a sorted folder)
  keep = subset(np.arange(40), 37)
  assert len(set(keep.tolist())) == 37 and list(keep) == sorted(keep) and keep.max() > 36
  assert np.array_equal(np.concatenate(got), np.stack([src[int(i)]["image"] for i in keep]))
  assert [len(g) for g in pipeline.iterate_uint8(SHAPES, 16, "train", 40, 16)] == [16, 16, 8]


def test_process_sharding_partitions_the_global_batch():
  glob = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=5)), 7)
  parts = [_take(iter(pipeline.make_dataset(SHAPES, 16, 4, seed=5, process_index=p,
                                        process_count=2)), 7) for p in (0, 1)]
  for k in range(7):
    assert np.array_equal(parts[0][k]["image"], glob[k]["image"][0::2])
    assert np.array_equal(parts[1][k]["image"], glob[k]["image"][1::2])
    a = {x.tobytes() for x in parts[0][k]["image"]}
    assert a.isdisjoint({x.tobytes() for x in parts[1][k]["image"]})
  # Eval: every process gets the same number of batches.
  n = [len(list(iter(pipeline.make_dataset(SHAPES, 16, 6, seed=0, train=False, process_index=p,
                                       process_count=3)))) for p in range(3)]
  assert n == [2, 2, 2]


def test_resume_from_saved_state():
  ds = pipeline.make_dataset(SHAPES, 16, 8, seed=2)
  it = iter(ds)
  _take(it, 4)
  state = pipeline.iterator_state_to_json(it)
  rest = _take(it, 4)                                # crosses the epoch boundary
  it2 = pipeline.restore_iterator(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=2)), state)
  assert _same(rest, _take(it2, 4))
  fresh = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=2)), 4)
  assert not _same(rest, fresh)
  with pytest.raises(sources.DataError, match="not a data iterator state"):
    pipeline.restore_iterator(it2, '{"next_index": 3}')


def test_flip_mirrors_some_images():
  cfg = DataConfig(source="shapes", size=40, random_flip=False)
  plain = _take(iter(pipeline.make_dataset(cfg, 16, 8, seed=3)), 5)
  flip = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=3)), 5)
  same = mirrored = 0
  for p, f in zip(plain, flip):
    assert np.array_equal(p["label"], f["label"])       # the same shuffle
    for x, y in zip(p["image"], f["image"]):
      if np.array_equal(x, y):
        same += 1
      else:
        assert np.array_equal(x[:, ::-1], y)
        mirrored += 1
  assert same > 5 and mirrored > 5


def test_worker_processes_match_in_process():
  cfg = DataConfig(source="shapes", size=40, num_workers=2)
  ref = _take(iter(pipeline.make_dataset(SHAPES, 16, 8, seed=4)), 6)
  it = iter(pipeline.make_dataset(cfg, 16, 8, seed=4))
  got = _take(it, 3)
  state = pipeline.iterator_state_to_json(it)
  it.close()
  it = pipeline.restore_iterator(iter(pipeline.make_dataset(cfg, 16, 8, seed=4)), state)
  got += _take(it, 3)
  it.close()
  ok = _same(ref, got)
  del got, it
  gc.collect()   # release the workers' shared memory before the interpreter exits
  assert ok


def test_state_json_keeps_non_string_keys():
  class It:
    state = {"next_index": np.int64(3), "future_states": {2: {"next_index": 5}}, "l": [1]}

    def get_state(self):
      return self.state

    def set_state(self, st):
      self.restored = st
  it = It()
  pipeline.restore_iterator(it, pipeline.iterator_state_to_json(it))
  assert it.restored == {"next_index": 3, "future_states": {2: {"next_index": 5}}, "l": [1]}


def _encoded(im: Image.Image, fmt: str = "PNG") -> bytes:
  import io
  b = io.BytesIO()
  im.save(b, fmt)
  return b.getvalue()


def test_every_pixel_format_decodes_by_value_or_is_refused_by_name(tmp_path):
  """PIL's convert("RGB") clips 16-bit pixels at 255 (an all-white image)."""
  from analysis.fid import _load_rgb
  ramp16 = (np.arange(64, dtype=np.int64).reshape(8, 8) * 1040).astype(np.uint16)  # 0..65520
  want16 = np.round(ramp16 / 257).astype(np.uint8)
  rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  pal = Image.fromarray(rgb).quantize(16)
  cases = {
      "I;16 png": (Image.fromarray(ramp16), "PNG", np.repeat(want16[..., None], 3, -1)),
      "I tiff (16-bit values)": (Image.fromarray(ramp16.astype(np.int32)), "TIFF",
                                 np.repeat(want16[..., None], 3, -1)),
      "L": (Image.fromarray(rgb[..., 0]), "PNG", np.repeat(rgb[..., :1], 3, -1)),
      "LA": (Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], -1), "LA"), "PNG",
             np.repeat(rgb[..., :1], 3, -1)),
      "RGBA": (Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), "RGBA"), "PNG", rgb),
      "P": (pal, "PNG", np.asarray(pal.convert("RGB"))),
      "CMYK": (Image.fromarray(rgb).convert("CMYK"), "TIFF",
               np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))),
      "1": (Image.fromarray(rgb[..., 0] > 127), "PNG",
            np.repeat(((rgb[..., :1] > 127) * 255).astype(np.uint8), 3, -1)),
  }
  for name, (im, fmt, want) in cases.items():
    raw = _encoded(im, fmt)
    got = images.decode_image(raw, 8)
    assert got.dtype == np.uint8 and got.shape == (8, 8, 3), name
    np.testing.assert_array_equal(got, want, err_msg=name)
    path = tmp_path / f"{name.split()[0].replace(';', '')}.{fmt.lower()}"
    path.write_bytes(raw)
    np.testing.assert_array_equal(_load_rgb(path), want, err_msg=f"analysis.fid: {name}")
  # A float image has no implied range: refused, and analysis.fid names the file.
  f = tmp_path / "float.tiff"
  f.write_bytes(_encoded(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"))
  with pytest.raises(images.ImageModeError, match="float"):
    images.decode_image(str(f), 8)
  with pytest.raises(images.ImageModeError, match="float.tiff"):
    _load_rgb(f)


def test_reference_cache_key_names_the_data_not_the_folder_name(tmp_path, monkeypatch):
  """Two folders called `imgs` once shared FID statistics (an all-black folder
  scored 87.55 against another's). The key holds the absolute path, the files and their sizes,
  the split and the count."""
  monkeypatch.setenv("SIMPLEDIFF_CACHE", str(tmp_path / "cache"))
  rng = np.random.default_rng(1)
  for where, fill in (("a", None), ("b", 0)):
    for i in range(3):
      img = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8) if fill is None else \
          np.full((8, 8, 3), fill, np.uint8)
      _write(str(tmp_path / where / "imgs" / "train" / f"{i}.png"), img, "PNG")
  key = lambda p, split="train", num=3: sources.data_fingerprint(
      DataConfig(source="folder", path=str(p)), split, num)
  a, b = tmp_path / "a" / "imgs", tmp_path / "b" / "imgs"
  assert key(a) == key(a) and key(a) != key(b)
  assert key(a, num=2) != key(a)
  # a file rewritten with other content (and size) is other data
  before = key(a)
  _write(str(a / "train" / "0.png"), np.zeros((8, 8, 3), np.uint8), "PNG")
  sources._LISTINGS.clear()
  assert key(a) != before
