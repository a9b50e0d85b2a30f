"""The benchmark runs and reports every figure it promises. Nothing here is timed: the quick
sizes only prove the code paths work; speed and memory are read from `tinytok bench` itself."""
import json
import numbers

import pytest

from tinytok import bench

from tinytok.bench import flops
from tinytok.errors import ConfigError
from tinytok.prior.gpt import gpt_config
from tinytok.tokenizer.vqvae import tokenizer_config

REQUIRED = {
    "sgemm": ["ceiling_gflops", "sgemm_64_gflops", "sgemm_128_gflops", "sgemm_64_ms"],
    "vqvae-ref": ["train_step_ms", "train_step_ms_min", "train_step_ms_max",
                  "train_images_per_s", "train_gflops", "train_share_of_sgemm", "encode_ms",
                  "encode_images_per_s", "peak_rss_mb", "import_rss_mb"],
    "vqvae-scales": ["train_step_ms", "train_step_ms_min", "train_step_ms_max",
                     "train_images_per_s", "train_gflops", "train_gflop_per_step",
                     "train_share_of_sgemm", "encode_ms", "encode_images_per_s",
                     "encode_gflops", "num_codes", "peak_rss_mb", "import_rss_mb"],
    "vqvae-gan": ["train_step_ms", "train_step_ms_min", "train_step_ms_max",
                  "train_images_per_s", "train_gflops", "train_gflop_per_step",
                  "train_share_of_sgemm", "disc_channels", "gan_weight", "feature_weight",
                  "amplitude_weight", "peak_rss_mb", "import_rss_mb"],
    "gpt-ref": ["train_step_ms", "train_tokens_per_s", "train_gflops", "train_share_of_sgemm",
                "sample_kv_tokens_per_s", "sample_nocache_tokens_per_s", "peak_rss_mb",
                "import_rss_mb"],
    "gpt-masked": ["train_step_ms", "train_step_ms_min", "train_step_ms_max",
                   "train_tokens_per_s", "train_gflops", "train_gflop_per_step",
                   "train_share_of_sgemm", "fill_in_ms", "fill_in_ms_min", "fill_in_ms_max",
                   "fill_in_pictures_per_s", "fill_in_steps", "vocab_size", "peak_rss_mb",
                   "import_rss_mb"],
    "gpt-scales": ["train_step_ms", "train_step_ms_min", "train_step_ms_max",
                   "train_tokens_per_s", "train_gflops", "train_gflop_per_step",
                   "train_share_of_sgemm", "vocab_size", "context", "batch", "peak_rss_mb",
                   "import_rss_mb"],
    "drawing": ["pictures", "cfg_scale", "peak_rss_mb", "import_rss_mb"],
}


@pytest.fixture(scope="module")
def quick_result():
    return bench.run_bench(quick=True)


def test_quick_run_has_every_figure(quick_result):
    assert quick_result["meta"]["quick"] is True
    for part, keys in REQUIRED.items():
        for key in keys:
            value = quick_result[part][key]
            assert isinstance(value, numbers.Real) and value > 0, (part, key, value)
        assert quick_result[part]["reuse_freed_host_memory"] in (True, False)
        assert set(quick_result[part]["peak_rss_mb_by_section"]) == set(bench.SECTIONS[part])
    assert quick_result["vqvae-ref"]["config"] == "vqvae-tiny"
    gan = quick_result["vqvae-gan"]
    assert gan["config"] == "vqvae-tiny" and gan["disc_channels"] == 8
    assert gan["train_gflop_per_step"] > quick_result["vqvae-ref"]["train_gflop_per_step"]
    assert gan["train_gflop_per_step"] == pytest.approx(flops.vqvae_gan_train_flops(
        "vqvae-tiny", 8, 4, feature_matching=True) / 1e9)      # the shipped recipe's L_F
    masked = quick_result["gpt-masked"]
    # the shapes vocabulary of 16 codes (37 + 16 ids) and <mask>; 4 image tokens, 8 steps
    assert masked["vocab_size"] == 37 + 16 + 1 and masked["fill_in_steps"] == 4
    assert masked["train_gflop_per_step"] == pytest.approx(
        flops.gpt_train_flops(gpt_config("gpt-tiny", vocab_size=54), 2, 16) / 1e9)
    # the multi-scale vqvae-tiny on a 2 x 2 grid (8 x 8 pictures): maps 1 and 2, 16 codes
    multiscale = quick_result["vqvae-scales"]
    assert multiscale["config"] == "vqvae-tiny" and tuple(multiscale["scales"]) == (1, 2)
    assert multiscale["num_codes"] == 16
    # the next-scale prior: the others' 12 caption positions, then 1 + 4 map positions
    scales = quick_result["gpt-scales"]
    assert (scales["vocab_size"], scales["context"], tuple(scales["scales"])) == (53, 17,
                                                                                  (1, 2))
    assert scales["train_gflop_per_step"] > flops.gpt_train_flops(
        gpt_config("gpt-tiny", vocab_size=53, context=17), 2, 17) / 1e9


def test_drawing_rows_count_each_kinds_passes(quick_result):
    """Quick sizes: a 2 x 2 grid (4 codes) in a context of 16, 2 pictures, guided."""
    d = quick_result["drawing"]
    assert d["pictures"] == 2 and d["cfg_scale"] == 1.5
    rows = [(r["kind"], r["steps"], r["passes"], r["forward_calls"]) for r in d["rows"]]
    # raster: 4 codes in 4 passes, twice for guidance's stream; masked: a pass per step;
    # scales: the caption's pass, then one per map (1 x 1, 2 x 2), its rows in the same call
    assert rows == [("raster", None, 4, 8), ("masked", 2, 2, 2), ("masked", 4, 4, 4),
                    ("scales", None, 3, 3)]
    assert [r["positions"] for r in d["rows"][1:]] == [2 * 2 * 16, 2 * 4 * 16, 2 * 17]
    for r in d["rows"]:
        assert r["repeats"] == 2
        assert 0 < r["ms_per_picture_min"] <= r["ms_per_picture"] <= r["ms_per_picture_max"]


def test_table_formats(quick_result):
    table = bench.format_table(quick_result)
    for word in ("sgemm", "train step", "encode", "sample", "peak RSS",
                 "vqvae-gan (vqvae-tiny) train step", "D of 8 channels, L_F 1, L_A 45",
                 "gpt-masked (gpt-tiny) train step", "fill in 2 in 4 steps, guided",
                 "vqvae-scales (vqvae-tiny) train step", "gpt-scales (gpt-tiny) train step",
                 "maps 1,2",
                 "drawing 2 pictures of one caption, guided (cfg 1.5)"):
        assert word in table
    rows = [line.split() for line in table.splitlines()
            if line.startswith(("  raster", "  masked", "  scales "))]
    assert [r[:4] for r in rows] == [["raster", "-", "4", "8"], ["masked", "2", "2", "2"],
                                     ["masked", "4", "4", "4"], ["scales", "-", "3", "3"]]


def test_json_output_parses_and_only_filters(capsys):
    assert bench.main(["--quick", "--json", "--only", "gpt-ref"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"meta", "gpt-ref"}
    assert result["gpt-ref"]["train_share_of_sgemm"] is None  # no sgemm, no ceiling
    assert result["gpt-ref"]["sample_kv_tokens_per_s"] > 0


def test_only_drawing_prints_its_table_alone(capsys):
    assert bench.main(["--quick", "--only", "drawing", "--in-process", "--repeats", "1",
                       "--warmup", "0"]) == 0
    table = capsys.readouterr().out
    assert "drawing 2 pictures" in table and "train step" not in table
    assert [line.split()[0] for line in table.splitlines()
            if line.startswith(("  raster", "  masked", "  scales "))] == [
        "raster", "masked", "masked", "scales"]


def test_time_in_turn_warms_each_up_then_times_one_of_each_per_round():
    import numpy as np
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = bench.time_in_turn(fns, np, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [t["repeats"] for t in times] == [3, 3]
    assert all(0 <= t["min"] <= t["median"] <= t["max"] for t in times)


def test_only_accepts_lists_and_keeps_order():
    assert bench.parse_only("gpt-ref,sgemm") == ["sgemm", "gpt-ref"]
    assert bench.parse_only(["vqvae-ref", "sgemm"]) == ["sgemm", "vqvae-ref"]
    assert bench.parse_only(None) == list(bench.PARTS)
    assert bench.parse_only("vqvae-gan,vqvae-ref") == ["vqvae-ref", "vqvae-gan"]
    assert bench.parse_only("drawing,gpt-masked,gpt-ref") == ["gpt-ref", "gpt-masked",
                                                              "drawing"]
    assert bench.parse_only("gpt-scales,vqvae-scales,gpt-masked") == [
        "vqvae-scales", "gpt-masked", "gpt-scales"]


def test_in_process_run_works():
    result = bench.run_bench(quick=True, only="sgemm", isolate=False, repeats=1, warmup=0)
    assert result["sgemm"]["sgemm_64_ms_repeats"] == 1
    assert result["meta"]["per_section_process"] is False


def test_unknown_part_is_a_clear_error(capsys):
    with pytest.raises(ConfigError, match="unknown benchmark part 'nope'.*sgemm"):
        bench.run_bench(quick=True, only="nope")
    assert bench.main(["--quick", "--only", "nope"]) == 2
    assert "unknown benchmark part 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="backend"):
        bench.run_bench(backend="jax", quick=True)


def test_add_arguments_registers_on_a_subparser():
    import argparse
    parser = argparse.ArgumentParser(prog="tinytok")
    sub = parser.add_subparsers(dest="command")
    bench.add_arguments(sub.add_parser("bench"))
    args = parser.parse_args(["bench", "--json", "--only", "sgemm", "--quick"])
    assert args.json and args.quick and args.only == ["sgemm"] and args.backend == "numpy"


# ---------------------------------------------------------------- FLOP counters, by hand

def test_conv_flops_by_hand():
    # 1 image, 3 -> 2 channels, 4x4 input, 3x3 kernel, no padding: 2x2 outputs.
    # Each output value is 3*3*3 = 27 multiply-adds: 2 * (2*2*2) * 27 = 432.
    assert flops.conv2d_flops(1, 3, 4, 4, 2, 3, 3) == 432
    # stride 2, padding 1, 4x4 kernel on 32x32: 16x16 outputs.
    assert flops.conv2d_flops(2, 3, 32, 32, 64, 4, 4, 2, 1) == 2 * 2 * 16 * 16 * 64 * 3 * 16
    # Transposed: each of the 2*3 input pixels paints a 4x4 patch of 5 channels from 2.
    assert flops.conv_transpose2d_flops(1, 2, 2, 3, 5, 4, 4) == 2 * 6 * 2 * 5 * 16


def test_linear_and_attention_flops_by_hand():
    assert flops.linear_flops(3, 4, 5) == 120
    # B=1, T=2, C=3: QK^T is (2,3)@(3,2) = 12 MACs, att@V (2,2)@(2,3) = 12 MACs -> 48 FLOPs.
    assert flops.attention_flops(1, 2, 3) == 48


def test_gpt_flops_by_hand():
    c = gpt_config("gpt-tiny", vocab_size=10)           # 2 layers, C = 32
    B, T, C = 1, 4, 32
    M = B * T
    per_layer = 2 * M * (C * 3 * C + C * C + C * 4 * C + 4 * C * C) + 4 * B * T * T * C
    assert flops.gpt_flops(c, B, T) == 2 * per_layer + 2 * M * C * 10
    assert flops.gpt_train_flops(c, B, T) == 3 * flops.gpt_flops(c, B, T)


def test_vqvae_ref_flops_by_hand():
    f = flops.vqvae_flops(tokenizer_config("vqvae-ref"), 1)
    res = 2 * (2 * 64 * 32 * 128 * 9 + 2 * 64 * 128 * 32)           # two blocks at 8x8
    enc = (2 * 256 * 64 * 3 * 16 + 2 * 64 * 128 * 64 * 16 + 2 * 64 * 128 * 128 * 9 + res
           + 2 * 64 * 64 * 128)
    dec = 2 * 64 * 128 * 64 * 9 + res + 2 * 64 * 128 * 64 * 16 + 2 * 256 * 64 * 3 * 16
    assert f == {"encoder": enc, "vq": 2 * 64 * 64 * 512, "decoder": dec}
    first_layer_dx = 2 * 256 * 64 * 3 * 16                         # not computed in training
    assert flops.vqvae_train_flops("vqvae-ref", 1) == 3 * (enc + dec) - first_layer_dx + f["vq"]
    # About 2.9 GFLOP for a forward pass at batch 32: a figure to sanity-check the sum.
    assert 2.9e9 < 32 * (enc + dec + f["vq"]) < 2.95e9


def test_discriminator_and_adversarial_step_flops_by_hand():
    d = flops.discriminator_flops(64, 32, 1)
    conv1 = 2 * 16 * 16 * 64 * 3 * 16             # 3 -> 64, 4x4/2: 16x16 outputs
    conv2 = 2 * 8 * 8 * 128 * 64 * 16             # 64 -> 128, 4x4/2: 8x8 outputs
    out = 2 * 8 * 8 * 1 * 128 * 9                 # 128 -> 1, 3x3: one score per patch
    assert d == {"conv1": conv1, "conv2": conv2, "out": out}
    last = 2 * 16 * 16 * 64 * 3 * 16              # dec.up2: 64 -> 3 channels, 16x16 -> 32x32
    D = conv1 + conv2 + out
    # D on the reconstructions: forward, dx, dw; on the real pictures: forward, dw, dx but
    # conv1's; on the reconstructions for L_D: dw, dx but conv1's (the forward reused)
    assert flops.vqvae_gan_train_flops("vqvae-ref", 64, 1) == (
        flops.vqvae_train_flops("vqvae-ref", 1) + 2 * last + 3 * D + (3 * D - conv1)
        + (2 * D - conv1))
    assert flops.vqvae_gan_train_flops("vqvae-ref", 64, 32) == \
        32 * flops.vqvae_gan_train_flops("vqvae-ref", 64, 1)
    # L_F: its own backward through conv2 and conv1 on the reconstructions, dx and dw
    assert flops.vqvae_gan_train_flops("vqvae-ref", 64, 1, feature_matching=True) == (
        flops.vqvae_gan_train_flops("vqvae-ref", 64, 1) + 2 * (conv1 + conv2))


def test_multiscale_tokenizer_flops_by_hand():
    """vqvae-ref with maps 1, 2, 3, 4, 5, 6, 8 of 256 codes: 155 lookups a picture, each
    against its map's 256 codes of 64, and phi (64 -> 64, 3x3 on 8x8) once per map; in
    training phi three times (forward, dx, dw), the lookups once."""
    config = bench.multiscale_tokenizer_config(bench.FULL)
    assert (config.name, config.num_codes, config.scales) == ("vqvae-ref", 256,
                                                              (1, 2, 3, 4, 5, 6, 8))
    lookup = 2 * 155 * 64 * 256
    phi = 7 * 2 * 64 * 64 * 64 * 9
    assert flops.quantizer_flops(config, 1) == {"lookup": lookup, "phi": phi}
    assert flops.quantizer_flops("vqvae-ref", 1) == {"lookup": 2 * 64 * 64 * 512, "phi": 0}
    ref, f = flops.vqvae_flops("vqvae-ref", 1), flops.vqvae_flops(config, 1)
    assert f == {"encoder": ref["encoder"], "vq": lookup + phi, "decoder": ref["decoder"]}
    first_layer_dx = 2 * 256 * 64 * 3 * 16
    assert flops.vqvae_train_flops(config, 2) == 2 * (
        3 * (ref["encoder"] + ref["decoder"] + phi) - first_layer_dx + lookup)


def test_next_scale_prior_flops_by_hand():
    """gpt-ref at context 171 (16 + 155), its maps' projection 64 -> 128 forward and dw on
    the 155 image positions, and the teacher-forced inputs' phi for maps 1 .. 6 (forward)."""
    _, config, _ = bench.shapes_prior(bench.FULL, "scales")
    per_picture = (flops.gpt_train_flops(config, 1, 171) + 2 * 2 * 155 * 64 * 128
                   + 6 * 2 * 64 * 64 * 64 * 9)
    assert flops.scales_train_flops(config, 64, 1) == per_picture
    assert flops.scales_train_flops(config, 64, 32) == 32 * per_picture


# ---------------------------------------------------------------- the next-scale prior's workload

def test_the_next_scale_prior_of_the_bench_is_the_shipped_ones_shape():
    """gpt-ref over the shapes vocabulary (293 ids), the others' caption part (16 positions)
    before maps 1, 2, 3, 4, 5, 6, 8 (155): context 171, carrying a multi-scale tokenizer's
    quantizer of the shipped one's shapes; a raster or masked prior reads 80."""
    params, config, vocab = bench.shapes_prior(bench.FULL, "scales")
    assert (config.name, config.vocab_size, config.context) == ("gpt-ref", 293, 171)
    assert config.scales == (1, 2, 3, 4, 5, 6, 8)
    assert params["quant.codebook"].shape == (7, 256, 64)
    assert params["quant.phi.w"].shape == (64, 64, 3, 3)
    assert params["quant.phi.b"].shape == (64,)
    assert params["scales.proj.w"].shape == (64, 128) and params["gpt.wpe"].shape == (171, 128)
    for kind, vocab_size in (("raster", 293), ("masked", 294)):
        _, other, _ = bench.shapes_prior(bench.FULL, kind)
        assert (other.context, other.vocab_size, other.scales) == (80, vocab_size, ())


def test_a_prior_training_step_updates_all_but_the_carried_quantizer():
    """prior_train_step on a next-scale prior: every trained parameter moves, the carried
    quantizer (never trained) stays as it was, bit for bit."""
    import numpy as np
    sizes = dict(bench.QUICK, shapes_grid=4, gpt_T=28)
    params, config, _ = bench.shapes_prior(sizes, "scales", seed=1)
    before = {k: np.array(v) for k, v in params.items()}
    ids, targets = bench.scales_example_batch(sizes, config, seed=2)
    assert ids.shape == targets.shape == (sizes["gpt_batch"], config.context)
    loss = bench.prior_train_step(params, config, ids, targets, "scales")()
    assert np.isfinite(loss) and loss > 0
    for k, v in params.items():
        moved = not np.array_equal(v, before[k])
        assert moved == (not k.startswith("quant.")), k



# ---------------------------------------------------------------- the drawings' work, counted

def counting_model_calls(monkeypatch):
    """Every call of the model by the three samplers, as (rows, positions): gpt_forward's
    ids (raster, masked), trunk_forward's embedded inputs (the next-scale prior)."""
    from tinytok.prior import masked, sample, scales
    calls = []
    for module, name in ((sample, "gpt_forward"), (masked, "gpt_forward"),
                         (scales, "trunk_forward")):
        def counted(x, *args, _forward=getattr(module, name), **kwargs):
            calls.append(tuple(x.shape[:2]))
            return _forward(x, *args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("kind, grid, steps", [("raster", 2, None), ("raster", 4, None),
                                               ("masked", 4, 4), ("masked", 4, 16),
                                               ("masked", 2, 20), ("scales", 2, None),
                                               ("scales", 4, None)])
def test_drawing_work_is_what_the_samplers_run(monkeypatch, kind, grid, steps):
    """drawing_work's counts against the model's calls while drawing: a masked prior with
    more steps than codes (20 for 4) stops when the grid is full; a next-scale prior runs
    its caption, then each map (1, 2 or 1, 2, 3, 4)."""
    sizes = dict(bench.QUICK, shapes_grid=grid, gpt_T=28, draw_n=3)
    sample, work = bench.drawing(sizes, kind, steps)
    calls = counting_model_calls(monkeypatch)
    codes = sample()
    scales = (1, 2) if grid == 2 else (1, 2, 3, 4)
    ids_shape = (sum(s * s for s in scales),) if kind == "scales" else (grid, grid)
    assert codes.shape == (3, *ids_shape) and (codes >= 0).all()
    n = sizes["draw_n"]
    # guidance's rows: a stream of calls of their own (raster), or beside the others
    streams, rows = (2, n) if kind == "raster" else (1, 2 * n)
    assert work["forward_calls"] == len(calls)
    assert work["passes"] == len(calls) // streams
    assert all(b == rows for b, _ in calls)
    assert work["positions"] == sum(b * t for b, t in calls) / n
    if kind == "masked":
        assert work["passes"] == min(steps, grid * grid)
    if kind == "scales":
        caption = 28 - grid * grid                     # the others' <bos> .. <image>
        assert [t for _, t in calls] == [caption] + [s * s for s in scales]


def test_torch_peer_compares_the_parts_with_a_peer():
    pytest.importorskip("torch")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    import torch_peer
    assert torch_peer.peer_parts(None) == list(torch_peer.PARTS)
    assert "gpt-masked" in torch_peer.PARTS and "drawing" not in torch_peer.PARTS
    assert {"vqvae-scales", "gpt-scales"} <= set(torch_peer.PARTS)
    assert torch_peer.peer_parts("gpt-masked") == ["gpt-masked"]
    with pytest.raises(SystemExit, match="no torch peer for drawing"):
        torch_peer.peer_parts(["gpt-masked,drawing"])
    labels = [m[0] for m in torch_peer.measurements("gpt-masked", bench.QUICK)]
    assert labels == ["masked train step"]
    assert [m[0] for m in torch_peer.measurements("vqvae-scales", bench.QUICK)] == [
        "multi-scale train step", "multi-scale encode 8"]
    (label, key, runners, units, unit), = torch_peer.measurements("gpt-scales", bench.QUICK)
    assert (label, key, list(runners), units, unit) == (
        "next-scale train step", "scales_train", ["tinytok", "torch-sdpa", "torch-explicit"],
        2 * 17, "tokens")
