"""A TCP forwarder: `python -m tests.forward PORT HOST TARGET_PORT`.

Listens on 127.0.0.1:PORT and relays every connection to HOST:TARGET_PORT. A build host
of the tests (tests/buildhosts.py) runs one in its namespace so that its engine and its
worker reach the shared registry at a loopback address, which Docker and Slipway use
without TLS, as on a host whose registry is local.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(port: int, host: str, target_port: int) -> None:
    async def relay(reader, writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
