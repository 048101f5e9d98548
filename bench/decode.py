"""AR vs DiDA decoding benchmark: ``python bench/decode.py [options]`` == ``emu-guide bench-decode``."""

from __future__ import annotations

import argparse
import sys

from model_runtime import bench_decode

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/decode.py", description=bench_decode.__doc__.splitlines()[0])
    bench_decode.add_arguments(parser)
    sys.exit(bench_decode.main(parser.parse_args()))
