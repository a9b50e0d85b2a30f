"""Training the tokenizer: the VQ-VAE (each quantizer of the table) on uint8 pictures, with
codebook care.

    train_tokenizer(images, tokenizer_config("vqvae-tiny"), TrainSettings(steps=300),
                    "tokenizer.npz", TokenizerRecipe(restart_every=50))

Each step draws its batch and Gumbel noise from (seed, step), runs tokenizer_grads on every
core and updates with AdamW; the EMA codebook follows the encoder outputs it was given, and
every restart_every steps the codes nobody used lately are moved onto encoder outputs
(dead-code restarts). FSQ has no codebook, so none of that care applies to it. With a
gan_weight, a patch discriminator joins at disc_start (its parameters "disc.*" in the same
dict, its own AdamW state), and from gan_start the step is training.adversarial's: the
tokenizer learns to fool it too. decoder_only trains the decoder of an init tokenizer alone.
The loop itself (checkpoints, Ctrl-C, NaN guards) is loop.run_loop.

On several processes (world, tinytok.distributed) each takes its share of every batch; the
gradients, the losses and the code counts (the EMA's and the usage window's) are summed in
one all-reduce per step; the k-means start and the restarts are made on process 0, from its
encoder outputs, and broadcast.
"""
import math
import os
from dataclasses import asdict, dataclass, replace

from tinytok import backend
from tinytok.data.datasets import batch_indices
from tinytok.data.images import images_to_model
from tinytok.distributed import SINGLE, batch_share, share_from_root, sum_over_processes
from tinytok.parallel import for_batch_parts
from tinytok.tokenizer.codebook import code_counts, kmeans_init, restart_dead_codes, usage_stats
from tinytok.tokenizer.gumbel import gumbel_noise, temperature_at
from tinytok.tokenizer.quantize import ema_apply, ema_init, ema_statistics
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.errors import CheckpointError, ConfigError
from tinytok.ops.checks import is_finite_number, require_positive_int
from tinytok.tokenizer.discriminator import (PREFIX, DiscriminatorConfig,
                                             init_discriminator_params, is_discriminator_param)
from tinytok.tokenizer.vqvae import (config_dict, encoder_forward, init_tokenizer_params,
                                     tokenizer_forward)
from tinytok.training.adversarial import LOSSES as ADVERSARIAL_LOSSES, adversarial_grads
from tinytok.training.checkpoint import check_params_match
from tinytok.training.loop import (announce_resume, check_finite_loss, host_copy,
                                   optimizer_step, quiet_unless_root, resume_state, run_loop,
                                   settings_dict, step_rng)
from tinytok.training.optim import adamw_init, adamw_state_to_device, zeros_like_params
from tinytok.training.progress import Progress, print_to_stderr
from tinytok.training.steps import tokenizer_grads


@dataclass
class TokenizerRecipe:
    """How a tokenizer is trained beyond the settings every run has: the codebook care
    (k-means start, dead-code restarts, EMA decay; each applies to the quantizers whose
    record in tinytok.tokenizer.quantizers.QUANTIZERS asks for it) and, with gan_weight > 0,
    VQGAN's adversarial loss against a patch discriminator (training.adversarial)."""
    kmeans_init: bool = True        # start the codebook from k-means of encoder outputs
    kmeans_images: int = 1024       # images encoded for the k-means start
    restart_every: int = 100        # look for dead codes every this many steps (0: never)
    stats_every: int = 100          # usage window when restarts are off
    ema_decay: float = 0.99
    tau_start: float = 1.0          # gumbel only: temperature annealed from start to end
    tau_end: float = 1 / 16
    gan_weight: float = 0.0         # the adversarial loss's weight (VQGAN); 0: none, no D
    disc_start: int = 0             # the step at which the discriminator starts learning
    gan_start: int = None           # and the one at which the tokenizer heeds it (None:
                                    # disc_start)
    disc_lr_scale: float = 1.0      # the discriminator's learning rate over the tokenizer's
    disc_channels: int = 64         # the patch discriminator's first convolution's
    feature_weight: float = 0.0     # weight of the match of D's features, in L_rec
    amplitude_weight: float = 0.0   # and of the match of amplitude spectra (amplitude_loss)
    decoder_only: bool = False      # train the decoder alone: the encoder and the codebook,
                                    # so the tokens, stay those of the init tokenizer

    def check(self):
        if not is_finite_number(self.gan_weight) or self.gan_weight < 0:
            raise ConfigError(f"gan_weight must be a number >= 0 (0: no adversarial loss), "
                              f"got {self.gan_weight!r}")
        require_positive_int("disc_start", self.disc_start, 0)
        if self.gan_start is not None:
            require_positive_int("gan_start", self.gan_start, 0)
        if self.heeded_from < self.disc_start:
            raise ConfigError(f"gan_start ({self.heeded_from}) must not come before disc_start "
                              f"({self.disc_start}): the tokenizer would heed an untrained "
                              "discriminator")
        for name in ("feature_weight", "amplitude_weight"):
            weight = getattr(self, name)
            if not is_finite_number(weight) or weight < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {weight!r}")
        if self.feature_weight and not self.adversarial:   # else silently without effect
            raise ConfigError(f"feature_weight ({self.feature_weight:g}) matches the "
                              "discriminator's features: it needs one, give gan_weight > 0")
        if self.amplitude_weight and not self.adversarial:
            raise ConfigError(f"amplitude_weight ({self.amplitude_weight:g}) is a term of the "
                              "adversarial loss's L_rec, balanced against the discriminator: "
                              "give gan_weight > 0")
        if not is_finite_number(self.disc_lr_scale) or not self.disc_lr_scale > 0:
            raise ConfigError(f"disc_lr_scale must be a number > 0, got {self.disc_lr_scale!r}")
        DiscriminatorConfig(self.disc_channels)   # refuses a bad size

    @property
    def heeded_from(self):
        """The first step at which the tokenizer heeds the discriminator."""
        return self.disc_start if self.gan_start is None else self.gan_start

    @property
    def adversarial(self):
        return self.gan_weight > 0


def train_tokenizer(images, config, settings, out, recipe=None, resume=False,
                    log=print_to_stderr, progress_stream=None, world=SINGLE, init=None):
    """Train a tokenizer on uint8 images (N, S, S, 3); checkpoints go to `out`.

    config: a TokenizerConfig (its quantizer picks VQ, EMA, Gumbel or FSQ). recipe: the
    codebook care and the adversarial loss (TokenizerRecipe). log(text) gets the messages,
    progress_stream the progress (default stderr). world: the processes that train together
    (tinytok.distributed; every one calls this with the same arguments). init: the
    parameters of an earlier tokenizer of the same config to start from (no k-means start).
    Returns the history, a list of dicts with the figures logged along the way.
    """
    settings.check()
    recipe = recipe or TokenizerRecipe()
    recipe.check()
    if recipe.decoder_only and init is None and not (resume and os.path.exists(out)):
        raise ConfigError("decoder_only trains the decoder of an existing tokenizer: give "
                          "its parameters as init (--init FILE)")
    log, progress_stream = quiet_unless_root(world, log, progress_stream)
    run = TokenizerRun(images, config, settings, recipe, world)
    if not run.quantizer.has_codebook and (run.recipe.kmeans_init or run.recipe.restart_every):
        # FSQ's codes are a fixed grid, not a parameter: nothing to start or to move
        log(f"{config.quantizer} has no codebook: skipping the k-means start and dead-code "
            "restarts")
    if resume and os.path.exists(out):
        run.resume(out, log)
    else:
        run.start_from(init)
    progress = Progress(settings.steps, run.start, "tokenizer", settings.log_every,
                        progress_stream, items_per_step=settings.batch_size, item="img")
    run_loop(settings, run.start, run.step, run.snapshot, run.probe, out, progress, world)
    return run.history


class TokenizerRun:
    """The state of one training run and its steps: what train_tokenizer's loop calls.

    params and opt_state (AdamW) change in place at every step; ema_state (the EMA
    codebook's running counts and sums, None unless the quantizer has EMA updates) likewise;
    window counts each code's uses since the last look at usage; history gains a line at
    each look. Every one of them goes into the checkpoint, so a resumed run goes on exactly.
    """

    def __init__(self, images, config, settings, recipe, world):
        self.images, self.config, self.settings, self.recipe = images, config, settings, recipe
        self.world, self.xp = world, backend.xp()
        self.quantizer = QUANTIZERS[config.quantizer]
        self.lo, self.hi = batch_share(settings.batch_size, world)   # this process's rows
        self.share = (self.hi - self.lo) / settings.batch_size       # of each batch's mean loss
        self.params = init_tokenizer_params(config, seed=settings.seed)
        # The gradient trains every parameter, the codebook too unless EMA updates move it.
        self.trainable = [k for k in self.params
                          if k != "quant.codebook" or not self.quantizer.ema_updates]
        if recipe.decoder_only:
            self.trainable = [k for k in self.trainable if k.startswith("dec.")]
        self.opt_state = adamw_init({k: self.params[k] for k in self.trainable})
        self.disc, self.disc_opt_state = None, None
        if recipe.adversarial:   # D's parameters join the flat dict, with an AdamW of its own
            self.disc = DiscriminatorConfig(recipe.disc_channels)
            self.params.update(init_discriminator_params(self.disc, seed=[settings.seed, 3]))
            self.disc_opt_state = adamw_init(self.disc_params(self.params))
            self.disc_settings = replace(settings, lr=settings.lr * recipe.disc_lr_scale)
        self.ema_state = None
        self.window = self.xp.zeros(self.quantizer.code_rows(config), dtype=self.xp.int64)
        self.start, self.history = 0, []
        self.run_config = {"model": config_dict(config), "train": settings_dict(settings),
                           "recipe": asdict(recipe)}

    @staticmethod
    def disc_params(tree):
        return {k: v for k, v in tree.items() if is_discriminator_param(k)}

    def start_from(self, init):
        """A fresh run's start before step 1: the codebook care (the k-means start, the EMA
        state), or an earlier tokenizer's parameters (init) whose codebook needs none."""
        if init is None:
            return self.start_codebook()
        tokenizer_keys = [k for k in self.params if not is_discriminator_param(k)]
        check_params_match({k: v for k, v in init.items() if not is_discriminator_param(k)},
                           {k: self.params[k] for k in tokenizer_keys}, "--init")
        for k in tokenizer_keys:
            self.params[k][...] = self.xp.asarray(init[k])
        if self.quantizer.ema_updates:
            self.ema_state = ema_init(self.params["quant.codebook"])

    def start_codebook(self):
        """A fresh run's codebook care before step 1: the k-means start, the EMA state."""
        if self.quantizer.kmeans_start and self.recipe.kmeans_init:
            codebook = self.params["quant.codebook"]   # every code on a real encoder output,
            # as the search sees it (the quantizer's search_space: unit vectors for cosine)
            if self.world.is_root:   # decided once: k-means amplifies the last bits of z
                sample = self.images[step_rng(self.settings.seed, 0, 9).permutation(
                    len(self.images))[:self.recipe.kmeans_images]]
                z = encode_latents(sample, self.params, self.config)
                self.kmeans_start(z)
            share_from_root(self.world, {"codebook": codebook})
        if self.quantizer.ema_updates:
            self.ema_state = ema_init(self.params["quant.codebook"])

    def kmeans_start(self, z):
        """Each codebook on k-means of its vectors, in turn: the multi-scale quantizer's
        scale k's targets are what the codebooks of the scales before it leave, so they are
        looked at again once those have their k-means codes (one codebook: one k-means)."""
        codebooks = self.quantizer.code_rows(self.config) // self.config.num_codes
        for g in range(codebooks):
            codes, vectors, _ = self.quantizer.groups(z, self.params, self.config)[g]
            codes[...] = kmeans_init(vectors, self.config.num_codes, self.settings.seed)

    def resume(self, out, log):
        """Take up the run saved in out: parameters, optimizer and EMA state, window, history."""
        resumed = resume_state(out, "tokenizer", self.params, config_dict(self.config),
                               check_discriminator_match)
        planned = "the learning-rate schedule" + (
            " and the Gumbel temperature" if self.quantizer.annealed else "")
        announce_resume(out, resumed, self.run_config, self.settings, log, planned)
        self.start, self.params = resumed.step, resumed.params
        self.history = resumed.extra["history"]
        self.opt_state = adamw_state_to_device(resumed.optimizer_state["adam"])
        if self.disc is not None:
            self.disc_opt_state = adamw_state_to_device(resumed.optimizer_state["disc_adam"])
        if resumed.optimizer_state.get("ema") is not None:
            self.ema_state = backend.params_to_device(resumed.optimizer_state["ema"])
        self.window = self.xp.asarray(resumed.extra["window_counts"])

    def snapshot(self, step_count):
        """The checkpoint's contents after step_count steps, copied to the host."""
        return host_copy(dict(
            kind="tokenizer", params=self.params, step=step_count, config=self.run_config,
            optimizer_state={"adam": self.opt_state, "ema": self.ema_state,
                             **({"disc_adam": self.disc_opt_state} if self.disc else {})},
            extra={"history": self.history, "window_counts": self.window}))

    def batch(self, step):
        """This process's rows of the step's images, Gumbel temperature and noise (None for
        the others): drawn for the whole batch from (seed, step), then cut to rows lo..hi-1."""
        settings, config, lo, hi = self.settings, self.config, self.lo, self.hi
        idx = batch_indices(len(self.images), settings.batch_size, settings.seed, step)
        tau, noise = 1.0, None
        if self.quantizer.annealed:
            tau = temperature_at(step, settings.steps, self.recipe.tau_start, self.recipe.tau_end)
            g = config.grid_size
            noise = self.xp.asarray(gumbel_noise((len(idx), config.num_codes, g, g),
                                                 step_rng(settings.seed, step, 1))[lo:hi])
        return images_to_model(self.images[idx[lo:hi]]), tau, noise

    def probe(self, step):
        """The loss alone, checked for NaN and inf: run_loop's last check before the final
        write."""
        x, tau, noise = self.batch(step)
        out, _ = tokenizer_forward(x, self.params, self.config, tau, noise)
        loss = {"loss": self.xp.asarray(out["loss"] * self.share)}
        check_finite_loss(float(sum_over_processes(self.world, loss)["loss"]), step)

    def step(self, step):
        """One step: gradients on every core, one all-reduce, AdamW, the EMA codebook, and
        every window of steps a look at code usage. Returns the figures to show."""
        grads = zeros_like_params(self.params)
        x, tau, noise = self.batch(step)
        against_d = self.disc is not None and step >= self.recipe.disc_start
        if against_d:   # the tokenizer and D, in two passes (training.adversarial)
            heeded = step >= self.recipe.heeded_from   # before: D learns, the tokenizer not
            out = adversarial_grads(x, self.params, self.config, self.disc, grads,
                                    self.recipe.gan_weight if heeded else 0.0,
                                    lambda arrays: sum_over_processes(self.world, arrays),
                                    tau, noise, of_batch=self.settings.batch_size,
                                    decoder_only=self.recipe.decoder_only,
                                    feature_weight=(self.recipe.feature_weight if heeded
                                                    else 0.0),
                                    amplitude_weight=(self.recipe.amplitude_weight if heeded
                                                      else 0.0))
        else:
            out = tokenizer_grads(x, self.params, self.config, grads, tau, noise,
                                  of_batch=self.settings.batch_size,         # on every core
                                  decoder_only=self.recipe.decoder_only)
        summed = sum_over_processes(self.world, self.batch_sums(grads, out))  # one all-reduce
        loss = float(summed["loss"])
        check_finite_loss(loss, step)
        self.update(grads, step, against_d)
        if self.ema_state is not None and not self.recipe.decoder_only:
            ema_apply(self.params["quant.codebook"], self.ema_state, summed["ema.counts"],
                      summed["ema.sums"], self.recipe.ema_decay)
        self.window = self.window + summed["code_counts"]
        psnr = 10 * math.log10(1 / max(float(summed["recon_loss"]), 1e-10))
        figures = {"loss": f"{loss:.4f}", "psnr": f"{psnr:.2f}"}
        if self.quantizer.annealed:
            figures["tau"] = f"{tau:.3f}"
        adversarial = {}
        if against_d:
            adversarial = {"psnr": psnr, "gan_lambda": out["gan_lambda"],
                           **{k: float(summed[k]) for k in ADVERSARIAL_LOSSES}}
            figures.update(g=f"{adversarial['g_loss']:.3f}", d=f"{adversarial['d_loss']:.3f}",
                           lam=f"{adversarial['gan_lambda']:.3g}")
        figures.update(self.look_at_usage(step, loss, out["z"], adversarial))
        return figures

    def update(self, grads, step, against_d):
        """AdamW for the tokenizer and, once it has joined, for D: each clipped on its own
        gradients and with its own state (D's gradients are zero before it joins)."""
        if self.disc is None:
            optimizer_step(self.params, grads, self.opt_state, self.settings, step,
                           self.trainable)
            return
        tokenizer = {k: g for k, g in grads.items() if not is_discriminator_param(k)}
        optimizer_step(self.params, tokenizer, self.opt_state, self.settings, step,
                       self.trainable)
        if against_d:
            optimizer_step(self.disc_params(self.params), self.disc_params(grads),
                           self.disc_opt_state, self.disc_settings, step)

    def batch_sums(self, grads, out):
        """Everything of this step that is a sum over the batch's examples, as one flat dict
        of arrays: the gradients, this share's part of the losses, the code counts."""
        sums = {f"grad.{k}": g for k, g in grads.items()}
        for key in ("loss", "recon_loss") + ADVERSARIAL_LOSSES:   # 0-d arrays, which
            if key in out:                                          # the all-reduce writes into
                sums[key] = self.xp.asarray(out[key] * self.share)
        if self.ema_state is not None:
            sums["ema.counts"], sums["ema.sums"] = ema_statistics(
                out["z"], out["ids"], self.config.num_codes, self.params["quant.codebook"].dtype)
        sums["code_counts"] = code_counts(self.quantizer.rows_of(out["ids"], self.config),
                                          self.quantizer.code_rows(self.config))
        return sums

    def restart(self, step, z):
        """Dead-code restarts, codebook by codebook (the quantizer's groups: one, or one per
        scale), each from its part of the window. Returns how many moved (None off root)."""
        K, moved = self.config.num_codes, []
        for g, (codes, vectors, searched) in enumerate(
                self.quantizer.groups(z, self.params, self.config)):
            seed = [self.settings.seed, step, 2] + ([g] if g else [])
            moved.append(restart_on_root(self.world, codes, self.window[g * K:(g + 1) * K],
                                         vectors, searched, seed, self.ema_state))
        return None if moved[0] is None else sum(moved)

    def look_at_usage(self, step, loss, z, adversarial):
        """At the end of each window of steps (restart_every, or stats_every without
        restarts): the usage figures, a line of history (with this step's adversarial
        figures, if any), the dead-code restarts (made from this step's encoder outputs z),
        and a fresh window. Returns the figures to show."""
        window_len = self.recipe.restart_every or self.recipe.stats_every
        if not window_len or (step + 1) % window_len:
            return {}
        stats = usage_stats(self.window)
        figures = {"usage": f"{stats['usage']:.0%}", "ppl": f"{stats['perplexity']:.0f}"}
        moves_codes = self.quantizer.restarts and not self.recipe.decoder_only
        if self.recipe.restart_every and moves_codes:
            figures["restarted"] = self.restart(step, z)
        self.history.append({"step": step + 1, "loss": loss, **stats, **adversarial})
        self.window = self.xp.zeros_like(self.window)
        return figures


def check_discriminator_match(saved, params, path):
    """check_params_match for a resume, saying first (and plainly) when the discriminator
    is on one side only or of another size: the flags that differ, and the way on."""
    has_d, wants_d = (any(is_discriminator_param(k) for k in p) for p in (saved, params))
    if wants_d and not has_d:
        raise CheckpointError(
            f"cannot resume {path} with --gan-weight: it was trained without a discriminator "
            f"(no disc.* parameters); to go on against one, start from it with --init {path} "
            "and a new --out")
    if has_d and not wants_d:
        raise CheckpointError(
            f"cannot resume {path} without --gan-weight: it was trained against a "
            f"discriminator (disc.* parameters); give --gan-weight to resume it, or start "
            f"from it with --init {path} and a new --out to go on without one")
    key = PREFIX + "conv1.w"
    if has_d and saved[key].shape != params[key].shape:
        raise CheckpointError(
            f"cannot resume {path} with --disc-channels {params[key].shape[0]}: its "
            f"discriminator has {saved[key].shape[0]} (give --disc-channels "
            f"{saved[key].shape[0]})")
    check_params_match(saved, params, path)


def restart_on_root(world, codebook, window, vectors, searched, seed, ema_state):
    """Dead-code restarts decided on process 0 (from its encoder outputs, as the search
    sees them: vectors against the codes searched) and broadcast with the EMA statistics
    they reset. Returns the number restarted (None elsewhere)."""
    restarted = None
    if world.is_root:
        restarted = restart_dead_codes(codebook, window, vectors, seed=seed,
                                       ema_state=ema_state, searched=searched)
    moved = {"codebook": codebook}
    if ema_state is not None:
        moved.update(cluster_size=ema_state["cluster_size"], embed_sum=ema_state["embed_sum"])
    share_from_root(world, moved)
    return restarted


def encode_latents(images, params, config, batch_size=256):
    """Encoder outputs z (N, D, g, g) for uint8 images, in batches (for the k-means start),
    each batch in parts on the cores (tinytok.parallel)."""
    xp = backend.xp()

    def encode(x):
        parts = for_batch_parts(lambda lo, hi: encoder_forward(x[lo:hi], params, config,
                                                               keep_cache=False)[0], len(x))
        return xp.concatenate(parts)

    return xp.concatenate([encode(images_to_model(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])
