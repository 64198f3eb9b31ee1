"""The ``lowbit`` command line (also ``python -m lowbit``): demo, quantize, verify."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from lowbit.demo import run_demo

    return run_demo(args)


def _verify(args: argparse.Namespace) -> int:
    from lowbit.verify import run

    return run(args)


def _quantize(args: argparse.Namespace) -> int:
    from lowbit.quantize_cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, with each pass pipeline's report (per pass: modified or "
                        "not, time)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="end to end on the real all-MiniLM-L6-v2")
    from lowbit.demo import add_arguments as add_demo

    add_demo(d)
    d.set_defaults(func=_demo)

    q = sub.add_parser("quantize", help="quantize a Hugging Face model folder or ONNX file "
                                         "to QDQ ONNX")
    from lowbit.quantize_cli import add_arguments as add_quantize

    add_quantize(q)
    q.set_defaults(func=_quantize)

    v = sub.add_parser("verify", help="compare two models' outputs on seeded inputs")
    from lowbit.verify import add_arguments

    add_arguments(v)
    v.set_defaults(func=_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("lowbit").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from lowbit.errors import LowbitError

    try:
        return int(args.func(args) or 0)
    except LowbitError as e:
        print(f"lowbit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
