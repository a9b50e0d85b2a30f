"""The benchmark's result as a table a person reads (`tinytok bench` without --json)."""
from tinytok.bench.options import FULL, PARTS, QUICK


def format_table(result):
    """A readable summary of run_bench's result."""
    m = result["meta"]
    lines = [f"tinytok bench  backend={m['backend']}  cpus={m['cpus']}"
             + ("  (quick: sizes too small to mean anything)" if m["quick"] else ""),
             f"{'measurement':<38}{'median':>10}{'min':>10}{'max':>10}  rate"]

    def row(label, part, key, rate):
        f = result[part]
        lines.append(f"{label:<38}{f[key]:>8.1f}ms{f[key + '_min']:>8.1f}ms"
                     f"{f[key + '_max']:>8.1f}ms  {rate}")

    if "sgemm" in result:
        s = result["sgemm"]
        for n in (QUICK if m["quick"] else FULL)["sgemm_sizes"]:
            row(f"sgemm {n}x{n} float32", "sgemm", f"sgemm_{n}_ms",
                f"{s[f'sgemm_{n}_gflops']:.1f} GFLOP/s")
    for part, unit in (("vqvae-ref", "images"), ("vqvae-scales", "images"),
                       ("vqvae-gan", "images"), ("gpt-ref", "tokens"), ("gpt-masked", "tokens"),
                       ("gpt-scales", "tokens")):
        if part not in result:
            continue
        f = result[part]
        share = f["train_share_of_sgemm"]
        share = f", {100 * share:.0f}% of sgemm" if share else ""
        against = (f", D of {f['disc_channels']} channels, L_F {f['feature_weight']:g}, "
                   f"L_A {f['amplitude_weight']:g}" if part == "vqvae-gan" else "")
        maps = f", maps {','.join(map(str, f['scales']))}" if "scales" in f else ""
        row(f"{part} ({f['config']}) train step", part, "train_step_ms",
            f"{f[f'train_{unit}_per_s']:.0f} {unit}/s, {f['train_gflops']:.1f} GFLOP/s{share}"
            f"{against}{maps}")
        if part in ("vqvae-ref", "vqvae-scales"):
            row(f"  encode batch {f['encode_batch']}", part, "encode_ms",
                f"{f['encode_images_per_s']:.0f} images/s")
        elif part == "gpt-ref":
            for tag in ("kv", "nocache"):
                row(f"  sample {f['sample_batch']}x{f['sample_new_tokens']} ({tag})", part,
                    f"sample_{tag}_ms", f"{f[f'sample_{tag}_tokens_per_s']:.0f} tokens/s")
        elif part == "gpt-masked":
            row(f"  fill in {f['fill_in_pictures']} in {f['fill_in_steps']} steps, guided",
                part, "fill_in_ms", f"{f['fill_in_pictures_per_s']:.1f} pictures/s")
    if "drawing" in result:
        lines.extend(drawing_table(result["drawing"]))
    lines.append("peak RSS (MB, whole process, one process per section; import baseline):")
    for part in PARTS:
        if part in result:
            by = ", ".join(f"{k} {v:.0f}" for k, v in result[part]["peak_rss_mb_by_section"].items())
            lines.append(f"  {part:<12} {by}  (import {result[part]['import_rss_mb']:.0f})")
    return "\n".join(lines)


def drawing_table(figures):
    """The drawing comparison's rows: each kind's model passes and time per picture."""
    lines = [f"drawing {figures['pictures']} pictures of one caption, guided (cfg "
             f"{figures['cfg_scale']}): per picture",
             f"  {'kind':<8}{'steps':>6}{'passes':>8}{'calls':>7}{'positions':>11}"
             f"{'ms/picture':>12}{'min-max':>16}"]
    for r in figures["rows"]:
        steps = "-" if r["steps"] is None else r["steps"]
        lines.append(f"  {r['kind']:<8}{steps:>6}{r['passes']:>8}{r['forward_calls']:>7}"
                     f"{r['positions']:>11}{r['ms_per_picture']:>12.1f}"
                     f"{r['ms_per_picture_min']:>9.1f}-{r['ms_per_picture_max']:<.1f}")
    lines += ["  passes: the model's runs one after another (scales: the caption's, then one",
              "  a map); calls: with guidance's rows (a second stream for raster, beside the",
              "  others in each call for masked and scales); positions: tokens run through",
              "  the model, guidance's rows included"]
    return lines
