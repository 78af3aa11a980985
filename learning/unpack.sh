#!/usr/bin/env bash
# Put what a GPU step returned back in place: unpack.sh FOLDER [WORK]
# FOLDER holds the step's <step>.tar.part-* files; WORK is the chain's folder (default: outputs/learning).
set -euo pipefail
FOLDER="$1"
WORK="${2:-$(dirname "$0")/../outputs/learning}"
mkdir -p "$WORK"
for first in "$FOLDER"/*.tar.part-00; do
  archive="${first%-00}"
  cat "$archive"-* | tar -xf - -C "$WORK"
  echo "unpacked $(basename "${archive%.part}") into $WORK"
done
