#!/usr/bin/env bash
# Install what the Java and Node example clients (and tests/e2e/test_clients.py) need.
# Idempotent: a second run only checks and returns (about a second).
#
#   Java: Debian's grpc-java 1.41, protoc and its Java plugin, javac (apt, needs root);
#   Node: node/npm (apt when missing) and `npm ci` in examples/clients/node.
#
# Usage: examples/clients/setup.sh        (from anywhere; as root, or with sudo available)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

APT_PACKAGES=(
  default-jdk-headless          # javac/java (any JDK >= 11 on PATH also works)
  protobuf-compiler             # protoc
  protobuf-compiler-grpc-java-plugin  # /usr/bin/grpc_java_plugin
  libprotobuf-java
  libgrpc-java
  libperfmark-java
  libtomcat9-java               # tomcat9-annotations-api.jar: javax.annotation.Generated
  libgoogle-gson-java           # JSON for the Invoke call
)
# Files that prove the packages above are present (checked before touching apt).
NEEDED_FILES=(
  /usr/bin/protoc
  /usr/bin/grpc_java_plugin
  /usr/share/java/protobuf.jar
  /usr/share/java/grpc-netty.jar
  /usr/share/java/perfmark-api.jar
  /usr/share/java/tomcat9-annotations-api.jar
  /usr/share/java/gson.jar
)

missing=()
for f in "${NEEDED_FILES[@]}"; do
  [[ -e "$f" ]] || missing+=("$f")
done
command -v javac >/dev/null || missing+=(javac)
command -v node >/dev/null || missing+=(node)
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]})); then
  pkgs=("${APT_PACKAGES[@]}")
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v npm >/dev/null || pkgs+=(npm)
  if [[ "$(id -u)" == 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "missing: ${missing[*]}" >&2
    echo "install with: apt-get update && apt-get install -y ${pkgs[*]}" >&2
    exit 1
  fi
  echo "clients setup: installing ${pkgs[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "${pkgs[@]}" >/dev/null
fi

# Node dependencies, pinned by package-lock.json; skipped when the lockfile has not changed.
NODE_DIR="$HERE/node"
STAMP="$NODE_DIR/node_modules/.modelgate-npm-ci"
if [[ ! -f "$STAMP" || "$NODE_DIR/package-lock.json" -nt "$STAMP" ]]; then
  echo "clients setup: npm ci in $NODE_DIR"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$STAMP"
fi
echo "clients setup: Java and Node toolchains ready"
