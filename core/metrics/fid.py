"""The metrics from Inception features, as the paper measures them (TF-GAN / pytorch-fid
conventions): FID, KID, precision/recall, sFID and IS, and a run's figures against a reference.

* features: pool_3 of the 2015-12-05 Inception graph (core/metrics/inception.py; core/metrics/features.py
  extracts them from uint8 images, core/metrics/reference.py keeps the data's);
* statistics: mean and unbiased covariance in float64, with the sample count;
* FID: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, the trace of the square root
  by TF-GAN's symmetric route (trace_sqrt_product); pytorch-fid's scipy.linalg.sqrtm of the
  product gives the same value to ~1e-9 relative, 5x slower;
* IS: exp(E_x KL(p(y|x) || p(y))) from the 1008 logits, TF-GAN's classifier_score_from_logits on
  each of 10 equal splits, reported as mean +- std over the splits;
* KID: unbiased MMD^2 under the cubic kernel (x.y/d + 1)^3 over random subsets of the pool_3
  features, mean +- std over subsets, as torch-fidelity's kid_features_to_metric (float64);
* precision and recall: Kynkaanniemi et al. 2019 with k = 3 over the pool_3 features, as
  torch-fidelity's prc_features_to_metric and the ADM evaluator (float64, in blocks);
* sFID: the same Frechet distance over the ADM evaluator's spatial features (mixed_6/conv, its
  first 7 channels, 17 x 17 x 7 = 2023 per image; core/metrics/inception.py), whose statistics are
  stored as mu_s, sigma_s beside mu, sigma, as in the ADM reference batches.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


# ----------------------------------------------------------------------------------------------
# Statistics and metrics


def compute_stats(features, spatial=None) -> dict:
  """mu, sigma (unbiased, like np.cov and TF-GAN) in float64, and the number of samples; with
  `spatial` (sFID's features of the same images) also their mu_s, sigma_s."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
  out = {"mu": f.mean(axis=0), "sigma": np.cov(f, rowvar=False), "count": len(f)}
  if spatial is not None:
    s = compute_stats(spatial)
    if s["count"] != len(f):
      raise ValueError(f"{s['count']} spatial feature vectors for {len(f)} pool features")
    out.update(mu_s=s["mu"], sigma_s=s["sigma"])
  return out


def spatial_stats(stats: dict) -> dict | None:
  """The sFID part (mu_s, sigma_s) of statistics as plain {'mu', 'sigma'}, or None without it
  (statistics saved before sFID, or from pool_3 features alone)."""
  if "mu_s" not in stats:
    return None
  return {"mu": stats["mu_s"], "sigma": stats["sigma_s"], "count": stats.get("count", -1)}


def _sqrt_psd(sigma):
  """Square root of a symmetric PSD matrix by eigendecomposition (round-off negatives -> 0)."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """Tr sqrtm(S1 S2) as TF-GAN's trace_sqrt_product computes it: sqrtm(S1 S2) is similar to
  sqrtm(A S2 A) with A = sqrtm(S1), a symmetric PSD matrix, so the trace is the sum of the
  square roots of its eigenvalues. Symmetric eigensolvers make this ~5x faster than
  scipy.linalg.sqrtm of the (non-symmetric) product at D = 2048, and singular covariances
  (fewer samples than dimensions) need no diagonal offset."""
  a = _sqrt_psd(sigma1)
  m = a @ sigma2 @ a
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.maximum(ev, 0.0)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between two Gaussians, in float64:
  |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr sqrtm(S1 S2)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
  if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
    raise ValueError("FID: a covariance holds NaN or inf")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(a: dict, b: dict) -> float:
  return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


def fid_from_features(features_a, features_b) -> float:
  return fid_from_stats(compute_stats(features_a), compute_stats(features_b))


def fid_features_vs_stats(features, ref: dict) -> float:
  """FID of n feature vectors against statistics; equal to fid_from_stats(compute_stats(
  features), ref) to ~3e-8 relative (tested to 1e-6: the D x D route's square roots of the
  D - n round-off eigenvalues near zero carry that much). With n < D the samples' covariance is
  A^T A, A = centred features / sqrt(n - 1) of shape (n, D), so S1 S2 has the nonzero
  eigenvalues of the n x n symmetric A S2 A^T, and Tr sqrtm(S1 S2) their root sum: ~10 ms at
  n = 256 where the D x D route takes ~1.5 s at D = 2048."""
  f = np.asarray(features, np.float64)
  n, dim = f.shape
  if n >= dim:
    return fid_from_stats(compute_stats(f), ref)
  if n < 2:
    raise ValueError(f"need at least 2 feature vectors of shape (N, D), got {f.shape}")
  mu = f.mean(axis=0)
  a = (f - mu) / np.sqrt(n - 1)
  sigma2 = np.asarray(ref["sigma"], np.float64)
  m = a @ sigma2 @ a.T
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  diff = mu - np.asarray(ref["mu"], np.float64)
  return float(diff @ diff + np.sum(a * a) + np.trace(sigma2)
               - 2.0 * np.sqrt(np.maximum(ev, 0.0)).sum())


def sfid_from_stats(a: dict, b: dict) -> float | None:
  """sFID (the ADM evaluator's FIDStatistics.frechet_distance of the spatial statistics); None
  where either side has no spatial statistics."""
  sa, sb = spatial_stats(a), spatial_stats(b)
  return None if sa is None or sb is None else fid_from_stats(sa, sb)


def sfid_features_vs_stats(spatial, ref: dict) -> float | None:
  """sFID of spatial features against statistics (fid_features_vs_stats, so n < 2023 samples
  take the low-rank route); None where ref has no spatial statistics."""
  s = spatial_stats(ref)
  return None if s is None else fid_features_vs_stats(spatial, s)


def poly_kernel(x, y) -> np.ndarray:
  """KID's cubic kernel (x.y / d + 1)^3, written as torch-fidelity's kernel_poly (gamma = 1/d,
  multiplied, so the rounding matches too)."""
  return (x @ y.T * (1.0 / x.shape[1]) + 1.0) ** 3


def _mmd2_from_kernels(kxx, kyy, kxy) -> float:
  # the unbiased estimate from the three m x m kernel matrices of two equal-size sets
  m = len(kxx)
  within = (kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))
  return float(within / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def mmd2_unbiased(x, y) -> float:
  """Unbiased MMD^2 of two equal-size sets under poly_kernel (Binkowski et al. 2018, torch-
  fidelity's mmd2 with mmd_est='unbiased'): the within-set kernel sums without their diagonals
  over m(m-1), minus twice the cross sum over m^2. Can be negative."""
  m = len(x)
  if len(y) != m or m < 2:
    raise ValueError(f"MMD needs two sets of the same size >= 2, got {len(x)} and {len(y)}")
  return _mmd2_from_kernels(poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y))


# Sets of at most this many rows get their kernel matrices once (3 x 2048^2 float64 = 96 MiB at
# most) and each subset reads its rows from them; larger ones (50,000 samples, subsets of 1,000)
# compute each subset's kernels, as torch-fidelity does. Same figures either way (to rounding):
# at 256 samples every subset is the whole set, and 100 subsets of 3 products cost ~5 s.
KID_KERNEL_ROWS_MAX = 2048


def kid_subset_mmds(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> np.ndarray:
  """MMD^2 of each random subset pair, drawn as torch-fidelity's kid_features_to_metric draws
  them: one np.random.RandomState(seed), then per subset choice(len(a), m, replace=False) for a
  and the same for b, in that order. m = min(subset_size, len(a), len(b))."""
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"KID needs features of shape (N, D) with one D, got {a.shape} and {b.shape}")
  if subsets < 1:
    raise ValueError(f"KID needs at least 1 subset, got {subsets}")
  m = min(subset_size, len(a), len(b))
  if m < 2:
    raise ValueError(f"MMD needs two sets of the same size >= 2, got subsets of {m} rows "
                     f"from {len(a)} and {len(b)}")
  rng = np.random.RandomState(seed)
  whole = max(len(a), len(b)) <= KID_KERNEL_ROWS_MAX
  if whole:
    kaa, kbb, kab = poly_kernel(a, a), poly_kernel(b, b), poly_kernel(a, b)
  out = np.zeros(subsets)
  for i in range(subsets):
    ia = rng.choice(len(a), m, replace=False)
    ib = rng.choice(len(b), m, replace=False)
    out[i] = _mmd2_from_kernels(kaa[np.ix_(ia, ia)], kbb[np.ix_(ib, ib)], kab[np.ix_(ia, ib)]) \
        if whole else mmd2_unbiased(a[ia], b[ib])
  return out


def kid_from_features(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity computes it: (mean, std)
  over `subsets` random subset pairs of the unbiased MMD^2 (mmd2_unbiased), std with ddof=0
  (np.std, as torch-fidelity). float64 throughout; tests/data/kid_golden.npz holds torch-
  fidelity's own values (scripts/make_kid_golden.py).

  Differences from torch-fidelity: the subset size is min(subset_size, len(a), len(b)), so
  small evaluations (256 samples) work, where torch-fidelity raises unless kid_subset_size is
  lowered by hand (with that lowered size both give the same numbers); float32 features are
  cast to float64 first (torch-fidelity keeps the tensor's dtype); and seed defaults to 0, not
  torch-fidelity's rng_seed 2020 (pass seed=2020 to reproduce its default call)."""
  mmds = kid_subset_mmds(features_a, features_b, subsets=subsets, subset_size=subset_size,
                         seed=seed)
  return float(mmds.mean()), float(mmds.std())


# Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of
# balls around its rows, of radius the distance to the row's k-th nearest neighbour in its set.

PRC_BATCH = 2048   # rows per side of one distance block: 2048^2 float64 is 32 MiB


def _sq_norms(x, batch: int) -> np.ndarray:
  return np.concatenate([np.einsum("ij,ij->i", b, b) for b in
                         (x[i:i + batch].astype(np.float64) for i in range(0, len(x), batch))])


def _dists(a, b, a2, b2) -> np.ndarray:
  """Euclidean distances of two float64 blocks by |a|^2 + |b|^2 - 2 a.b, clipped at 0 first
  (round-off), as torch.cdist's matrix-product route computes them."""
  d = a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)
  return np.sqrt(np.maximum(d, 0.0, out=d), out=d)


def _smallest(d, m: int) -> np.ndarray:
  # the m smallest of each row, unordered
  return np.partition(d, m - 1, axis=1)[:, :m] if d.shape[1] > m else d


def knn_radii(x, k: int = 3, *, batch: int = PRC_BATCH) -> np.ndarray:
  """Distance of each row of x to its k-th nearest neighbour among the rows of x, itself left
  out: the (k+1)-th smallest distance of its row counting its own 0, as torch-fidelity's
  kthvalue(k + 1) and the ADM evaluator's partition at index k take it (a duplicate row is
  then a neighbour at 0). Blockwise, the k + 1 smallest so far kept per row; each block above
  the diagonal serves its rows and, transposed, its columns, so half the products are made."""
  x = np.asarray(x)
  if x.ndim != 2 or len(x) <= k or k < 1:
    raise ValueError(f"k-NN radii need k >= 1 and more than k rows of shape (N, D), "
                     f"got k={k} and {x.shape}")
  norms = _sq_norms(x, batch)
  best = np.full((len(x), k + 1), np.inf)
  for i in range(0, len(x), batch):
    a = x[i:i + batch].astype(np.float64)
    for j in range(i, len(x), batch):
      d = _dists(a, x[j:j + batch].astype(np.float64), norms[i:i + batch], norms[j:j + batch])
      best[i:i + batch] = _smallest(np.concatenate([best[i:i + batch], d], axis=1), k + 1)
      if j != i:
        best[j:j + batch] = _smallest(np.concatenate([best[j:j + batch], d.T], axis=1), k + 1)
  return best.max(axis=1)


def precision_recall(real, fake, k: int = 3, *, batch: int = PRC_BATCH) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) of fake features against real
  ones: precision is the fraction of fake rows within knn_radii(real, k) of some real row,
  recall the fraction of real rows within knn_radii(fake, k) of some fake row (a distance equal
  to the radius counts as inside). torch-fidelity's prc_features_to_metric (its features_1 is
  fake, features_2 real) and the ADM evaluator's ManifoldEstimator compute the same;
  tests/data/prc_golden.npz holds torch-fidelity's own values (scripts/make_prc_golden.py).

  float64 in batch x batch blocks, each set cast block by block, so 50,000 x 50,000 at
  D = 2048 needs a few blocks of memory, not the full matrix; batch does not change the result.
  The radii shrink as a set grows, so both figures depend on the sizes of the two sets."""
  real, fake = np.asarray(real), np.asarray(fake)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"precision/recall need features of shape (N, D) with one D, got "
                     f"{real.shape} and {fake.shape}")
  r_real, r_fake = knn_radii(real, k, batch=batch), knn_radii(fake, k, batch=batch)
  n_real, n_fake = _sq_norms(real, batch), _sq_norms(fake, batch)
  in_real = np.zeros(len(fake), bool)   # fake rows inside the real manifold: precision
  in_fake = np.zeros(len(real), bool)   # real rows inside the fake manifold: recall
  # one pass over the fake x real blocks answers both
  for i in range(0, len(fake), batch):
    a = fake[i:i + batch].astype(np.float64)
    for j in range(0, len(real), batch):
      d = _dists(a, real[j:j + batch].astype(np.float64), n_fake[i:i + batch], n_real[j:j + batch])
      in_real[i:i + batch] |= (d <= r_real[None, j:j + batch]).any(axis=1)
      in_fake[j:j + batch] |= (d <= r_fake[i:i + batch, None]).any(axis=0)
  return float(in_real.mean()), float(in_fake.mean())


def classifier_score_from_logits(logits) -> float:
  """TF-GAN's classifier_score_from_logits: exp(mean KL(p(y|x) || mean_x p(y|x))), float64."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) == 0:
    raise ValueError(f"logits must be (N, classes) with N > 0, got {logits.shape}")
  import scipy.special   # here: 0.2 s of every start, and only IS needs it
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  p = np.exp(log_p)
  q = p.mean(axis=0)
  kl = np.sum(p * (log_p - np.log(q)), axis=1)
  return float(np.exp(kl.mean()))


def inception_score_splits(logits, splits: int = 10) -> np.ndarray:
  """The score of each of `splits` consecutive, (nearly) equal parts, as the IS code splits."""
  logits = np.asarray(logits)
  n = len(logits)
  if n < splits:
    raise ValueError(f"need at least {splits} samples for {splits} splits, got {n}")
  return np.array([classifier_score_from_logits(logits[i * n // splits:(i + 1) * n // splits])
                   for i in range(splits)])


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over splits; std with ddof=0 as in the original IS code."""
  s = inception_score_splits(logits, splits)
  return float(s.mean()), float(s.std())


# ----------------------------------------------------------------------------------------------
# A run's figures against a reference split


def sample_metrics(features: np.ndarray, ref: dict, kid_subsets: int = 100,
                   spatial: Optional[np.ndarray] = None) -> dict:
  """FID, KID (mean, std over subsets), precision/recall (Kynkaanniemi et al. 2019, k = 3)
  and sFID of features against a reference split's figures. KID and precision/recall use the
  split's kept features (up to core.metrics.reference.REFERENCE_FEATURES_MAX); precision/recall are None
  where either set has no more than k rows (no k-th neighbour); sFID (from `spatial`, the
  same samples' spatial features) is None without them or without the split's mu_s."""
  kid, kid_std = kid_from_features(features, ref["features"], subsets=kid_subsets)
  precision = recall = None
  if min(len(features), len(ref["features"])) > 3:
    precision, recall = precision_recall(ref["features"], features, k=3)
  sfid = None if spatial is None else sfid_features_vs_stats(spatial, ref)
  return {"fid": fid_features_vs_stats(features, ref), "kid": kid, "kid_std": kid_std,
          "precision": precision, "recall": recall, "sfid": sfid}


def floor_metrics(n: int, ref: dict, other: dict, kid_subsets: int = 100) -> tuple[dict, int]:
  """What a perfect model scores against `ref` at n samples: n real images of the other split
  (independent of ref's images), measured like samples. Uses the other split's kept features,
  or its full statistics where it has exactly n images; returns (metrics, images used)."""
  feats = other["features"]
  if len(feats) >= n:
    spatial = other["features_s"][:n] if "features_s" in other else None
    return sample_metrics(feats[:n], ref, kid_subsets, spatial=spatial), n
  # fewer kept features than n (n > REFERENCE_FEATURES_MAX): FID from the full statistics
  kid, kid_std = kid_from_features(feats, ref["features"], subsets=kid_subsets)
  return {"fid": fid_from_stats(other, ref), "kid": kid, "kid_std": kid_std,
          "sfid": sfid_from_stats(other, ref)}, int(other["count"])
