#!/bin/sh
# countdown: the gyoza container protocol by hand, in busybox sh.
# Inputs arrive as JSON in $GYOZA_INPUTS (and /gyoza/inputs.json); the server
# has already filled in defaults and checked them against input_schema.
set -eu

inputs="${GYOZA_INPUTS:-{\}}"
seconds=$(printf '%s' "$inputs" | sed -n 's/.*"seconds": *\([0-9][0-9]*\).*/\1/p')
seconds=${seconds:-10}
fail=false
case "$inputs" in *'"fail": true'*|*'"fail":true'*) fail=true ;; esac

echo "counting down from $seconds (run ${GYOZA_RUN_ID:-local}, attempt ${GYOZA_ATTEMPT:-1})"
i=$seconds
while [ "$i" -gt 0 ]; do
    echo "$i..."
    echo "GYOZA:{\"type\": \"PROGRESS\", \"msg\": $(( (seconds - i) * 100 / seconds ))}"
    sleep 1
    i=$((i - 1))
done
echo 'GYOZA:{"type": "PROGRESS", "msg": 100}'

if [ "$fail" = true ]; then
    echo "liftoff aborted (fail=true)" >&2
    exit 1
fi
echo "liftoff"
echo "GYOZA:{\"type\": \"OUTPUTS\", \"outputs\": {\"counted\": $seconds}}"
