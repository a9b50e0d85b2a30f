"""The tokenizer's commands: encode (pictures to token grids), decode (grids back to a
picture) and eval-tokenizer (PSNR, SSIM, high-frequency power kept and codebook usage, beside
another tokenizer's with --compare), each its flags and then what it runs."""
import json
import os

from tinytok.cli.arguments import positive_int
from tinytok.cli.figures import add_record_argument, print_figures, record_if_asked
from tinytok.errors import ConfigError


def add_encode(sub):
    p = sub.add_parser("encode", help="print the token grid of each image")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_encode)


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
        for path, maps in zip(args.images, token_maps(tokenizer, ids)):
            print(f"{path}:")
            for n, grid in enumerate(maps):
                if n:   # a multi-scale tokenizer's maps, coarse to fine, a blank line apart
                    print()
                for row in grid:
                    print("  " + " ".join(f"{v:>{width}d}" for v in row))
    return 0


def token_maps(tokenizer, ids):
    """Each picture's ids as a list of 2-D maps: its one grid, or a multi-scale tokenizer's
    maps coarse to fine (its ids (N, L) split)."""
    maps = tokenizer.maps(ids)
    return [[m[i] for m in maps] for i in range(len(ids))]


def add_decode(sub):
    p = sub.add_parser("decode", help="turn token grids (JSON) back into a picture")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--ids", required=True, help="JSON file of token grids")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--scale", type=positive_int, default=4)
    p.set_defaults(func=cmd_decode)


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


def add_eval_tokenizer(sub):
    p = sub.add_parser("eval-tokenizer", help="PSNR, SSIM, high-frequency power kept and "
                       "codebook usage on held-out images")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--data", default="shapes")
    p.add_argument("--n-images", type=positive_int, default=2000)
    p.add_argument("--split", choices=("val", "all"), default="val",
                   help="val (the default): the held-out pictures; all: every picture of the "
                        "set, for a tokenizer that never trained on it (faces, for the "
                        "photos tokenizers); the shapes are always drawn fresh")
    p.add_argument("--size", type=positive_int, default=None,
                   help="picture size; must be the tokenizer's own (the default)")
    p.add_argument("--compare", default=None, metavar="CHECKPOINT",
                   help="another tokenizer of the same picture size: its PSNR, SSIM and "
                        "high-frequency power kept on the same pictures; with --pictures "
                        "its reconstructions beside these (side_by_side.png)")
    p.add_argument("--pictures", default=None, help="folder for reconstructions and palette")
    p.add_argument("--json", action="store_true")
    add_record_argument(p)
    p.set_defaults(func=cmd_eval_tokenizer)


def _evaluation_images(data, n_images, size, split="val"):
    """The pictures eval-tokenizer measures on, and the split's name. split "val": those
    held out of training; "all": every picture of the set (photos: crops of every one)."""
    from tinytok.data.datasets import photo_crops, training_images
    seed = 12345  # validation images never overlap the training seed's draws
    if data == "photos":  # photographs downscaled 2x and 4x: CIFAR-like detail
        return photo_crops(n_images, seed=seed, split=split, scales=(2, 4), size=size), \
            f"{split}, 2x and 4x"
    if data == "shapes":  # drawn fresh: the seed keeps them apart from training's
        split = "all"
    return training_images(data, n_images if data == "shapes" else None, seed=seed,
                           split=split, size=size), split


def _rival(path, size):
    """The --compare tokenizer, which must read the same size x size pictures."""
    from tinytok.pipeline import Tokenizer
    rival = Tokenizer.load(path)
    if rival.config.image_size != size:
        raise ConfigError(f"--compare {path} reads {rival.config.image_size}x"
                          f"{rival.config.image_size} pictures, the tokenizer {size}x{size}; "
                          "compare tokenizers of the same picture size")
    return rival


def cmd_eval_tokenizer(args):
    from tinytok.evaluate import eval_tokenizer, fidelity
    from tinytok.pipeline import SHIPPED, Tokenizer
    tokenizer = Tokenizer.load(args.tokenizer)
    size = tokenizer.config.image_size  # the pictures it was made for, and no other
    if args.size is not None and args.size != size:
        raise ConfigError(f"--size {args.size}: this tokenizer reads {size}x{size} pictures "
                          f"(leave --size out, or pass --size {size})")
    rival = _rival(args.compare, size) if args.compare else None
    images, split = _evaluation_images(args.data, args.n_images, size, args.split)
    figures, recon, ids = eval_tokenizer(tokenizer, images)
    figures["data"] = f"{args.data} ({split} split)"
    rows = [(args.tokenizer or SHIPPED["shapes-tokenizer"], recon, figures)]
    if rival is not None:
        rival_recon = rival.reconstruct(images)
        theirs = fidelity(images, rival_recon)
        figures["compare"] = args.compare
        figures.update({f"compare_{key}": value for key, value in theirs.items()})
        rows.append((args.compare, rival_recon, theirs))
    if args.pictures:
        _tokenizer_pictures(tokenizer, images, recon, ids, args.pictures)
        if rival is not None:
            side_by_side(images, rows, os.path.join(args.pictures, "side_by_side.png"))
        figures["pictures"] = args.pictures
    print_figures(figures, args.json)
    record_if_asked(args, rows[0][0], figures, inputs=[args.compare] if args.compare else ())
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
    finest = token_maps(tokenizer, ids[:1])[0][-1]     # the grid, or the finest map
    token_map(images[0], finest, path=os.path.join(folder, "token_map.png"))


SIDE_BY_SIDE_PICTURES, SIDE_BY_SIDE_SCALE = 6, 6


def checkpoint_name(path):
    """A checkpoint's file name without its folder and .npz: the row label's first line."""
    return os.path.splitext(os.path.basename(str(path)))[0]


def side_by_side(images, rows, path, n=SIDE_BY_SIDE_PICTURES, scale=SIDE_BY_SIDE_SCALE):
    """The first n originals in a row, and under them each tokenizer's reconstructions,
    enlarged scale times (nearest neighbour: every pixel a crisp square, so a blur shows).
    rows: (checkpoint path, reconstructions, its fidelity figures), one per tokenizer."""
    from tinytok.viz import comparison_grid
    names = ["original"] + [f"{checkpoint_name(checkpoint)}  PSNR {f['psnr_db']:.1f} dB"
                            f"  SSIM {f['ssim']:.3f}  HF power kept {f['hf_share']:.0%}"
                            for checkpoint, _, f in rows]
    return comparison_grid([images[:n]] + [recon[:n] for _, recon, _ in rows], names,
                           scale=scale, path=path)


# This group's commands, in the order `tinytok --help` lists them (tinytok.cli.COMMANDS).
COMMANDS = (add_encode, add_decode, add_eval_tokenizer)
