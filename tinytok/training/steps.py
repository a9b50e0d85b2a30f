"""One training step's gradients for each model, computed on batch parts, one per core.

    grads = zeros_like_params(params)
    out = tokenizer_grads(x, params, config, grads)          # x (N, 3, S, S)
    loss = gpt_loss_grads(ids, targets, params, config, grads)

The models define forward and backward for a whole batch; here a batch is cut into parts
that tinytok.parallel.for_batch_parts runs side by side, each adding its gradients into
its own dict, the dicts added at the end (data parallelism on the cores of one machine).
A part's loss is a mean over its own examples, so its gradient is weighted by its share of
the batch: the sum is then the gradient of the whole batch's mean loss. These are the steps
the trainers and `tinytok bench` run; a training loop of your own can call them too.

On several processes (tinytok.distributed) each process passes its share of the global
batch and the global batch's size (of_batch, counted_in_batch): its gradients are then
weighted by its share of the whole batch, and the processes' gradients add up to it.
"""
from tinytok.backend import get_array_module
from tinytok.parallel import for_batch_parts
from tinytok.prior.gpt import gpt_loss_backward, gpt_loss_forward
from tinytok.tokenizer.vqvae import tokenizer_backward, tokenizer_forward


def tokenizer_grads(x, params, config, grads, tau=1.0, noise=None, of_batch=None,
                    decoder_only=False):
    """One training step's forward and backward on x (N, 3, S, S): gradients of the mean
    loss added into grads, no gradient of the images. Returns the forward's dict ("loss",
    "recon_loss", "vq_loss", "z", "ids") for the whole of x (its losses are x's means).

    tau and noise (N, K, g, g) are the Gumbel temperature and noise (ignored by VQ).
    of_batch: when x is a share of a bigger batch, that batch's size (default N): the
    gradients are then those of the bigger batch's mean loss, from x's examples.
    decoder_only: the decoder's gradients alone (the encoder's backward is skipped).
    """
    N = len(x)
    of_batch = of_batch or N

    def part(lo, hi, part_grads):
        out, cache = tokenizer_forward(x[lo:hi], params, config, tau,
                                       None if noise is None else noise[lo:hi])
        tokenizer_backward(cache, part_grads, config, dloss=(hi - lo) / of_batch,
                           image_grad=False, decoder_only=decoder_only)
        return out

    return join_parts(for_batch_parts(part, N, grads), N)


def join_parts(outs, batch_size):
    """One tokenizer_forward output dict from the outputs of the batch's parts (in order):
    the losses weighted by each part's share of the batch (they are means over examples),
    the codes' inputs z and the ids put back together along the batch axis."""
    if len(outs) == 1:
        return outs[0]
    xp = get_array_module(outs[0]["z"])
    shares = [len(out["ids"]) / batch_size for out in outs]
    joined = {key: sum(out[key] * share for out, share in zip(outs, shares))
              for key in ("loss", "recon_loss", "vq_loss")}
    joined.update({key: xp.concatenate([out[key] for out in outs]) for key in ("z", "ids")})
    return joined


def gpt_loss_grads(ids, targets, params, config, grads, counted_in_batch=None, mask="causal",
                   loss=(gpt_loss_forward, gpt_loss_backward)):
    """One training step's forward and backward on ids, targets (B, T): gradients of the
    mean loss over targets != -1 added into grads. Returns that loss (a float).

    A part's loss is a mean over its own counted targets (not its examples), so its
    gradient is weighted by its share of the batch's counted targets. counted_in_batch:
    when ids are a share of a bigger batch, that batch's count of targets != -1; the
    gradients and the loss returned are then these rows' part of the bigger batch's.
    mask: the attention's (gpt_forward): "causal" for the raster prior, "full" for the
    masked one. loss: the (forward, backward) pair of the prior's loss (its kind's: the
    next-scale prior embeds its maps itself, prior/scales.py).
    """
    loss_forward, loss_backward = loss
    counted = targets != -1
    total = counted_in_batch or max(int(counted.sum()), 1)

    def part(lo, hi, part_grads):
        share = int(counted[lo:hi].sum()) / total
        value, cache = loss_forward(ids[lo:hi], targets[lo:hi], params, config, mask)
        loss_backward(cache, part_grads, config, dloss=share)
        return float(value) * share

    return sum(for_batch_parts(part, len(ids), grads))
