#!/usr/bin/env bash
# Makes the dev overlay's keys on this machine, into keys/ next to this
# script (ignored by git), unless they exist already:
#   keys/token-keys.env   admin-token-key and device-token-key, 48 random
#                         bytes each in base64 (TEND_ADMIN_TOKEN_KEY for the
#                         platform, TEND_DEVICE_TOKEN_KEY for sync)
#   keys/signing-key.pem  the Ed25519 key that signs instructions (PKCS#8 PEM)
# kustomization.yaml turns them into the Secrets tend-secrets and
# tend-signing-key. No key is written in the repository: a service refuses
# any key published in tend's own files.
#
#   deploy/k8s/overlays/dev/make-keys.sh
#   kubectl apply -k deploy/k8s/overlays/dev
#
# Delete keys/ to make new ones: admins log in again, devices authenticate
# again, and agents must pin the new signing key.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/keys"
command -v openssl >/dev/null 2>&1 || { echo "make-keys.sh: openssl is required" >&2; exit 1; }
umask 077
mkdir -p "$dir"

if [ ! -s "$dir/token-keys.env" ]; then
    # Two different keys: one per service.
    printf 'admin-token-key=%s\ndevice-token-key=%s\n' \
        "$(openssl rand -base64 48)" "$(openssl rand -base64 48)" >"$dir/token-keys.env.new"
    mv "$dir/token-keys.env.new" "$dir/token-keys.env"
    echo "make-keys.sh: wrote $dir/token-keys.env"
fi
if [ ! -s "$dir/signing-key.pem" ]; then
    openssl genpkey -algorithm ed25519 -out "$dir/signing-key.pem.new"
    mv "$dir/signing-key.pem.new" "$dir/signing-key.pem"
    echo "make-keys.sh: wrote $dir/signing-key.pem"
fi
