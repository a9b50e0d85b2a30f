"""The benchmark's sections: each times some workloads and reads the memory of the process
it runs in (tinytok.bench.run gives each a fresh one, so the peak is its own).
"""
from tinytok import backend, parallel
from tinytok.bench.measure import peak_rss_mb, rss_mb, synchronize, time_in_turn, time_it
from tinytok.bench.options import FULL, QUICK, QUICK_REPEATS, REPEATS
from tinytok.bench.workloads import (drawing, gpt_sample, gpt_train_step, masked_train_step,
                                     multiscale_tokenizer_config, scales_train_step,
                                     shapes_prior, vqvae_encode, vqvae_gan_train_step,
                                     vqvae_train_step)
from tinytok.prior.settings import SAMPLING


def _reps(key, quick, repeats, warmup):
    w, r = QUICK_REPEATS if quick else REPEATS[key]
    return (w if warmup is None else warmup), (r if repeats is None else repeats)


def _ms(prefix, t):
    return {prefix: t["median"], prefix + "_min": t["min"], prefix + "_max": t["max"],
            prefix + "_repeats": t["repeats"]}


def _section_sgemm(xp, sizes, quick, repeats, warmup):
    out, best = {}, 0.0
    for n in sizes["sgemm_sizes"]:
        rng = backend.rng(n)
        a, b = (backend.to_device(rng.standard_normal((n, n)), dtype="float32") for _ in "ab")
        c = xp.empty((n, n), dtype=xp.float32)
        t = time_it(lambda: xp.matmul(a, b, out=c), xp, *_reps("sgemm", quick, repeats, warmup))
        gflops = 2 * n ** 3 / (t["median"] * 1e-3) / 1e9
        out.update(_ms(f"sgemm_{n}_ms", t))
        out[f"sgemm_{n}_gflops"] = gflops
        best = max(best, gflops)
    out["ceiling_gflops"] = best
    return out


def _train_figures(t, flops, units, unit):
    """A training step's time, its rate in units (images, tokens) per second, its FLOPs."""
    return {**_ms("train_step_ms", t), f"train_{unit}_per_s": units / (t["median"] * 1e-3),
            "train_gflop_per_step": flops / 1e9,
            "train_gflops": flops / (t["median"] * 1e-3) / 1e9}


def _section_vqvae_train(xp, sizes, quick, repeats, warmup):
    step, flops = vqvae_train_step(sizes)
    t = time_it(step, xp, *_reps("vqvae_train", quick, repeats, warmup))
    return {"config": sizes["vqvae"], "batch": sizes["vq_batch"],
            **_train_figures(t, flops, sizes["vq_batch"], "images")}


def _section_multiscale_train(xp, sizes, quick, repeats, warmup):
    config = multiscale_tokenizer_config(sizes)
    step, flops = vqvae_train_step(sizes, config=config)
    t = time_it(step, xp, *_reps("vqvae_scales_train", quick, repeats, warmup))
    return {"config": sizes["vqvae"], "batch": sizes["vq_batch"], "scales": config.scales,
            "num_codes": config.num_codes,
            **_train_figures(t, flops, sizes["vq_batch"], "images")}


def _section_vqvae_gan(xp, sizes, quick, repeats, warmup):
    step, flops = vqvae_gan_train_step(sizes)
    t = time_it(step, xp, *_reps("vqvae_gan", quick, repeats, warmup))
    return {"config": sizes["vqvae"], "batch": sizes["vq_batch"],
            "disc_channels": sizes["disc_channels"], "gan_weight": sizes["gan_weight"],
            "feature_weight": sizes["feature_weight"],
            "amplitude_weight": sizes["amplitude_weight"],
            **_train_figures(t, flops, sizes["vq_batch"], "images")}


def _encode_figures(encode, flops, key, xp, sizes, quick, repeats, warmup):
    t = time_it(encode, xp, *_reps(key, quick, repeats, warmup))
    return {"encode_batch": sizes["encode_batch"], **_ms("encode_ms", t),
            "encode_images_per_s": sizes["encode_batch"] / (t["median"] * 1e-3),
            "encode_gflops": flops / (t["median"] * 1e-3) / 1e9}


def _section_vqvae_encode(xp, sizes, quick, repeats, warmup):
    return _encode_figures(*vqvae_encode(sizes), "vqvae_encode", xp, sizes, quick, repeats,
                           warmup)


def _section_multiscale_encode(xp, sizes, quick, repeats, warmup):
    encode = vqvae_encode(sizes, config=multiscale_tokenizer_config(sizes))
    return _encode_figures(*encode, "vqvae_scales_encode", xp, sizes, quick, repeats, warmup)


def _section_gpt_train(xp, sizes, quick, repeats, warmup):
    step, flops = gpt_train_step(sizes)
    t = time_it(step, xp, *_reps("gpt_train", quick, repeats, warmup))
    B, T = sizes["gpt_batch"], sizes["gpt_T"]
    return {"config": sizes["gpt"], "vocab_size": sizes["vocab"], "batch": B, "context": T,
            **_train_figures(t, flops, B * T, "tokens")}


def _section_gpt_sample(xp, sizes, quick, repeats, warmup):
    out = {"sample_batch": sizes["sample_batch"], "sample_new_tokens": sizes["sample_new"]}
    n_tokens = sizes["sample_batch"] * sizes["sample_new"]
    for tag, use_cache, key in (("kv", True, "sample_kv"), ("nocache", False, "sample_nocache")):
        t = time_it(gpt_sample(sizes, use_cache), xp, *_reps(key, quick, repeats, warmup))
        out.update(_ms(f"sample_{tag}_ms", t))
        out[f"sample_{tag}_tokens_per_s"] = n_tokens / (t["median"] * 1e-3)
    return out


def _shapes_prior_train(kind, train_step, key, xp, sizes, quick, repeats, warmup):
    """A shapes prior's training step (masked or next-scale), timed, with its model's
    vocabulary and context (read from a fresh prior's config once the timing is done)."""
    step, flops = train_step(sizes)
    t = time_it(step, xp, *_reps(key, quick, repeats, warmup))
    _, config, _ = shapes_prior(sizes, kind)
    B, T = sizes["gpt_batch"], config.context
    return {"config": sizes["gpt"], "vocab_size": config.vocab_size, "batch": B,
            "context": T, **({"scales": config.scales} if config.scales else {}),
            **_train_figures(t, flops, B * T, "tokens")}


def _section_masked_train(xp, sizes, quick, repeats, warmup):
    return _shapes_prior_train("masked", masked_train_step, "masked_train", xp, sizes, quick,
                               repeats, warmup)


def _section_scales_train(xp, sizes, quick, repeats, warmup):
    return _shapes_prior_train("scales", scales_train_step, "scales_train", xp, sizes, quick,
                               repeats, warmup)


def _section_masked_sample(xp, sizes, quick, repeats, warmup):
    sample, work = drawing(sizes, "masked")
    t = time_it(sample, xp, *_reps("masked_sample", quick, repeats, warmup))
    n = sizes["draw_n"]
    return {"fill_in_pictures": n, "fill_in_steps": work["passes"], **_ms("fill_in_ms", t),
            "fill_in_pictures_per_s": n / (t["median"] * 1e-3)}


def _section_drawing(xp, sizes, quick, repeats, warmup):
    """Each kind of prior drawing draw_n pictures, guided, in this one process, timed in
    turn: the raster prior, the masked prior at each of draw_steps, the next-scale prior."""
    runs = ([("raster", None)] + [("masked", s) for s in sizes["draw_steps"]]
            + [("scales", None)])
    drawings = [drawing(sizes, kind, steps) for kind, steps in runs]
    times = time_in_turn([sample for sample, _ in drawings], xp,
                         *_reps("drawing", quick, repeats, warmup))
    rows = []
    for (kind, steps), (_, work), t in zip(runs, drawings, times):
        per = {k: v / sizes["draw_n"] for k, v in t.items() if k != "repeats"}
        rows.append({"kind": kind, "steps": steps, **work, "repeats": t["repeats"],
                     "ms_per_picture": per["median"], "ms_per_picture_min": per["min"],
                     "ms_per_picture_max": per["max"]})
    return {"pictures": sizes["draw_n"], "cfg_scale": SAMPLING.cfg_scale, "rows": rows}


SECTIONS = {
    "sgemm": {"sgemm": _section_sgemm},
    "vqvae-ref": {"train_step": _section_vqvae_train, "encode": _section_vqvae_encode},
    "vqvae-scales": {"train_step": _section_multiscale_train,
                     "encode": _section_multiscale_encode},
    "vqvae-gan": {"train_step": _section_vqvae_gan},
    "gpt-ref": {"train_step": _section_gpt_train, "sample": _section_gpt_sample},
    "gpt-masked": {"train_step": _section_masked_train, "sample": _section_masked_sample},
    "gpt-scales": {"train_step": _section_scales_train},
    "drawing": {"drawing": _section_drawing},
}


def run_section(part, section, backend_name="numpy", quick=False, repeats=None, warmup=None,
                batch=None):
    """Run one section in this process; returns its figures plus memory and allocator facts.

    batch overrides the training batch of both models (e.g. 256 to compare with a GPU).
    """
    import_rss, _ = rss_mb()
    xp = backend.use(backend_name)
    reused = parallel.reuse_freed_host_memory()
    if part == "sgemm":  # the ceiling is BLAS on all its own threads; the models use ours
        parallel.blas_alone()
    else:
        parallel.use_cores()
    sizes = dict(QUICK if quick else FULL)
    if batch:
        sizes.update(vq_batch=batch, gpt_batch=batch)
    out = SECTIONS[part][section](xp, sizes, quick, repeats, warmup)
    synchronize(xp)
    out.update(import_rss_mb=import_rss, peak_rss_mb=peak_rss_mb(),
               reuse_freed_host_memory=reused, threads=parallel.threads())
    if xp.__name__ == "cupy":
        out["device_pool_mb"] = xp.get_default_memory_pool().total_bytes() / 2 ** 20
    return out

