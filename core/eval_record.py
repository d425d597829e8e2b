"""eval.json's layout in one place: every key a record may hold, what it means, and the schema's
version. core.evaluate checks each record against it before writing (a key it does not name
stops the write with one line), and analysis reads the keys it names from here, so a renamed
key fails the tests rather than a table. No JAX here: analysis imports it.

Records written before the schema had a version carry no "schema" key and read as version 0.
"""
from __future__ import annotations

VERSION = 1

# FID/KID/sFID/precision/recall against each split (FID "train" and "eval": docs/paper.md
# section 3's metrics) and the Inception Score; null where eval.fid is off.
SCORES = {
    "fid_train": "FID of the samples against the training split's statistics",
    "fid_eval": "FID against the eval split's statistics",
    "kid_train": "KID against the training split", "kid_eval": "KID against the eval split",
    "kid_train_std": "KID's std over subsets (train)", "kid_eval_std": "KID's std (eval)",
    "sfid_train": "sFID (spatial features) against the training split",
    "sfid_eval": "sFID against the eval split",
    "precision_train": "precision (Kynkaanniemi et al. 2019), train",
    "recall_train": "recall, train", "precision_eval": "precision, eval",
    "recall_eval": "recall, eval",
    "is_mean": "Inception Score", "is_std": "its std over splits",
}
# The variational bound in bits/dim (core.diffusion.bound); null where eval.bound is off.
BOUND = {
    "bpd_eval": "bits/dim on held-out images", "bpd_eval_se": "its standard error",
    "bpd_train": "bits/dim on training images", "bpd_train_se": "its standard error",
}
# What was trained and how the samples were drawn (core.evaluate.model_figures).
MODEL = {
    "params": "parameters, summed over a cascade's stages",
    "step": "the evaluated checkpoint's step", "steps": "train.steps",
    "resolution": "the sampled resolution",
    "schedule": "the training schedule: name, noise_d, logsnr_shift",
    "train_img_per_s": "training images per second", "train_time_s": "training seconds",
    "guidance_scale": "sampler.guidance_scale", "num_samples": "samples scored",
    "sampler": "name, steps, noise_param, clip_x, schedule (the one walked)",
    "devices": "devices the samples were drawn on", "processes": "JAX processes",
    "ema": "which parameter average: post_hoc, sigma_rel, own_sigma_rel",
}
# Every other key: sections, provenance, time.
OTHER = {
    "floor": "the same metrics of real images of the other split, as many as the samples",
    "ref_num": "images behind each split's reference statistics",
    "content": "FID/KID at the data's content resolution: " + ", ".join(
        ("resolution", "fid_eval", "kid_eval", "kid_eval_std", "floor")),
    "oracle": "the procedural data's oracle (core.metrics.oracle.run_scores); null without one",
    "memorisation": "nearest training images (core.metrics.memorisation); null unless asked",
    "bound": "the bound's terms, schedule and image counts, or why it was skipped",
    "cond_s": "a super-resolution stage's sampling augmentation level",
    "stages": "a cascade's stage resolutions, base first",
    "eval_time_s": "seconds of this evaluation",
    "created": "UTC time stamp", "overrides": "the eval.*/sampler.*/ema.* keys given",
    "settings": "the eval, sampler and ema sections the record was made with",
    "model_dirs": "the models' directories, relative to the run, base first",
    "schema": "this module's VERSION",
}
KEYS = {**SCORES, **BOUND, **MODEL, **OTHER}
# Present in every record of this version (the rest: where their figures apply).
REQUIRED = frozenset({*MODEL, "fid_train", "fid_eval", "kid_train", "kid_eval", "is_mean",
                      "is_std", *BOUND, "oracle", "memorisation", "eval_time_s", "created",
                      "overrides", "settings", "model_dirs", "schema"})
# Keys of the sections that analysis reads.
CONTENT = ("resolution", "fid_eval", "kid_eval", "kid_eval_std", "floor")
ORACLE = ("resolution", "num", "recipe", "held_out_accuracy", "class_acc", "class_acc_lo",
          "class_acc_hi", "fd_eval", "floor", "params", "params_real")


def check(record: dict, where: str = "eval.json") -> None:
  """Raises ValueError naming every key the schema does not know or a record must hold."""
  unknown = sorted(set(record) - set(KEYS))
  missing = sorted(REQUIRED - set(record))
  bad = []
  if unknown:
    bad.append(f"keys not in core.eval_record: {', '.join(unknown)}")
  if missing:
    bad.append(f"missing keys: {', '.join(missing)}")
  for name, allowed in (("content", CONTENT), ("oracle", ORACLE)):
    sec = record.get(name)
    extra = sorted(set(sec) - set(allowed)) if isinstance(sec, dict) else []
    if extra:
      bad.append(f"{name}: keys not in core.eval_record.{name.upper()}: {', '.join(extra)}")
  if bad:
    raise ValueError(f"{where}: {'; '.join(bad)} (add them to core/eval_record.py and bump "
                     "VERSION, or write the named ones)")


def version(record: dict) -> int:
  """The schema version a record was written with (0: before versions)."""
  return int(record.get("schema", 0))
