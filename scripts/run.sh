#!/usr/bin/env bash
# Starts the web server and real Celery workers; Ctrl-C stops them all.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
pids=()

stop() {
  trap - INT TERM EXIT
  echo
  echo "Stopping web server and workers..."
  kill -TERM "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  echo "Stopped."
}
trap stop INT TERM EXIT

# Training: one job at a time per worker process, under jemalloc where it is installed (lower peaks: see the script).
scripts/with-jemalloc.sh "$VENV/bin/celery" -A config worker -Q gpu -c 1 --prefetch-multiplier=1 -n "gpu@%h" --loglevel=INFO &
pids+=($!)
# Ingest, attribution and settlement.
"$VENV/bin/celery" -A config worker -Q default -c 2 -n "main@%h" --loglevel=INFO &
pids+=($!)
# Inference: threads, so that concurrent requests share one warm model and are batched into one forward pass; one
# thread per place in the batch (MF_INFERENCE_BATCH_SIZE, from the environment or .env; default 16).
threads="${MF_INFERENCE_BATCH_SIZE:-$(sed -n 's/^MF_INFERENCE_BATCH_SIZE=\([0-9][0-9]*\)[[:space:]]*$/\1/p' .env 2>/dev/null | tail -n 1)}"
"$VENV/bin/celery" -A config worker -Q inference -P threads -c "${threads:-16}" -n "inference@%h" --loglevel=INFO &
pids+=($!)
addr="${MF_RUN_ADDR:-127.0.0.1:8000}"
"$VENV/bin/python" manage.py runserver "$addr" &
pids+=($!)

echo "ModelFactory is starting on http://$addr (Ctrl-C stops everything)."
wait -n "${pids[@]}"
