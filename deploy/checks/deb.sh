#!/usr/bin/env bash
# Builds the agent's Debian package (deploy/debian/build-deb.sh) and checks
# what is in it: control fields, conffile, maintainer scripts, every file
# with its owner and mode, the packaged binary's --version and that it has no
# fault points, the systemd unit (systemd-analyze verify, when available) and
# lintian when it is installed (it is not installed for this check: that step
# is skipped with a notice).
# Exits non-zero with the reason at the first problem.
#
#   deploy/checks/deb.sh
#   TEND_AGENT_BIN=/path/to/tend-agent deploy/checks/deb.sh   # package a prebuilt binary
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

fail() {
    echo "deb check FAILED: $*" >&2
    exit 1
}

command -v dpkg-deb >/dev/null 2>&1 || fail "dpkg-deb not found: cannot build or inspect the package"

deb=$(bash deploy/debian/build-deb.sh | tail -n 1) || fail "deploy/debian/build-deb.sh failed"
[[ -f $deb ]] || fail "build-deb.sh did not produce a package (said: $deb)"
rel=${deb#"$root"/}

version=$(dpkg-deb --field "$deb" Version)
arch=$(dpkg-deb --field "$deb" Architecture)
[[ $(basename "$deb") == "tend-agent_${version}_${arch}.deb" ]] \
    || fail "$rel: file name does not match Version $version and Architecture $arch"
[[ $(dpkg-deb --field "$deb" Package) == tend-agent ]] || fail "$rel: Package is not tend-agent"
depends=$(dpkg-deb --field "$deb" Depends)
[[ $depends == *libc6* ]] || fail "$rel: Depends ($depends) lacks libc6"
for field in Maintainer Description Installed-Size; do
    [[ -n $(dpkg-deb --field "$deb" "$field") ]] || fail "$rel: control field $field is empty"
done

info=$(dpkg-deb --info "$deb")
for script in postinst prerm postrm conffiles md5sums; do
    grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$script\b" <<<"$info" \
        || fail "$rel: control member $script is missing"$'\n'"$info"
done

# Owner, group and mode of every file that must be there.
contents=$(dpkg-deb --contents "$deb")
expect() { # mode path
    grep -Eq "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \./$2\$" <<<"$contents" \
        || fail "$rel: expected $1 root/root ./$2"$'\n'"$contents"
}
expect '-rwxr-xr-x' usr/bin/tend-agent
expect '-rw-r--r--' lib/systemd/system/tend-agent.service
expect '-rw-------' etc/tend/agent.toml
expect '-rw-r--r--' usr/share/doc/tend-agent/copyright
expect '-rw-r--r--' usr/share/doc/tend-agent/changelog.gz

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --extract "$deb" "$tmp/root"
dpkg-deb --control "$deb" "$tmp/control"

grep -qx /etc/tend/agent.toml "$tmp/control/conffiles" || fail "$rel: /etc/tend/agent.toml is not a conffile"
cmp -s agent/tend-agent.example.toml "$tmp/root/etc/tend/agent.toml" \
    || fail "$rel: /etc/tend/agent.toml differs from agent/tend-agent.example.toml"
cmp -s deploy/systemd/tend-agent.service "$tmp/root/lib/systemd/system/tend-agent.service" \
    || fail "$rel: the unit differs from deploy/systemd/tend-agent.service"
for script in postinst prerm postrm; do
    sh -n "$tmp/control/$script" || fail "$rel: $script is not valid sh"
done
grep -q 'daemon-reload' "$tmp/control/postinst" || fail "$rel: postinst does not reload systemd"
# (The lines that tell the administrator to start it are echoed, not run.)
grep -Ev '^[[:space:]]*echo ' "$tmp/control/postinst" \
    | grep -Eq 'systemctl (--system )?start|deb-systemd-invoke start' \
    && fail "$rel: postinst must not start the unconfigured agent"

# No fault points on a device: the variable that arms them (agent/src/fault.rs)
# is named only in code tend-agent's fault-points feature compiles in.
command -v strings >/dev/null 2>&1 || fail "strings (binutils) not found: cannot inspect the packaged binary"
faults=$(strings -a "$tmp/root/usr/bin/tend-agent" | grep -c TEND_AGENT_FAULTS || true)
[[ $faults -eq 0 ]] || fail "$rel: the packaged tend-agent has fault points ($faults strings name TEND_AGENT_FAULTS)"

if [[ $arch == "$(dpkg --print-architecture)" ]]; then
    got=$("$tmp/root/usr/bin/tend-agent" --version) || fail "$rel: the packaged binary does not run"
    [[ $got == "tend-agent ${version//\~/-}" ]] || fail "$rel: binary says '$got', package is $version"
else
    echo "deb: $arch binary not run on $(dpkg --print-architecture)" >&2
fi

# A fleet's package carries the platform's signing keys, and the packaged
# agent reads them: with them it gets past signing_keys to the device
# secret the administrator still has to set.
fleet_key=$(python3 -c 'import base64; print(base64.b64encode(bytes(range(1, 33))).decode())')
fleet_deb=$(TEND_AGENT_BIN="$tmp/root/usr/bin/tend-agent" DEB_ARCH="$arch" \
    TEND_AGENT_SIGNING_KEYS="$fleet_key" bash deploy/debian/build-deb.sh | tail -n 1) \
    || fail "build-deb.sh with TEND_AGENT_SIGNING_KEYS failed"
dpkg-deb --fsys-tarfile "$fleet_deb" | tar -xO ./etc/tend/agent.toml >"$tmp/fleet.toml"
grep -qx "signing_keys = \[\"$fleet_key\"\]" "$tmp/fleet.toml" \
    || fail "TEND_AGENT_SIGNING_KEYS did not reach the packaged agent.toml"
TEND_AGENT_SIGNING_KEYS="not-a-key" bash deploy/debian/build-deb.sh >/dev/null 2>&1 \
    && fail "build-deb.sh accepted a signing key that is not one"
# The default package again, as the checks above saw it.
bash deploy/debian/build-deb.sh >/dev/null || fail "deploy/debian/build-deb.sh failed"

if command -v systemd-analyze >/dev/null 2>&1; then
    # verify insists that ExecStart's binary exists: point it at the
    # extracted one, everything else as packaged.
    mkdir -p "$tmp/unit"
    sed "s#^ExecStart=/usr/bin/tend-agent #ExecStart=$tmp/root/usr/bin/tend-agent #" \
        "$tmp/root/lib/systemd/system/tend-agent.service" >"$tmp/unit/tend-agent.service"
    verify=$(systemd-analyze verify "$tmp/unit/tend-agent.service" 2>&1) \
        || fail "systemd-analyze verify rejects the unit:"$'\n'"$verify"
    [[ -z $verify ]] || fail "systemd-analyze verify warns about the unit:"$'\n'"$verify"
    unit_check="systemd-analyze verify ok"
else
    unit_check="systemd-analyze not installed: unit not verified"
fi

if command -v lintian >/dev/null 2>&1; then
    lintian --fail-on error,warning "$deb" >&2 || fail "lintian reports problems in $rel"
    lint="lintian ok"
else
    lint="lintian not installed: skipped"
fi

echo "deb: $rel ok (Depends: $depends; files, modes, conffile, maintainer scripts ok; no fault points; $unit_check; $lint)"
