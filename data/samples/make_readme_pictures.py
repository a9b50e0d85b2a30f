"""Draw the README's pictures from the shipped checkpoints (data/checkpoints/).

    python data/samples/make_readme_pictures.py        # from the repository root

Writes samples.png (six drawings per caption, as `tinytok sample` draws them: guidance 1.5,
each the best of 4 by the prior's own caption likelihood; the last three captions held out of
training, a green dot where the attributes read back from the pixels match), captions.png
(captions the prior writes for held-out pictures), shapes_reconstructions.png,
shapes_palette.png and pipeline.png (the whole recipe on one picture) into data/samples/, and
prints what it measured on them.

photos_gan_side_by_side.png is eval-tokenizer's own picture (side_by_side.png):

    tinytok eval-tokenizer --tokenizer data/checkpoints/photos_gan_tokenizer.npz --data photos \
        --compare data/checkpoints/photos_tokenizer.npz --pictures DIR
"""
import os

import numpy as np

from tinytok import parallel
from tinytok.data.datasets import make_shapes, parse_caption, read_attributes
from tinytok.data.images import images_to_model
from tinytok.evaluate import caption_accuracy, eval_tokenizer
from tinytok.pipeline import Pipeline
from tinytok.prior.layouts import text_to_image_sequence
from tinytok.tokenizer.vqvae import encoder_forward
from tinytok.tokenizer.codebook import code_counts
from tinytok.viz import (codebook_palette, comparison_grid, image_grid, pipeline_diagram,
                         prompt_grid)

OUT = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["a large red circle at the top left", "a small blue triangle at the bottom right",
           "a large yellow square at the center",
           # held-out (shape, colour) pairs: never in the prior's training captions
           "a small green circle at the top", "a large purple square at the left",
           "a small orange triangle at the bottom left"]
PER_PROMPT = 6


def main():
    parallel.use_cores()
    pipe = Pipeline.load()
    images = pipe.generate(PROMPTS, PER_PROMPT, seed=0)     # the recommended sampling
    wanted = np.repeat(np.stack([parse_caption(p) for p in PROMPTS]), PER_PROMPT, axis=0)
    matches = (read_attributes(images) == wanted).all(axis=1)
    prompt_grid(images, PROMPTS, PER_PROMPT, marks=matches, path=os.path.join(OUT, "samples.png"))
    print(f"samples.png: {matches[:3 * PER_PROMPT].mean():.0%} of training-combination "
          f"drawings match, {matches[3 * PER_PROMPT:].mean():.0%} of held-out ones")

    held = make_shapes(12, seed=3, split="heldout")
    accuracy, written = caption_accuracy(pipe, held.images, held.labels)
    image_grid(held.images, ncols=4, labels=written, path=os.path.join(OUT, "captions.png"))
    print(f"captions.png: {accuracy:.0%} of 12 captions exact")

    shapes = make_shapes(500, seed=777, split="all")
    figures, recon, ids = eval_tokenizer(pipe.tokenizer, shapes.images)
    comparison_grid([shapes.images[:12], recon[:12]], ["original", "from 64 tokens"],
                    path=os.path.join(OUT, "shapes_reconstructions.png"))
    codebook_palette(pipe.tokenizer.code_tiles(),
                     code_counts(ids, pipe.tokenizer.config.num_codes), ncols=16, scale=2,
                     path=os.path.join(OUT, "shapes_palette.png"))
    print(f"shapes_reconstructions.png: {figures['psnr_db']:.1f} dB on 500 shapes")

    draw_pipeline(pipe, os.path.join(OUT, "pipeline.png"))


def draw_pipeline(pipe, path):
    """The recipe on one shapes picture, as lesson 1 draws it."""
    tok, vocab = pipe.tokenizer, pipe.prior.vocab
    shapes = make_shapes(4, seed=1)
    image, text = shapes.images[0], shapes.captions[0]
    z, _ = encoder_forward(images_to_model(image[None]), tok.params, tok.config,
                           keep_cache=False)
    ids = tok.encode(image[None])[0]
    stream = vocab.describe(text_to_image_sequence(vocab, vocab.encode_text(text), ids)).split()
    written_ids = pipe.generate_codes(text, n=1, seed=0)[0]
    pipeline_diagram(image, z[0], tok.params["quant.codebook"], ids, stream, written_ids,
                     tok.decode(written_ids)[0], path=path)
    print(f"pipeline.png: {text!r}")


if __name__ == "__main__":
    main()
