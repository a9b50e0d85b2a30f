"""Honest numbers: what the evaluation commands measure, and the record that keeps them.

    metrics.py    PSNR, SSIM, high-frequency power kept, codebook usage, the thumbnail
                  baseline; prompt adherence, captions, edits and inpainting
                  read back from the pixels (eval-tokenizer, eval-prior)
    record.py     the one record of the shipped models' figures (data/checkpoints/
                  figures.json), written by `--record`, read by the README and the lessons
    three_ways.py the three shipped priors (raster, masked, next-scale) side by side in one
                  run: adherence, what is wrong, passes and time per picture (lesson 18)
"""
from tinytok.evaluate.metrics import (Thumbnail, adherence, best_thumbnail, caption_accuracy,
                                      edit_figures, eval_prior, eval_tokenizer, fidelity,
                                      hf_share, inpaint_figures, psnr, round_channels, ssim,
                                      thumbnail, thumbnail_cost)

__all__ = ["Thumbnail", "adherence", "best_thumbnail", "caption_accuracy", "edit_figures",
           "eval_prior", "eval_tokenizer", "fidelity", "hf_share", "inpaint_figures", "psnr",
           "round_channels", "ssim", "thumbnail", "thumbnail_cost"]
