"""What `tinytok bench` measures, at which sizes, how often, and the flags that choose it.

Light on purpose: the `tinytok` command registers these flags for every run, and only
`tinytok bench` itself loads the models (tinytok.bench.workloads).
"""
import os

from tinytok.errors import ConfigError

PARTS = ("sgemm", "vqvae-ref", "vqvae-scales", "vqvae-gan", "gpt-ref", "gpt-masked",
         "gpt-scales", "drawing")

# The sizes benchmarked; QUICK keeps the code path and shrinks everything (for tests).
# The masked and next-scale priors (gpt-masked, gpt-scales, drawing) run over the shapes
# vocabulary of a codebook of shapes_codes codes on a shapes_grid x shapes_grid grid (the
# shipped tokenizer's 256 on 8 x 8: 293 ids, 294 with <mask>), in gpt_T tokens (the
# next-scale prior: the same caption part, then its maps); the multi-scale tokenizer
# (vqvae-scales) has shapes_codes codes per map. The drawings are draw_n pictures of one
# caption, the masked prior's at each of draw_steps. The adversarial step (vqvae-gan) has the
# shipped photos_gan_tokenizer's terms: L_G at gan_weight, L_F and L_A at their weights.
FULL = dict(sgemm_sizes=(1024, 2048), vqvae="vqvae-ref", vq_batch=32, encode_batch=256,
            disc_channels=64, gan_weight=0.1, feature_weight=1.0, amplitude_weight=45.0,
            gpt="gpt-ref", vocab=600, gpt_batch=32, gpt_T=80, sample_batch=16, sample_new=64,
            shapes_codes=256, shapes_grid=8, draw_n=16, draw_steps=(4, 8, 12, 16))
QUICK = dict(sgemm_sizes=(64, 128), vqvae="vqvae-tiny", vq_batch=4, encode_batch=8,
             disc_channels=8, gan_weight=0.1, feature_weight=1.0, amplitude_weight=45.0,
             gpt="gpt-tiny", vocab=50, gpt_batch=2, gpt_T=16, sample_batch=2, sample_new=4,
             shapes_codes=16, shapes_grid=2, draw_n=2, draw_steps=(2, 4))

# (warm-up, repeats) per measurement: fewer repeats for the slow ones.
REPEATS = {"sgemm": (3, 15), "vqvae_train": (3, 15), "vqvae_encode": (2, 10),
           "vqvae_scales_train": (3, 15), "vqvae_scales_encode": (2, 10),
           "vqvae_gan": (3, 15),
           "gpt_train": (3, 15), "sample_kv": (1, 7), "sample_nocache": (1, 3),
           "masked_train": (3, 15), "masked_sample": (1, 7), "scales_train": (3, 15),
           "drawing": (1, 5)}
QUICK_REPEATS = (0, 2)


def parse_only(only):
    """None, a name, "a,b" or a list of those -> the selected PARTS in their usual order."""
    if only is None:
        return list(PARTS)
    names = [only] if isinstance(only, str) else list(only)
    names = [n.strip() for item in names for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise ConfigError(f"unknown benchmark part {', '.join(map(repr, unknown)) or '(none)'}; "
                          f"choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in names]



def add_arguments(parser):
    """Register the bench flags on an argparse (sub)parser."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--backend", choices=("numpy", "cupy"),
                        default=os.environ.get("TINYTOK_BACKEND") or "numpy")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these parts ({', '.join(PARTS)}); comma-separated "
                             "or repeated")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and repeats: checks that it runs, measures nothing")
    parser.add_argument("--batch", type=int, help="training batch of both models (default 32; "
                        "256 compares a GPU with the CPU)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, help="untimed runs before them")
    parser.add_argument("--in-process", action="store_true",
                        help="no fresh process per section (peak RSS becomes cumulative)")
    return parser

