# Sourced by the benchmarks: sets BIN to the Portico binary to measure, PORTICO_BIN if given (e.g. one with line
# tables for perf, or an older build to compare), else the `dist` build, built here (the profile releases use).
if [ -n "${PORTICO_BIN:-}" ]; then
  BIN=$PORTICO_BIN
else
  cargo build --profile dist -p portico --locked
  BIN=target/dist/portico
fi
