"""Honest numbers: what `tinytok eval-tokenizer` and `tinytok eval-prior` measure.

Tokenizer: PSNR of reconstructions (uint8, mean over images) and codebook usage on images it
never saw. Prior: prompt adherence, the share of generated images whose attributes, read
back from pixels by tinytok.data.datasets.read_attributes, all match the prompt, separately for
attribute combinations seen in training and for held-out ones; and caption accuracy, the
share of held-out images whose written caption matches the true one exactly.
"""
import numpy as np

from tinytok import backend
from tinytok.data.datasets import caption_for, make_shapes, read_attributes
from tinytok.tokenizer.codebook import code_counts, usage_stats


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of uint8 images, one figure per image (N,)."""
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def eval_tokenizer(tokenizer, images, batch_size=256):
    """Figures for a tokenizer on uint8 images (N, S, S, 3): PSNR, usage, perplexity, dead."""
    ids = tokenizer.encode(images, batch_size)
    recon = tokenizer.decode(ids, batch_size)
    per_image = psnr(images, recon)
    stats = usage_stats(code_counts(ids, tokenizer.config.num_codes))
    return {"images": int(len(images)), "psnr_db": float(per_image.mean()),
            "psnr_db_median": float(np.median(per_image)), **stats}, recon, ids


def adherence(pipeline, labels, n_per_prompt=4, cfg_scale=1.0, temperature=1.0, top_k=None,
              top_p=None, seed=0, rerank=1):
    """Share of generated images matching their prompt on all four attributes.

    labels (P, 4): one prompt per row (its caption). Returns (share, images, matches).
    """
    prompts = caption_for(labels)
    images = pipeline.generate(prompts, n_per_prompt, temperature, top_k, top_p, cfg_scale,
                               seed, rerank=rerank)
    wanted = np.repeat(labels, n_per_prompt, axis=0)
    matches = (read_attributes(images) == wanted).all(axis=1)
    return float(matches.mean()), images, matches


def caption_accuracy(pipeline, images, labels):
    """Share of images whose greedy caption equals the true caption word for word."""
    written = pipeline.caption(images)
    truth = caption_for(labels)
    return float(np.mean([w == t for w, t in zip(written, truth)])), written


def eval_prior(pipeline, n_prompts=24, n_per_prompt=4, cfg_scale=1.5, seed=0, n_captions=200,
               temperature=1.0, top_k=None, top_p=None, rerank=1):
    """Adherence on training and held-out combinations, and caption accuracy on held-out images."""
    train = make_shapes(n_prompts, seed=10_000 + seed, split="train").labels
    heldout = make_shapes(n_prompts, seed=20_000 + seed, split="heldout").labels
    figures = {"cfg_scale": cfg_scale, "rerank": rerank, "prompts": n_prompts,
               "samples_per_prompt": n_per_prompt}
    for name, labels in (("train", train), ("heldout", heldout)):
        share, _, _ = adherence(pipeline, labels, n_per_prompt, cfg_scale, temperature, top_k,
                                top_p, seed, rerank)
        figures[f"adherence_{name}"] = share
    shapes = make_shapes(n_captions, seed=30_000 + seed, split="heldout")
    figures["caption_accuracy_heldout"], _ = caption_accuracy(pipeline, shapes.images,
                                                              shapes.labels)
    figures["caption_images"] = n_captions
    return figures
