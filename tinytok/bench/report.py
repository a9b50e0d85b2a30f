"""The benchmark's result as a table a person reads (`tinytok bench` without --json)."""
from tinytok.bench.options import FULL, PARTS, QUICK


def format_table(result):
    """A readable summary of run_bench's result."""
    m = result["meta"]
    lines = [f"tinytok bench  backend={m['backend']}  cpus={m['cpus']}"
             + ("  (quick: sizes too small to mean anything)" if m["quick"] else ""),
             f"{'measurement':<34}{'median':>10}{'min':>10}{'max':>10}  rate"]

    def row(label, part, key, rate):
        f = result[part]
        lines.append(f"{label:<34}{f[key]:>8.1f}ms{f[key + '_min']:>8.1f}ms"
                     f"{f[key + '_max']:>8.1f}ms  {rate}")

    if "sgemm" in result:
        s = result["sgemm"]
        for n in (QUICK if m["quick"] else FULL)["sgemm_sizes"]:
            row(f"sgemm {n}x{n} float32", "sgemm", f"sgemm_{n}_ms",
                f"{s[f'sgemm_{n}_gflops']:.1f} GFLOP/s")
    for part, unit in (("vqvae-ref", "images"), ("vqvae-gan", "images"), ("gpt-ref", "tokens")):
        if part not in result:
            continue
        f = result[part]
        share = f["train_share_of_sgemm"]
        share = f", {100 * share:.0f}% of sgemm" if share else ""
        against = f", D of {f['disc_channels']} channels" if part == "vqvae-gan" else ""
        row(f"{part} ({f['config']}) train step", part, "train_step_ms",
            f"{f[f'train_{unit}_per_s']:.0f} {unit}/s, {f['train_gflops']:.1f} GFLOP/s{share}"
            f"{against}")
        if part == "vqvae-ref":
            row(f"  encode batch {f['encode_batch']}", part, "encode_ms",
                f"{f['encode_images_per_s']:.0f} images/s")
        elif part == "gpt-ref":
            for tag in ("kv", "nocache"):
                row(f"  sample {f['sample_batch']}x{f['sample_new_tokens']} ({tag})", part,
                    f"sample_{tag}_ms", f"{f[f'sample_{tag}_tokens_per_s']:.0f} tokens/s")
    lines.append("peak RSS (MB, whole process, one process per section; import baseline):")
    for part in PARTS:
        if part in result:
            by = ", ".join(f"{k} {v:.0f}" for k, v in result[part]["peak_rss_mb_by_section"].items())
            lines.append(f"  {part:<12} {by}  (import {result[part]['import_rss_mb']:.0f})")
    return "\n".join(lines)
