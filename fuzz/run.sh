#!/usr/bin/env bash
# Builds every fuzz target with cargo-afl and runs each, one after the other, for N seconds
# (default 60) of afl-fuzz's own time limit. Usage, from anywhere:
#
#   bash fuzz/run.sh [seconds]
#
# Needs cargo-afl (`cargo install cargo-afl`; README.md, Fuzzing). Outputs go to
# $FUZZ_OUT/<target> (default fuzz/target/fuzz-out, outside git); each target's directory is
# replaced by a fresh run. Prints each target's fuzzer_stats figures and exits 1 when any
# target saved a crash (its input is in $FUZZ_OUT/<target>/default/crashes/).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
out="${FUZZ_OUT:-$PWD/target/fuzz-out}"
targets=(normalize return_path credential jws_verify http_head config)

cargo afl build --release --locked
mkdir -p "$out"

# No UI (a log line instead); no CPU-governor or core_pattern checks, which need root and
# do not change what is found.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
crashed=0
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  echo "== $t: ${seconds}s"
  # afl-fuzz stops itself after -V seconds; timeout is a backstop for a stuck start-up.
  timeout "$((seconds + 300))" cargo afl fuzz -V "$seconds" -i "corpus/$t" -o "$out/$t" \
    "target/release/$t" > "$out/$t.log" 2>&1 || true
  stats="$out/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "$t: afl-fuzz did not run; see $out/$t.log" >&2
    tail -20 "$out/$t.log" >&2
    crashed=1
    continue
  fi
  grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs) ' "$stats" \
    | awk -v t="$t" '{ printf "%s %s=%s", (NR == 1 ? t ":" : ""), $1, $3 } END { print "" }'
  if [ "$(awk '$1 == "saved_crashes" { print $3 }' "$stats")" != "0" ]; then
    echo "$t: crashes saved in $out/$t/default/crashes/" >&2
    crashed=1
  fi
done
exit "$crashed"
