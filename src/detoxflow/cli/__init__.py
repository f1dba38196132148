"""The ``detoxflow`` command: one subcommand per pipeline step.

Each submodule in ``COMMAND_MODULES`` exposes ``register(subparsers)`` and
adds its own subcommands; a subcommand's handler takes the parsed args.
Errors a user can fix (:class:`DetoxflowError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from ..errors import DetoxflowError

COMMAND_MODULES = ("base", "evaluation", "task_vectors", "aura", "dinm")


def expose_cli_beside_interpreter() -> None:
    """Put this interpreter's bin folder first on PATH, so shell rules find ``detoxflow``.

    Called by the workflow: a user who runs ``.venv/bin/snakemake`` without
    activating the venv still gets the matching CLI. A conda env activated by
    ``--software-deployment-method conda`` prepends its own bin and still wins.
    """
    import os

    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + path


def json_arg(text: str):
    """argparse type: a JSON object given on the command line (rules pass params this way)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detoxflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.handler(args)
    except DetoxflowError as exc:
        print(f"detoxflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
