#!/usr/bin/env bash
# Build the public-domain English corpus and its token corpus (docs/data.md): apt-get update and apt-get download
# of the Debian packages (nothing is installed), plain text under CACHE/text, then one tokenized corpus of the books
# and the Python standard library under CACHE/tokens (~48 MiB: what a GPU run carries). About 6 minutes on 2 CPU
# cores; a second run reuses the downloaded packages.
#
#   bash scripts/fetch_books.sh [CACHE]        (default CACHE: runs/books)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${1:-runs/books}
PYTHON=${PYTHON:-python}
"$PYTHON" -m dla.cli data books --cache "$CACHE"
"$PYTHON" -m dla.cli data tokenize "$CACHE/tokens" --books "$CACHE/text" --source code:stdlib=stdlib \
    --vocab-size 16384 --train-chars 20000000 --heldout 0.05 --heldout-domain books=0.25 --seed 0
"$PYTHON" -m dla.cli data info "$CACHE/tokens"
