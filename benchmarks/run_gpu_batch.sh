#!/usr/bin/env bash
# Run several benchmark commands on the GPU machine in one device call, one queue per GPU.
#
#   bash benchmarks/run_gpu_batch.sh QUEUE_FILE [QUEUE_FILE ...]
#
# Each QUEUE_FILE lists one command per line (run from the repo root with PYTHONPATH=.); queue i runs on GPU i,
# queues run in parallel, commands in a queue one after another. Every command's output goes to
# $OUT/logs/<queue>-<n>.log; at the end everything under $OUT/logs is packed into $OUT/results.tar.gz
# (the device tool returns at most 8 files). Result rows are the lines starting with "| 20" in the logs.
# SAME_GPU=1 runs every queue on GPU 0; GPUS="0 0 1" names the GPU of each queue (concurrent quality checks that
# fit one GPU; never for timings).
# Wheels: .whl/*.whl, or the folder named by WHEELS, are installed into /tmp/site first.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/logs"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$OUT/logs/gpus.csv" 2>&1
gpu=0
pids=()
read -r -a gpu_of <<< "${GPUS:-}"
qi=0
for queue in "$@"; do
    [ -n "${gpu_of[$qi]:-}" ] && gpu=${gpu_of[$qi]}
    qi=$((qi + 1))
    name=$(basename "$queue" .txt)
    (
        n=0
        while IFS= read -r cmd; do
            [ -z "$cmd" ] && continue
            case "$cmd" in \#*) continue ;; esac
            n=$((n + 1))
            log="$OUT/logs/${name}-${n}.log"
            echo "### $cmd" > "$log"
            start=$(date +%s)
            CUDA_VISIBLE_DEVICES=$gpu timeout "${CMD_TIMEOUT:-400}" bash -c "$cmd" >> "$log" 2>&1
            echo "### exit $? after $(( $(date +%s) - start )) s" >> "$log"
        done < "$queue"
    ) &
    pids+=($!)
    [ "${SAME_GPU:-0}" = 1 ] || gpu=$((gpu + 1))
done
for p in "${pids[@]}"; do wait "$p"; done
cp benchmarks/RESULTS.md "$OUT/logs/RESULTS.remote.md"  # rows that scripts appended with --append
tar -czf "$OUT/results.tar.gz" -C "$OUT" logs
grep -h "^### exit" "$OUT"/logs/*.log | sort | uniq -c
grep -h "^| 20" "$OUT"/logs/*.log
