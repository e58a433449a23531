#!/usr/bin/env bash
# Brings the seed's full-stack example (deploy/lab/seed/) up in network namespaces with
# svcplane-lab (3 nodes, svcplane-proxy on each, svcplane-dns as kube-dns), shows Service routing
# and DNS from a web-app pod and the NodePort from the external client, then takes it down.
# Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p svcplane-tests --bins
lab=./target/debug/svcplane-lab
export SVCPLANE_LAB_NAME=demo
trap '$lab down >/dev/null 2>&1 || true' EXIT
$lab up deploy/lab/seed --nodes 3
web=$($lab status --json | python3 -c 'import json,sys; print(next(p["name"] for p in json.load(sys.stdin)["pods"].values() if p["name"].startswith("web-app")))')
echo; echo "\$ svcplane-lab exec $web -- curl -s http://web-app-service/   (x6)"
for _ in 1 2 3 4 5 6; do $lab exec "myapp-prod/$web" -- curl -s --max-time 2 http://web-app-service/; done
echo; echo "\$ svcplane-lab exec $web -- getent hosts redis-service postgres-0.postgres-headless"
$lab exec "myapp-prod/$web" -- getent hosts redis-service postgres-0.postgres-headless
echo; echo "\$ svcplane-lab exec $web -- curl -s http://redis-service:6379/"
$lab exec "myapp-prod/$web" -- curl -s --max-time 2 http://redis-service:6379/
echo; echo "\$ svcplane-lab exec --external -- curl -s http://192.168.50.10:30080/   (NodePort)"
$lab exec --external -- curl -s --max-time 2 http://192.168.50.10:30080/
