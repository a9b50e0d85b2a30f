"""The tool commands: export (a checkpoint without its optimizer state), bench (speed and
memory) and check (a learner's own op pair), each its flags and then what it runs."""
import os


def add_export(sub):
    p = sub.add_parser("export", help="copy a checkpoint without its optimizer state")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    """A copy of a checkpoint without the optimizer state: a third of the size, for sharing."""
    from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(args.checkpoint)
    save_checkpoint(args.out, kind=ckpt.kind, params=ckpt.params, config=ckpt.config,
                    step=ckpt.step, extra={"history": ckpt.extra.get("history", [])})
    print(f"wrote {args.out} ({ckpt.kind}, step {ckpt.step}, "
          f"{os.path.getsize(args.out) / 2 ** 20:.1f} MB)")
    return 0


def add_bench(sub):
    from tinytok.bench.options import add_arguments  # the flags alone: no models loaded
    p = sub.add_parser("bench", help="speed and memory of the reference models")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from tinytok.bench.run import run
    return run(args)


def add_check(sub):
    from tinytok.check.cases import OPS
    p = sub.add_parser("check", help="check your own forward and backward of an op pair "
                                     "(lessons/exercises/)")
    p.add_argument("op", help=", ".join(OPS))
    p.add_argument("file", help="a Python file defining OP_forward and OP_backward")
    p.set_defaults(func=cmd_check)


def cmd_check(args):
    """Grade a learner's own op pair (lessons/exercises/): 0 right, 1 wrong, 2 unusable."""
    from tinytok.check import check
    return check(args.op, args.file)


# This group's commands, in the order `tinytok --help` lists them (tinytok.cli.COMMANDS).
COMMANDS = (add_export, add_bench, add_check)
