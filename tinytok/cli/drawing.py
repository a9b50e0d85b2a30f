"""The prior's commands: sample, caption, edit, chat, inpaint and eval-prior, each its flags
and then what it runs, and the sampling flags they share (their defaults are
tinytok.SAMPLING's). Which commands a prior can run is its kind's to say (prior/kinds.py):
a raster prior writes captions, a masked one inpaints; the other refuses in one line."""
import argparse
import dataclasses
import os
import sys

from tinytok.cli.arguments import (non_negative_float, non_negative_int, pixel_box,
                                   positive_float, positive_int, probability, seed_value)
from tinytok.cli.figures import add_record_argument, print_figures, record_if_asked
from tinytok.errors import ConfigError, TinytokError
from tinytok.prior.scales import SCALES_SAMPLING
from tinytok.prior.settings import PLAIN, SAMPLING


def add_sampling_arguments(p, edits=False):
    """The sampling flags of every drawing command. Each defaults to None, "not given": the
    value then comes from the prior's recommended settings (Pipeline.sampling: tinytok.
    SAMPLING, or a next-scale prior's) or PLAIN with --plain, the one place of the
    defaults, so the command line draws exactly as the Python API does."""
    d = SAMPLING
    p.add_argument("--temperature", type=positive_float, default=None,
                   help=f"softmax temperature (default {d.temperature}; a next-scale prior's "
                        f"{SCALES_SAMPLING.temperature})")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="keep the k likeliest tokens (default: all)")
    p.add_argument("--top-p", type=probability, default=None,
                   help="keep the likeliest tokens holding this much probability (default: all)")
    p.add_argument("--cfg", type=non_negative_float, default=None, dest="cfg_scale",
                   help=f"classifier-free guidance scale, 1 = off (default {d.cfg_scale}; a "
                        f"next-scale prior's {SCALES_SAMPLING.cfg_scale}, reached at its last "
                        "map)")
    p.add_argument("--cfg-ramp", action=argparse.BooleanOptionalAction, default=None,
                   help="a next-scale prior's guidance rising map by map from none to --cfg "
                        "(VAR's sampler; its default, and no other prior's)")
    p.add_argument("--rerank", type=positive_int, default=None,
                   help="draw K candidates per picture, keep the one the prior's own caption "
                        f"likelihood prefers (K times the drawing work; 1 = off; default "
                        f"{d.rerank}; a masked or next-scale prior cannot judge captions and "
                        "draws once)")
    if edits:
        p.add_argument("--edit-rerank", type=positive_int, default=None,
                       help=f"candidates per edited picture (default {d.edit_rerank})")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"a masked prior's passes over the grid, each filling in more codes "
                        f"(default {d.steps}; a raster prior writes one token a pass, a "
                        "next-scale prior one map)")
    p.add_argument("--choice-temperature", type=non_negative_float, default=None,
                   help=f"a masked prior's noise in which codes each pass keeps, 0 = the "
                        f"most confident (default {d.choice_temperature})")
    p.add_argument("--plain", action="store_true",
                   help="start from plain sampling (no guidance, one draw per picture) "
                        "instead of the recommended settings")
    p.add_argument("--seed", type=seed_value, default=0)


def sampling_from(args, pipe):
    """The Sampling value the flags ask for: the recommended settings of the pipeline's
    prior (or PLAIN with --plain), with the flags given changed."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SAMPLING)
             if getattr(args, f.name, None) is not None}
    return (PLAIN if args.plain else pipe.sampling).but(**given)


def add_pipeline_arguments(p, prior="shapes-prior"):
    """--tokenizer and --prior; without them the shipped shapes tokenizer and the shipped
    prior named (tinytok.pipeline.SHIPPED)."""
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: shipped)")
    p.add_argument("--prior", default=None, help=f"prior checkpoint (default: the shipped "
                   f"{prior.replace('-', ' ')})")
    p.set_defaults(shipped_prior=prior)


def load_pipeline(args):
    """The Pipeline of the --tokenizer and --prior flags (default: the shipped ones)."""
    from tinytok.pipeline import Pipeline
    return Pipeline.load(args.tokenizer, prior_path(args))


def prior_path(args):
    """The prior's checkpoint: --prior, or the command's shipped one."""
    from tinytok.pipeline import SHIPPED
    return args.prior or SHIPPED[args.shipped_prior]


def prompt_marks(images, prompts, n):
    """True where a picture's attributes, read back from its pixels, are its shapes
    caption's (n pictures per prompt); None when a prompt is no shapes caption."""
    import numpy as np
    from tinytok.data.datasets import parse_caption, read_attributes
    try:
        wanted = np.repeat(np.array([parse_caption(p) for p in prompts]), n, axis=0)
    except (TinytokError, ValueError):
        return None
    return (read_attributes(images) == wanted).all(axis=1)


def add_sample(sub):
    p = sub.add_parser("sample", help="draw pictures from captions (a masked prior fills in "
                                      "the whole grid in --steps passes)")
    p.add_argument("--prompt", action="append", required=True,
                   help="a caption; repeat for several")
    p.add_argument("-n", type=positive_int, default=8, help="samples per prompt")
    p.add_argument("--out", default="samples.png")
    add_sampling_arguments(p)
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args):
    from tinytok.viz import prompt_grid
    pipe = load_pipeline(args)
    prompts = args.prompt
    images = pipe.generate(prompts, args.n, seed=args.seed, sampling=sampling_from(args, pipe))
    marks = prompt_marks(images, prompts, args.n)  # a shapes caption is read back
    prompt_grid(images, prompts, args.n, marks=marks, path=args.out)
    note = f"; {marks.mean():.0%} match their prompt" if marks is not None else ""
    print(f"wrote {args.out} ({len(images)} images{note})")
    return 0


def add_caption(sub):
    p = sub.add_parser("caption", help="write a caption for each image")
    p.add_argument("images", nargs="+")
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_caption)


def cmd_caption(args):
    import numpy as np
    from tinytok.data.images import load_image
    from tinytok.prior.kinds import refuse_words
    pipe = load_pipeline(args)
    refuse_words(pipe.prior.kind, "write captions")   # before reading any picture
    size = pipe.tokenizer.config.image_size
    images = np.stack([load_image(path, size) for path in args.images])
    for path, caption in zip(args.images, pipe.caption(images)):
        print(f"{path}: {caption}")
    return 0


def add_edit(sub):
    p = sub.add_parser("edit", help="edit a picture by an instruction (make it blue, ...)")
    p.add_argument("image")
    p.add_argument("instruction", help="make it {colour}, make it {size}, move it to the "
                   "{position} or turn it into a {shape}")
    p.add_argument("--out", default="edited.png")
    p.add_argument("-n", type=positive_int, default=1, help="edits to draw")
    p.add_argument("--scale", type=positive_int, default=4)
    add_sampling_arguments(p, edits=True)
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_edit)


def cmd_edit(args):
    from tinytok.data.images import load_image
    from tinytok.viz import image_grid
    pipe = load_pipeline(args)
    image = load_image(args.image, pipe.tokenizer.config.image_size)
    edited = pipe.edit(image[None], args.instruction, args.n, seed=args.seed,
                       sampling=sampling_from(args, pipe))
    if args.n == 1:
        image_grid(edited, scale=args.scale, gap=0, path=args.out)
    else:
        image_grid(edited, ncols=args.n, scale=args.scale, path=args.out)
    print(f"wrote {args.out} ({args.n} edit{'s' if args.n > 1 else ''} of {args.image}: "
          f"{args.instruction!r})")
    return 0


def add_chat(sub):
    p = sub.add_parser("chat", help="a conversation in the terminal: draw, edit, describe")
    p.add_argument("--out", default="tinytok-chat", help="folder for the pictures drawn")
    p.add_argument("--scale", type=positive_int, default=4)
    add_sampling_arguments(p, edits=True)
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args):
    """A terminal conversation: one turn per line, until end of input or an empty line."""
    from tinytok.conversation import Conversation
    from tinytok.data.images import load_image
    from tinytok.errors import ContextFullError
    from tinytok.prior.kinds import refuse_words
    from tinytok.viz import image_grid
    pipe = load_pipeline(args)
    refuse_words(pipe.prior.kind, "hold a conversation")   # once, not at every turn
    os.makedirs(args.out, exist_ok=True)
    sampling = sampling_from(args, pipe)
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


def add_inpaint(sub):
    p = sub.add_parser("inpaint", help="draw a region of a picture again to fit a caption "
                       "(a masked prior)")
    p.add_argument("image")
    p.add_argument("--region", type=pixel_box, required=True, metavar="LEFT,TOP,RIGHT,BOTTOM",
                   help="the box to redraw, in pixels of the picture as the tokenizer reads "
                        "it (32x32 for the shapes), right and bottom excluded; every grid "
                        "cell it touches is drawn again, the others are kept")
    p.add_argument("--prompt", required=True, help="the caption the picture should have")
    p.add_argument("-n", type=positive_int, default=4, help="inpaintings to draw")
    p.add_argument("--out", default="inpainted.png")
    p.add_argument("--scale", type=positive_int, default=4)
    add_sampling_arguments(p)
    add_pipeline_arguments(p, prior="shapes-masked-prior")
    p.set_defaults(func=cmd_inpaint)


def cmd_inpaint(args):
    """The picture with its region outlined, then the n inpaintings, side by side."""
    import numpy as np
    from tinytok.data.images import load_image
    from tinytok.pipeline import region_cells
    from tinytok.prior.kinds import refuse_inpainting
    from tinytok.viz import image_grid
    from tinytok.viz.style import upscale
    pipe = load_pipeline(args)
    refuse_inpainting(pipe.prior.kind)   # before reading the picture
    tok, size = pipe.tokenizer, pipe.tokenizer.config.image_size
    if max(args.region[2:]) > size:
        raise ConfigError(f"--region {','.join(map(str, args.region))} leaves the {size}x{size} "
                          f"picture the tokenizer reads: RIGHT and BOTTOM must be <= {size}")
    image = load_image(args.image, size)
    cells = region_cells(args.region, size, tok.grid_size)
    drawn = pipe.inpaint(image[None], args.region, args.prompt, args.n, seed=args.seed,
                         sampling=sampling_from(args, pipe))
    marks = prompt_marks(drawn, [args.prompt], args.n)
    labels = [f"drawn {i + 1}" for i in range(args.n)] if marks is None else \
        ["reads as asked" if m else "reads otherwise" for m in marks]
    tiles = np.concatenate([outlined(image, cells, args.scale)[None],
                            upscale(drawn, args.scale)])
    image_grid(tiles, ncols=args.n + 1, scale=1, labels=["original", *labels],
               title=args.prompt, path=args.out)
    note = f"; {marks.mean():.0%} match the prompt" if marks is not None else ""
    print(f"wrote {args.out} ({args.n} inpainting{'s' if args.n > 1 else ''} of {args.image}, "
          f"{int(cells.sum())} of {cells.size} cells redrawn{note})")
    return 0


def outlined(image, cells, scale):
    """image (S, S, 3) enlarged scale times, the box around the cells (g, g) drawn in."""
    import numpy as np
    from PIL import Image, ImageDraw
    from tinytok.viz.style import ACCENT, upscale
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    side = len(image) * scale // len(cells)                  # one cell, in output pixels
    picture = Image.fromarray(upscale(image, scale))
    ImageDraw.Draw(picture).rectangle(
        [cols[0] * side, rows[0] * side, (cols[-1] + 1) * side - 1, (rows[-1] + 1) * side - 1],
        outline=ACCENT, width=max(1, scale // 2))
    return np.asarray(picture)


def add_eval_prior(sub):
    p = sub.add_parser("eval-prior", help="prompt adherence; caption accuracy and edits (a "
                       "raster prior) or inpainting (a masked prior)")
    p.add_argument("--prompts", type=positive_int, default=24, help="prompts per split")
    p.add_argument("-n", type=positive_int, default=4, help="samples per prompt")
    p.add_argument("--captions", type=positive_int, default=200,
                   help="held-out images to caption (a prior that writes captions)")
    p.add_argument("--edits", type=non_negative_int, default=24,
                   help="pictures to edit (seen and held-out results, chains, captions; a "
                        "prior that writes captions)")
    p.add_argument("--inpaints", type=non_negative_int, default=24,
                   help="pictures whose shape is redrawn in a new colour or shape (a prior "
                        "that inpaints)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="measure adherence on this many sets of prompts, seeds --seed on: "
                        "the mean, the lowest set and the spread between sets (default 1)")
    p.add_argument("--json", action="store_true")
    add_record_argument(p)
    add_sampling_arguments(p, edits=True)
    add_pipeline_arguments(p)
    p.set_defaults(func=cmd_eval_prior)


def cmd_eval_prior(args):
    from tinytok.evaluate import eval_prior
    from tinytok.pipeline import SHIPPED
    pipe = load_pipeline(args)
    figures = eval_prior(pipe, args.prompts, args.n, seed=args.seed, n_seeds=args.seeds,
                         n_captions=args.captions, n_edits=args.edits,
                         n_inpaints=args.inpaints, sampling=sampling_from(args, pipe))
    print_figures(figures, args.json)
    record_if_asked(args, prior_path(args), figures,
                    inputs=[args.tokenizer or SHIPPED["shapes-tokenizer"]])
    return 0


# This group's commands, in the order `tinytok --help` lists them (tinytok.cli.COMMANDS).
COMMANDS = (add_sample, add_caption, add_edit, add_chat, add_inpaint, add_eval_prior)
