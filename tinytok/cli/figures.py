"""An evaluation's figures: printed (a table, or one JSON object with --json), and with
--record LABEL also written into the record beside the checkpoint (tinytok.evaluate.record)."""
import argparse
import json
import sys

from tinytok.errors import ConfigError


def print_figures(figures, as_json):
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        if key.startswith(("adherence", "caption_accuracy", "usage", "edit_", "chain_",
                           "caption_after", "hf_share", "compare_hf_share", "inpaint_right",
                           "inpaint_outside_same", "inpaint_cells")) and \
                key != "edit_pictures":
            shown = f"{value:.1%}"
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key:>26}: {shown}")


def record_label(text):
    """An argparse type: a label for the record (tinytok.evaluate.record.check_label)."""
    from tinytok.evaluate.record import check_label
    try:
        return check_label(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_record_argument(p):
    p.add_argument("--record", type=record_label, default=None, metavar="LABEL",
                   help="also write the figures under LABEL into figures.json beside the "
                        "checkpoint (the record the README and lessons quote)")


def record_if_asked(args, checkpoint, figures, inputs=()):
    """With --record LABEL: the figures into the record beside checkpoint, with this command."""
    if args.record is None:
        return
    from tinytok.evaluate.record import record_figures
    path = record_figures(checkpoint, args.record, figures, ["tinytok", *args.argv], inputs)
    print(f"recorded as {args.record} in {path}", file=sys.stderr)
