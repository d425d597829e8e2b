"""Training throughput of our U-ViT against the PyTorch one of denoising-diffusion-pytorch.

    python -m scripts.benchmark_peer [--peer-python /path/to/venv/bin/python] [--resolution 64]
        [--width 32] [--mults 1,2,4] [--depth 4] [--heads 4] [--batch 8] [--steps 5] [--warmup 2]

The peer is denoising_diffusion_pytorch.simple_diffusion (UViT + GaussianDiffusion), a
benchmark-only dependency: it runs in a subprocess of --peer-python (default: this
interpreter), so that torch can live in a venv of its own and the project never imports it.
Install (CPU torch; the package's own requirements would pull torchvision, accelerate,
pytorch-fid and, from the registry, a CUDA build of torch):

    python -m venv /tmp/peervenv && /tmp/peervenv/bin/pip install torch einops tqdm
    /tmp/peervenv/bin/pip install --no-deps denoising-diffusion-pytorch

Both sides time a full training step, forward, backward, gradient clipping at 1.0, Adam
(beta2 0.99, eps 1e-12) and an EMA update, in float32 on the same machine, one after the other
(the peer first), at a matched configuration: the peer's UViT(dim=W, dim_mults=(m_1..m_L))
runs conv levels of widths W, W m_1, ..., W m_{L-1} and a transformer of width W m_L at
resolution / 2^L; ours gets channel_multiplier (1, m_1, ..., m_L), two ResBlocks per conv
level, the same depth, heads, MLP ratio 4, embedding width 4 W, no classes, and the same loss:
eps-MSE with weight 1 (the peer: pred_objective='eps', min_snr_loss_weight=False), cosine
logSNR schedule. What still differs is printed (the architectures are not identical).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "PEER_RESULT "

DIFFERENCES = (
    "the peer adds linear attention after each conv block pair and a final ResBlock, uses a "
    "7x7 input conv, RMSNorm, space-to-depth conv downsampling and pixel-shuffle upsampling, "
    "2 ResBlocks per level going up (ours: 3, the DDPM layout), qk-normalised attention, "
    "bias-free linears and a learned sinusoidal time embedding; ours: GroupNorm, average "
    "pooling / nearest upsampling, adaLN-modulated transformer blocks, logSNR embedding")


@dataclasses.dataclass(frozen=True)
class Match:
  resolution: int = 64
  width: int = 32
  mults: tuple[int, ...] = (1, 2, 4)
  depth: int = 4
  heads: int = 4
  batch: int = 8
  steps: int = 5
  warmup: int = 2
  dropout: float = 0.1
  lr: float = 1e-4
  threads: int = 0      # torch intra-op threads; 0: os.cpu_count() (XLA's CPU default)


# --- the peer (runs under --peer-python; imports torch only here) ---------------------------

def _peer_module():
  """simple_diffusion, imported normally, or from its file where the package's __init__ needs
  what a --no-deps install lacks (torchvision, accelerate, ...); it needs only torch, einops."""
  import importlib
  import importlib.util
  try:
    return importlib.import_module("denoising_diffusion_pytorch.simple_diffusion"), "import"
  except ImportError:
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")   # does not run __init__
    if spec is None or not spec.submodule_search_locations:
      raise
    path = os.path.join(list(spec.submodule_search_locations)[0], "simple_diffusion.py")
    s = importlib.util.spec_from_file_location("denoising_diffusion_pytorch.simple_diffusion",
                                               path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod, "file"


def run_peer(m: Match) -> dict:
  import torch
  torch.set_num_threads(m.threads or os.cpu_count())
  torch.manual_seed(0)
  sd, how = _peer_module()
  width = m.width * m.mults[-1]
  model = sd.UViT(dim=m.width, dim_mults=m.mults, channels=3, vit_depth=m.depth,
                  vit_dropout=m.dropout, attn_heads=m.heads, attn_dim_head=width // m.heads,
                  ff_mult=4)
  diffusion = sd.GaussianDiffusion(model, image_size=m.resolution, pred_objective="eps",
                                   noise_schedule=sd.logsnr_schedule_cosine,
                                   min_snr_loss_weight=False)
  diffusion.train()
  params = [p for p in diffusion.parameters() if p.requires_grad]
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.Adam(params, lr=m.lr, betas=(0.9, 0.99), eps=1e-12)
  img = torch.rand(m.batch, 3, m.resolution, m.resolution)   # the peer takes [0, 1] images

  def step():
    loss = diffusion(img)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.9999)
    return float(loss)

  t = time.perf_counter()
  for _ in range(m.warmup):
    step()
  warm_s = (time.perf_counter() - t) / max(m.warmup, 1)
  t = time.perf_counter()
  for _ in range(m.steps):
    loss = step()
  step_s = (time.perf_counter() - t) / m.steps
  return {"params": sum(p.numel() for p in params), "step_s": step_s,
          "img_per_s": m.batch / step_s, "warmup_step_s": warm_s, "loss": loss,
          "version": f"torch {torch.__version__}, {_peer_version()}",
          "threads": torch.get_num_threads(), "loaded_by": how}


def _peer_version() -> str:
  try:
    from importlib.metadata import version
    return f"denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}"
  except Exception:  # an uninstalled checkout
    return "denoising-diffusion-pytorch (version unknown)"


def peer_subprocess(m: Match, python: str) -> dict:
  cmd = [python, "-m", "scripts.benchmark_peer", "--worker-peer",
         json.dumps(dataclasses.asdict(m))]
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  lines = [l for l in p.stdout.splitlines() if l.startswith(RESULT_TAG)]
  if p.returncode or not lines:
    tail = (p.stderr or p.stdout).strip().splitlines()[-8:]
    raise RuntimeError(f"the peer under {python} failed (exit {p.returncode}); install it as the "
                       "docstring says, or pass --peer-python:\n  " + "\n  ".join(tail))
  return json.loads(lines[-1][len(RESULT_TAG):])


# --- ours --------------------------------------------------------------------------------

def our_config(m: Match):
  from core.experiment import resolve
  t_res = m.resolution // 2 ** len(m.mults)
  return resolve({
      "resolution": m.resolution,
      "model": {"arch": "uvit", "base_channels": m.width, "emb_channels": 4 * m.width,
                "channel_multiplier": [1, *m.mults], "num_res_blocks": [2] * len(m.mults),
                "attn_resolutions": [], "num_heads": m.heads,
                "num_transformer_blocks": m.depth, "mlp_ratio": 4, "dropout": m.dropout,
                "dropout_max_res": t_res,   # dropout in the transformer only, as vit_dropout
                "num_classes": 0, "norm_groups": 8},
      "schedule": {"name": "cosine"}, "loss": {"name": "eps_mse"},
      "optim": {"lr": m.lr, "b2": 0.99, "eps": 1e-12, "grad_clip": 1.0, "ema_decay": 0.9999},
      "data": {"num_classes": 1},
      "train": {"batch_size": m.batch}})


def run_ours(m: Match) -> dict:
  import jax
  from analysis.cost import CostOptions, measure_step
  from core.models import param_count
  from core.devices import make_mesh
  from core.train import Trainer
  cfg = our_config(m)
  trainer = Trainer(cfg, make_mesh(jax.devices()[:1]))   # one device, as the peer
  out = measure_step(trainer, trainer.step, m.batch,
                     CostOptions(measure_steps=m.steps, warmup=m.warmup, max_measure_s=1e9))
  return {**out, "params": param_count(cfg.model, cfg.resolution),
          "version": f"jax {jax.__version__} ({jax.devices()[0].device_kind})"}


# --- command line --------------------------------------------------------------------------

def describe(m: Match) -> str:
  conv = [m.width] + [m.width * k for k in m.mults[:-1]]
  t_res = m.resolution // 2 ** len(m.mults)
  return (f"{m.resolution}x{m.resolution}, conv levels of widths {conv}, transformer {m.depth} "
          f"blocks x {m.width * m.mults[-1]} at {t_res}x{t_res}, {m.heads} heads, MLP 4x, "
          f"batch {m.batch}, dropout {m.dropout}, eps-MSE weight 1, Adam + clip 1.0 + EMA, "
          f"float32; {m.warmup} warm-up then {m.steps} timed steps")


def main(argv=None) -> int:
  from core.devices import setup
  setup()   # devices and the compilation cache, before JAX starts
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--peer-python", default=sys.executable,
                  help="python of the venv that has torch and denoising-diffusion-pytorch")
  ap.add_argument("--resolution", type=int, default=Match.resolution)
  ap.add_argument("--width", type=int, default=Match.width)
  ap.add_argument("--mults", default=",".join(map(str, Match.mults)),
                  help="the peer's dim_mults; the last is the transformer's width multiplier")
  ap.add_argument("--depth", type=int, default=Match.depth, help="transformer blocks")
  ap.add_argument("--heads", type=int, default=Match.heads)
  ap.add_argument("--batch", type=int, default=Match.batch)
  ap.add_argument("--steps", type=int, default=Match.steps)
  ap.add_argument("--warmup", type=int, default=Match.warmup)
  ap.add_argument("--dropout", type=float, default=Match.dropout)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  ap.add_argument("--worker-peer", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.worker_peer:   # inside the peer's interpreter: no project import, no jax
    d = json.loads(a.worker_peer)
    print(RESULT_TAG + json.dumps(run_peer(Match(**{**d, "mults": tuple(d["mults"])}))))
    return 0
  m = Match(resolution=a.resolution, width=a.width,
            mults=tuple(int(x) for x in a.mults.split(",")), depth=a.depth, heads=a.heads,
            batch=a.batch, steps=a.steps, warmup=a.warmup, dropout=a.dropout, threads=a.threads)
  print(f"matched configuration: {describe(m)}")
  print(f"still different: {DIFFERENCES}", flush=True)
  try:
    peer = peer_subprocess(m, a.peer_python)
  except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  ours = run_ours(m)
  rows = [("simplediff U-ViT", ours), ("denoising-diffusion-pytorch UViT", peer)]
  print(f"\n{'':34s} {'params':>10s} {'step s':>9s} {'img/s':>9s}  version")
  for name, r in rows:
    print(f"{name:34s} {r['params']:10,d} {r['step_s']:9.4f} {r['img_per_s']:9.2f}  "
          f"{r['version']}")
  print(f"\nratio (ours / peer img/s): {ours['img_per_s'] / peer['img_per_s']:.2f}x   "
        f"(peer: {peer['threads']} torch threads, simple_diffusion loaded by {peer['loaded_by']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
