#!/usr/bin/env python3
"""watch_client.py: a second, independent watch load generator (Python's asyncio, no
third-party code), for the watch figures of BENCHMARKS.md next to oxcd-bench's.

N watchers long-poll one key (`?wait=true&waitIndex=I`), each on its own connection, and
re-arm after every event with the event's modifiedIndex + 1 (so a watcher that falls behind
catches up from the history, one event per request). Once every watcher is registered (the
server flushes a watch's headers when it registers it, etcd and oxcd alike), W PUTs go out
on a fixed schedule (open loop, --rate per second; a PUT slow to be acknowledged does not
delay the next one). Latency is from a write's acknowledgement to a watcher's receipt (a
delivery before the acknowledgement counts as 0 and is counted apart), and from the
write's sending.

Prints one JSON line in oxcd-bench's shape (throughput in delivered events per second,
latency_ms, from_send_ms, delivered, expected, negative_latencies, errors), which
bench/compare.sh summarises: `bench/compare.sh --client python -- watch --watchers 10000
--writes 100 --rate 2`.

Its own costs differ from oxcd-bench's (an interpreter parsing every answer): it shares
the cores with the server it measures, so compare servers under the same client only.
"""
import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summary(values_s):
    v = sorted(x * 1000.0 for x in values_s)
    return {"p50": percentile(v, 50), "p99": percentile(v, 99), "p999": percentile(v, 99.9)}


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time; answers with a
    Content-Length or chunked body. Calls on_head(status) when the headers arrive and
    on_answer(status, body, t) when the body is complete."""

    def __init__(self, on_head, on_answer, on_lost):
        self.buf = bytearray()
        self.on_head, self.on_answer, self.on_lost = on_head, on_answer, on_lost
        self.transport = None
        self.reset()

    def reset(self):
        self.status = None
        self.length = None
        self.chunked = False
        self.body = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.on_lost(exc)

    def send(self, data):
        self.transport.write(data)

    def data_received(self, data):
        self.buf += data
        while self.step():
            pass

    def step(self):
        """Consumes what it can from the buffer; True if more may follow."""
        if self.status is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            self.status = int(head[0].split()[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            self.on_head(self.status)
            return True
        if self.chunked:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(self.buf[:line_end]).split(b";")[0], 16)
            if len(self.buf) < line_end + 2 + size + 2:
                return False
            self.body += self.buf[line_end + 2 : line_end + 2 + size]
            del self.buf[: line_end + 2 + size + 2]
            if size == 0:
                self.finish()
            return True
        length = self.length or 0
        if len(self.buf) < length:
            return False
        self.body += self.buf[:length]
        del self.buf[:length]
        self.finish()
        return True

    def finish(self):
        status, body = self.status, bytes(self.body)
        self.reset()
        self.on_answer(status, body, time.perf_counter())


def modified_index(body):
    try:
        return json.loads(body)["node"]["modifiedIndex"]
    except (ValueError, KeyError, TypeError):
        return None


async def run(args):
    url = urlsplit(args.endpoint)
    host, port = url.hostname, url.port or 2379
    loop = asyncio.get_running_loop()
    key = f"/v2/keys/{args.prefix}/watchkey"
    value = "v" * args.val_size
    put_request = (
        f"PUT {key} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len('value=') + len(value)}\r\n\r\nvalue={value}"
    ).encode()
    errors = {}

    def error(kind):
        errors[kind] = errors.get(kind, 0) + 1

    # The writers' connections: an idle pool, a new connection when every one is busy.
    idle = []

    async def put():
        done = loop.create_future()
        state = {}

        def on_answer(status, body, t):
            if not done.done():
                done.set_result((status, body, t))

        def on_lost(exc):
            if not done.done():
                done.set_exception(ConnectionError(str(exc)))

        if idle:
            conn = idle.pop()
            conn.on_answer, conn.on_lost = on_answer, on_lost
        else:
            _, conn = await loop.create_connection(
                lambda: HttpConn(lambda s: None, on_answer, on_lost), host, port
            )
        state["sent"] = time.perf_counter()
        conn.send(put_request)
        status, body, acked = await done
        idle.append(conn)
        return status, body, state["sent"], acked

    status, body, _, _ = await put()
    first = modified_index(body)
    if status not in (200, 201) or first is None:
        sys.exit(f"watch_client: initial write answered {status}: {body[:200]!r}")
    first += 1

    watch_path = f"{key}?wait=true"
    registered = 0
    all_registered = loop.create_future()
    seen = []  # (modifiedIndex, receipt time) of every event
    final_index = [None]
    finished = loop.create_future()
    open_watchers = [args.watchers]

    class Watcher:
        def __init__(self):
            self.index = first
            self.conn = None
            self.counted = False
            self.done = False

        def arm(self):
            self.conn.send(
                f"GET {watch_path}&waitIndex={self.index} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            )

        def on_head(self, status):
            nonlocal registered
            if not self.counted and status == 200:
                self.counted = True
                registered += 1
                if registered == args.watchers and not all_registered.done():
                    all_registered.set_result(None)

        def on_answer(self, status, body, t):
            if status != 200:
                error(f"watcher status {status}")
                self.stop()
                return
            m = modified_index(body)
            if m is None:
                error("watcher: event without node.modifiedIndex")
                self.stop()
                return
            seen.append((m, t))
            self.index = m + 1
            if final_index[0] is not None and m >= final_index[0]:
                self.stop()
            else:
                self.arm()

        def on_lost(self, exc):
            if not self.done:
                error("watcher connection lost")
                self.stop()

        def stop(self):
            if self.done:
                return
            self.done = True
            if self.conn and self.conn.transport:
                self.conn.transport.close()
            open_watchers[0] -= 1
            if open_watchers[0] == 0 and not finished.done():
                finished.set_result(None)

    watchers = [Watcher() for _ in range(args.watchers)]
    gate = asyncio.Semaphore(128)

    async def connect(w):
        async with gate:
            try:
                _, w.conn = await loop.create_connection(
                    lambda: HttpConn(w.on_head, w.on_answer, w.on_lost), host, port
                )
            except OSError as e:
                error(f"connect: {e.strerror or e}")
                w.stop()
                return
            w.arm()

    await asyncio.gather(*(connect(w) for w in watchers))
    try:
        await asyncio.wait_for(asyncio.shield(all_registered), args.timeout)
    except asyncio.TimeoutError:
        error("not every watcher registered")

    # The writes, open loop.
    acks = {}
    spacing = 1.0 / args.rate
    start = time.perf_counter()

    async def scheduled_put(w):
        await asyncio.sleep(max(0.0, start + w * spacing - time.perf_counter()))
        try:
            status, body, sent, acked = await put()
        except (OSError, ConnectionError) as e:
            error(f"writer: {e}")
            return
        m = modified_index(body)
        if status not in (200, 201) or m is None:
            error(f"writer status {status}")
            return
        acks[m] = (sent, acked)

    await asyncio.gather(*(scheduled_put(w) for w in range(args.writes)))
    writer_done = time.perf_counter()
    if acks:
        final_index[0] = max(acks)
        # Watchers already past the last write stop now.
        for w in watchers:
            if not w.done and w.index > final_index[0]:
                w.stop()
    try:
        if not finished.done():
            await asyncio.wait_for(asyncio.shield(finished), args.timeout)
    except asyncio.TimeoutError:
        error("timeout: not every event delivered")
    for w in watchers:
        w.stop()

    from_ack, from_send = [], []
    negative = 0
    end = writer_done
    for m, t in seen:
        if m not in acks:
            continue
        sent, acked = acks[m]
        from_send.append(t - sent)
        end = max(end, t)
        if t < acked:
            negative += 1
            from_ack.append(0.0)
        else:
            from_ack.append(t - acked)
    delivered = len(from_ack)
    elapsed = end - start
    return {
        "workload": "watch",
        "client": "watch_client.py",
        "throughput": delivered / elapsed if elapsed > 0 else 0.0,
        "latency_ms": summary(from_ack),
        "from_send_ms": summary(from_send),
        "total": args.writes,
        "ok": len(acks),
        "errors": errors,
        "elapsed_s": elapsed,
        "delivered": delivered,
        "expected": args.watchers * args.writes,
        "negative_latencies": negative,
        "watchers": args.watchers,
        "registered": registered,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="http://127.0.0.1:2379")
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--writes", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0, help="writes per second (default 100)")
    p.add_argument("--val-size", type=int, default=8)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    if args.watchers < 1 or args.writes < 1 or args.rate <= 0:
        p.error("--watchers, --writes and --rate must be positive")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.watchers + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
