#!/usr/bin/env python3
"""Provision benchmark devices and fetch their device tokens (stdlib only).

    provision.py --platform URL --sync URL --admin USER:PASSWORD \
                 --count N --prefix NAME --out FILE [--secrets-out FILE]

Logs in to tend-platform, creates N devices (through
`POST /api/v1/devices/bulk {"devices": [...]}` when the platform's OpenAPI
document lists it, else one `POST /api/v1/devices` each, over one keep-alive
connection), trades each device's secret for a device token at tend-sync
(`POST /device/v1/auth`) and writes FILE (mode 0600) with one line per
device: "device_id token boot_id" (and, with --secrets-out, the secrets
as "device_id secret" lines). Prints one summary line. Exits non-zero
with a one-line reason on any failure.
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse
import uuid


class Api:
    """One keep-alive HTTP connection to a base URL."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None
        self.token = None

    def call(self, method, path, body=None):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                # A keep-alive connection the server closed: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = raw.decode(errors="replace")
        return r.status, value


def die(msg):
    print(f"provision: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def credentials_in(value):
    """Every {device_id, secret} found anywhere in an answer."""
    found = []
    if isinstance(value, dict):
        c = value.get("credentials")
        if isinstance(c, dict) and "device_id" in c and "secret" in c:
            found.append((c["device_id"], c["secret"]))
            return found
        for v in value.values():
            found.extend(credentials_in(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(credentials_in(v))
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--platform", required=True)
    p.add_argument("--sync", required=True)
    p.add_argument("--admin", required=True, help="USER:PASSWORD")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--out", required=True)
    p.add_argument("--secrets-out", help='also write "device_id secret" lines here (mode 0600)')
    a = p.parse_args()

    platform = Api(a.platform)
    user, _, password = a.admin.partition(":")
    st, v = platform.call("POST", "/api/v1/auth/login", {"username": user, "password": password})
    if st != 200 or not isinstance(v, dict) or "access_token" not in v:
        die(f"admin login: HTTP {st}: {v}")
    platform.token = v["access_token"]

    st, doc = platform.call("GET", "/api/v1/openapi.json")
    paths = doc.get("paths", {}) if isinstance(doc, dict) else {}
    bulk = any(k.rstrip("/") == "/api/v1/devices/bulk" for k in paths)

    def spec(i):
        return {"name": f"{a.prefix}-{i:06d}", "device_type": "bench", "labels": {"bench": a.prefix}}

    t0 = time.monotonic()
    creds = []
    how = "one POST /api/v1/devices each"
    if bulk:
        batch = 100
        i = 0
        while i < a.count:
            chunk = [spec(j) for j in range(i, min(i + batch, a.count))]
            st, v = platform.call("POST", "/api/v1/devices/bulk", {"devices": chunk})
            got = credentials_in(v) if st in (200, 201) else []
            if len(got) != len(chunk):
                print(f"provision: bulk creation answered HTTP {st} with {len(got)} credentials "
                      f"for {len(chunk)} devices; creating the rest one by one", file=sys.stderr)
                creds.extend(got)
                i += len(got)
                bulk = False
                break
            creds.extend(got)
            i += len(chunk)
        if bulk:
            how = f"POST /api/v1/devices/bulk in batches of {batch}"
    while len(creds) < a.count:
        st, v = platform.call("POST", "/api/v1/devices", spec(len(creds)))
        got = credentials_in(v) if st == 201 else []
        if len(got) != 1:
            die(f"creating device {len(creds)}: HTTP {st}: {v}")
        creds.extend(got)
    t1 = time.monotonic()

    sync = Api(a.sync)
    lines = []
    for device_id, secret in creds:
        st, v = sync.call("POST", "/device/v1/auth", {"device_id": device_id, "secret": secret})
        if st != 200 or not isinstance(v, dict) or "token" not in v:
            die(f"device auth of {device_id}: HTTP {st}: {v}")
        lines.append(f"{device_id} {v['token']} {uuid.uuid4()}\n")
    t2 = time.monotonic()

    fd = os.open(a.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
    if a.secrets_out:
        fd = os.open(a.secrets_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{d} {s}\n" for d, s in creds)
    print(f"provisioned {len(creds)} devices ({how}) in {t1 - t0:.1f}s, "
          f"{len(lines)} device tokens in {t2 - t1:.1f}s")


if __name__ == "__main__":
    main()
