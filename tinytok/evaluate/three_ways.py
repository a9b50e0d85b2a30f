"""Three ways to write a picture, measured side by side in one run (lesson 18).

    python -m tinytok.evaluate.three_ways --prompts 48 -n 2            # prints the figures
    python -m tinytok.evaluate.three_ways --prompts 48 -n 2 --record   # and records them

The shipped priors, each on its own tokenizer, under the record's name "three_ways":

    raster          the causal prior (shapes_prior.npz), recommended sampling: guidance
                    1.5 and the best of 4 drawings, judged by the prior (tinytok.SAMPLING)
    raster-rerank1  the same prior drawing each picture once (rerank 1): the same drawing
                    work per picture as the other two, guidance on
    masked          MaskGIT (shapes_masked_prior.npz), recommended: guidance 1.5, 8 passes
    scales          next-scale, VAR (shapes_scales_prior.npz on shapes_scales_tokenizer.npz),
                    recommended: guidance rising over the maps to 2.5, temperature 0.4, a
                    map a pass

Each is drawn at its prior's recommended settings (Pipeline.sampling), the raster-rerank1
row at the same less the reranking.

For each: prompt adherence on seen (train split) and held-out pairs, the prompts and seeds
of `tinytok eval-prior` (metrics.adherence; the same prompts for all four); which
attributes are wrong in the pictures that are wrong (read back from the pixels by
read_attributes; pooled over both splits); the model's passes, calls and positions per
picture, derived (tinytok.bench.workloads.drawing_work); and the
wall time per picture drawing `timing_pictures` (16) pictures of one caption, the four
timed in turn, round after round (tinytok.bench.measure.time_in_turn), with the machine's
load average before and after. --record writes every label into data/checkpoints/
figures.json with the sha256 of the prior and tokenizer it read, so the lessons' markers
(<!--fig three_ways masked adherence_heldout .1%-->) go stale when a model changes.
"""
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tinytok import backend, parallel
from tinytok.bench.measure import time_in_turn
from tinytok.bench.workloads import drawing_work
from tinytok.data.datasets import read_attributes
from tinytok.data.edits import COLOUR, POSITION, SHAPE, SIZE
from tinytok.errors import ConfigError, TinytokError
from tinytok.evaluate.metrics import adherence, eval_prompts
from tinytok.prior import kinds
from tinytok.prior.settings import SAMPLING
from tinytok.prior.vocab import EXAMPLE_CAPTION
from tinytok.training.progress import Progress

RECORD_NAME = "three_ways"     # the record's name for these figures (not one checkpoint's)
ATTRIBUTES = {"shape": SHAPE, "colour": COLOUR, "size": SIZE, "position": POSITION}


class Way(NamedTuple):
    label: str        # the record's label
    prior: str        # the checkpoints' file names, in the checkpoints folder
    tokenizer: str
    sampling: object  # a tinytok.Sampling; None: the prior's recommended (Pipeline.sampling)
    what: str         # a few words for the table


WAYS = (
    Way("raster", "shapes_prior.npz", "shapes_tokenizer.npz", None,
        "causal, a code a pass; best of 4"),
    Way("raster-rerank1", "shapes_prior.npz", "shapes_tokenizer.npz", SAMPLING.but(rerank=1),
        "causal, a code a pass; one draw"),
    Way("masked", "shapes_masked_prior.npz", "shapes_tokenizer.npz", None,
        "full attention, 8 passes"),
    Way("scales", "shapes_scales_prior.npz", "shapes_scales_tokenizer.npz", None,
        "block-causal, a map a pass"),
)


def load_pipelines(ways, folder):
    """{label: Pipeline} for ways, each checkpoint in folder loaded once (the ways that
    share a prior share its pipeline; the priors that share a tokenizer, the tokenizer)."""
    from tinytok.pipeline import Pipeline, Prior, Tokenizer
    folder, tokenizers, pipes = Path(folder), {}, {}
    for way in ways:
        if way.tokenizer not in tokenizers:
            tokenizers[way.tokenizer] = Tokenizer.load(folder / way.tokenizer)
        same = [pipes[w.label] for w in ways if w.label in pipes and w.prior == way.prior]
        pipes[way.label] = same[0] if same else Pipeline(tokenizers[way.tokenizer],
                                                         Prior.load(folder / way.prior))
    return pipes


# ---------------------------------------------------------------- the pictures

def attribute_errors(read, wanted):
    """What is wrong in the wrong pictures: read, wanted (N, 4) attributes (read_attributes'
    order; -1 unreadable). {"pictures", "wrong", "wrong_shape", "wrong_colour", "wrong_size",
    "wrong_position", "unreadable"}: the counts of pictures and of wrong ones (any attribute
    differs), then the share of the wrong ones with that attribute wrong (several can be:
    the shares need not add up to 1) and with any attribute unreadable (0 when none is
    wrong)."""
    read, wanted = np.asarray(read), np.asarray(wanted)
    if read.shape != wanted.shape or read.ndim != 2 or read.shape[1] != len(ATTRIBUTES):
        raise ConfigError(f"attribute_errors takes two (N, {len(ATTRIBUTES)}) arrays of "
                          f"attributes, got {read.shape} and {wanted.shape}")
    off = read != wanted                                           # (N, 4)
    wrong = off.any(axis=1)
    n = max(int(wrong.sum()), 1)
    figures = {"pictures": int(len(read)), "wrong": int(wrong.sum())}
    for name, column in ATTRIBUTES.items():
        figures[f"wrong_{name}"] = float(off[wrong, column].sum() / n)
    figures["unreadable"] = float((read[wrong] < 0).any(axis=1).sum() / n)
    return figures


class Drawn(NamedTuple):
    images: np.ndarray   # uint8 (N, S, S, 3)
    wanted: np.ndarray   # (N, 4) the prompts' attributes
    read: np.ndarray     # (N, 4) read back from the pixels


def adherence_figures(pipe, prompts, n_per_prompt, sampling, seed=0, on_split=None):
    """Adherence of one prior on each split's prompts ({split: labels (P, 4)}) and what is
    wrong when a picture is wrong (attribute_errors, all splits pooled). Returns (figures,
    {split: Drawn}); on_split(split, pictures) after each split."""
    figures, drawn = {}, {}
    for split, labels in prompts.items():
        share, images, _ = adherence(pipe, labels, n_per_prompt, seed=seed, sampling=sampling)
        figures[f"adherence_{split}"] = share
        drawn[split] = Drawn(images, np.repeat(labels, n_per_prompt, axis=0),
                             read_attributes(images))
        if on_split is not None:
            on_split(split, len(images))
    figures.update(attribute_errors(np.concatenate([d.read for d in drawn.values()]),
                                    np.concatenate([d.wanted for d in drawn.values()])))
    return figures, drawn


# ---------------------------------------------------------------- the work and the time

def drawing_cost(prior, caption, sampling):
    """The model's work for one picture of caption drawn once (no reranking): the bench's
    drawing_work for the prior's kind."""
    return drawing_work(prior.kind.name, prior.vocab, prior.config, sampling.steps,
                        sampling.cfg_scale != 1.0, caption)


def time_drawings(pipes, samplings, caption=EXAMPLE_CAPTION, n=16, repeats=5, warmup=1):
    """Milliseconds per picture drawing n pictures of one caption with each pipeline and
    its sampling (Pipeline.generate_codes: guidance, its BLAS threads; no decoding), timed
    in turn round after round (time_in_turn) so that a changing load weighs on all alike.
    A list of {"median", "min", "max", "repeats"} per picture, in pipes' order, and the
    1-minute load average before and after."""
    fns = [(lambda p=p, s=s: p.generate_codes(caption, n, seed=0, sampling=s))
           for p, s in zip(pipes, samplings)]
    before = os.getloadavg()[0]
    times = time_in_turn(fns, backend.xp(), warmup, repeats)
    after = os.getloadavg()[0]
    per = [{k: (v / n if k != "repeats" else v) for k, v in t.items()} for t in times]
    return per, {"load_before": before, "load_after": after}


# ---------------------------------------------------------------- the whole measurement

def measure(ways=WAYS, folder=None, n_prompts=48, n_per_prompt=2, seed=0, timing_pictures=16,
            repeats=5, warmup=1, log=sys.stderr):
    """Every figure of every way, {label: figures}, in one run: adherence and errors (with
    progress on log), then the work and the timing of all of them in turn."""
    from tinytok.pipeline import CHECKPOINT_DIR
    pipes = load_pipelines(ways, folder or CHECKPOINT_DIR)
    samplings = [pipes[w.label].sampling_or_recommended(w.sampling) for w in ways]
    prompts = eval_prompts(n_prompts, seed)
    total = len(ways) * len(prompts) * n_prompts * n_per_prompt
    results, done = {}, 0
    with Progress(total, desc="drawing", log_every=n_prompts * n_per_prompt, stream=log,
                  unit="picture") as progress:
        for way, sampling in zip(ways, samplings):
            def count(split, pictures, label=way.label):
                nonlocal done
                done += pictures
                progress.update(done, {"last": f"{label} {split}"})
            results[way.label], _ = adherence_figures(pipes[way.label], prompts, n_per_prompt,
                                                      sampling, seed, count)
    print(f"timing {timing_pictures} pictures of one caption, {len(ways)} ways in turn, "
          f"{repeats} rounds...", file=log, flush=True)
    started = time.perf_counter()
    times, load = time_drawings([pipes[w.label] for w in ways], samplings,
                                n=timing_pictures, repeats=repeats, warmup=warmup)
    print(f"timed in {time.perf_counter() - started:.0f} s", file=log, flush=True)
    common = {"prompts": n_prompts, "samples_per_prompt": n_per_prompt, "seed": seed,
              "timing_pictures": timing_pictures, "timing_caption": EXAMPLE_CAPTION,
              "cpus": os.cpu_count(), "threads": parallel.threads(), **load}
    for way, sampling, t in zip(ways, samplings, times):
        prior = pipes[way.label].prior
        results[way.label].update(
            drawing_cost(prior, EXAMPLE_CAPTION, sampling),
            draws_per_picture=kinds.draws_per_picture(prior.kind, sampling),
            ms_per_picture=t["median"], ms_per_picture_min=t["min"],
            ms_per_picture_max=t["max"], timing_repeats=t["repeats"], **common,
            sampling=asdict(sampling))
    return results


def format_table(results, ways=WAYS):
    """The figures as a text table, one row per way."""
    head = (f"{'way':<15} {'seen':>6} {'held-out':>8} {'wrong':>5} {'shape':>6} {'colour':>6} "
            f"{'size':>5} {'place':>6} {'passes':>6} {'positions':>9} {'draws':>5} "
            f"{'ms/picture':>10}")
    lines = [head, "-" * len(head)]
    for way in ways:
        f = results[way.label]
        lines.append(
            f"{way.label:<15} {f['adherence_train']:>6.1%} {f['adherence_heldout']:>8.1%} "
            f"{f['wrong']:>5d} {f['wrong_shape']:>6.0%} {f['wrong_colour']:>6.0%} "
            f"{f['wrong_size']:>5.0%} {f['wrong_position']:>6.0%} {f['passes']:>6d} "
            f"{f['positions']:>9,d} {f['draws_per_picture']:>5d} {f['ms_per_picture']:>10.1f}")
    f = results[ways[0].label]
    lines.append(f"{f['prompts']} prompts per split x {f['samples_per_prompt']} pictures; "
                 "wrong: pictures wrong of both splits; shape .. place: share of the wrong "
                 "ones with that attribute wrong")
    lines.append(f"timing: {f['timing_pictures']} pictures of one caption per call, median of "
                 f"{f['timing_repeats']} rounds in turn; load average {f['load_before']:.2f} "
                 f"before, {f['load_after']:.2f} after, {f['cpus']} CPUs, "
                 f"{f['threads']} thread(s)")
    return "\n".join(lines)


def record(results, command, ways=WAYS, folder=None):
    """Each way's figures under (three_ways, its label) in the record beside its
    checkpoints, with the sha256 of its prior and tokenizer. Returns the record's path."""
    from tinytok.evaluate.record import record_figures
    from tinytok.pipeline import CHECKPOINT_DIR
    folder = Path(folder or CHECKPOINT_DIR)
    for way in ways:
        path = record_figures(folder / way.prior, way.label, results[way.label], command,
                              inputs=[folder / way.tokenizer], name=RECORD_NAME)
    return path


# ---------------------------------------------------------------- the command line

def build_parser():
    from tinytok.cli.arguments import OneLineParser, non_negative_int, positive_int, seed_value
    p = OneLineParser(prog="python -m tinytok.evaluate.three_ways",
                      description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=positive_int, default=48, help="prompts per split")
    p.add_argument("-n", type=positive_int, default=2, help="pictures per prompt")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--timing-pictures", type=positive_int, default=16,
                   help="pictures of one caption per timed drawing")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds first")
    p.add_argument("--checkpoints", default=None, metavar="FOLDER",
                   help="where the six checkpoints are (default: data/checkpoints)")
    p.add_argument("--record", action="store_true",
                   help=f"write the figures into figures.json beside the checkpoints, as "
                        f"{RECORD_NAME} / {', '.join(w.label for w in WAYS)}")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    parallel.reuse_freed_host_memory()       # as the command line runs eval-prior
    parallel.use_cores()
    try:
        if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
            raise ConfigError(f"--checkpoints must be a folder holding the checkpoints, got "
                              f"{args.checkpoints!r}")
        results = measure(folder=args.checkpoints, n_prompts=args.prompts,
                          n_per_prompt=args.n, seed=args.seed,
                          timing_pictures=args.timing_pictures, repeats=args.repeats,
                          warmup=args.warmup)
        print(format_table(results))
        if args.record:
            path = record(results, ["python", "-m", "tinytok.evaluate.three_ways", *argv],
                          folder=args.checkpoints)
            print(f"recorded as {RECORD_NAME} in {path}", file=sys.stderr)
    except TinytokError as e:
        print(f"three_ways: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
