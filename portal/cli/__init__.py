"""``medsam``: the command line. Each sub-command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from portal.cli import db_cmd, evaluate_cmd, prepare_cmd, segment_cmd, serve_cmd, train_cmd, user_cmd, worker_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam", description="MedSAM-style medical image segmentation")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    segment_cmd.register(sub)
    evaluate_cmd.register(sub)
    train_cmd.register(sub)
    prepare_cmd.register(sub)
    db_cmd.register(sub)
    worker_cmd.register(sub)
    serve_cmd.register(sub)
    user_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    from medsam_core.errors import MedsamError

    try:
        return int(args.handler(args) or 0)
    except MedsamError as exc:
        print(f"medsam {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so plainly, trace only on request
        if args.debug or os.environ.get("MEDSAM_DEBUG"):
            raise
        print(
            f"medsam {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
