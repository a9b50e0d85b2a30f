"""The training commands: demo, train-tokenizer and train-prior, each its flags and then what
it runs. The two trainers also run on several processes under mpiexec (tinytok.distributed)."""
import sys

from tinytok import distributed
from tinytok.cli.arguments import (fraction, fsq_levels, map_sizes, non_negative_float,
                                   non_negative_int, positive_float, positive_int, seed_value)
from tinytok.errors import ConfigError
from tinytok.prior.kinds import PRIOR_KINDS, model_overrides


def add_demo(sub):
    p = sub.add_parser("demo", help="train a tiny tokenizer and prior on shapes, write pictures")
    p.add_argument("--out", default="tinytok-demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    p.add_argument("--seed", type=seed_value, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from tinytok.demo import run_demo
    return run_demo(args.out, quick=args.quick, seed=args.seed)


def add_train_tokenizer(sub):
    from tinytok.tokenizer.quantizers import QUANTIZERS
    p = sub.add_parser("train-tokenizer", help="train a VQ-VAE tokenizer")
    p.add_argument("--data", default="shapes", help="shapes, photos, faces, digits or a folder")
    p.add_argument("--config", default="vqvae-ref")
    p.add_argument("--quantizer", default="ema", choices=tuple(QUANTIZERS),
                   help="; ".join(f"{q.name}: {q.summary}" for q in QUANTIZERS.values()))
    p.add_argument("--levels", type=fsq_levels, default=None,
                   help="fsq levels per channel, e.g. 8,5,5,5 (1000 codes; the default)")
    p.add_argument("--factor-dim", type=positive_int, default=None,
                   help="factorized: the dims the codes are searched in (default 8)")
    p.add_argument("--scales", type=map_sizes, default=None,
                   help="scales: the maps' sizes, increasing, the last the grid's (default "
                        "1,2,3,4,5,6,8 for an 8x8 grid)")
    p.add_argument("--codes", type=positive_int, default=None, help="codebook size override")
    p.add_argument("--size", type=positive_int, default=None,
                   help="picture size (default 32; e.g. 64 for photos, faces or a folder)")
    p.add_argument("--grid", type=positive_int, default=None,
                   help="tokens per side: size/4 (default, two downsamplings) or size/2 "
                        "(one fewer: 16 for 32x32 pictures)")
    p.add_argument("--n-images", type=positive_int, default=20000,
                   help="images (or crops) generated for shapes and photos")
    p.add_argument("--split", default="train", choices=("train", "all"),
                   help="train: leave out held-out shapes / validation photos; all: every "
                        "image (the tokenizer never reads captions, see README)")
    p.add_argument("--no-kmeans", action="store_true", help="random codebook start")
    p.add_argument("--no-restarts", action="store_true", help="never restart dead codes")
    p.add_argument("--restart-every", type=positive_int, default=100)
    p.add_argument("--gan-weight", type=non_negative_float, default=0.0,
                   help="weight of VQGAN's adversarial loss against a patch discriminator, "
                        "balanced by the adaptive weight (0: none; 0.1 sharpens photos)")
    p.add_argument("--disc-start", type=non_negative_int, default=0,
                   help="the step at which the discriminator starts learning")
    p.add_argument("--gan-start", type=non_negative_int, default=None,
                   help="the step at which the tokenizer starts to heed it (default: "
                        "--disc-start)")
    p.add_argument("--disc-lr-scale", type=positive_float, default=1.0,
                   help="the discriminator's learning rate over the tokenizer's")
    p.add_argument("--feature-weight", type=non_negative_float, default=0.0,
                   help="weight of the match between the discriminator's features of the "
                        "picture and of its reconstruction (a perceptual term), in L_rec")
    p.add_argument("--amplitude-weight", type=non_negative_float, default=0.0,
                   help="weight of the match between the amplitude spectra of the picture "
                        "and of its reconstruction (detail at every frequency), in L_rec")
    p.add_argument("--disc-channels", type=positive_int, default=64,
                   help="the discriminator's first convolution's channels")
    p.add_argument("--init", default=None,
                   help="start from an earlier tokenizer checkpoint of the same config")
    p.add_argument("--decoder-only", action="store_true",
                   help="train the decoder alone: the --init tokenizer's tokens stay as they are")
    add_train_arguments(p, lr=1e-3, steps=5000)
    p.set_defaults(func=cmd_train_tokenizer, many_processes=True)


def cmd_train_tokenizer(args):
    from tinytok.data.datasets import training_images
    from tinytok.tokenizer.multiscale import token_count
    from tinytok.tokenizer.quantizers import QUANTIZERS
    from tinytok.training import TrainSettings, train_tokenizer
    config = _tokenizer_config(args)   # every refusal here, before any data is read
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             warmup=args.warmup, seed=args.seed,
                             checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    settings.check()  # before anything is printed: a bad argument is one line, not two
    recipe = _tokenizer_recipe(args)
    init = _init_params(args, config)
    world = args.world
    distributed.batch_share(settings.batch_size, world)   # refused here too, before training
    images = training_images(args.data, args.n_images if args.data in ("shapes", "photos")
                             else None, seed=args.seed, split=args.split,
                             size=config.image_size)
    g, size = config.grid_size, config.image_size
    tokens = f"{g}x{g} tokens"
    if QUANTIZERS[config.quantizer].reads("scales"):
        tokens = (f"maps of {','.join(map(str, config.scales))} ({token_count(config.scales)} "
                  f"tokens)")
    say, on = _speaker(world), f" on {world.size} processes" if world.size > 1 else ""
    against = (f", against a patch discriminator learning from step {recipe.disc_start}, "
               f"heeded from step {recipe.heeded_from} (weight {recipe.gan_weight:g})"
               if recipe.adversarial else "")
    say(f"training a {config.name} tokenizer ({config.quantizer}, {config.num_codes} codes, "
        f"{tokens} per {size}x{size} picture) on {len(images)} {args.data} images for "
        f"{args.steps} steps{on}{against}{', from ' + args.init if init else ''} -> "
        f"{args.out}", file=sys.stderr)
    train_tokenizer(images, config, settings, args.out, recipe, resume=args.resume,
                    world=world, init=init)
    say(f"wrote {args.out}")
    return 0


def _tokenizer_config(args):
    """The TokenizerConfig the flags ask for, or a one-line refusal of a flag that does not
    apply to the quantizer (its record in QUANTIZERS says which fields it reads)."""
    from dataclasses import replace
    from tinytok.tokenizer.quantizers import QUANTIZERS, quantizers_reading
    from tinytok.tokenizer.vqvae import tokenizer_config, with_grid, with_quantizer
    sized_by_levels = QUANTIZERS[args.quantizer].reads("levels")
    if not sized_by_levels and args.levels is not None:
        raise ConfigError(f"--levels is for --quantizer "
                          f"{' or '.join(quantizers_reading('levels'))} only")
    if sized_by_levels and args.codes:  # FSQ's codebook is the grid of its levels
        raise ConfigError(f"--codes does not apply to --quantizer {args.quantizer}: its codes "
                          "are prod(--levels)")
    if args.factor_dim is not None and not QUANTIZERS[args.quantizer].reads("factor_dim"):
        raise ConfigError(f"--factor-dim is for --quantizer "
                          f"{' or '.join(quantizers_reading('factor_dim'))} only")
    if args.scales is not None and not QUANTIZERS[args.quantizer].reads("scales"):
        raise ConfigError(f"--scales is for --quantizer "
                          f"{' or '.join(quantizers_reading('scales'))} only")
    config = with_quantizer(tokenizer_config(args.config), args.quantizer, args.levels)
    if args.codes:
        config = replace(config, num_codes=args.codes)
    if args.factor_dim is not None:
        config = replace(config, factor_dim=args.factor_dim)
    config = with_grid(config, args.size, args.grid)   # the default scales follow the grid
    return config if args.scales is None else replace(config, scales=args.scales)


def _tokenizer_recipe(args):
    """The codebook care and the adversarial settings, checked."""
    from tinytok.training import TokenizerRecipe
    recipe = TokenizerRecipe(kmeans_init=not args.no_kmeans,
                             restart_every=0 if args.no_restarts else args.restart_every,
                             gan_weight=args.gan_weight, disc_start=args.disc_start,
                             gan_start=args.gan_start, disc_lr_scale=args.disc_lr_scale,
                             feature_weight=args.feature_weight,
                             amplitude_weight=args.amplitude_weight,
                             disc_channels=args.disc_channels, decoder_only=args.decoder_only)
    recipe.check()
    if args.decoder_only and not args.init and not args.resume:
        raise ConfigError("--decoder-only trains the decoder of an existing tokenizer: give it "
                          "with --init FILE")
    return recipe


def _init_params(args, config):
    """The parameters of the --init tokenizer (None without one), which must have config."""
    if not args.init:
        return None
    from tinytok.tokenizer.vqvae import tokenizer_config
    from tinytok.training.checkpoint import load_checkpoint
    earlier = load_checkpoint(args.init, kind="tokenizer")
    if tokenizer_config(earlier.config["model"]) != config:
        raise ConfigError(f"--init {args.init} is a {earlier.config['model'].get('name')} "
                          "tokenizer of another configuration; give the same --config, "
                          "--quantizer, --codes, --grid and --scales as it was trained with")
    return earlier.params


def _speaker(world):
    """print on process 0; nothing on the others (K copies of each line would only repeat)."""
    return print if world.is_root else (lambda *args, **kwargs: None)


def add_train_arguments(p, lr, steps, batch_size=32):
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate")
    p.add_argument("--warmup", type=non_negative_int, default=100, help="linear warm-up steps")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write (.npz)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--log-every", type=positive_int, default=50)


def add_train_prior(sub):
    p = sub.add_parser("train-prior", help="train the prior on captioned shapes")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default="shapes", choices=("shapes",))
    p.add_argument("--kind", default="raster", choices=tuple(PRIOR_KINDS),
                   help="raster: one token at a time (draws, captions, converses); masked: "
                   "many codes at a time (MaskGIT; draws and inpaints only); scales: a map "
                   "at a time, coarse to fine (VAR; draws only; needs a tokenizer trained "
                   "with --quantizer scales). masked and scales imply --conversations 0")
    p.add_argument("--config", default="gpt-ref")
    p.add_argument("--n-images", type=positive_int, default=20000)
    p.add_argument("--word-noise", type=fraction, default=0.3,
                   help="share of caption input words replaced at random in captioning "
                   "examples (helps describe unseen combinations)")
    p.add_argument("--conversations", type=fraction, default=0.5,
                   help="share of the steps that train on conversations (draw, describe, "
                   "edit, ask); 0: the two short layouts only")
    p.add_argument("--context", type=positive_int, default=None,
                   help="tokens the prior sees (default: the config's, or with "
                   "conversations the longest one)")
    p.add_argument("--init", default=None,
                   help="start from an earlier prior checkpoint (its weights, by token name)")
    add_train_arguments(p, lr=1e-3, steps=5000)
    p.set_defaults(func=cmd_train_prior, many_processes=True)


def cmd_train_prior(args):
    from tinytok.prior.gpt import gpt_config
    from tinytok.pipeline import Tokenizer
    from tinytok.prior.vocab import saved_token_names
    from tinytok.training.checkpoint import load_checkpoint
    from tinytok.training.conversations import longest_conversation
    from tinytok.training.prior_data import shapes_prior_data
    from tinytok.training import TrainSettings, train_prior
    world = args.world
    tokenizer = Tokenizer.load(args.tokenizer)
    kind = PRIOR_KINDS[args.kind]
    data = distributed.root_first(world, lambda: shapes_prior_data(   # others read its cache
        tokenizer, args.n_images, args.seed, cache=args.out + ".tokens",
        tokenizer_path=args.tokenizer, kind=kind))
    conversations = args.conversations if kind.can_caption else 0.0
    overrides = model_overrides(kind, data.vocab, tokenizer)
    if args.context or conversations:
        overrides["context"] = args.context or longest_conversation(data.vocab) - 1
    config = gpt_config(args.config, **overrides)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             warmup=args.warmup, seed=args.seed, weight_decay=0.1,
                             checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    settings.check()
    distributed.batch_share(settings.batch_size, world)   # refused here too, before training
    init = None
    if args.init:
        earlier = load_checkpoint(args.init, kind="prior")
        init = (earlier.params, saved_token_names(earlier.config["vocab"]))
    say, on = _speaker(world), f" on {world.size} processes" if world.size > 1 else ""
    say(f"training a {kind.name} {config.name} prior (context {config.context}) on "
        f"{len(data.codes)} captioned shapes for {args.steps} steps{on}, {conversations:.0%} "
        f"of them on conversations{', from ' + args.init if init else ''} -> {args.out}",
        file=sys.stderr)
    train_prior(data, config, settings, args.out, resume=args.resume,
                p_word_noise=args.word_noise, p_conversation=conversations, init=init,
                world=world, kind=kind)
    say(f"wrote {args.out}")
    return 0


# This group's commands, in the order `tinytok --help` lists them (tinytok.cli.COMMANDS).
COMMANDS = (add_demo, add_train_tokenizer, add_train_prior)
