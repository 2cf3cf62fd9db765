#!/usr/bin/env bash
# Run cryopose's demo on the data bundled in the package (creates .venv on first use).
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec cryopose demo "$@"
