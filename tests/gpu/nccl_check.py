"""Two GPUs, one model: tinytok.distributed.NCCLWorld on real GPUs (a step of run.sh).

    python tests/gpu/nccl_check.py OUT.json            # needs 2 GPUs; SKIP with fewer
    python tests/gpu/nccl_check.py --fake OUT.json     # rehearsal on tests/fake_cupy.py

The ranks are threads of this process, one GPU each (NCCL takes ranks that are threads as
it takes processes, and the trainers cannot tell), so no MPI is needed on the GPU machine.
Checks, each recorded in OUT.json:

* collectives: allreduce_sum and broadcast of device buffers give the sum and process 0's
  buffer on both GPUs, and anyone() agrees;
* training: a micro EMA tokenizer trained on the two GPUs (each on half of every batch)
  ends with the parameters of one GPU's run to float32 rounding, and only rank 0 wrote.

Exit 0 when every check passed or there are fewer than 2 GPUs (nothing to check), 1 if not.
"""
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_cupy(fake):
    if fake:
        sys.path.insert(0, str(HERE.parent))
        import fake_cupy
        return fake_cupy.cupy
    import cupy
    from cupy.cuda import nccl  # noqa: F401  (makes cupy.cuda.nccl an attribute)
    return cupy


def on_gpus(cupy, fn):
    """fn(rank, unique_id) on two threads, thread r on GPU r; their results."""
    unique_id = cupy.cuda.nccl.get_unique_id()
    results, errors = [None, None], []

    def run(rank):
        try:
            cupy.cuda.Device(rank).use()      # the current device is per thread
            results[rank] = fn(rank, unique_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results


def check_collectives(cupy):
    from tinytok import backend
    from tinytok.distributed import NCCLWorld
    backend._active = cupy

    def collectives(rank, unique_id):
        world = NCCLWorld(rank, 2, unique_id)
        summed = world.allreduce_sum(cupy.arange(4, dtype=cupy.float32) * (rank + 1))
        root = world.broadcast(cupy.full(3, rank + 10.0, dtype=cupy.float64))
        return summed.get().tolist(), root.get().tolist(), world.anyone(rank == 1)

    results = on_gpus(cupy, collectives)
    return all(r == ([0.0, 3.0, 6.0, 9.0], [10.0] * 3, True) for r in results), results


def check_training(cupy, folder):
    from tinytok import backend
    from tinytok.data.datasets import make_shapes
    from tinytok.distributed import NCCLWorld
    from tinytok.tokenizer.vqvae import TokenizerConfig
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    from tinytok.training.checkpoint import load_checkpoint
    config = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1,
                             code_dim=4, num_codes=16, quantizer="ema")
    images = np.ascontiguousarray(make_shapes(24, seed=1).images[:, ::2, ::2])
    settings = TrainSettings(steps=8, batch_size=6, lr=3e-3, warmup=2, seed=7,
                             checkpoint_every=4)
    recipe = TokenizerRecipe(kmeans_init=False, restart_every=0)
    quiet = {"log": lambda *a: None, "progress_stream": open(os.devnull, "w")}
    backend._active = cupy
    train_tokenizer(images, config, settings, str(folder / "one.npz"), recipe, **quiet)
    on_gpus(cupy, lambda rank, uid: train_tokenizer(
        images, config, settings, str(folder / f"two{rank}.npz"), recipe,
        world=NCCLWorld(rank, 2, uid), **quiet))
    one, two = load_checkpoint(folder / "one.npz"), load_checkpoint(folder / "two0.npz")
    worst = max(float(np.abs(one.params[k] - two.params[k]).max()) for k in one.params)
    alone = not (folder / "two1.npz").exists()
    return worst < 1e-5 and alone, {"largest_difference": worst, "rank0_alone_wrote": alone}


def main(argv):
    fake = "--fake" in argv
    out = Path([a for a in argv if a != "--fake"][0])
    cupy = load_cupy(fake)
    try:
        gpus = 2 if fake else cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError: no driver, no GPU
        gpus = 0
    if gpus < 2:
        print(f"SKIP: {gpus} GPU(s) here; the NCCL check needs 2")
        out.write_text(json.dumps({"skipped": f"{gpus} GPU(s)"}))
        return 0
    if not getattr(cupy.cuda.nccl, "available", True):
        print("FAIL: this CuPy has no NCCL (pip install nvidia-nccl-cu12)")
        out.write_text(json.dumps({"failed": "no NCCL in CuPy"}))
        return 1
    report = {}
    report["collectives_ok"], report["collectives"] = check_collectives(cupy)
    with tempfile.TemporaryDirectory() as folder:
        report["training_ok"], report["training"] = check_training(cupy, Path(folder))
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if report["collectives_ok"] and report["training_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
