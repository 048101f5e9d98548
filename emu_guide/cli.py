"""``emu-guide``: one console entry point; each subcommand lives in the package that owns it.

A subcommand module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Modules are
imported only when their subcommand runs, so ``emu-guide --help`` needs no torch or ROS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("planner.demo", "run one guided closed-loop episode in simulation and write a visual report"),
    "bench": ("planner.bench", "closed-loop benchmark on held-out seeds (success, steps, latency)"),
    "bench-decode": ("model_runtime.bench_decode", "AR vs DiDA decoding benchmark"),
    "bench-sim": ("sim_envs.bench", "simulation steps/s and render time per env and resolution"),
    "record": ("finetune_embodied.record", "record expert episodes to a LeRobot v3 dataset"),
    "train": ("finetune_embodied.train", "train the vision tokenizer / language model / DiDA stages"),
    "label": ("finetune_embodied.labelling", "find step ends (keyframes) in a LeRobot dataset and score them against its labels"),
    "replay": ("emu_ros.replay", "run guidance over camera frames from a rosbag2 and write a new bag"),
}
# (subcommand, flag) -> the module that owns that mode and runs it with the same arguments: the
# over-ROS bench launches ROS node processes, which only the ROS layer may do (planner never does).
FLAG_OWNERS: dict[tuple[str, str], str] = {
    ("bench", "over_ros"): "emu_ros.bench_over_ros",
}


def build_parser(names: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu-guide", description="Embodied guidance middleware.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if names is None or name in names:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the module of the subcommand actually asked for.
    wanted = [a for a in argv if a in SUBCOMMANDS][:1]
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = args._module
    for (command, flag), owner in FLAG_OWNERS.items():
        if args.command == command and getattr(args, flag, False):
            module = importlib.import_module(owner)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
