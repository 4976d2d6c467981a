#!/usr/bin/env bash
# Start / stop a Spark standalone master + N workers on this host (127.0.0.1), from the pyspark
# wheel (it has spark-class but no sbin scripts). The integration tests use the same code.
#   bash infra/standalone-cluster.sh start [WORKERS] [CORES] [MEMORY]   -> prints spark://127.0.0.1:PORT
#   bash infra/standalone-cluster.sh stop
set -euo pipefail
case "${1:-}" in
  start) python3 -m jobs.localcluster start --workers "${2:-2}" --cores "${3:-1}" --memory "${4:-2g}" ;;
  stop)  python3 -m jobs.localcluster stop ;;
  *) echo "usage: $0 start [WORKERS] [CORES] [MEMORY] | stop" >&2; exit 2 ;;
esac
