"""Training the prior: the causal transformer on captions and token grids, in one stream.

    train_prior(PriorData(codes, captions, vocab), gpt_config("gpt-tiny", vocab.size),
                TrainSettings(steps=250), "prior.npz")

Each step lays out its batch from (seed, step): for each picture either caption-then-image
(for generating) or image-then-caption (for captioning), the caption sometimes dropped (so
classifier-free guidance has an unconditional model to compare with) and some of its words
replaced at random. With p_conversation, that share of the steps is a batch of
conversations instead (training.conversations: draw, describe, edit, ask). A step of one
kind of batch only, cut to its longest sequence: the short layouts never pay for the
length of a conversation. gpt_loss_grads then runs the step on every core. The loop
itself (checkpoints, Ctrl-C, NaN guards) is loop.run_loop. On several processes (world,
tinytok.distributed) every process lays out the whole batch, which is cheap, and runs the
forward and backward on its rows; one all-reduce per step adds the gradients and the loss.
"""
import os

import numpy as np

from tinytok import backend
from tinytok.data.datasets import batch_indices
from tinytok.distributed import SINGLE, batch_share, sum_over_processes
from tinytok.prior.gpt import config_dict
from tinytok.errors import ConfigError
from tinytok.prior.kinds import PRIOR_KINDS, model_vocab_size, prior_kind
from tinytok.prior.vocab import PAD
from tinytok.tokenizer.multiscale import token_count
from tinytok.training.conversations import PictureBank, longest_conversation, random_conversation
from tinytok.training.loop import (announce_resume, check_finite_loss, host_copy,
                                   optimizer_step, quiet_unless_root, resume_state, run_loop,
                                   settings_dict, step_rng)
from tinytok.training.prior_batches import SHORT_BATCHES, conversation_batch
from tinytok.training.optim import adamw_init, adamw_state_to_device, zeros_like_params
from tinytok.training.progress import Progress, print_to_stderr
from tinytok.training.steps import gpt_loss_grads


def train_prior(data, config, settings, out, resume=False, p_caption_layout=0.5,
                p_drop_caption=0.1, p_word_noise=0.0, p_conversation=0.0, init=None,
                log=print_to_stderr, progress_stream=None, world=SINGLE, kind="raster"):
    """Train the prior on PriorData (training.prior_data); checkpoints go to `out`.

    p_caption_layout: share of image-then-caption (captioning) sequences; p_drop_caption:
    share of the others (caption-then-image) whose caption is left out; p_word_noise: share
    of a captioning example's input words replaced at random; p_conversation: share of the
    steps that train on conversations (needs data.labels and a context that holds the
    longest one). init: (params, token names) of an earlier prior to start from
    (warm_start; vocab.saved_token_names reads the names from its checkpoint). world: the
    processes that train together (tinytok.distributed), each called with the same
    arguments. kind: "raster" (the causal prior), "masked" (MaskGIT: prior/masked.py;
    config.vocab_size must hold its <mask> token, kinds.model_vocab_size) or "scales" (VAR:
    prior/scales.py; data.codes are a multi-scale tokenizer's maps (N, L), data.quantizer
    its quantizer, and the config names its scales, kinds.model_overrides). The last two
    learn from captions and pictures only, so p_caption_layout, p_word_noise and
    p_conversation do not apply to them. Returns the loss history.
    """
    settings.check()
    log, progress_stream = quiet_unless_root(world, log, progress_stream)
    layouts = {"p_caption_layout": p_caption_layout, "p_drop_caption": p_drop_caption,
               "p_word_noise": p_word_noise, "p_conversation": p_conversation}
    run = PriorRun(data, config, settings, layouts, init, world, prior_kind(kind))
    if resume and os.path.exists(out):
        run.resume(out, log)
    progress = Progress(settings.steps, run.start, "prior", settings.log_every, progress_stream,
                        items_per_step=settings.batch_size * config.context, item="tok")
    run_loop(settings, run.start, run.step, run.snapshot, run.probe, out, progress, world)
    return run.history


class PriorRun:
    """The state of one training run of the prior and its steps: what train_prior's loop
    calls. params and opt_state (AdamW) change in place at every step; history gains a
    line every log_every steps; running_loss is the smoothed loss shown."""

    def __init__(self, data, config, settings, layouts, init, world, kind=PRIOR_KINDS["raster"]):
        check_kind(kind, data.vocab, config, layouts)
        self.data, self.config, self.settings, self.layouts = data, config, settings, layouts
        self.kind, self.make_batch = kind, SHORT_BATCHES[kind.name]
        self.world, self.xp = world, backend.xp()
        self.lo, self.hi = batch_share(settings.batch_size, world)   # this process's rows
        self.params = kind.init(config, settings.seed, carried=data.quantizer)
        if init is not None:
            self.params = warm_start(self.params, data.vocab, *init)
        self.bank = conversation_bank(data, config, layouts["p_conversation"])
        self.trainable = [k for k in self.params if k not in kind.carried]
        self.opt_state = adamw_init({k: self.params[k] for k in self.trainable})
        self.start, self.history, self.running_loss = 0, [], None
        self.run_config = {"kind": kind.name, "model": config_dict(config),
                           "vocab": data.vocab.to_dict(),
                           "train": settings_dict(settings), "layouts": dict(layouts)}

    def resume(self, out, log):
        """Take up the run saved in out: parameters, optimizer state, history."""
        resumed = resume_state(out, "prior", self.params, config_dict(self.config))
        announce_resume(out, resumed, self.run_config, self.settings, log)
        self.start, self.params = resumed.step, resumed.params
        self.history = resumed.extra["history"]
        self.opt_state = adamw_state_to_device(resumed.optimizer_state["adam"])

    def snapshot(self, step_count):
        """The checkpoint's contents after step_count steps, copied to the host."""
        return host_copy(dict(kind="prior", params=self.params, step=step_count,
                              config=self.run_config, optimizer_state={"adam": self.opt_state},
                              extra={"history": self.history}))

    def batch(self, step):
        """This process's rows of the step's inputs and targets, and the count of targets
        scored in the whole batch: one kind of batch (conversations, or the short layouts)
        laid out whole from (seed, step) and cut to its longest sequence."""
        data, config, settings, lay = self.data, self.config, self.settings, self.layouts
        rng = step_rng(settings.seed, step, 3)
        if (self.bank is not None
                and step_rng(settings.seed, step, 4).random() < lay["p_conversation"]):
            conversations = [random_conversation(rng, self.bank, data.vocab,
                                                 lay["p_drop_caption"])
                             for _ in range(settings.batch_size)]
            inputs, targets = conversation_batch(data.vocab, conversations, config.context,
                                                 rng, lay["p_word_noise"])
        else:
            idx = batch_indices(len(data.codes), settings.batch_size, settings.seed, step)
            inputs, targets = self.make_batch(data.vocab, [data.captions[i] for i in idx],
                                              data.codes[idx], rng, config.context, lay)
        inputs, targets = cut_padding(inputs, targets)   # the whole batch's width
        counted = max(int((targets != -1).sum()), 1)     # targets scored in the whole batch
        lo, hi = self.lo, self.hi
        return self.xp.asarray(inputs[lo:hi]), self.xp.asarray(targets[lo:hi]), counted

    def probe(self, step):
        """The loss alone, checked for NaN and inf: run_loop's last check before the final
        write."""
        inputs, targets, counted = self.batch(step)
        share = int((targets != -1).sum()) / counted
        loss, _ = self.kind.loss[0](inputs, targets, self.params, self.config,
                                    self.kind.attention)
        check_finite_loss(float(sum_over_processes(
            self.world, {"loss": self.xp.asarray(loss * share)})["loss"]), step)

    def step(self, step):
        """One step: gradients on every core, one all-reduce, AdamW. Returns the figures."""
        grads = zeros_like_params(self.params)
        inputs, targets, counted = self.batch(step)
        loss = gpt_loss_grads(inputs, targets, self.params, self.config, grads,
                              counted, self.kind.attention, self.kind.loss)   # every core
        summed = {**{f"grad.{k}": g for k, g in grads.items()}, "loss": self.xp.asarray(loss)}
        loss = float(sum_over_processes(self.world, summed)["loss"])   # one all-reduce
        check_finite_loss(loss, step)
        optimizer_step(self.params, grads, self.opt_state, self.settings, step,
                       self.trainable)
        # an exponential moving average reads better than the noisy per-batch loss
        self.running_loss = (loss if self.running_loss is None
                             else 0.95 * self.running_loss + 0.05 * loss)
        if (step + 1) % self.settings.log_every == 0:
            self.history.append({"step": step + 1, "loss": loss})
        return {"loss": f"{self.running_loss:.4f}", "lr": f"{self.settings.lr_at(step):.1e}"}


def check_kind(kind, vocab, config, layouts):
    """ConfigError if the model does not fit the kind's vocabulary, or a prior that cannot
    write words is asked to learn conversations."""
    if kind.reads == "maps" and (not config.scales or config.context <= token_count(
            config.scales) + 2):
        raise ConfigError(f"a {kind.name} prior's config must name its tokenizer's scales and "
                          "a context that holds them after a caption (kinds.model_overrides)")
    wanted = model_vocab_size(kind, vocab)
    if config.vocab_size != wanted:
        raise ConfigError(f"a {kind.name} prior over this vocabulary needs vocab_size="
                          f"{wanted}, the config has {config.vocab_size}")
    if layouts["p_conversation"] and not kind.can_caption:
        raise ConfigError(f"a {kind.name} prior learns pictures from captions only; "
                          "train it with no conversations (--conversations 0)")


def cut_padding(inputs, targets):
    """inputs, targets (N, T) without the trailing columns that are padding in every row."""
    used = (inputs != PAD).any(axis=0)
    width = int(np.flatnonzero(used)[-1]) + 1 if used.any() else 1
    return inputs[:, :width], targets[:, :width]


def conversation_bank(data, config, p_conversation):
    """The PictureBank conversations are built from, or None when p_conversation is 0;
    ConfigError if the data have no labels or the context is too short for them."""
    if not p_conversation:
        return None
    if not 0 < p_conversation <= 1:
        raise ConfigError(f"p_conversation must be a probability in [0, 1], got {p_conversation}")
    if data.labels is None:
        raise ConfigError("conversations need the pictures' attributes (PriorData.labels); "
                          "build the data with training.prior_data.shapes_prior_data")
    needed = longest_conversation(data.vocab) - 1
    if config.context < needed:
        raise ConfigError(f"conversations need a context of at least {needed} tokens, the "
                          f"prior has {config.context}; use --context {needed} (or more)")
    return PictureBank(data.codes, data.labels)


def warm_start(params, vocab, old_params, old_token_names):
    """params with every weight of an earlier prior copied in, where it fits.

    Token embeddings move by name: the row of 'red' or of image code 17 goes to that
    token's id here, whatever ids the two vocabularies gave it; tokens new here keep their
    fresh rows. Position embeddings copy the positions both have. Everything else (the
    blocks) must have the same shapes. So a prior trained on the short layouts can learn
    conversations (new tokens, a longer context) without starting from nothing.
    """
    names = {vocab.token_name(i): i for i in range(vocab.size)}
    out = dict(params)
    for key, value in old_params.items():
        value = backend.to_numpy(value)
        if key not in params:
            raise ConfigError(f"warm start: the earlier prior has {key!r}, this one does not")
        if value.shape[1:] != params[key].shape[1:]:
            raise ConfigError(f"warm start: {key} is {value.shape} in the earlier prior and "
                              f"{params[key].shape} here; use the same layers and width")
        if key == "gpt.wte":
            rows = [(names[name], j) for j, name in enumerate(old_token_names)
                    if name in names]
            table = backend.to_numpy(params[key]).copy()
            new, old = (np.array(ids) for ids in zip(*rows))
            table[new] = value[old]
            out[key] = backend.to_device(table)
        elif key == "gpt.wpe":
            table = backend.to_numpy(params[key]).copy()
            n = min(len(table), len(value))
            table[:n] = value[:n]
            out[key] = backend.to_device(table)
        elif value.shape != params[key].shape:
            raise ConfigError(f"warm start: {key} is {value.shape} in the earlier prior and "
                              f"{params[key].shape} here; use the same layers and width")
        else:  # the blocks: same shapes, copied whole
            out[key] = backend.to_device(value)
    return out
