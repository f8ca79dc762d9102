#!/usr/bin/env python3
"""A site's uplink to its registry, on loopback: a TCP relay with one shared bandwidth and a delay.

usage: uplink.py LISTEN_PORT TARGET_PORT MBYTES_PER_S RTT_MS   (both ports on 127.0.0.1)

On loopback an upstream answers at gigabytes per second with no delay, and a mirror's cold path
is measured against its own CPU; a real registry is tens of milliseconds away, behind a link
of a few hundred Mbit/s that all downloads share. This relay gives the upstream that link:
every byte it sends towards clients takes its turn on one shared timeline at the given rate, so
a proxy that fetches a blob twice pays for it twice; connecting and every request wait one
round trip, so a proxy that asks the upstream more often pays for that too.
"""
import asyncio
import sys
import time

CHUNK = 64 << 10


SLACK = 0.02  # seconds of idle link a sender may use up: time spent outside sleep() is not lost


class Link:
    """One shared timeline: each chunk reserves len/rate seconds after the previous one."""

    def __init__(self, rate):
        self.rate = rate
        self.free_at = time.monotonic()

    async def send(self, n):
        now = time.monotonic()
        self.free_at = max(self.free_at, now - SLACK) + n / self.rate
        await asyncio.sleep(self.free_at - now)


async def pump(reader, writer, link=None, delay=0.0):
    try:
        while data := await reader.read(CHUNK):
            if delay:
                await asyncio.sleep(delay)
            if link:
                await link.send(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(listen, target, rate, rtt):
    link = Link(rate)

    async def relay(client_r, client_w):
        await asyncio.sleep(rtt)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pump(client_r, up_w, delay=rtt), pump(up_r, client_w, link))

    server = await asyncio.start_server(relay, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port, target, mbytes, rtt_ms = sys.argv[1:5]
    asyncio.run(main(int(port), int(target), float(mbytes) * 1e6, float(rtt_ms) / 1e3))
