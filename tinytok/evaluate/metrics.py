"""Honest numbers: what `tinytok eval-tokenizer` and `tinytok eval-prior` measure.

Tokenizer: PSNR and SSIM of reconstructions (uint8, mean over images), the share of the
originals' high-frequency power the reconstructions keep (is the detail there, or a blur?)
and codebook usage, on images it never saw, and what its token grid costs in bits against
the best thumbnail (a small, coarsely rounded picture, enlarged again) of no more bits.
Prior: prompt adherence, the share of generated images whose attributes, read back from
pixels by tinytok.data.datasets.read_attributes, all match the prompt, separately for
attribute combinations seen in training and for held-out ones; and caption accuracy, the
share of held-out images whose written caption matches the true one exactly (a prior that
writes words), or inpainting, the share of shapes redrawn in a new colour or shape that read
back as asked and how well the pixels outside the redrawn cells are kept (a masked prior).
"""
from dataclasses import asdict
from typing import NamedTuple

import numbers

import numpy as np

from tinytok import backend
from tinytok.data.datasets import caption_for, is_heldout, make_shapes, read_attributes
from tinytok.data.images import resize_images
from tinytok.errors import ConfigError, DTypeError, ImageError, ShapeError
from tinytok.ops.checks import require_positive_int
from tinytok.ops.losses import radial_frequency
from tinytok.tokenizer.codebook import code_counts, usage_stats


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of uint8 images, one figure per image (N,)."""
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def picture_pair(a, b, what, min_side=1):
    """a and b as host float64 arrays (N, H, W, C) of the same shape, or a one-line error."""
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    if a.shape != b.shape or a.ndim != 4 or 0 in a.shape:
        raise ShapeError(f"{what}: expected two non-empty batches of pictures (N, H, W, C) of "
                         f"the same shape, got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < min_side:
        raise ShapeError(f"{what}: pictures must be at least {min_side}x{min_side} pixels, "
                         f"got {a.shape[1]}x{a.shape[2]}")
    for array in (a, b):
        if array.dtype.kind not in "uif":
            raise DTypeError(f"{what}: expected pixel values of an integer or float dtype "
                             f"(uint8 0..255), got {array.dtype}")
    return a.astype(np.float64), b.astype(np.float64)


# ---------------------------------------------------------------- SSIM

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03   # Wang et al. 2004


def gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """The 1-D Gaussian weights w (size,), summing to 1; the 2-D window is outer(w, w)."""
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return weights / weights.sum()


def window_means(x, weights):
    """Weighted means of x (N, H, W, C) over every whole k x k window, k = len(weights):
    (N, H-k+1, W-k+1, C). Separable (the window is an outer product): along the rows, then
    along the columns, each a sum over the k taps of a shifted slice times its weight, for
    all pixels at once. (A matrix product over sliding windows is quicker, but its rounding
    can depend on where the array sits in memory; this order of sums is always the same.)"""
    k = len(weights)
    rows = x.shape[1] - k + 1
    x = sum(w * x[:, i:i + rows] for i, w in enumerate(weights))          # (N, H-k+1, W, C)
    cols = x.shape[2] - k + 1
    return sum(w * x[:, :, j:j + cols] for j, w in enumerate(weights))   # (N, H-k+1, W-k+1, C)


def ssim(a, b, data_range=255.0):
    """Structural similarity of pictures (N, H, W, C), one figure per picture (N,).

    Wang, Bovik, Sheikh and Simoncelli 2004: in every 11x11 window (Gaussian weights, sigma
    1.5) wholly inside the picture, for each channel,

        SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))

    means, variances and covariance weighted by the window, C1 = (0.01 L)^2, C2 = (0.03 L)^2,
    L = data_range (255 for uint8); the figure is the mean over windows and channels (the
    same as scikit-image's structural_similarity with gaussian_weights=True,
    use_sample_covariance=False). 1 for identical pictures; it falls as local means,
    contrasts or structure differ, so a blur that keeps PSNR fair still loses SSIM.
    """
    x, y = picture_pair(a, b, "ssim", min_side=SSIM_WINDOW)
    w = gaussian_window()
    mx, my = window_means(x, w), window_means(y, w)
    var_x = window_means(x * x, w) - mx * mx
    var_y = window_means(y * y, w) - my * my
    cov = window_means(x * y, w) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (var_x + var_y + c2))
    return s.reshape(len(s), -1).mean(axis=1)


# ---------------------------------------------------------------- high-frequency power

HF_LOW, HF_HIGH = 0.25, 0.35   # cycles per pixel; 0.5 is the finest a pixel grid holds


def band_power(x, band):
    """Sum over pictures, channels and the coefficients in band (H, W) of |F|^2, F the 2-D DFT
    of each picture's channel (N, H, W, C)."""
    spectrum = np.fft.fft2(x, axes=(1, 2))
    return float((np.abs(spectrum[:, band]) ** 2).sum())


def hf_share(originals, reconstructions, low=HF_LOW):
    """The share of the originals' power at spatial frequencies >= low cycles per pixel that
    the reconstructions have: sum |F_rec|^2 / sum |F_orig|^2 over that band (radial_frequency),
    every picture and channel (N, H, W, C), pooled.

    The whole picture, periodic, unwindowed: the DFT of exactly the pixels the tokenizer saw
    (a window would weigh the centre over the edges); its wrap-around edge is the same for
    both pictures. The mean (0 cycles) is never in the band, so removing it changes nothing.
    Power, not error: 1 for identical pictures, below 1 for a blur, and above 1 for a picture
    with detail (or noise) added, right or wrong; SSIM and PSNR say whether it is right.
    """
    x, y = picture_pair(originals, reconstructions, "hf_share")
    frequency = radial_frequency(*x.shape[1:3])
    if not (isinstance(low, numbers.Real) and 0 < low <= frequency.max()):   # NaN fails too
        raise ConfigError(f"hf_share: low must be a frequency in (0, {frequency.max():.3g}] "
                          f"cycles per pixel for {x.shape[1]}x{x.shape[2]} pictures, "
                          f"got {low!r}")
    band = frequency >= low
    original = band_power(x, band)
    if original == 0:
        raise ImageError(f"hf_share: the originals have no power at or above {low} cycles per "
                         "pixel (flat pictures), so no share of it can be kept")
    return band_power(y, band) / original


def fidelity(images, recon):
    """How close reconstructions are to the pictures: PSNR (mean, median), SSIM, and the
    shares of high-frequency power kept, at or above HF_LOW and HF_HIGH cycles per pixel."""
    per_image = psnr(images, recon)
    return {"psnr_db": float(per_image.mean()), "psnr_db_median": float(np.median(per_image)),
            "ssim": float(ssim(images, recon).mean()),
            "hf_share": hf_share(images, recon, HF_LOW),
            "hf_share_035": hf_share(images, recon, HF_HIGH)}


def round_channels(images, bits):
    """uint8 values rounded to 2**bits levels spread evenly over 0..255.

    Level k = round(x / 255 * (2**bits - 1)) is what would be stored; it is shown again as
    round(k * 255 / (2**bits - 1)), so 0 and 255 survive and 8 bits change nothing.
    """
    top = 2 ** bits - 1
    levels = np.rint(images / 255 * top)
    return np.rint(levels * 255 / top).astype(np.uint8)


def thumbnail_cost(size, bits):
    """Bits to store a size x size thumbnail with three channels of `bits` bits each."""
    return size * size * 3 * bits


def thumbnail(images, size, bits):
    """uint8 pictures (N, S, S, 3) shrunk to size x size, rounded to bits, enlarged to S x S."""
    images = backend.to_numpy(images)
    return resize_images(round_channels(resize_images(images, size), bits), images.shape[1])


class Thumbnail(NamedTuple):
    psnr_db: float   # mean over the pictures
    size: int        # pixels per side
    bits: int        # per channel
    cost: int        # bits per picture: thumbnail_cost(size, bits)


def best_thumbnail(images, max_bits, sizes=range(2, 17), depths=range(1, 9)):
    """The Thumbnail of at most max_bits with the best mean PSNR on images (None if none fits).

    The baseline a tokenizer must beat to earn its bits: if plain downscaling and rounding
    reconstructs as well from as few bits, the learned codes add nothing.
    """
    images = backend.to_numpy(images)
    best = None
    for size in sizes:
        fitting = [bits for bits in depths if thumbnail_cost(size, bits) <= max_bits]
        if not fitting:
            continue
        small = resize_images(images, size)  # shrink once per size, round to each depth
        for bits in fitting:
            enlarged = resize_images(round_channels(small, bits), images.shape[1])
            score = float(psnr(images, enlarged).mean())
            if best is None or score > best.psnr_db:
                best = Thumbnail(score, size, bits, thumbnail_cost(size, bits))
    return best


def usage_per_scale(tokenizer, ids):
    """A multi-scale tokenizer's usage, map by map ({} for any other): scale_codes_used,
    the distinct codes each map's cells chose over the pictures, and scale_usage, that
    count over the most it could be, min(K, the map's cells over the pictures) (a 1x1 map
    of N pictures reaches N codes at most); min_scale_usage, the smallest of those."""
    if tokenizer.writes_grids:
        return {}
    K, used, share = tokenizer.config.num_codes, {}, {}
    for size, cells in zip(tokenizer.config.scales, tokenizer.maps(ids)):
        name = f"{size}x{size}"
        used[name] = int(len(np.unique(cells)))
        share[name] = round(used[name] / min(K, cells.size), 4)
    return {"scale_codes_used": used, "scale_usage": share,
            "min_scale_usage": min(share.values())}


def eval_tokenizer(tokenizer, images, batch_size=256):
    """Figures for a tokenizer on uint8 images (N, S, S, 3): PSNR, SSIM, high-frequency power
    kept (fidelity), usage, perplexity, dead (over all its codes: a multi-scale tokenizer's
    K per scale; and map by map, usage_per_scale), its bits per picture and its margin over
    the best thumbnail of no more bits."""
    ids = tokenizer.encode(images, batch_size)
    recon = tokenizer.decode(ids, batch_size)
    rows = tokenizer.code_rows   # K codes, or K per scale for a multi-scale tokenizer
    stats = usage_stats(code_counts(tokenizer.rows_of(ids), rows))
    stats["codes_used"] = rows - stats["dead"]
    figures = {"images": int(len(images)), "image_size": tokenizer.config.image_size,
               "grid_size": tokenizer.grid_size, **fidelity(images, recon), **stats,
               **usage_per_scale(tokenizer, ids), "vocab_size": tokenizer.vocab_size,
               "bits_per_picture": tokenizer.bits_per_picture}
    rival = best_thumbnail(images, tokenizer.bits_per_picture)
    if rival is not None:
        figures.update({"thumbnail_size": rival.size, "thumbnail_bits_per_channel": rival.bits,
                        "thumbnail_bits": rival.cost, "thumbnail_psnr_db": rival.psnr_db,
                        "margin_db": figures["psnr_db"] - rival.psnr_db})
    return figures, recon, ids


def adherence(pipeline, labels, n_per_prompt=4, *, seed=0, sampling=None):
    """Share of generated images matching their prompt on all four attributes.

    labels (P, 4): one prompt per row (its caption). Returns (share, images, matches).
    """
    prompts = caption_for(labels)
    images = pipeline.generate(prompts, n_per_prompt, seed=seed, sampling=sampling)
    wanted = np.repeat(labels, n_per_prompt, axis=0)
    matches = (read_attributes(images) == wanted).all(axis=1)
    return float(matches.mean()), images, matches


def caption_accuracy(pipeline, images, labels):
    """Share of images whose greedy caption equals the true caption word for word."""
    written = pipeline.caption(images)
    truth = caption_for(labels)
    return float(np.mean([w == t for w, t in zip(written, truth)])), written


def edit_figures(pipeline, n_pictures=24, *, seed=0, sampling=None):
    """Edits measured from the pixels, on n_pictures unseen pictures of training pairs.

    Each picture is shown in a stream of its own (the model describes it), then edited:
    edit_seen when the edit's result is a training pair, edit_heldout when it makes a
    held-out pair ("make it green" on a circle): the share whose four attributes read back
    as asked. After each seen edit "what is it?" is asked: caption_after_edit is the share
    of answers equal to the caption of the picture drawn. chain_two_edits: two random
    edits in a row, the share right after both. sampling: as Conversation takes it (each
    edited picture the best of sampling.edit_rerank).
    """
    from tinytok.conversation import Conversation
    from tinytok.data.edits import QUESTION, apply_edit, instruction, possible_edits
    rng = np.random.default_rng(40_000 + seed)
    shapes = make_shapes(n_pictures, seed=40_000 + seed, split="train")
    right = {"edit_seen": [], "edit_heldout": [], "caption_after_edit": [], "chain_two_edits": []}
    for i, (image, labels) in enumerate(zip(shapes.images, shapes.labels)):
        for kind in ("edit_seen", "edit_heldout", "chain_two_edits"):
            chat = Conversation(pipeline, seed=seed + 1000 * i,
                                sampling=pipeline.sampling_or_recommended(sampling))
            chat.say(image)
            wanted = labels
            for _ in range(2 if kind == "chain_two_edits" else 1):
                edits = possible_edits(wanted, allow_heldout=True)
                if kind != "chain_two_edits":
                    edits = [e for e in edits if is_heldout(apply_edit(wanted, *e)) ==
                             (kind == "edit_heldout")]
                attribute, value = edits[rng.integers(len(edits))]
                wanted = apply_edit(wanted, attribute, value)
                picture = pipeline.tokenizer.decode(chat.draw(instruction(attribute, value))[:1])
            drawn = read_attributes(picture)[0]
            right[kind].append(bool((drawn == wanted).all()))
            if kind == "edit_seen":      # an unreadable picture has no caption to match
                answer = chat.say(QUESTION)
                right["caption_after_edit"].append(bool(
                    (drawn >= 0).all() and isinstance(answer, str) and
                    answer == caption_for(drawn)))
    return {name: float(np.mean(values)) for name, values in right.items()} | {
        "edit_pictures": n_pictures}


def shape_box(image, margin):
    """The box (left, top, right, bottom), right and bottom excluded, around the pixels of a
    shapes picture (S, S, 3) that are not the black background, widened by margin pixels on
    every side and kept inside the picture."""
    rows, cols = np.nonzero(image.max(axis=-1) > 0)
    size = image.shape[0]
    return (max(int(cols.min()) - margin, 0), max(int(rows.min()) - margin, 0),
            min(int(cols.max()) + 1 + margin, size), min(int(rows.max()) + 1 + margin, size))


def inpaint_tasks(shapes, margin, rng):
    """For each picture of shapes (ShapesData): (box, wanted), the region to redraw and the
    labels (4,) asked for. wanted changes the colour or the shape (random_edit: either
    attribute equally often) to make a training pair; size and position stay. box is the
    shape's pixels' box widened by margin (shape_box)."""
    from tinytok.data.edits import COLOUR, SHAPE, apply_edit, possible_edits, random_edit
    tasks = []
    for image, labels in zip(shapes.images, shapes.labels):
        edits = [e for e in possible_edits(labels) if e[0] in (SHAPE, COLOUR)]
        tasks.append((shape_box(image, margin), apply_edit(labels, *random_edit(rng, edits))))
    return tasks


def inpaint_figures(pipeline, n_pictures=24, *, seed=0, sampling=None):
    """Inpainting measured from the pixels, on n_pictures unseen pictures of training pairs.

    Each picture's shape is redrawn in a new colour or as a new shape (same size and
    place) that makes a training pair (inpaint_tasks): the region is the shape's box
    widened by one grid cell (the codes beside the shape saw its edge too), the prompt the
    new caption. inpaint_right: the share whose four attributes read back as asked.
    Outside the redrawn cells the codes are kept, but the decoder's reach crosses cell
    borders: those pixels against the tokenizer's reconstruction of the original give
    inpaint_outside_psnr_db (all such pixels pooled) and inpaint_outside_same (the share
    exactly equal). inpaint_cells: the mean share of the grid redrawn.
    """
    from tinytok.pipeline import region_cells
    tok = pipeline.tokenizer
    size, g = tok.config.image_size, tok.grid_size
    shapes = make_shapes(n_pictures, seed=50_000 + seed, split="train")
    tasks = inpaint_tasks(shapes, size // g, np.random.default_rng(50_000 + seed))
    kept = tok.reconstruct(shapes.images)
    right, cells_drawn, after, before = [], [], [], []
    for i, (image, (box, wanted)) in enumerate(zip(shapes.images, tasks)):
        drawn = pipeline.inpaint(image[None], box, caption_for(wanted), seed=seed + 1000 * i,
                                 sampling=sampling)
        right.append(bool((read_attributes(drawn)[0] == wanted).all()))
        cells = region_cells(box, size, g)
        cells_drawn.append(cells.mean())
        outside = ~cells.repeat(size // g, axis=0).repeat(size // g, axis=1)
        after.append(drawn[0][outside])
        before.append(kept[i][outside])
    after, before = (np.concatenate(p).astype(np.float64) for p in (after, before))
    mse = float(((after - before) ** 2).mean()) if after.size else 0.0
    return {"inpaint_right": float(np.mean(right)),
            "inpaint_outside_psnr_db": float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))),
            "inpaint_outside_same": float((after == before).all(axis=-1).mean())
            if after.size else 1.0,
            "inpaint_cells": float(np.mean(cells_drawn)), "inpaint_pictures": n_pictures}


def eval_prompts(n_prompts, seed=0):
    """The prompts eval_prior asks: {"train": labels, "heldout": labels}, each (n_prompts,
    4), pairs seen in training and held-out pairs (evaluate.three_ways asks the same)."""
    return {"train": make_shapes(n_prompts, seed=10_000 + seed, split="train").labels,
            "heldout": make_shapes(n_prompts, seed=20_000 + seed, split="heldout").labels}


def seeded_adherence(pipeline, n_prompts, n_per_prompt, seeds, sampling):
    """Adherence on eval_prompts' prompts of each seed (its own prompts and draws), split by
    split: {"adherence_train": share, "adherence_heldout": share}, the mean over the seeds.
    With more than one seed also each split's lowest share and the standard deviation
    between the seeds (how far one set of prompts can land from the mean), and "seeds".
    The held-out pairs are few, so which ones a set of prompts asks moves its share."""
    shares = {}
    for s in seeds:
        for name, labels in eval_prompts(n_prompts, s).items():
            share, _, _ = adherence(pipeline, labels, n_per_prompt, seed=s, sampling=sampling)
            shares.setdefault(name, []).append(share)
    figures = {}
    for name, values in shares.items():
        figures[f"adherence_{name}"] = float(np.mean(values))
        if len(values) > 1:
            figures[f"adherence_{name}_lowest"] = float(min(values))
            figures[f"adherence_{name}_sd"] = float(np.std(values, ddof=1))
    if len(seeds) > 1:
        figures["seeds"] = len(seeds)
    return figures


def eval_prior(pipeline, n_prompts=24, n_per_prompt=4, *, seed=0, n_seeds=1, n_captions=200,
               n_edits=0, n_inpaints=0, sampling=None):
    """Adherence on training and held-out combinations (seeded_adherence: n_seeds sets of
    prompts from seed on); for a prior that writes captions, caption accuracy on held-out
    images and, with n_edits, edit_figures on that many pictures; for a prior that inpaints,
    with n_inpaints, inpaint_figures (these at seed). Every picture drawn with sampling
    (default the prior's recommended settings, Pipeline.sampling, as Pipeline.generate and
    edit use them)."""
    sampling = pipeline.sampling_or_recommended(sampling)
    require_positive_int("n_seeds", n_seeds)
    figures = {"prompts": n_prompts, "samples_per_prompt": n_per_prompt}
    figures.update(seeded_adherence(pipeline, n_prompts, n_per_prompt,
                                    range(seed, seed + n_seeds), sampling))
    kind = pipeline.prior.kind
    if kind.can_caption:
        shapes = make_shapes(n_captions, seed=30_000 + seed, split="heldout")
        figures["caption_accuracy_heldout"], _ = caption_accuracy(pipeline, shapes.images,
                                                                  shapes.labels)
        figures["caption_images"] = n_captions
        if n_edits:
            figures.update(edit_figures(pipeline, n_edits, seed=seed, sampling=sampling))
    if kind.can_inpaint and n_inpaints:
        figures.update(inpaint_figures(pipeline, n_inpaints, seed=seed, sampling=sampling))
    return figures | {"sampling": asdict(sampling)}
