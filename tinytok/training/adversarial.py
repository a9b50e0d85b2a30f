"""One adversarial step: the tokenizer against its patch discriminator (VQGAN), on batch parts.

The tokenizer's loss gains a term that rewards fooling the discriminator D,

    loss = L_rec + quantizer loss + lambda * L_G,     L_G = -mean(D(x_hat)),
    L_rec = mse(x_hat, x) + feature_weight * L_F + amplitude_weight * L_A,
    L_F = sum over D's two hidden activations f1, f2 of mse(f(x_hat), f(x)),
    L_A = amplitude_loss(x_hat, x, frequency_rings): the amplitudes of the rings of their
          2-D DFTs compared (each ring's power summed, then its square root),

and D learns, from the same pictures, to tell them apart:

    L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))),    x_hat held fixed.

L_F is a perceptual term that needs no downloaded network: D's own features of the
reconstruction drawn towards those of the picture (held fixed). L_A asks for as much detail
as the picture has at every spatial frequency, wherever it sits: a ring, not a coefficient,
because a ring's power is nearly certain given the tokens where one coefficient's amplitude
is not (lesson 9). Only the tokenizer learns from them (and from L_G); D's parameters learn
from L_D alone.

lambda is VQGAN's adaptive weight: the ratio of the two losses' gradients at the decoder's
last weight w,

    lambda = gan_weight * |dL_rec/dw| / (|dL_G/dw| + 1e-4),   clipped to [0, 1e4 gan_weight],

where L_rec is the reconstruction term alone (VQGAN's nll_loss, an L1 and a perceptual loss
there; the quantizer loss is not in it, and could not reach w anyway: it lies before the
decoder). So the adversarial gradient arriving at the decoder is gan_weight times as strong
as the reconstruction's, whatever the scale of D's scores: without it, a D that grows
confident drowns the pixels.

The step runs in two passes over the batch's parts (tinytok.parallel): the first runs the
tokenizer, and D on the pictures and on their reconstructions, and returns both losses'
gradients at the picture and at w; their sums over the parts and processes (one small
all-reduce) give lambda; the second runs the backward passes of both models with it. So
lambda is the whole batch's, on any number of cores and processes, as the gradients are.
"""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.ops import (amplitude_loss_backward, amplitude_loss_forward, frequency_rings,
                         hinge_d_loss_backward, hinge_d_loss_forward, hinge_g_loss_backward,
                         hinge_g_loss_forward, mse_backward, mse_forward)
from tinytok.parallel import for_batch_parts
from tinytok.tokenizer.discriminator import (discriminator_backward, discriminator_forward,
                                             is_discriminator_param)
from tinytok.tokenizer.vqvae import (decoder_last_weight_grad, tokenizer_backward,
                                     tokenizer_forward)
from tinytok.training.steps import join_parts

# The step's losses, each a mean over the batch (unweighted; 0 for a term that is off)
LOSSES = ("g_loss", "d_loss", "feature_loss", "amplitude_loss")

DELTA = 1e-4            # keeps lambda finite when the adversarial gradient vanishes
MAX_LAMBDA = 1e4        # and bounded when it nearly does


class JudgedPart(NamedTuple):
    """The first pass's results for rows lo..hi-1 of the batch."""
    lo: int
    out: dict             # tokenizer_forward's figures and outputs
    cache: Any            # tokenizer_forward's cache
    real: Any             # D's scores on the pictures
    real_cache: Any       # D's cache on them, reused for D's own backward
    fake: Any             # D's scores on the reconstructions
    fake_cache: Any       # and its cache on them
    dx_gen: Any           # gradient of this part's share of L_G at x_hat
    dx_terms: Any         # of L_rec's terms beyond mse, feature_weight * L_F and
                          # amplitude_weight * L_A (None without either)
    w_rec: Any            # this part's share of dL_rec/dw, the decoder's last weight
    w_gen: Any            # and of dL_G/dw


def adaptive_weight(w_rec, w_gen, gan_weight):
    """gan_weight * |w_rec| / (|w_gen| + DELTA), clipped to [0, MAX_LAMBDA * gan_weight]:
    VQGAN's balance of the adversarial gradient against the reconstruction's."""
    xp = get_array_module(w_rec)
    ratio = float(xp.linalg.norm(w_rec.ravel())) / (float(xp.linalg.norm(w_gen.ravel())) + DELTA)
    return gan_weight * min(ratio, MAX_LAMBDA)


def adversarial_grads(x, params, config, disc, grads, gan_weight, sum_everywhere,
                      tau=1.0, noise=None, of_batch=None, decoder_only=False,
                      feature_weight=0.0, amplitude_weight=0.0):
    """One step's gradients of both models on x (N, 3, S, S), added into grads: the
    tokenizer's keys for its loss with lambda * L_G, the "disc." keys for L_D.

    sum_everywhere(dict of arrays) sums them over the processes in place (identity on one).
    of_batch: the global batch's size when x is this process's share (as tokenizer_grads).
    decoder_only: of the tokenizer, the decoder's gradients alone (as tokenizer_grads).
    feature_weight: the weight of L_F, the distance between D's features, in L_rec.
    amplitude_weight: the weight of L_A, the distance between amplitude spectra, in L_rec.
    Returns the forward's figures joined over the parts (means over x, as tokenizer_grads's)
    with "g_loss", "d_loss", "feature_loss", "amplitude_loss" (0-d arrays or 0; each term
    unweighted, 0 when it is off) and "gan_lambda" (a float, the same everywhere).
    """
    N = len(x)
    of_batch = of_batch or N

    def judge(lo, hi):
        return judge_part(x, lo, hi, params, config, disc, (hi - lo) / of_batch, tau, noise,
                          feature_weight, amplitude_weight)

    judged = {part.lo: part for part in for_batch_parts(judge, N)}
    at_w = sum_everywhere({"rec": sum(p.w_rec for p in judged.values()),
                           "gen": sum(p.w_gen for p in judged.values())})
    lam = adaptive_weight(at_w["rec"], at_w["gen"], gan_weight)

    def learn(lo, hi, part_grads):
        part = judged[lo]
        share = (hi - lo) / of_batch
        extra = lam * part.dx_gen
        if part.dx_terms is not None:
            extra += part.dx_terms
        tokenizer_backward(part.cache, part_grads, config, dloss=share, image_grad=False,
                           dx_hat_extra=extra, decoder_only=decoder_only)
        return dict(part.out, d_loss=train_discriminator(part, part_grads, share))

    outs = for_batch_parts(learn, N, grads)
    joined = join_parts(outs, N)
    shares = [len(out["ids"]) / N for out in outs]
    for key in LOSSES:
        joined[key] = sum(out[key] * share for out, share in zip(outs, shares))
    joined["gan_lambda"] = lam
    return joined


def judge_part(x, lo, hi, params, config, disc, share, tau, noise, feature_weight,
               amplitude_weight=0.0):
    """The first pass on rows lo..hi-1: the tokenizer's forward, D's scores on the pictures
    and on their reconstructions, and the gradients at the picture and at the last weight
    of L_rec (with L_F and L_A) and of L_G."""
    out, cache = tokenizer_forward(x[lo:hi], params, config, tau,
                                   None if noise is None else noise[lo:hi])
    real, real_cache = discriminator_forward(x[lo:hi], params, disc)
    fake, fake_cache = discriminator_forward(out["x_hat"], params, disc)
    g_loss, g_cache = hinge_g_loss_forward(fake)
    unused = {k: get_array_module(v).zeros_like(v) for k, v in params.items()
              if is_discriminator_param(k)}   # D's own gradients of L_G and L_F are not wanted
    dx_gen = discriminator_backward(hinge_g_loss_backward(share, g_cache), fake_cache, unused)
    out["g_loss"], out["feature_loss"], out["amplitude_loss"] = g_loss, 0.0, 0.0
    dx_terms = None                       # the gradient of L_rec's terms beyond mse at x_hat
    if feature_weight:
        out["feature_loss"], dx_terms = feature_matching(
            real_cache, fake_cache, share * feature_weight, unused)
    if amplitude_weight:
        out["amplitude_loss"], dx_amplitude = amplitude_matching(
            out["x_hat"], x[lo:hi], share * amplitude_weight)
        dx_terms = dx_amplitude if dx_terms is None else dx_terms + dx_amplitude
    dx_rec = mse_backward(share, cache.mse)
    if dx_terms is not None:
        dx_rec += dx_terms
    return JudgedPart(lo, out, cache, real, real_cache, fake, fake_cache, dx_gen, dx_terms,
                      decoder_last_weight_grad(dx_rec, cache.decoder),
                      decoder_last_weight_grad(dx_gen, cache.decoder))


def feature_matching(real_cache, fake_cache, dloss, unused):
    """L_F = sum over D's two features of mse(feature of x_hat, feature of x), the
    picture's held fixed. Returns L_F (0-d) and dloss * dL_F/dx_hat, through D's backward."""
    losses, dfeatures = [], []
    for fake_feature, real_feature in zip(fake_cache.features, real_cache.features):
        loss, cache = mse_forward(fake_feature, real_feature)
        losses.append(loss)
        dfeatures.append(mse_backward(dloss, cache))
    dx = discriminator_backward(None, fake_cache, unused, dfeatures=tuple(dfeatures))
    return sum(losses), dx


def amplitude_matching(x_hat, x, dloss):
    """L_A = amplitude_loss over the rings of the pictures' spectra (frequency_rings): each
    ring's amplitude compared, so that the decoder is asked for the power the picture has at
    each spatial frequency, wherever it sits. Returns L_A (0-d) and dloss * dL_A/dx_hat."""
    loss, cache = amplitude_loss_forward(x_hat, x, frequency_rings(*x.shape[-2:]))
    return loss, amplitude_loss_backward(dloss, cache)


def train_discriminator(part, grads, share):
    """D's hinge loss on the part's pictures and reconstructions (held fixed: only D's
    parameters get gradients). Returns the part's loss (a mean over its rows)."""
    d_loss, d_cache = hinge_d_loss_forward(part.real, part.fake)
    dreal, dfake = hinge_d_loss_backward(share, d_cache)
    discriminator_backward(dreal, part.real_cache, grads, image_grad=False)
    discriminator_backward(dfake, part.fake_cache, grads, image_grad=False)
    return d_loss
