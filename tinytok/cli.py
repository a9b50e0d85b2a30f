"""The `tinytok` command: train, encode, decode, sample, caption, evaluate, benchmark, demo, check.

Every subcommand is a thin layer over the Python API. Bad input of any kind ends in one line
on stderr ("tinytok: error: ...") and exit code 2; Ctrl-C during training writes a
checkpoint first and exits with 130.

`mpiexec -n K tinytok train-tokenizer ...` (and train-prior) trains one model on K
processes (tinytok.distributed): process 0 prints and writes, every process exits with the
same code, and a failure on one process alone ends them all rather than leave them waiting.
"""
import argparse
import dataclasses
import json
import os
import sys
import traceback

from tinytok import backend, distributed, parallel
from tinytok.errors import ConfigError, TinytokError
from tinytok.prior.settings import PLAIN, SAMPLING


# ---------------------------------------------------------------- argument types

def _number(convert, allowed, rule):
    """An argparse type: text -> convert(text), refused with a clear message unless allowed."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not allowed(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


INF = float("inf")
positive_int = _number(int, lambda v: v >= 1, ">= 1")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
seed_value = _number(int, lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)")
positive_float = _number(float, lambda v: 0 < v < INF, "a finite number > 0")
non_negative_float = _number(float, lambda v: 0 <= v < INF, "a finite number >= 0")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")


def fsq_levels(text):
    """An argparse type: "8,5,5,5" -> (8, 5, 5, 5), each level a whole number >= 2."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers joined by commas, such as "
                                         f"8,5,5,5, got {text!r}") from None
    if min(levels) < 2:
        raise argparse.ArgumentTypeError(f"every level must be >= 2, got {text}")
    return levels


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (no usage block)."""

    def error(self, message):
        if distributed.launched_rank() != 0:   # under mpiexec: process 0 says it, once
            sys.exit(2)
        sys.stderr.write(f"tinytok: error: {self.prog.replace('tinytok ', '')}: {message}\n")
        sys.exit(2)


# ---------------------------------------------------------------- subcommands

def cmd_train_tokenizer(args):
    from tinytok.data.datasets import training_images
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    from tinytok.tokenizer.quantizers import QUANTIZERS, quantizers_reading
    from tinytok.tokenizer.vqvae import tokenizer_config, with_grid, with_quantizer
    from dataclasses import replace
    sized_by_levels = QUANTIZERS[args.quantizer].reads("levels")
    if not sized_by_levels and args.levels is not None:
        raise ConfigError(f"--levels is for --quantizer "
                          f"{' or '.join(quantizers_reading('levels'))} only")
    if sized_by_levels and args.codes:  # FSQ's codebook is the grid of its levels
        raise ConfigError(f"--codes does not apply to --quantizer {args.quantizer}: its codes "
                          "are prod(--levels)")
    config = with_quantizer(tokenizer_config(args.config), args.quantizer, args.levels)
    if args.codes:
        config = replace(config, num_codes=args.codes)
    config = with_grid(config, args.size, args.grid)  # refused here, before any data is read
    images = training_images(args.data, args.n_images if args.data in ("shapes", "photos")
                             else None, seed=args.seed, split=args.split,
                             size=config.image_size)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             warmup=args.warmup, seed=args.seed,
                             checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    recipe = TokenizerRecipe(kmeans_init=not args.no_kmeans,
                             restart_every=0 if args.no_restarts else args.restart_every)
    settings.check()  # before anything is printed: a bad argument is one line, not two
    world = args.world
    distributed.batch_share(settings.batch_size, world)   # refused here too, before training
    g, size = config.grid_size, config.image_size
    say, on = _speaker(world), f" on {world.size} processes" if world.size > 1 else ""
    say(f"training a {config.name} tokenizer ({config.quantizer}, {config.num_codes} codes, "
        f"{g}x{g} tokens per {size}x{size} picture) on {len(images)} {args.data} images for "
        f"{args.steps} steps{on} -> {args.out}", file=sys.stderr)
    train_tokenizer(images, config, settings, args.out, recipe, resume=args.resume,
                    world=world)
    say(f"wrote {args.out}")
    return 0


def _speaker(world):
    """print on process 0; nothing on the others (K copies of each line would only repeat)."""
    return print if world.is_root else (lambda *args, **kwargs: None)


def _add_train_arguments(p, lr, steps, batch_size=32):
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate")
    p.add_argument("--warmup", type=non_negative_int, default=100, help="linear warm-up steps")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write (.npz)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--log-every", type=positive_int, default=50)


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
    data = distributed.root_first(world, lambda: shapes_prior_data(   # others read its cache
        tokenizer, args.n_images, args.seed, cache=args.out + ".tokens",
        tokenizer_path=args.tokenizer))
    overrides = {"vocab_size": data.vocab.size}
    if args.context or args.conversations:
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
    say(f"training a {config.name} prior (context {config.context}) on {len(data.codes)} "
        f"captioned shapes for {args.steps} steps{on}, {args.conversations:.0%} of them on "
        f"conversations{', from ' + args.init if init else ''} -> {args.out}",
        file=sys.stderr)
    train_prior(data, config, settings, args.out, resume=args.resume,
                p_word_noise=args.word_noise, p_conversation=args.conversations, init=init,
                world=world)
    say(f"wrote {args.out}")
    return 0


def cmd_encode(args):
    from tinytok.data.images import load_image
    from tinytok.pipeline import Tokenizer
    tokenizer = Tokenizer.load(args.tokenizer)
    size = tokenizer.config.image_size
    import numpy as np
    images = np.stack([load_image(path, size) for path in args.images])
    ids = tokenizer.encode(images)
    if args.json:
        print(json.dumps({path: grid.tolist() for path, grid in zip(args.images, ids)}))
    else:
        width = len(str(tokenizer.config.num_codes - 1))
        for path, grid in zip(args.images, ids):
            print(f"{path}:")
            for row in grid:
                print("  " + " ".join(f"{v:>{width}d}" for v in row))
    return 0


def _read_ids_json(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read token ids from {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON: {str(e) or 'nested too deeply'}") from None
    if isinstance(data, dict):  # the output of `tinytok encode --json`
        data = list(data.values())
    import numpy as np
    try:
        ids = np.asarray(data)
    except ValueError:
        ids = np.asarray([], dtype=object)
    if ids.dtype.kind not in "iu":
        raise ConfigError(f"{path} must hold integer token grids (a list of g x g lists, or "
                          "the output of `tinytok encode --json`)")
    return ids


def cmd_decode(args):
    from tinytok.pipeline import Tokenizer
    from tinytok.viz import image_grid
    tokenizer = Tokenizer.load(args.tokenizer)
    images = tokenizer.decode(_read_ids_json(args.ids))
    image_grid(images, scale=args.scale, path=args.out)
    print(f"wrote {args.out} ({len(images)} image{'s' * (len(images) != 1)})")
    return 0


def cmd_eval_tokenizer(args):
    from tinytok.data.datasets import training_images
    from tinytok.evaluate import eval_tokenizer
    from tinytok.pipeline import SHIPPED, Tokenizer
    tokenizer = Tokenizer.load(args.tokenizer)
    size = tokenizer.config.image_size  # the pictures it was made for, and no other
    if args.size is not None and args.size != size:
        raise ConfigError(f"--size {args.size}: this tokenizer reads {size}x{size} pictures "
                          f"(leave --size out, or pass --size {size})")
    split = {"shapes": "all", "photos": "val"}.get(args.data, "val")
    seed = 12345  # validation images never overlap the training seed's draws
    if args.data == "photos":  # held-out photographs, downscaled 2x and 4x: CIFAR-like detail
        from tinytok.data.datasets import photo_crops
        images = photo_crops(args.n_images, seed=seed, split="val", scales=(2, 4), size=size)
        split = "val, 2x and 4x"
    else:
        images = training_images(args.data, args.n_images if args.data == "shapes" else None,
                                 seed=seed, split=split, size=size)
    figures, recon, ids = eval_tokenizer(tokenizer, images)
    figures["data"] = f"{args.data} ({split} split)"
    if args.pictures:
        _tokenizer_pictures(tokenizer, images, recon, ids, args.pictures)
        figures["pictures"] = args.pictures
    _print_figures(figures, args.json)
    _record(args, args.tokenizer or SHIPPED["shapes-tokenizer"], figures)
    return 0


def _tokenizer_pictures(tokenizer, images, recon, ids, folder):
    """Reconstructions, the palette and a token map, written into folder."""
    from tinytok.tokenizer.codebook import code_counts
    from tinytok.viz import codebook_palette, comparison_grid, token_map
    os.makedirs(folder, exist_ok=True)
    comparison_grid([images[:16], recon[:16]], ["original", "tokens"],
                    path=os.path.join(folder, "reconstructions.png"))
    K = tokenizer.config.num_codes
    tiles = tokenizer.code_tiles()
    codebook_palette(tiles, code_counts(ids, K), path=os.path.join(folder, "palette.png"))
    token_map(images[0], ids[0], path=os.path.join(folder, "token_map.png"))


def _print_figures(figures, as_json):
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        if key.startswith(("adherence", "caption_accuracy", "usage", "edit_", "chain_",
                           "caption_after")) and key != "edit_pictures":
            shown = f"{value:.1%}"
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key:>26}: {shown}")


def _sampling_arguments(p, edits=False):
    """The sampling flags of every drawing command. Each defaults to None, "not given": the
    value then comes from tinytok.SAMPLING (or PLAIN with --plain), the one place of the
    defaults, so the command line draws exactly as the Python API does."""
    d = SAMPLING
    p.add_argument("--temperature", type=positive_float, default=None,
                   help=f"softmax temperature (default {d.temperature})")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="keep the k likeliest tokens (default: all)")
    p.add_argument("--top-p", type=probability, default=None,
                   help="keep the likeliest tokens holding this much probability (default: all)")
    p.add_argument("--cfg", type=non_negative_float, default=None, dest="cfg_scale",
                   help=f"classifier-free guidance scale, 1 = off (default {d.cfg_scale})")
    p.add_argument("--rerank", type=positive_int, default=None,
                   help="draw K candidates per picture, keep the one the prior's own caption "
                        f"likelihood prefers (K times the drawing work; 1 = off; default "
                        f"{d.rerank})")
    if edits:
        p.add_argument("--edit-rerank", type=positive_int, default=None,
                       help=f"candidates per edited picture (default {d.edit_rerank})")
    p.add_argument("--plain", action="store_true",
                   help="start from plain sampling (no guidance, one draw per picture) "
                        "instead of the recommended settings")
    p.add_argument("--seed", type=seed_value, default=0)


def _sampling(args):
    """The Sampling value the flags ask for: the defaults, with the flags given changed."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SAMPLING)
             if getattr(args, f.name, None) is not None}
    return (PLAIN if args.plain else SAMPLING).but(**given)


def _pipeline_arguments(p):
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: shipped)")
    p.add_argument("--prior", default=None, help="prior checkpoint (default: shipped)")


def cmd_sample(args):
    from tinytok.data.datasets import parse_caption, read_attributes
    from tinytok.pipeline import Pipeline
    from tinytok.viz import prompt_grid
    import numpy as np
    pipe = Pipeline.load(args.tokenizer, args.prior)
    prompts = args.prompt
    images = pipe.generate(prompts, args.n, seed=args.seed, sampling=_sampling(args))
    marks = None
    try:  # a shapes caption can be checked by reading the picture back
        wanted = np.repeat(np.array([parse_caption(p) for p in prompts]), args.n, axis=0)
        marks = (read_attributes(images) == wanted).all(axis=1)
    except (TinytokError, ValueError):
        pass
    prompt_grid(images, prompts, args.n, marks=marks, path=args.out)
    note = f"; {marks.mean():.0%} match their prompt" if marks is not None else ""
    print(f"wrote {args.out} ({len(images)} images{note})")
    return 0


def cmd_edit(args):
    from tinytok.data.images import load_image
    from tinytok.pipeline import Pipeline
    from tinytok.viz import image_grid
    pipe = Pipeline.load(args.tokenizer, args.prior)
    image = load_image(args.image, pipe.tokenizer.config.image_size)
    edited = pipe.edit(image[None], args.instruction, args.n, seed=args.seed,
                       sampling=_sampling(args))
    if args.n == 1:
        image_grid(edited, scale=args.scale, gap=0, path=args.out)
    else:
        image_grid(edited, ncols=args.n, scale=args.scale, path=args.out)
    print(f"wrote {args.out} ({args.n} edit{'s' if args.n > 1 else ''} of {args.image}: "
          f"{args.instruction!r})")
    return 0


def cmd_chat(args):
    """A terminal conversation: one turn per line, until end of input or an empty line."""
    from tinytok.conversation import Conversation
    from tinytok.data.images import load_image
    from tinytok.errors import ContextFullError
    from tinytok.pipeline import Pipeline
    from tinytok.viz import image_grid
    pipe = Pipeline.load(args.tokenizer, args.prior)
    os.makedirs(args.out, exist_ok=True)
    sampling = _sampling(args)
    def new_chat():
        return Conversation(pipe, seed=args.seed, sampling=sampling)
    chat, drawn = new_chat(), 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("write a caption to draw, an instruction (make it blue, make it small, move it "
              "to the top, turn it into a square), 'what is it?', or a picture's path; an "
              "empty line ends")
    for line in iter(lambda: _read_turn(interactive), None):
        try:   # a bad turn (an unreadable picture, an unknown word) gets one line; chat goes on
            turn = load_image(line, pipe.tokenizer.config.image_size) \
                if os.path.isfile(line) else line
            reply = chat.say(turn)
        except ContextFullError as e:
            print(f"tinytok: {e}; starting a new conversation", file=sys.stderr)
            chat = new_chat()
            continue
        except TinytokError as e:
            print(f"tinytok: {e}", file=sys.stderr)
            continue
        if isinstance(reply, str):
            print(reply)
            continue
        drawn += 1
        path = os.path.join(args.out, f"{drawn:03d}.png")
        image_grid(reply[None], scale=args.scale, gap=0, path=path)
        print(path)
        if sys.stdout.isatty():
            print(terminal_picture(reply))
    return 0


def _read_turn(interactive):
    """The next line the user types, stripped; None at the end of input or an empty line."""
    try:
        line = input("> " if interactive else "")
    except EOFError:
        return None
    return line.strip() or None


def terminal_picture(image, width=16):
    """A uint8 picture (S, S, 3) as coloured half blocks (24-bit ANSI colour), width wide:
    each character shows two pixels, the top one as its foreground."""
    from tinytok.data.images import resize_images
    small = resize_images(image[None], width)[0].astype(int)
    rows = []
    for top, bottom in zip(small[0::2], small[1::2]):
        cells = (f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580"
                 for t, b in zip(top, bottom))
        rows.append("".join(cells) + "\x1b[0m")
    return "\n".join(rows)


def cmd_caption(args):
    import numpy as np
    from tinytok.data.images import load_image
    from tinytok.pipeline import Pipeline
    pipe = Pipeline.load(args.tokenizer, args.prior)
    size = pipe.tokenizer.config.image_size
    images = np.stack([load_image(path, size) for path in args.images])
    for path, caption in zip(args.images, pipe.caption(images)):
        print(f"{path}: {caption}")
    return 0


def cmd_eval_prior(args):
    from tinytok.evaluate import eval_prior
    from tinytok.pipeline import SHIPPED, Pipeline
    pipe = Pipeline.load(args.tokenizer, args.prior)
    figures = eval_prior(pipe, args.prompts, args.n, seed=args.seed, n_captions=args.captions,
                         n_edits=args.edits, sampling=_sampling(args))
    _print_figures(figures, args.json)
    _record(args, args.prior or SHIPPED["shapes-prior"], figures,
            inputs=[args.tokenizer or SHIPPED["shapes-tokenizer"]])
    return 0


def record_label(text):
    """An argparse type: a label for the record (tinytok.evaluate.record.check_label)."""
    from tinytok.evaluate.record import check_label
    try:
        return check_label(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _record_argument(p):
    p.add_argument("--record", type=record_label, default=None, metavar="LABEL",
                   help="also write the figures under LABEL into figures.json beside the "
                        "checkpoint (the record the README and lessons quote)")


def _record(args, checkpoint, figures, inputs=()):
    """With --record LABEL: the figures into the record beside checkpoint, with this command."""
    if args.record is None:
        return
    from tinytok.evaluate.record import record_figures
    path = record_figures(checkpoint, args.record, figures, ["tinytok", *args.argv], inputs)
    print(f"recorded as {args.record} in {path}", file=sys.stderr)


def cmd_demo(args):
    from tinytok.demo import run_demo
    return run_demo(args.out, quick=args.quick, seed=args.seed)


def cmd_export(args):
    """A copy of a checkpoint without the optimizer state: a third of the size, for sharing."""
    from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(args.checkpoint)
    save_checkpoint(args.out, kind=ckpt.kind, params=ckpt.params, config=ckpt.config,
                    step=ckpt.step, extra={"history": ckpt.extra.get("history", [])})
    print(f"wrote {args.out} ({ckpt.kind}, step {ckpt.step}, "
          f"{os.path.getsize(args.out) / 2 ** 20:.1f} MB)")
    return 0


def cmd_bench(args):
    from tinytok import bench
    return bench.run(args)


def cmd_check(args):
    """Grade a learner's own op pair (lessons/exercises/): 0 right, 1 wrong, 2 unusable."""
    from tinytok.check import check
    return check(args.op, args.file)


# ---------------------------------------------------------------- the parser

def build_parser():
    from tinytok.check.cases import OPS
    from tinytok.tokenizer.quantizers import QUANTIZERS
    parser = OneLineParser(prog="tinytok", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=backend.BACKENDS, default=None,
                        help="numpy (default, or $TINYTOK_BACKEND) or cupy")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("demo", help="train a tiny tokenizer and prior on shapes, write pictures")
    p.add_argument("--out", default="tinytok-demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    p.add_argument("--seed", type=seed_value, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train-tokenizer", help="train a VQ-VAE tokenizer")
    p.add_argument("--data", default="shapes", help="shapes, photos, faces, digits or a folder")
    p.add_argument("--config", default="vqvae-ref")
    p.add_argument("--quantizer", default="ema", choices=tuple(QUANTIZERS),
                   help="; ".join(f"{q.name}: {q.summary}" for q in QUANTIZERS.values()))
    p.add_argument("--levels", type=fsq_levels, default=None,
                   help="fsq levels per channel, e.g. 8,5,5,5 (1000 codes; the default)")
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
    _add_train_arguments(p, lr=1e-3, steps=5000)
    p.set_defaults(func=cmd_train_tokenizer, many_processes=True)

    p = sub.add_parser("train-prior", help="train the prior on captioned shapes")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", default="shapes", choices=("shapes",))
    p.add_argument("--config", default="gpt-ref")
    p.add_argument("--n-images", type=positive_int, default=20000)
    p.add_argument("--word-noise", type=_number(float, lambda v: 0 <= v <= 1, "in [0, 1]"),
                   default=0.3, help="share of caption input words replaced at random in "
                   "captioning examples (helps describe unseen combinations)")
    p.add_argument("--conversations", type=_number(float, lambda v: 0 <= v <= 1, "in [0, 1]"), default=0.5,
                   help="share of the steps that train on conversations (draw, describe, "
                   "edit, ask); 0: the two short layouts only")
    p.add_argument("--context", type=positive_int, default=None,
                   help="tokens the prior sees (default: the config's, or with "
                   "conversations the longest one)")
    p.add_argument("--init", default=None,
                   help="start from an earlier prior checkpoint (its weights, by token name)")
    _add_train_arguments(p, lr=1e-3, steps=5000)
    p.set_defaults(func=cmd_train_prior, many_processes=True)

    p = sub.add_parser("encode", help="print the token grid of each image")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="turn token grids (JSON) back into a picture")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--ids", required=True, help="JSON file of token grids")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--scale", type=positive_int, default=4)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("eval-tokenizer", help="PSNR and codebook usage on held-out images")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--data", default="shapes")
    p.add_argument("--n-images", type=positive_int, default=2000)
    p.add_argument("--size", type=positive_int, default=None,
                   help="picture size; must be the tokenizer's own (the default)")
    p.add_argument("--pictures", default=None, help="folder for reconstructions and palette")
    p.add_argument("--json", action="store_true")
    _record_argument(p)
    p.set_defaults(func=cmd_eval_tokenizer)

    p = sub.add_parser("sample", help="draw pictures from captions")
    p.add_argument("--prompt", action="append", required=True,
                   help="a caption; repeat for several")
    p.add_argument("-n", type=positive_int, default=8, help="samples per prompt")
    p.add_argument("--out", default="samples.png")
    _sampling_arguments(p)
    _pipeline_arguments(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("caption", help="write a caption for each image")
    p.add_argument("images", nargs="+")
    _pipeline_arguments(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("edit", help="edit a picture by an instruction (make it blue, ...)")
    p.add_argument("image")
    p.add_argument("instruction", help="make it {colour}, make it {size}, move it to the "
                   "{position} or turn it into a {shape}")
    p.add_argument("--out", default="edited.png")
    p.add_argument("-n", type=positive_int, default=1, help="edits to draw")
    p.add_argument("--scale", type=positive_int, default=4)
    _sampling_arguments(p, edits=True)
    _pipeline_arguments(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("chat", help="a conversation in the terminal: draw, edit, describe")
    p.add_argument("--out", default="tinytok-chat", help="folder for the pictures drawn")
    p.add_argument("--scale", type=positive_int, default=4)
    _sampling_arguments(p, edits=True)
    _pipeline_arguments(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval-prior", help="prompt adherence and caption accuracy")
    p.add_argument("--prompts", type=positive_int, default=24, help="prompts per split")
    p.add_argument("-n", type=positive_int, default=4, help="samples per prompt")
    p.add_argument("--captions", type=positive_int, default=200, help="held-out images to caption")
    p.add_argument("--edits", type=non_negative_int, default=24,
                   help="pictures to edit (seen and held-out results, chains, captions)")
    p.add_argument("--json", action="store_true")
    _record_argument(p)
    _sampling_arguments(p, edits=True)
    _pipeline_arguments(p)
    p.set_defaults(func=cmd_eval_prior)

    p = sub.add_parser("export", help="copy a checkpoint without its optimizer state")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="speed and memory of the reference models")
    from tinytok import bench
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check", help="check your own forward and backward of an op pair "
                                     "(lessons/exercises/)")
    p.add_argument("op", help=", ".join(OPS))
    p.add_argument("file", help="a Python file defining OP_forward and OP_backward")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # as typed, for the record
    args.world = world = distributed.SINGLE
    says = distributed.launched_rank() == 0  # under mpiexec, process 0 reports for all
    try:
        args.world = world = _world_for(args)   # before the backend picks a GPU
        if args.backend:
            backend.use(args.backend)
        else:
            backend.xp()  # validates $TINYTOK_BACKEND now, with a clear message
        parallel.reuse_freed_host_memory()
        if world.size == 1:
            parallel.use_cores()  # every core for element-wise work; see tinytok/parallel.py
        else:
            distributed.use_this_process_cores()   # this process's share of them
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("tinytok: interrupted\n")
        world.end_all(130)   # the others would wait for this process for ever
        return 130
    except TinytokError as e:  # raised alike on every process: each ends with it
        from tinytok.training import TrainingStopped
        if says:
            what = "stopped" if isinstance(e, TrainingStopped) else "error"
            sys.stderr.write(f"tinytok: {what}: {e}\n")
        return 130 if isinstance(e, TrainingStopped) else 2
    except ImportError as e:
        if says:
            sys.stderr.write(f"tinytok: error: {e}\n")
        return 2
    except Exception:
        if world.size == 1:
            raise
        traceback.print_exc()  # a failure of this process alone: end the others too
        world.end_all(1)
        raise


def _world_for(args):
    """The processes this command runs on: several under mpiexec for the training commands
    (tinytok.distributed), one otherwise; other commands under mpiexec are refused."""
    if getattr(args, "many_processes", False):
        return distributed.start(args.backend or os.environ.get("TINYTOK_BACKEND") or "numpy")
    if distributed.launched_size() > 1:
        raise ConfigError(f"only train-tokenizer and train-prior run on several processes; "
                          f"run `tinytok {args.command}` without mpiexec")
    return distributed.SINGLE


if __name__ == "__main__":
    sys.exit(main())
