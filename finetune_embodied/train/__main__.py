"""``python -m finetune_embodied.train`` (what ``torchrun -m`` runs): same as ``emu-guide train``."""

from __future__ import annotations

import argparse
import sys

from finetune_embodied.train import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="finetune_embodied.train", description="train a stage")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
