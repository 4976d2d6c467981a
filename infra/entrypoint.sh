#!/usr/bin/env bash
# Container entrypoint of the metacurate image (infra/Dockerfile). Modes:
#   driver ARGS...     Spark on Kubernetes / Spark operator driver pod: spark-submit in client mode
#                      (the pod *is* the cluster-mode driver) with ARGS from Spark
#                      (--properties-file ... --class org.apache.spark.deploy.PythonRunner FILE ...).
#   executor           Spark on Kubernetes executor pod: the KubernetesExecutorBackend JVM, configured
#                      by the SPARK_* variables Spark sets on the pod (SPARK_JAVA_OPT_n = JVM options).
#   master [ARGS]      Spark standalone master (the pyspark wheel has no sbin/ start scripts).
#   worker URL [ARGS]  Spark standalone worker joining spark://HOST:PORT.
#   anything else      run it as a command, e.g. `metacurate run --config /config/run.yaml`.
set -euo pipefail

if [ -z "${SPARK_HOME:-}" ]; then
  SPARK_HOME="$(python3 -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
fi
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-python3}"

mode="${1:-}"
case "$mode" in
  driver)
    shift
    bind=()
    if [ -n "${SPARK_DRIVER_BIND_ADDRESS:-}" ]; then
      bind=(--conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}")
    fi
    exec "$SPARK_HOME/bin/spark-submit" --deploy-mode client "${bind[@]}" "$@"
    ;;
  executor)
    shift
    : "${SPARK_DRIVER_URL:?executor mode needs SPARK_DRIVER_URL (set by Spark on the executor pod)}"
    : "${SPARK_EXECUTOR_ID:?executor mode needs SPARK_EXECUTOR_ID}"
    # JVM options arrive as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in order.
    java_opts=()
    while IFS= read -r name; do
      java_opts+=("${!name}")
    done < <(env | sed -n 's/^\(SPARK_JAVA_OPT_[0-9]*\)=.*/\1/p' | sort -t_ -k4 -n)
    mem="${SPARK_EXECUTOR_MEMORY:-1g}"
    classpath="${SPARK_CONF_DIR:-/opt/spark/conf}:${SPARK_HOME}/jars/*"
    if [ -n "${SPARK_CLASSPATH:-}" ]; then classpath="${SPARK_CLASSPATH}:${classpath}"; fi
    java_bin="java"
    if [ -n "${JAVA_HOME:-}" ]; then java_bin="${JAVA_HOME}/bin/java"; fi
    exec "$java_bin" "-Xms${mem}" "-Xmx${mem}" "${java_opts[@]}" -cp "$classpath" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" \
      --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "${SPARK_EXECUTOR_CORES:-1}" \
      --app-id "${SPARK_APPLICATION_ID:-}" \
      --hostname "${SPARK_EXECUTOR_POD_IP:-$(hostname -i)}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      --podName "${SPARK_EXECUTOR_POD_NAME:-$(hostname)}"
    ;;
  master)
    shift
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-$(hostname -i)}" --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
  worker)
    shift
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" "$@"
    ;;
  "")
    exec metacurate --help
    ;;
  *)
    exec "$@"
    ;;
esac
