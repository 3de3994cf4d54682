#!/usr/bin/env bash
# The test split's benchmark, one model at a time, each result saved and (COMMIT=1) committed when it ends:
#   bash benchmarks/test_split.sh NAME...   # fixtures/test_models/NAME.onnx -> benchmarks/results/test_NAME.json
# The protocol of every test row: three draws of 500 clean training images, 2,000 test images, ONP beside CLP,
# Fine-Pruning, random pruning and no defense. Models with a result already are skipped (REDO=1 reruns them).
# The real models of ../shared/real_models the same way: PREFIX=real bash benchmarks/test_split.sh NAME...
# ONP alone with the current code, beside the earlier baselines' rows (BENCHMARKS keeps the latest row per model
# and defense): DEFENSES=none,onp PREFIX=test_final bash benchmarks/test_split.sh NAME...
set -uo pipefail
cd "$(dirname "$0")/.."
ONP=${ONP:-onnx-onp}
# COMMIT=1 commits each result with BENCHMARKS.md re-rendered (PYTHON= the interpreter with the project)
for name in "$@"; do
  out=benchmarks/results/${PREFIX:-test}_$name.json
  if [[ -f $out && ${REDO:-0} != 1 ]]; then echo "== $name: done already"; continue; fi
  echo "== $name $(date -u +%H:%M:%S)"
  tmp=$(mktemp --suffix=.json)
  if $ONP bench --cases "$name" --defenses "${DEFENSES:-none,onp,clp,fp,random}" --defense-size 500 --seed 0 --draws 3 \
       --test-limit 2000 --provider auto --json "$tmp" > "/tmp/bench_$name.md"; then
    mv "$tmp" "$out"
    tail -n 5 "/tmp/bench_$name.md"
    if [[ ${COMMIT:-0} == 1 ]]; then
      for _ in 1 2 3 4 5 6; do
        # BENCHMARKS.md is the rendering of the results (a test holds it so): re-render with every new result
        ${PYTHON:-python} -m benchmarks.render_benchmarks --out BENCHMARKS.md > /dev/null &&
        git add -- "$out" BENCHMARKS.md benchmarks/results/INDEX.md &&
        git commit -q -m "${PREFIX:-test} split: $name benchmarked (3 draws, bench --draws 3 --test-limit 2000); BENCHMARKS re-rendered" \
          -- "$out" BENCHMARKS.md benchmarks/results/INDEX.md && break
        sleep 5
      done
    fi
  else
    echo "bench of $name failed (rc $?)"; rm -f "$tmp"
  fi
done
