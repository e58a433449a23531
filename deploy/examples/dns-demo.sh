#!/usr/bin/env bash
# Runs svcplane-dns on the example manifests (deploy/examples/) and asks it a few questions with
# dig. Builds the release binary first; stops the server on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${PORT:-5353}
cargo build --release -q -p svcplane-dns
./target/release/svcplane-dns --manifests deploy/examples \
  --listen "127.0.0.1:$port" --health-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" dns-version.cluster.local TXT >/dev/null 2>&1 && break
  sleep 0.1
done
ask() { echo "\$ dig $*"; dig +noall +answer +authority @127.0.0.1 -p "$port" "$@"; echo; }
ask web-app-service.myapp-prod.svc.cluster.local
ask redis-service.myapp-prod.svc.cluster.local
ask postgres-headless.myapp-prod.svc.cluster.local
ask postgres-0.postgres-headless.myapp-prod.svc.cluster.local
ask SRV postgres-headless.myapp-prod.svc.cluster.local
ask -x 10.96.1.200
ask no-such-service.myapp-prod.svc.cluster.local
