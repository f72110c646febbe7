#!/usr/bin/env bash
# Rehearses CI before a submission, the way CI runs: a fresh clone of the committed HEAD in a temporary
# folder, with ../shared beside it when there is one, and `bash .ci/run` with CI=true and no standard input:
#   1. once cold (an empty target directory of its own: the whole workspace builds, as on a new machine);
#   2. twice more in the same clone, warm;
#   3. once with a heavy job beside it (busy loops on every core), as when the machine is loaded.
# Every run must pass. Logs are kept in the printed folder.
#
#   scripts/ci-rehearsal.sh             # all four runs (the cold one takes about 25 minutes on two cores)
#   STEPS="warm loaded" scripts/ci-rehearsal.sh   # a subset; a warm run in a new clone also builds cold
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
STEPS=${STEPS:-"cold warm warm loaded"}
work=$(mktemp -d /tmp/portico-ci-rehearsal.XXXXXX)
git clone --quiet "$repo" "$work/main"
if [[ -d $repo/../shared ]]; then
  cp -r "$repo/../shared" "$work/shared"
  chmod -R a-w "$work/shared"
fi
echo "rehearsal in $work (HEAD $(git -C "$work/main" rev-parse --short HEAD))"

run() {
  local name=$1 start=$SECONDS
  if (cd "$work/main" && CI=true bash .ci/run </dev/null >"$work/$name.log" 2>&1); then
    echo "$name: passed in $((SECONDS - start)) s"
  else
    echo "$name: FAILED after $((SECONDS - start)) s; log: $work/$name.log" >&2
    grep -E 'panicked|FAILED|^error' "$work/$name.log" | head -20 >&2 || true
    exit 1
  fi
}

n=0
for step in $STEPS; do
  n=$((n + 1))
  case $step in
    cold | warm) run "$n-$step" ;;
    loaded)
      busy=()
      for ((c = 0; c < $(nproc); c++)); do
        sh -c 'while :; do :; done' &
        busy+=($!)
      done
      trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
      run "$n-$step"
      kill "${busy[@]}" 2>/dev/null || true
      trap - EXIT
      ;;
    *)
      echo "unknown step $step (cold, warm, loaded)" >&2
      exit 2
      ;;
  esac
done
echo "every rehearsal run passed"
