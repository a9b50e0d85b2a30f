"""Training the prior: the causal transformer on captions and token grids, in one stream.

    train_prior(PriorData(codes, captions, vocab), gpt_config("gpt-tiny", vocab.size),
                TrainSettings(steps=250), "prior.npz")

Each step lays out its batch from (seed, step): for each picture either caption-then-image
(for generating) or image-then-caption (for captioning), the caption sometimes dropped (so
classifier-free guidance has an unconditional model to compare with) and some of its words
replaced at random. gpt_loss_grads then runs the step on every core. The loop itself
(checkpoints, Ctrl-C, NaN guards) is loop.run_loop.
"""
import os

from tinytok import backend
from tinytok.data.datasets import batch_indices
from tinytok.prior.gpt import config_dict, gpt_loss_forward, init_gpt_params
from tinytok.prior.vocab import make_training_batch
from tinytok.training.loop import (announce_resume, check_finite_loss, host_copy,
                                   optimizer_step, resume_state, run_loop, settings_dict,
                                   step_rng)
from tinytok.training.optim import adamw_init, adamw_state_to_device, zeros_like_params
from tinytok.training.progress import Progress, print_to_stderr
from tinytok.training.steps import gpt_loss_grads


def train_prior(data, config, settings, out, resume=False, p_caption_layout=0.5,
                p_drop_caption=0.1, p_word_noise=0.0, log=print_to_stderr, progress_stream=None):
    """Train the prior on PriorData (training.prior_data); checkpoints go to `out`.

    p_caption_layout: share of image-then-caption (captioning) sequences; p_drop_caption:
    share of the others (caption-then-image) whose caption is left out; p_word_noise: share
    of a captioning example's input words replaced at random. Returns the loss history.
    """
    settings.check()
    xp = backend.xp()
    params = init_gpt_params(config, seed=settings.seed)
    opt_state = adamw_init(params)
    start, history = 0, []
    run_config = {"model": config_dict(config), "vocab": data.vocab.to_dict(),
                  "train": settings_dict(settings),
                  "layouts": {"p_caption_layout": p_caption_layout,
                              "p_drop_caption": p_drop_caption, "p_word_noise": p_word_noise}}
    if resume and os.path.exists(out):
        resumed = resume_state(out, "prior", params, config_dict(config))
        announce_resume(out, resumed, run_config, settings, log)
        start, params, history = resumed.step, resumed.params, resumed.extra["history"]
        opt_state = adamw_state_to_device(resumed.optimizer_state["adam"])
    running = {"loss": None}

    def snapshot(step_count):
        return host_copy(dict(kind="prior", params=params, step=step_count, config=run_config,
                              optimizer_state={"adam": opt_state}, extra={"history": history}))

    def batch(step):
        idx = batch_indices(len(data.codes), settings.batch_size, settings.seed, step)
        inputs, targets = make_training_batch(
            data.vocab, [data.captions[i] for i in idx], data.codes[idx],
            step_rng(settings.seed, step, 3), config.context, p_caption_layout, p_drop_caption,
            p_word_noise)
        return xp.asarray(inputs), xp.asarray(targets)

    def forward(step):  # the loss alone: run_loop's last check before the final write
        check_finite_loss(float(gpt_loss_forward(*batch(step), params, config)[0]), step)

    def step_fn(step):
        grads = zeros_like_params(params)
        loss = gpt_loss_grads(*batch(step), params, config, grads)         # on every core
        check_finite_loss(loss, step)
        optimizer_step(params, grads, opt_state, settings, step)
        # an exponential moving average reads better than the noisy per-batch loss
        running["loss"] = loss if running["loss"] is None else 0.95 * running["loss"] + 0.05 * loss
        if (step + 1) % settings.log_every == 0:
            history.append({"step": step + 1, "loss": loss})
        return {"loss": f"{running['loss']:.4f}", "lr": f"{settings.lr_at(step):.1e}"}

    progress = Progress(settings.steps, start, "prior", settings.log_every, progress_stream,
                        items_per_step=settings.batch_size * config.context, item="tok")
    run_loop(settings, start, step_fn, snapshot, forward, out, progress)
    return history
