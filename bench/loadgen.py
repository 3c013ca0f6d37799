"""A small HTTP/1.1 load generator (keep-alive connections, asyncio), run in its own process.

    python bench/loadgen.py http://127.0.0.1:8000/ --concurrency 16 --duration 5 [--post]

Each of `--concurrency` clients keeps one connection and sends requests back to back for
`--duration` seconds (after `--warmup` seconds not counted). Prints one JSON line:
requests, errors (non-200 answers, broken connections, timeouts), requests/s, p50/p99/max ms.
A client whose connection breaks reconnects and goes on. Hand-written rather than httpx so
the load generator's own CPU (on a shared 2-core machine) stays small.
"""

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


async def client(
    host: str, port: int, request: bytes, stop_at: list[float], count_from: float, timeout: float
) -> tuple[list[float], int, list[str]]:
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < stop_at[0]:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            assert reader is not None
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
            if close:
                writer.close()
                writer = None
            ok = status == 200
            if not ok and len(samples) < 3:
                samples.append(f"HTTP {status}: {body[:200]!r}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
            ok = False
            if len(samples) < 3:
                samples.append(f"{type(error).__name__}: {error}")
            if writer is not None:
                writer.close()
            writer = None
        finished = time.perf_counter()
        if started >= count_from:
            if ok:
                latencies.append(finished - started)
            else:
                errors += 1
    if writer is not None:
        writer.close()
    return latencies, errors, samples


async def main(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    method, body = ("POST", b"{}") if args.post else ("GET", b"")
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    now = time.perf_counter()
    count_from = now + args.warmup
    stop_at = [count_from + args.duration]
    results = await asyncio.gather(
        *(client(host, port, request, stop_at, count_from, args.timeout) for _ in range(args.concurrency))
    )
    latencies = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    samples = [s for r in results for s in r[2]][:5]

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / args.duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "error_samples": samples,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--post", action="store_true")
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main(arguments))), flush=True)
