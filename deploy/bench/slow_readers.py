#!/usr/bin/env python3
"""Hold many artifact downloads open mid-body, reading slowly (stdlib only).

    slow_readers.py --url URL --tokens FILE --count N --rate-kb KB
                    --hold-s S --ready-file FILE [--timeout-s S]

Opens N HTTP/1.1 connections to URL (a tend-sync artifact download), each
with the token of another device ("device_id token boot_id" lines of
provision.py), reads the answer's headers and then reads the body at
KB KiB/s per connection, like a device on a slow link. Once every download
has its headers and first bytes (or failed), it writes READY-FILE ("ok
failed" counts), so that the caller measures the server while all of them
are mid-body; it keeps reading for S seconds more, then closes every
connection (a download cut short, as a device that loses its link) and
prints one JSON line: ok, failed (before the body), broken (while held),
statuses, errors, bytes read, seconds to open them all.

Memory of the client itself stays small: each connection's buffer is
bounded (16 KiB) and what is read is dropped. Loopback only: URL is the
caller's. Exits non-zero if it could not finish within --timeout-s.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.parse

# Connections being opened at once: well under the listen backlog, so no
# SYN is dropped and retried a second later.
OPENING_AT_ONCE = 64
# Body reads per second per connection: the rate is spread over them.
TICKS_PER_S = 4


def settle(stats):
    """Marks the start settled once every download is mid-body or failed."""
    if stats["ok"] + stats["failed"] == stats["n"] and not stats["settled"].done():
        stats["settled"].set_result(None)


async def download(url, token, rate, opened, hold, stats):
    u = urllib.parse.urlsplit(url)
    writer = None
    midway = False
    try:
        async with opened:
            reader, writer = await asyncio.open_connection(u.hostname, u.port, limit=16 * 1024)
            writer.write(
                (f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                 f"Authorization: Bearer {token}\r\nAccept: */*\r\n\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
        if status != 200:
            stats["failed"] += 1
            return
        per_tick = max(1, rate // TICKS_PER_S)
        first = await reader.readexactly(per_tick)
        stats["bytes"] += len(first)
        stats["ok"] += 1
        midway = True
        settle(stats)
        while not hold.is_set():
            await asyncio.sleep(1 / TICKS_PER_S)
            data = await reader.readexactly(per_tick)
            stats["bytes"] += len(data)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        # Failed before its first bytes, or broken while being held.
        stats["broken" if midway else "failed"] += 1
        stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
    finally:
        settle(stats)
        if writer is not None:
            writer.close()


async def main_async(a, tokens):
    loop = asyncio.get_running_loop()
    stats = {"n": len(tokens), "ok": 0, "failed": 0, "broken": 0, "bytes": 0, "statuses": {},
             "errors": {}, "settled": loop.create_future()}
    opened = asyncio.Semaphore(OPENING_AT_ONCE)
    hold = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(download(a.url, t, a.rate_kb * 1024, opened, hold, stats))
             for t in tokens]
    await stats["settled"]
    open_s = time.monotonic() - t0
    with open(a.ready_file, "w") as f:
        f.write(f"{stats['ok']} {stats['failed']}\n")
    await asyncio.sleep(a.hold_s)
    hold.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"ok": stats["ok"], "failed": stats["failed"], "broken": stats["broken"],
            "statuses": {str(k): v for k, v in stats["statuses"].items()},
            "errors": stats["errors"], "bytes": stats["bytes"], "open_s": round(open_s, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate-kb", type=int, default=64)
    p.add_argument("--hold-s", type=float, default=15)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--timeout-s", type=float, default=120)
    a = p.parse_args()
    tokens = []
    with open(a.tokens) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                tokens.append(parts[1])
            if len(tokens) == a.count:
                break
    if len(tokens) < a.count:
        sys.exit(f"slow_readers: ERROR: {len(tokens)} tokens in {a.tokens}, {a.count} wanted")
    try:
        result = asyncio.run(asyncio.wait_for(main_async(a, tokens), a.timeout_s))
    except asyncio.TimeoutError:
        sys.exit(f"slow_readers: ERROR: not done within {a.timeout_s} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
