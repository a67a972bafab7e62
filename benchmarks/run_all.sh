#!/usr/bin/env bash
# Run every benchmark; each rewrites its own section of BENCHMARKS.md.
# Usage: bash benchmarks/run_all.sh   (from the repository root, in the project's environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
$PYTHON -m benchmarks.overhead
$PYTHON -m benchmarks.eval_speed
$PYTHON -m benchmarks.extract_speed
$PYTHON -m benchmarks.domain_shift
$PYTHON -m benchmarks.synth_speed
$PYTHON -m benchmarks.transfer  # about an hour
