#!/usr/bin/env bash
# README command 1: set everything up, then run one guided closed-loop episode in simulation
# with the shipped default model, printing the plan live and writing a visual report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/emu-guide demo "$@"
