#!/usr/bin/env bash
# Renders deploy/k8s/base and every overlay in deploy/k8s/overlays/ with
# `kubectl kustomize`, then validates each rendering:
#   - against the Kubernetes API schemas with kubernetes-validate --strict
#     (unknown fields, wrong types, missing required fields, unknown kinds);
#   - against tend's own rules (deploy/checks/k8s_policy.py): restricted
#     security context, requests and limits, liveness on /healthz only,
#     shutdown timings, no Secret in base or prod, prod images by digest,
#     a token key per service (the platform reads only the admin key, sync
#     only the device key, nothing else either) and the instruction signing
#     key mounted by the platform alone; /metrics on a port of its own
#     open to the monitoring namespace only.
# Renders a copy of deploy/k8s in which each overlay's make-keys.sh (the dev
# overlay's) has made fresh keys, so no key of yours is read or written.
# Prints one line per rendering; exits non-zero on the first failure, and
# never passes when kubectl is missing.
#
#   deploy/checks/k8s.sh
#
# Needs kubectl (which bundles kustomize) and python3 with venv. The
# validator is installed from PyPI into target/checks-venv on first use.
set -euo pipefail

# kubernetes-validate bundles the schemas; the version below selects them.
# Keep K8S_VERSION at the oldest Kubernetes the manifests must support.
VALIDATE_VERSION=1.37.0
K8S_VERSION=1.32.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
venv=$root/target/checks-venv
out=$root/target/checks/k8s

fail() {
    echo "k8s check FAILED: $*" >&2
    exit 1
}

kubectl=${KUBECTL:-kubectl}
command -v "$kubectl" >/dev/null 2>&1 \
    || fail "kubectl not found: cannot render the manifests (install kubectl, or set KUBECTL=/path/to/kubectl)"

if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$VALIDATE_VERSION" ]]; then
    command -v python3 >/dev/null 2>&1 || fail "python3 not found: cannot install kubernetes-validate"
    echo "k8s: installing kubernetes-validate $VALIDATE_VERSION into ${venv#"$root"/}" >&2
    python3 -m venv "$venv" || fail "cannot create the venv $venv (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet "kubernetes-validate==$VALIDATE_VERSION" \
        || fail "cannot install kubernetes-validate==$VALIDATE_VERSION from PyPI"
fi

mkdir -p "$out"
src=$out/src
rm -rf "$src"
mkdir -p "$src"
cp -R deploy/k8s "$src/k8s"
rm -rf "$src"/k8s/overlays/*/keys
for make_keys in "$src"/k8s/overlays/*/make-keys.sh; do
    [[ -e $make_keys ]] || continue
    bash "$make_keys" >/dev/null || fail "${make_keys#"$src"/}: could not make the overlay's keys"
done
targets=("$src/k8s/base")
for dir in "$src"/k8s/overlays/*/; do
    targets+=("${dir%/}")
done
[[ ${#targets[@]} -gt 1 ]] || fail "no overlay found under deploy/k8s/overlays"

for target in "${targets[@]}"; do
    name=$(basename "$target")
    shown=deploy/${target#"$src"/}
    file=$out/$name.yaml
    if ! "$kubectl" kustomize "$target" >"$file" 2>"$out/$name.err"; then
        cat "$out/$name.err" >&2
        fail "$shown: kubectl kustomize could not render it"
    fi
    objects=$(grep -c '^kind:' "$file" || true)
    [[ $objects -gt 0 ]] || fail "$shown: the rendering is empty"

    # --quiet prints only warnings and errors. A warning (a kind without a
    # schema, such as a typo in `kind:`) fails the check too: with --strict
    # nothing may go unvalidated.
    report=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$file" 2>&1) \
        && status=0 || status=$?
    if [[ $status -ne 0 || -n "$report" ]]; then
        echo "$report" >&2
        fail "$shown: does not validate against the Kubernetes $K8S_VERSION schemas (strict); rendering in ${file#"$root"/}"
    fi

    "$venv/bin/python" deploy/checks/k8s_policy.py "$name" "$file" >&2 \
        || fail "$shown: breaks tend's manifest rules (above); rendering in ${file#"$root"/}"

    echo "k8s: $name: ok ($objects objects, kubernetes-validate $VALIDATE_VERSION --strict, Kubernetes $K8S_VERSION schemas, policy ok)"
done
