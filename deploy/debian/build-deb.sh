#!/usr/bin/env bash
# Builds the Debian package of the device agent:
#   target/debian/tend-agent_<version>_<arch>.deb
# holding
#   /usr/bin/tend-agent                       the release binary, stripped
#   /lib/systemd/system/tend-agent.service    deploy/systemd/tend-agent.service
#   /etc/tend/agent.toml                      conffile, mode 0600, from agent/tend-agent.example.toml
#                                             (signing_keys from TEND_AGENT_SIGNING_KEYS when set)
#   /usr/share/doc/tend-agent/{copyright,changelog.gz}
# The version is the agent crate's (cargo metadata); the architecture is the
# build machine's (dpkg --print-architecture): the package holds the binary
# cargo builds here, so build on (or for) the devices' architecture.
#
#   deploy/debian/build-deb.sh            # prints the path of the .deb
#
# For devices of another architecture, build the binary for them first and
# package it without the cargo build:
#   TEND_AGENT_BIN=target/aarch64-unknown-linux-gnu/release/tend-agent \
#   DEB_ARCH=arm64 deploy/debian/build-deb.sh
#
# Needs cargo, python3, dpkg-deb; uses dpkg-shlibdeps (package dpkg-dev) to
# compute the library dependencies when it is installed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

fail() {
    echo "build-deb FAILED: $*" >&2
    exit 1
}

for tool in cargo python3 dpkg-deb dpkg strip gzip; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found"
done

package=tend-agent
if [[ -n ${TEND_AGENT_BIN:-} ]]; then
    binary=$(realpath "$TEND_AGENT_BIN")
    [[ -x $binary ]] || fail "TEND_AGENT_BIN=$TEND_AGENT_BIN is not an executable file"
else
    # --locked: the package holds exactly the dependency versions of
    # Cargo.lock.
    cargo build --release --locked -p "$package" >&2 || fail "cargo build --release --locked -p $package failed"
    binary=$root/target/release/tend-agent
    [[ -x $binary ]] || fail "$binary was not built"
fi

# Cargo's 1.2.0-rc.1 sorts after 1.2.0 for dpkg; 1.2.0~rc.1 sorts before.
cargo_version=$(cargo metadata --no-deps --format-version 1 \
    | python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tend-agent"))') \
    || fail "cannot read the version of $package from cargo metadata"
version=${cargo_version//-/\~}
arch=${DEB_ARCH:-$(dpkg --print-architecture)}

out=$root/target/debian
work=$out/build
stage=$work/debian/$package        # dpkg-shlibdeps' expected layout
deb=$out/${package}_${version}_${arch}.deb
rm -rf "$work" "$deb"
mkdir -p "$stage/DEBIAN"

# Files. Modes are set explicitly: the umask of whoever builds must not leak
# into the package. --root-owner-group below makes everything root:root.
install -D -m 0755 "$binary" "$stage/usr/bin/tend-agent"
# Debian policy's stripping: the device gets a smaller binary (panics still
# report file and line).
# (A binary for another architecture needs that architecture's strip: set
# STRIP, e.g. STRIP=aarch64-linux-gnu-strip.)
"${STRIP:-strip}" --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/bin/tend-agent"
install -D -m 0644 deploy/systemd/tend-agent.service "$stage/lib/systemd/system/tend-agent.service"
# 0600: the file holds the device secret.
install -D -m 0600 agent/tend-agent.example.toml "$stage/etc/tend/agent.toml"
# The platform's instruction-signing public keys, baked into the fleet's
# package so devices trust them from their first start (comma-separated;
# `tend-platform signing-key KEY.pem` prints one).
if [[ -n ${TEND_AGENT_SIGNING_KEYS:-} ]]; then
    keys=""
    IFS=',' read -ra given <<<"$TEND_AGENT_SIGNING_KEYS"
    for key in "${given[@]}"; do
        key=${key//[[:space:]]/}
        [[ $key =~ ^[A-Za-z0-9+/]{43}=$ ]] \
            || fail "TEND_AGENT_SIGNING_KEYS: \"$key\" is not the base64 of a 32-byte Ed25519 public key"
        keys+="${keys:+, }\"$key\""
    done
    grep -qx 'signing_keys = \[\]' "$stage/etc/tend/agent.toml" \
        || fail "agent/tend-agent.example.toml has no 'signing_keys = []' line to fill in"
    sed -i "s|^signing_keys = \[\]\$|signing_keys = [$keys]|" "$stage/etc/tend/agent.toml"
fi
doc=$stage/usr/share/doc/$package
install -d -m 0755 "$doc" "$stage/usr/share/lintian/overrides"
cat >"$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tend
Source: the tend repository

Files: *
Copyright: the tend authors
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License. You may obtain a copy
 of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations
 under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
EOF
chmod 0644 "$doc/copyright"
# Every date in the package is the last commit's, so two builds of the same
# tree give the same bytes (dpkg-deb honours SOURCE_DATE_EPOCH too).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
date=$(date -R -u -d "@$SOURCE_DATE_EPOCH")
# A native package's changelog.
printf '%s (%s) stable; urgency=medium\n\n  * Release %s of the tend device agent.\n\n -- tend maintainers <tend@localhost>  %s\n' \
    "$package" "$version" "$cargo_version" "$date" | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
# The secret-holding config is 0600 on purpose.
printf '%s: non-standard-file-perm 0600 != 0644 [etc/tend/agent.toml]\n' "$package" \
    >"$stage/usr/share/lintian/overrides/$package"
chmod 0644 "$stage/usr/share/lintian/overrides/$package"

# Library dependencies: the Rust binary links glibc and libgcc_s (unwinding).
depends="libc6, libgcc-s1"
if [[ $arch != "$(dpkg --print-architecture)" ]]; then
    echo "build-deb: foreign architecture $arch: Depends is unversioned: $depends" >&2
elif command -v dpkg-shlibdeps >/dev/null 2>&1; then
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$package" "$package" >"$work/debian/control"
    shlibs=$(cd "$work" && dpkg-shlibdeps -O "debian/$package/usr/bin/tend-agent" 2>/dev/null) \
        || fail "dpkg-shlibdeps could not analyse the binary"
    depends=${shlibs#shlibs:Depends=}
    rm "$work/debian/control"
else
    echo "build-deb: dpkg-shlibdeps not found (package dpkg-dev): Depends is unversioned: $depends" >&2
fi
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat >"$stage/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: tend maintainers <tend@localhost>
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Description: tend device agent (cloud remote maintenance)
 Runs on each device of a fleet managed by tend: heartbeats to the tend-sync
 server, fetches the remote commands queued for the device (reboot,
 shutdown, log queries, upgrades, restores), runs each one at most once,
 reports the result and keeps a local operation log.
 .
 Configure /etc/tend/agent.toml with the device's credentials, then start
 the service: systemctl start tend-agent.
EOF
echo /etc/tend/agent.toml >"$stage/DEBIAN/conffiles"

cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
# Enable the unit, but start it only once it is configured: a fresh install
# carries the example config, whose placeholder credentials can only fail.
# (The unit's ExecCondition also skips it at boot while the placeholder
# secret is still there.) On an upgrade, restart the agent if it runs, so the
# new binary takes over; its actions' processes survive (KillMode=process).
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    if [ -x /usr/bin/deb-systemd-helper ]; then
        deb-systemd-helper unmask tend-agent.service >/dev/null || true
        # was-enabled is true on a first install: enable it. On an upgrade it
        # keeps the administrator's choice (a disabled agent stays disabled).
        if deb-systemd-helper --quiet was-enabled tend-agent.service; then
            deb-systemd-helper enable tend-agent.service >/dev/null || true
        else
            deb-systemd-helper update-state tend-agent.service >/dev/null || true
        fi
    elif [ -z "$2" ]; then
        systemctl enable tend-agent.service >/dev/null 2>&1 || true
    fi
    if [ -n "$2" ] && [ -d /run/systemd/system ]; then
        if [ -x /usr/bin/deb-systemd-invoke ]; then
            deb-systemd-invoke try-restart tend-agent.service >/dev/null || true
        else
            systemctl try-restart tend-agent.service >/dev/null || true
        fi
    fi
    if [ "$1" = configure ] && [ -z "$2" ]; then
        echo "tend-agent: set server_url (https://), device_id and device_secret in /etc/tend/agent.toml"
        echo "tend-agent: (and ca_file when the server's certificate comes from a private CA),"
        echo "tend-agent: then run: systemctl start tend-agent"
    fi
fi
exit 0
EOF

cat >"$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Stop the agent when the package is removed. Not on upgrade: the postinst
# restarts it with the new binary, and an upgrade the agent itself runs must
# not stop it halfway.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    if [ -x /usr/bin/deb-systemd-invoke ]; then
        deb-systemd-invoke stop tend-agent.service >/dev/null || true
    else
        systemctl stop tend-agent.service >/dev/null || true
    fi
fi
# The agent's own upgrades keep the previous binary beside it, and stage the
# next one there: neither belongs to the package.
if [ "$1" = remove ]; then
    rm -f /usr/bin/.tend-agent.tend-backup /usr/bin/.tend-agent.tend-staged
fi
exit 0
EOF

cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ -x /usr/bin/deb-systemd-helper ]; then
    case "$1" in
        remove)
            deb-systemd-helper mask tend-agent.service >/dev/null || true
            ;;
        purge)
            deb-systemd-helper purge tend-agent.service >/dev/null || true
            deb-systemd-helper unmask tend-agent.service >/dev/null || true
            ;;
    esac
fi
# Purge forgets the device entirely: its journal, operation log and backups.
# (dpkg removes /etc/tend/agent.toml itself, being a conffile.)
if [ "$1" = purge ]; then
    rm -rf /var/lib/tend-agent
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

# Conffiles are left out of md5sums, as dh_md5sums does: dpkg tracks their
# checksums itself (DEBIAN/conffiles).
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
    | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

find "$stage" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2 || fail "dpkg-deb --build failed"
echo "$deb"
