# Sourced by the benchmark scripts that watch a run's memory.
# sample_rss PID TSV COUNT_FN [INTERVAL_S]: every INTERVAL_S seconds (1 by
# default) until PID exits, appends "<sample> <VmRSS KiB> <output of
# COUNT_FN>" to TSV (the maps written so far).
sample_rss() {
  local pid=$1 tsv=$2 count_fn=$3 interval=${4:-1} t=0 rss
  : >"$tsv"
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && printf '%s\t%s\t%s\n' "$t" "$rss" "$($count_fn)" >>"$tsv"
    sleep "$interval"
    t=$((t + 1))
  done
}
