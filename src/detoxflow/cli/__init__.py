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

COMMAND_MODULES = ("base", "evaluation", "safeedit", "capability", "task_vectors", "aura", "dinm", "act", "steering")


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


def settings_arg(section: str, key: str | None = None):
    """argparse type: JSON settings of config ``section`` (or of ``section.key``), the schema's
    defaults filled in and validated, so a command needs no defaults of its own."""
    from ..config import complete_section

    def parse(text: str):
        value = json_arg(text)
        try:
            done = complete_section(section, value if key is None else {key: value})
        except DetoxflowError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return done if key is None else done[key]

    parse.__name__ = f"{section}{'.' + key if key else ''} settings"
    return parse


def add_runtime_args(p, *, device: bool = True) -> None:
    """The model runtime options every command that loads a model takes (config ``model:``, whose
    schema defaults are theirs)."""
    from ..config import section_defaults

    model = section_defaults("model")
    p.add_argument("--dtype", default=model["dtype"], help="auto | float32 | bfloat16 | float16")
    if device:
        p.add_argument("--device", default=model["device"], help="auto | cpu | cuda | cuda:N")
        p.add_argument("--device-map", default=model["device_map"],
                       help="single (all on --device) | auto | balanced | balanced_low_0 | sequential "
                            "(spread over the visible GPUs, then CPU, then disk)")
        p.add_argument("--max-memory", type=json_arg, default=model["max_memory"],
                       help='JSON: per-device caps for --device-map, e.g. {"0": "70GiB", "cpu": "200GiB"}')
        p.add_argument("--offload-folder", default=model["offload_folder"],
                       help="where --device-map puts weights that go to disk")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub to run")


def model_load_options(args) -> dict:
    """``load_model`` keyword arguments from the options of :func:`add_runtime_args`."""
    options = {"dtype": args.dtype, "trust_remote_code": args.trust_remote_code}
    if hasattr(args, "device"):
        options.update(device=args.device, device_map=args.device_map, max_memory=args.max_memory,
                       offload_folder=args.offload_folder)
    return options


def load_model_and_tokenizer(args, **tokenizer_kwargs):
    """The model folder ``args.model`` loaded with the runtime options of :func:`add_runtime_args`."""
    from ..models import load_model, load_tokenizer

    model = load_model(args.model, **model_load_options(args))
    return model, load_tokenizer(args.model, **tokenizer_kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="detoxflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"detoxflow {__version__}")
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
