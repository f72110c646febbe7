#!/usr/bin/env bash
# Installs what Portico's tests, benchmarks and plugin builds need on a Debian machine, once:
#   - promtool (Debian `prometheus`): the metrics test checks the exposition with it;
#   - curl: remediation scripts and examples use it;
#   - keepalived: the VIP failover test (network namespaces, run when root) drives the example configs;
#   - chromium: the dashboard test renders the page in headless Chromium and reads its DOM;
#   - nginx-light, haproxy, wrk, h2load (`nghttp2-client`): the benchmark peers and load generators;
#   - zig from PyPI's `ziglang`, pinned: builds the bundled wasm plugins (there is no Rust wasm32 target here);
#   - `opentelemetry-proto` from PyPI, pinned: the trace test's OTLP receiver decodes Portico's spans with it.
# Safe to run again: it only installs what is missing.
set -euo pipefail

ZIGLANG_VERSION=0.17.1
OTEL_PROTO_VERSION=1.45.2
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v curl >/dev/null || need+=(curl)
command -v keepalived >/dev/null || need+=(keepalived)
command -v chromium >/dev/null || need+=(chromium)
if [[ "${PORTICO_SETUP_BENCH:-0}" == 1 ]]; then
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v wrk >/dev/null || need+=(wrk)
  command -v h2load >/dev/null || need+=(nghttp2-client)
  command -v valgrind >/dev/null || need+=(valgrind)
  command -v cmake >/dev/null || need+=(cmake)  # the Pingora proxy in bench/pingora builds zlib-ng
fi

if ((${#need[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "setup: installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! python3 -c "import ziglang, importlib.metadata as m; assert m.version('ziglang') == '$ZIGLANG_VERSION'" 2>/dev/null; then
  echo "setup: installing ziglang==$ZIGLANG_VERSION from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
fi

if ! python3 -c "import importlib.metadata as m; assert m.version('opentelemetry-proto') == '$OTEL_PROTO_VERSION'; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2" 2>/dev/null; then
  echo "setup: installing opentelemetry-proto==$OTEL_PROTO_VERSION from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "opentelemetry-proto==$OTEL_PROTO_VERSION"
fi
