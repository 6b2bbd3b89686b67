#!/usr/bin/env python3
"""A device of tend-sync driven by rauc-hawkbit's DDIClient (PyPI
`rauc-hawkbit`, aiohttp), a hawkBit DDI client written elsewhere.

It polls until a deployment is offered, reads the deploymentBase link as
rauc-hawkbit's own service does (`/deploymentBase/{id}?c={marker}`), asks
for the deployment, downloads the first artifact in HTTP `Range` segments
of --range-size bytes, reassembles them and checks size, SHA-256, SHA-1
and MD5 against the deployment, then reports progress (proceeding, 1 of
2) and the end (closed, success), and finally polls once more: nothing
must be offered any more.

Run by tests/tests/e2e/rauc_hawkbit.rs with the venv deploy/local/test.sh
makes (target/rauc-hawkbit-venv). Exits 0 when everything matched, 1 with
a message naming the mismatch otherwise.
"""

import argparse
import asyncio
import hashlib
import logging
import re
import sys
import time

import aiohttp
from rauc_hawkbit.ddi.client import APIError, DDIClient
from rauc_hawkbit.ddi.deployment_base import (
    DeploymentStatusExecution,
    DeploymentStatusResult,
)


class Mismatch(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Mismatch(message)


def say(message):
    print(f"rauc_client: {message}", flush=True)


async def offered(ddi, wait):
    """Base polls until a deploymentBase link appears; answers its href."""
    deadline = time.monotonic() + wait
    polls = 0
    while True:
        base = await ddi()
        polls += 1
        link = base.get("_links", {}).get("deploymentBase")
        if link:
            say(f"base poll {polls}: deploymentBase offered: {link['href']}")
            return link["href"]
        check(
            time.monotonic() < deadline,
            f"no deploymentBase offered after {polls} polls in {wait}s: {base}",
        )
        await asyncio.sleep(0.5)


async def download_in_ranges(session, ddi, url, size, range_size):
    """The artifact in `Range: bytes=a-b` segments, each answered 206 with
    the matching Content-Range; answers the reassembled bytes and the
    number of segments."""
    parts = []
    start = 0
    while start < size:
        end = min(start + range_size, size) - 1
        headers = {
            "Accept": "application/octet-stream",
            **ddi.headers,
            "Range": f"bytes={start}-{end}",
        }
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            body = await resp.read()
            check(
                resp.status == 206,
                f"Range bytes={start}-{end}: status {resp.status}, expected 206: {body[:200]!r}",
            )
            content_range = resp.headers.get("Content-Range")
            check(
                content_range == f"bytes {start}-{end}/{size}",
                f"Range bytes={start}-{end}: Content-Range {content_range!r}, "
                f"expected 'bytes {start}-{end}/{size}'",
            )
            check(
                len(body) == end - start + 1,
                f"Range bytes={start}-{end}: {len(body)} bytes, expected {end - start + 1}",
            )
        parts.append(body)
        start = end + 1
    return b"".join(parts), len(parts)


async def run(args):
    async with aiohttp.ClientSession() as session:
        ddi = DDIClient(
            session, args.host, False, args.token, args.tenant, args.controller_id
        )

        href = await offered(ddi, args.wait)
        # As rauc-hawkbit's own service (rauc_dbus_ddi_client.py) reads it.
        match = re.search(r"/deploymentBase/(.+)\?c=(.+)$", href)
        check(match is not None, f"deploymentBase href without /{{id}}?c=: {href}")
        action_id, marker = match.groups()

        deployment = await ddi.deploymentBase[action_id](marker)
        check(
            str(deployment.get("id")) == action_id,
            f"deploymentBase id {deployment.get('id')!r}, expected {action_id!r}",
        )
        chunks = deployment["deployment"]["chunks"]
        check(len(chunks) >= 1, f"no chunks: {deployment}")
        artifacts = chunks[0]["artifacts"]
        check(len(artifacts) >= 1, f"no artifacts: {deployment}")
        artifact = artifacts[0]
        size = artifact["size"]
        hashes = artifact["hashes"]
        url = artifact["_links"]["download-http"]["href"]
        say(
            f"deploymentBase {action_id}: {chunks[0]['name']} {chunks[0]['version']}, "
            f"{artifact['filename']}, {size} bytes, {url}"
        )
        check(
            size > args.range_size,
            f"the artifact ({size} bytes) fits one range of {args.range_size} bytes",
        )

        data, segments = await download_in_ranges(
            session, ddi, url, size, args.range_size
        )
        check(len(data) == size, f"reassembled {len(data)} bytes, expected {size}")
        for name in ("sha256", "sha1", "md5"):
            got = hashlib.new(name, data).hexdigest()
            check(
                got == hashes.get(name),
                f"{name} of the reassembled bytes {got}, deploymentBase says {hashes.get(name)}",
            )
        say(
            f"downloaded {size} bytes in {segments} ranges of at most {args.range_size}; "
            "sha256, sha1 and md5 match"
        )

        action = ddi.deploymentBase[action_id]
        await action.feedback(
            DeploymentStatusExecution.proceeding,
            DeploymentStatusResult.none,
            ["downloaded and verified"],
            cnt=1,
            of=2,
        )
        say("feedback: proceeding, 1 of 2")
        # The end as rauc-hawkbit's own service reports it: no progress
        # arguments, so the body carries `"progress": {}`.
        await action.feedback(
            DeploymentStatusExecution.closed,
            DeploymentStatusResult.success,
            ["installed"],
        )
        say("feedback: closed, success")

        after = await ddi()
        check(
            "deploymentBase" not in after.get("_links", {}),
            f"still offered after the final feedback: {after}",
        )
        say("base poll: nothing offered any more")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="tend-sync's host:port")
    parser.add_argument("tenant")
    parser.add_argument("controller_id")
    parser.add_argument("token", help="the device's target token")
    parser.add_argument(
        "--range-size", type=int, default=16384, help="bytes per Range request"
    )
    parser.add_argument(
        "--wait", type=float, default=30, help="seconds to poll for a deployment"
    )
    args = parser.parse_args()
    if args.range_size <= 0:
        parser.error("--range-size must be positive")
    # DDIClient logs each request, each answer and the body of an error
    # answer at debug level: on stderr, for the test's failure message.
    logging.basicConfig(stream=sys.stderr, format="DDIClient: %(message)s")
    logging.getLogger("rauc_hawkbit").setLevel(logging.DEBUG)
    try:
        asyncio.run(run(args))
    except Mismatch as e:
        print(f"rauc_client: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except APIError as e:
        print(f"rauc_client: FAILED: DDIClient: HTTP {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError) as e:
        print(
            f"rauc_client: FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True
        )
        sys.exit(1)
    say("ok")


if __name__ == "__main__":
    main()
