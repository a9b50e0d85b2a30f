"""`tinytok demo`: the whole recipe, from nothing, in a few minutes on a laptop CPU.

1. render captioned shapes;  2. train a small tokenizer (pictures -> 8x8 token grids);
3. encode the shapes once and train a small prior on caption + image token streams;
4. draw pictures for prompts (some of them attribute combinations never seen in training),
   caption held-out pictures, and measure both by reading the pictures back.
Everything lands in one output folder, with an index of what is where.
"""
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np

from tinytok.data.datasets import caption_for, make_shapes
from tinytok.evaluate import adherence, caption_accuracy, eval_tokenizer
from tinytok.prior.gpt import gpt_config
from tinytok.prior.settings import SAMPLING
from tinytok.pipeline import Pipeline, Prior, Tokenizer
from tinytok.training.prior_data import shapes_prior_data
from tinytok.training import TokenizerRecipe, TrainSettings, train_prior, train_tokenizer
from tinytok.tokenizer.vqvae import tokenizer_config, with_quantizer

# (full, quick) sizes; full finishes in under 10 minutes on 2 cores
PLAN = {
    "images": (8000, 2000),
    "tokenizer_steps": (1500, 300),
    "prior_steps": (3000, 300),
    "prompts": (16, 6),
}
DEMO_TOKENIZER = replace(with_quantizer(tokenizer_config("vqvae-small"), "ema"),
                         name="vqvae-demo", num_codes=128)
DEMO_PRIOR = "gpt-small"


def say(text):
    print(text, file=sys.stderr, flush=True)


def run_demo(out="tinytok-demo", quick=False, seed=0):
    """Train, sample, caption and measure; returns 0. Pictures and figures go to `out`."""
    pick = {k: v[1] if quick else v[0] for k, v in PLAN.items()}
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    # The tokenizer learns from pictures alone (it never reads a caption), so it sees every
    # combination; only the prior, which learns words, is kept from the held-out pairs.
    shapes = make_shapes(pick["images"], seed=seed, split="all")
    say(f"[1/4] rendered {len(shapes.images)} captioned shapes, e.g. "
        f"'{shapes.captions[0]}'")

    tok_path = os.path.join(out, "tokenizer.npz")
    say(f"[2/4] training a tokenizer ({DEMO_TOKENIZER.num_codes} codes, "
        f"{pick['tokenizer_steps']} steps)")
    train_tokenizer(shapes.images, DEMO_TOKENIZER,
                    TrainSettings(steps=pick["tokenizer_steps"], lr=2e-3, warmup=50,
                                  seed=seed, log_every=100, checkpoint_every=10_000),
                    tok_path, TokenizerRecipe(kmeans_images=512, restart_every=100))
    tokenizer = Tokenizer.load(tok_path)

    prior_path = os.path.join(out, "prior.npz")
    data = shapes_prior_data(tokenizer, pick["images"], seed, cache=None)
    config = gpt_config(DEMO_PRIOR, vocab_size=data.vocab.size)
    say(f"[3/4] training a prior ({config.n_layer} layers, width {config.n_embd}, "
        f"{pick['prior_steps']} steps) on caption + image token streams")
    train_prior(data, config, TrainSettings(steps=pick["prior_steps"], lr=2e-3, warmup=100,
                                            seed=seed, weight_decay=0.1, log_every=100,
                                            checkpoint_every=10_000), prior_path,
                p_word_noise=0.3)
    pipe = Pipeline(tokenizer, Prior.load(prior_path))

    say("[4/4] drawing, captioning and measuring")
    figures = write_pictures(pipe, tokenizer, out, pick["prompts"], seed)
    write_stream(out, seed)
    figures["minutes"] = round((time.perf_counter() - t0) / 60, 2)
    with open(os.path.join(out, "figures.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(f"\nwrote {out}/: samples.png, heldout_samples.png, reconstructions.png, "
          f"palette.png, captions.png, stream.png, tokenizer.npz, prior.npz, figures.json")
    print(f"tokenizer PSNR {figures['tokenizer_psnr_db']:.1f} dB, "
          f"{figures['tokenizer_usage']:.0%} of codes used")
    print(f"prompt adherence (guidance {SAMPLING.cfg_scale}, best of {SAMPLING.rerank} by the "
          f"prior's own caption likelihood) {figures['adherence_train']:.0%} (training "
          f"combinations), "
          f"{figures['adherence_heldout']:.0%} (never seen in training), "
          f"captions {figures['caption_accuracy']:.0%} exact; "
          f"{figures['minutes']} minutes")
    return 0


def write_pictures(pipe, tokenizer, out, n_prompts, seed, *, sampling=SAMPLING):
    """The demo's pictures and the figures measured on them."""
    from tinytok.tokenizer.codebook import code_counts
    from tinytok.viz import codebook_palette, comparison_grid, image_grid, prompt_grid
    val = make_shapes(500, seed=seed + 777, split="all")
    tok_figures, recon, ids = eval_tokenizer(tokenizer, val.images)
    comparison_grid([val.images[:12], recon[:12]], ["original", "from 64 tokens"],
                    path=os.path.join(out, "reconstructions.png"))
    K = tokenizer.config.num_codes
    tiles = tokenizer.code_tiles()
    codebook_palette(tiles, code_counts(ids, K), ncols=16, scale=2,
                     path=os.path.join(out, "palette.png"))
    figures = {"tokenizer_psnr_db": tok_figures["psnr_db"],
               "tokenizer_usage": tok_figures["usage"]}
    for split, name in (("train", "samples.png"), ("heldout", "heldout_samples.png")):
        labels = make_shapes(n_prompts, seed=seed + 100 + len(split), split=split).labels
        share, images, matches = adherence(pipe, labels, 4, seed=seed, sampling=sampling)
        prompt_grid(images, caption_for(labels), 4, marks=matches,
                    path=os.path.join(out, name))
        figures[f"adherence_{split}"] = share
    held = make_shapes(48, seed=seed + 999, split="heldout")
    figures["caption_accuracy"], written = caption_accuracy(pipe, held.images, held.labels)
    image_grid(held.images[:12], ncols=4, labels=written[:12],
               path=os.path.join(out, "captions.png"))
    return figures


STREAM = ("a large red circle at the top left", "make it blue", "move it to the bottom right",
          "what is it?")


def write_stream(out, seed, turns=STREAM):
    """stream.png: the shipped models draw, edit and describe in one stream, turn by turn.

    The demo's own prior trains for minutes on the short layouts only; conversations take
    the shipped prior (README, shipped checkpoints). Each tile is the picture in hand after
    a turn, labelled with the turn and, for words, the model's reply.
    """
    from tinytok.viz import image_grid
    replies = Pipeline.load().converse(list(turns), seed=seed)   # the recommended sampling
    tiles, labels, current = [], [], None
    for turn, reply in zip(turns, replies):
        if not isinstance(reply, str):
            current = reply
        tiles.append(current if current is not None else np.zeros((32, 32, 3), np.uint8))
        labels.append(f"{turn} -> {reply}" if isinstance(reply, str) else turn)
    image_grid(np.stack(tiles), ncols=len(tiles), labels=labels,
               title="the shipped models, one stream", path=os.path.join(out, "stream.png"))
    return replies
