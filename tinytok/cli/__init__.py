"""The `tinytok` command: demo, train, encode, decode, sample, caption, inpaint, evaluate, bench.

Every subcommand is a thin layer over the Python API. Bad input of any kind ends in one line
on stderr ("tinytok: error: ...") and exit code 2; Ctrl-C during training writes a
checkpoint first and exits with 130.

`mpiexec -n K tinytok train-tokenizer ...` (and train-prior) trains one model on K
processes (tinytok.distributed): process 0 prints and writes, every process exits with the
same code, and a failure on one process alone ends them all rather than leave them waiting.

Each command's flags sit beside the function that runs it, in one module per group:
training (demo, train-tokenizer, train-prior), tokens (encode, decode, eval-tokenizer),
drawing (sample, caption, edit, chat, inpaint, eval-prior) and tools (export, bench, check);
arguments holds the flag types and the one-line parser, figures the printing and recording
of evaluations. Here: the parser built from the groups, and main().
"""
import os
import sys
import traceback

from tinytok import backend, distributed, parallel
from tinytok.cli import drawing, tokens, tools, training
from tinytok.cli.arguments import OneLineParser
from tinytok.errors import ConfigError, TinytokError

# Every command, in the order `tinytok --help` lists them: each adds its own subparser.
COMMANDS = (*training.COMMANDS, *tokens.COMMANDS, *drawing.COMMANDS, *tools.COMMANDS)


def build_parser():
    parser = OneLineParser(prog="tinytok", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=backend.BACKENDS, default=None,
                        help="numpy (default, or $TINYTOK_BACKEND) or cupy")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # as typed, for the record
    args.world = world = distributed.SINGLE
    says = distributed.launched_rank() == 0  # under mpiexec, process 0 reports for all
    try:
        args.world = world = _world_for(args)   # before the backend picks a GPU
        if args.backend:
            backend.use(args.backend)
        else:
            backend.xp()  # validates $TINYTOK_BACKEND now, with a clear message
        parallel.reuse_freed_host_memory()
        if world.size == 1:
            parallel.use_cores()  # every core for element-wise work; see tinytok/parallel.py
        else:
            distributed.use_this_process_cores()   # this process's share of them
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("tinytok: interrupted\n")
        world.end_all(130)   # the others would wait for this process for ever
        return 130
    except TinytokError as e:  # raised alike on every process: each ends with it
        from tinytok.training import TrainingStopped
        if says:
            what = "stopped" if isinstance(e, TrainingStopped) else "error"
            sys.stderr.write(f"tinytok: {what}: {e}\n")
        return 130 if isinstance(e, TrainingStopped) else 2
    except ImportError as e:
        if says:
            sys.stderr.write(f"tinytok: error: {e}\n")
        return 2
    except Exception:
        if world.size == 1:
            raise
        traceback.print_exc()  # a failure of this process alone: end the others too
        world.end_all(1)
        raise


def _world_for(args):
    """The processes this command runs on: several under mpiexec for the training commands
    (tinytok.distributed), one otherwise; other commands under mpiexec are refused."""
    if getattr(args, "many_processes", False):
        return distributed.start(args.backend or os.environ.get("TINYTOK_BACKEND") or "numpy")
    if distributed.launched_size() > 1:
        raise ConfigError(f"only train-tokenizer and train-prior run on several processes; "
                          f"run `tinytok {args.command}` without mpiexec")
    return distributed.SINGLE
