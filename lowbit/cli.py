"""The ``lowbit`` command line (also ``python -m lowbit``): demo, quantize, compile, bench,
eval, verify, report. Each verb lives in its own module (``lowbit/<verb>_cli.py``, ``demo.py``,
``verify.py``), which gives its arguments, its examples (shown by ``--help``) and its ``run``.

A user error (a bad flag, a path that is not a model, a model a verb cannot take, a file that
cannot be written) prints one line, ``lowbit <verb>: error: ...``, and exits with status 2;
``-v`` logs each pass pipeline's report (and shows the traceback of an OSError).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable

__all__ = ["main"]

# verb -> (module, its run function, one-line help)
VERBS = {
    "demo": ("lowbit.demo", "run_demo", "end to end on the real all-MiniLM-L6-v2"),
    "quantize": ("lowbit.quantize_cli", "run",
                 "quantize a Hugging Face model folder or a float ONNX file to QDQ ONNX"),
    "compile": ("lowbit.compile_cli", "run",
                "compile a QDQ ONNX file, a Hugging Face folder or a .pt2 file with TVM"),
    "bench": ("lowbit.bench_cli", "run",
              "time a compiled module (or a model) against torch and onnxruntime"),
    "eval": ("lowbit.eval_cli", "run",
             "score a model and its quantized twin side by side (SST-2, wikitext-2, a TSV)"),
    "verify": ("lowbit.verify", "run", "compare two models' outputs on seeded inputs"),
    "report": ("lowbit.report_cli", "run",
               "an HTML page with plots: activation ranges, bits per layer, lowering, sizes"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lowbit compile: error: ... (lowbit compile --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the modules of ``verbs`` (default: all) are imported and get their
    arguments, the others are listed by their one-line help (``main`` loads just the verb it
    runs, so ``lowbit --help`` and each verb start without importing the others' packages)."""
    load = set(VERBS if verbs is None else verbs)
    p = _Parser(prog="lowbit", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, with each pass pipeline's report (per pass: modified or "
                        "not, time)")
    sub = p.add_subparsers(dest="command", required=True, metavar="VERB")
    for verb, (module_name, run_name, summary) in VERBS.items():
        if verb not in load:
            sub.add_parser(verb, help=summary)
            continue
        module = importlib.import_module(module_name)
        v = sub.add_parser(verb, help=summary, description=(module.__doc__ or "").strip(),
                           epilog=module.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(v)
        v.set_defaults(func=getattr(module, run_name))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if a in VERBS), None)     # the verb comes before its values
    args = build_parser([verb] if verb else []).parse_args(argv)
    # lowbit's own loggers at INFO (-v: DEBUG, with each pipeline's report); the root, and so
    # every other library's loggers, stays at WARNING whatever -v says. Records go through
    # progress.LogHandler, which writes above a progress bar instead of through it.
    from lowbit.progress import LogHandler

    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s",
                        handlers=[LogHandler()])
    logging.getLogger("lowbit").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from lowbit.errors import LowbitError

    try:
        return int(args.func(args) or 0)
    except (LowbitError, OSError) as e:   # OSError: a folder that cannot be written, a full disk
        if args.verbose and not isinstance(e, LowbitError):
            raise
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lowbit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
