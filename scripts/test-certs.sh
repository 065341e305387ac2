#!/usr/bin/env bash
# Generates the certificates the TLS tests use, into DIR (default target/test-tls): a CA, a
# server certificate for 127.0.0.1/localhost, a client certificate (mutual TLS), and a second,
# unrelated CA (for the wrong-CA test). Idempotent: an existing complete set is kept.
set -euo pipefail
dir="${1:-$(dirname "$0")/../target/test-tls}"
mkdir -p "$dir"
cd "$dir"
# One generator at a time, so parallel runs never mix two sets.
exec 9>.lock
flock 9
if [ -s ca.crt ] && [ -s server.crt ] && [ -s client.crt ] && [ -s other-ca.crt ]; then
  exit 0
fi
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "openssl not found: installing it (apt-get install openssl)" >&2
    apt-get install -y -qq openssl >/dev/null
  else
    echo "openssl not found: the TLS tests generate their certificates with it. Install it (Debian: apt-get install openssl)." >&2
    exit 1
  fi
fi
# Written to temporary names and moved into place last, so a concurrent run never sees half a set.
tmp=$(mktemp -d "$PWD/.gen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  q() { openssl "$@" 2>/dev/null; }
  q req -x509 -new -nodes -newkey rsa:2048 -days 30 -subj "/CN=tiered-cache test CA" -keyout ca.key -out ca.crt
  q req -x509 -new -nodes -newkey rsa:2048 -days 30 -subj "/CN=unrelated CA" -keyout other-ca.key -out other-ca.crt
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  q req -new -nodes -newkey rsa:2048 -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
  q x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile server.ext -out server.crt
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  q req -new -nodes -newkey rsa:2048 -subj "/CN=tiered-cache client" -keyout client.key -out client.csr
  q x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out client.crt
  chmod 644 ./*.key
)
for f in ca.key ca.crt other-ca.crt server.key server.crt client.key client.crt; do
  mv -f "$tmp/$f" "$f"
done
