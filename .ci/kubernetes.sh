#!/usr/bin/env bash
# Offline schema validation of the shipped Kubernetes manifests (deploy/kubernetes) with
# kubernetes-validate (PyPI), which carries the Kubernetes API's JSON schemas: strict (unknown
# fields are errors), against the oldest Kubernetes the Job needs (backoffLimitPerIndex is
# beta from 1.29, on by default) and a current one. No cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KUBE_VENV:-/tmp/rewardsds-kube-validate}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi
for version in 1.29.0 1.35.0; do
  "$venv/bin/kubernetes-validate" --strict -k "$version" deploy/kubernetes/*.yaml
done
