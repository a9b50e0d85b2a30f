"""Honest numbers: what `tinytok eval-tokenizer` and `tinytok eval-prior` measure.

Tokenizer: PSNR of reconstructions (uint8, mean over images) and codebook usage on images it
never saw, and what its token grid costs in bits against the best thumbnail (a small,
coarsely rounded picture, enlarged again) of no more bits. Prior: prompt adherence, the share of generated images whose attributes, read
back from pixels by tinytok.data.datasets.read_attributes, all match the prompt, separately for
attribute combinations seen in training and for held-out ones; and caption accuracy, the
share of held-out images whose written caption matches the true one exactly.
"""
from dataclasses import asdict
from typing import NamedTuple

import numpy as np

from tinytok import backend
from tinytok.data.datasets import caption_for, is_heldout, make_shapes, read_attributes
from tinytok.data.images import resize_images
from tinytok.prior.settings import SAMPLING
from tinytok.tokenizer.codebook import code_counts, usage_stats


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of uint8 images, one figure per image (N,)."""
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


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


def eval_tokenizer(tokenizer, images, batch_size=256):
    """Figures for a tokenizer on uint8 images (N, S, S, 3): PSNR, usage, perplexity, dead,
    its bits per picture and its margin over the best thumbnail of no more bits."""
    ids = tokenizer.encode(images, batch_size)
    recon = tokenizer.decode(ids, batch_size)
    per_image = psnr(images, recon)
    stats = usage_stats(code_counts(ids, tokenizer.config.num_codes))
    stats["codes_used"] = tokenizer.config.num_codes - stats["dead"]
    figures = {"images": int(len(images)), "image_size": tokenizer.config.image_size,
               "grid_size": tokenizer.grid_size, "psnr_db": float(per_image.mean()),
               "psnr_db_median": float(np.median(per_image)), **stats,
               "vocab_size": tokenizer.vocab_size,
               "bits_per_picture": tokenizer.bits_per_picture}
    rival = best_thumbnail(images, tokenizer.bits_per_picture)
    if rival is not None:
        figures.update({"thumbnail_size": rival.size, "thumbnail_bits_per_channel": rival.bits,
                        "thumbnail_bits": rival.cost, "thumbnail_psnr_db": rival.psnr_db,
                        "margin_db": figures["psnr_db"] - rival.psnr_db})
    return figures, recon, ids


def adherence(pipeline, labels, n_per_prompt=4, *, seed=0, sampling=SAMPLING):
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


def edit_figures(pipeline, n_pictures=24, *, seed=0, sampling=SAMPLING):
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
            chat = Conversation(pipeline, seed=seed + 1000 * i, sampling=sampling)
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


def eval_prior(pipeline, n_prompts=24, n_per_prompt=4, *, seed=0, n_captions=200, n_edits=0,
               sampling=SAMPLING):
    """Adherence on training and held-out combinations, caption accuracy on held-out images,
    and with n_edits, edit_figures on that many pictures; every picture drawn with
    sampling (default the recommended settings, as Pipeline.generate and edit)."""
    train = make_shapes(n_prompts, seed=10_000 + seed, split="train").labels
    heldout = make_shapes(n_prompts, seed=20_000 + seed, split="heldout").labels
    figures = {"prompts": n_prompts, "samples_per_prompt": n_per_prompt}
    for name, labels in (("train", train), ("heldout", heldout)):
        share, _, _ = adherence(pipeline, labels, n_per_prompt, seed=seed, sampling=sampling)
        figures[f"adherence_{name}"] = share
    shapes = make_shapes(n_captions, seed=30_000 + seed, split="heldout")
    figures["caption_accuracy_heldout"], _ = caption_accuracy(pipeline, shapes.images,
                                                              shapes.labels)
    figures["caption_images"] = n_captions
    if n_edits:
        figures.update(edit_figures(pipeline, n_edits, seed=seed, sampling=sampling))
    return figures | {"sampling": asdict(sampling)}
