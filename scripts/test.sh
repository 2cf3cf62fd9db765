#!/usr/bin/env bash
# Run the whole cryopose test suite (creates .venv and installs what it needs on first use).
# Tests that run RELION skip with a reason when RELION is not installed
# (apt-get install -y relion); .ci/run installs it.
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
# Two test workers, one torch thread each: more threads than cores spin instead of computing.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest -n 2 -p no:cacheprovider "$@"
