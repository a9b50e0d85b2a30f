"""The encoder's first two convolutions, forward and backward, tinytok against PyTorch.

    python tests/peers/conv_pair_peer.py            # with parallel.reuse_freed_host_memory()
    python tests/peers/conv_pair_peer.py --plain    # without it

Batch 32: conv 4x4/2 (3 -> 64) on 32x32, then conv 4x4/2 (64 -> 128) on 16x16, an upstream
gradient of ones, every input gradient computed. Runs alternate between the two libraries
in one process, with a short pause before each so that neither library's idle BLAS
threads steal the other's cores; the medians and their ratio are printed.
"""
import sys
import time

import numpy as np
import torch

from tinytok import parallel
from tinytok.ops import conv2d_backward, conv2d_forward


def main(plain=False):
    if not plain:
        parallel.reuse_freed_host_memory()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    w1 = (rng.standard_normal((64, 3, 4, 4)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((128, 64, 4, 4)) * 0.05).astype(np.float32)
    b1, b2 = np.zeros(64, np.float32), np.zeros(128, np.float32)

    def tinytok_pair():
        h, c1 = conv2d_forward(x, w1, b1, 2, 1)
        y, c2 = conv2d_forward(h, w2, b2, 2, 1)
        dh, _, _ = conv2d_backward(np.ones_like(y), c2)
        conv2d_backward(dh, c1)

    tx, tw1, tb1, tw2, tb2 = (torch.tensor(a, requires_grad=True) for a in (x, w1, b1, w2, b2))

    def torch_pair():
        h = torch.nn.functional.conv2d(tx, tw1, tb1, 2, 1)
        y = torch.nn.functional.conv2d(h, tw2, tb2, 2, 1)
        y.backward(torch.ones_like(y))

    times = {"tinytok": [], "torch": []}
    for i in range(40):
        for name, run in (("tinytok", tinytok_pair), ("torch", torch_pair)):
            time.sleep(0.3)
            start = time.perf_counter()
            run()
            if i >= 5:  # warm-up
                times[name].append((time.perf_counter() - start) * 1e3)
    a, b = np.median(times["tinytok"]), np.median(times["torch"])
    print(f"conv pair fwd+bwd, batch 32{' (plain allocator)' if plain else ''}: "
          f"tinytok {a:.2f} ms, torch {b:.2f} ms, ratio {a / b:.2f}")


if __name__ == "__main__":
    main(plain="--plain" in sys.argv)
