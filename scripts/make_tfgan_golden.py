"""Makes tests/data/tfgan_golden.npz: FID and IS golden values from TF-GAN itself.

One-off, run in a scratch venv (TensorFlow is never a project dependency):

  python3.11 -m venv /tmp/tfvenv
  /tmp/tfvenv/bin/pip install "tensorflow==2.15.*" "tensorflow-gan==2.1.0" "numpy<2" \
      "tensorflow-probability==0.23.*"
  /tmp/tfvenv/bin/python -m scripts.make_tfgan_golden

Inputs are random (numpy seed 0) and stored with the results:
  act_a, act_b      (500, 64) float64 activations with different means and covariances
  fid_ab, fid_ba    tfgan.eval.frechet_classifier_distance_from_activations(a, b) and (b, a)
  fid_aa            the same with a against itself (TF-GAN's round-off floor)
  act_c32, act_d32, fid_cd32
                    (300, 16) float32 activations: TF-GAN casts to float64, returns float32
  logits_u, logits_v, logits_cls, logits_boost
                    factors of (1000, 1008) float64 logits with peaked, uneven class
                    distributions: logits = u @ v, plus boost at [i, cls[i]] (exact in float64)
  is_splits         tfgan.eval.classifier_score_from_logits on each of 10 consecutive splits
  is_all            the same on all 1000 rows
"""

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_gan as tfgan

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(rng):
  d = 64
  l1 = rng.normal(size=(d, d)) / np.sqrt(d)
  l2 = rng.normal(size=(d, d)) / np.sqrt(d) + 0.3 * np.eye(d)
  a = rng.normal(size=(500, d)) @ l1 + rng.normal(size=d)
  b = rng.normal(size=(500, d)) @ l2 + 0.5 + rng.normal(size=d)
  c = rng.normal(size=(300, 16)).astype(np.float32)
  dd = (rng.normal(size=(300, 16)) * 1.5 + 0.2).astype(np.float32)
  # Rank-8 logits plus a boost of a Zipf-like favourite class: peaked, uneven predictions, so IS
  # is far from 1. Entries are multiples of 1/16 with small numerators, so logits = u @ v + boost
  # is exact in float64 under any BLAS and only the small factors need storing.
  u = np.round(rng.normal(size=(1000, 8)) * 16) / 16
  v = np.round(rng.normal(size=(8, 1008)) * 16) / 16
  cls = np.minimum(rng.zipf(1.3, size=1000), 1008) - 1
  boost = np.round(rng.uniform(4, 12, size=1000) * 16) / 16
  return a, b, c, dd, (u, v, cls, boost)


def make_logits(u, v, cls, boost):
  logits = u @ v
  logits[np.arange(len(u)), cls] += boost
  return logits


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "tfgan_golden.npz"))
  args = ap.parse_args()
  a, b, c, dd, factors = make_inputs(np.random.default_rng(0))
  logits = make_logits(*factors)
  fcd = tfgan.eval.frechet_classifier_distance_from_activations
  score = tfgan.eval.classifier_score_from_logits
  n, splits = len(logits), 10
  out = dict(
      act_a=a, act_b=b, act_c32=c, act_d32=dd,
      logits_u=factors[0], logits_v=factors[1], logits_cls=factors[2], logits_boost=factors[3],
      fid_ab=np.float64(fcd(tf.constant(a), tf.constant(b)).numpy()),
      fid_ba=np.float64(fcd(tf.constant(b), tf.constant(a)).numpy()),
      fid_aa=np.float64(fcd(tf.constant(a), tf.constant(a)).numpy()),
      fid_cd32=np.float32(fcd(tf.constant(c), tf.constant(dd)).numpy()),
      is_splits=np.array([score(tf.constant(logits[i * n // splits:(i + 1) * n // splits])).numpy()
                          for i in range(splits)], np.float64),
      is_all=np.float64(score(tf.constant(logits)).numpy()),
  )
  np.savez_compressed(args.out, **out)
  print(f"wrote {args.out} with TF {tf.__version__}, tensorflow-gan 2.1.0:")
  for k in ("fid_ab", "fid_ba", "fid_aa", "fid_cd32", "is_all"):
    print(f"  {k} = {out[k]!r}")
  print(f"  is_splits = {out['is_splits']}")


if __name__ == "__main__":
  main()
