"""One process of the two-process tests: 4 fake CPU devices each, joined by jax.distributed on
localhost into one 8-device mesh. Mode "train" (tests/test_train.py): one training step on its
half of the global batch, saving the loss and the updated parameters. Mode "eval"
(tests/test_eval_sharding.py): core.evaluate.evaluate of an untrained model, saving its figures."""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(port: str, pid: str, out: str, mode: str = "train", *args) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if mode == "eval":   # tests/test_eval_sharding.py: the evaluation across the two processes
    import json
    from tests.test_eval_sharding import eval_config, evaluate_untrained
    weights, run_dir = args
    os.makedirs(run_dir, exist_ok=True)
    figures = evaluate_untrained(eval_config(weights, run_dir + "-stats"), run_dir)
    with open(out, "w") as f:
      json.dump(figures, f, default=float)
    jax.distributed.shutdown()
    return
  from tests.test_train import _batch, _cfg
  from core.train import Trainer
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  tr = Trainer(_cfg())
  state = tr.init(jax.random.key(0))
  half = {k: v[4 * int(pid): 4 * int(pid) + 4] for k, v in _batch().items()}
  state, m = tr.step(state, tr.global_batch(half), jax.random.key(1))
  # Parameters are replicated: this process's first shard of each leaf is the whole leaf.
  leaves = [np.asarray(x.addressable_shards[0].data) for x in jax.tree.leaves(state.params)]
  np.savez(out, loss=float(m["loss"]), **{f"p{i}": a for i, a in enumerate(leaves)})
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
