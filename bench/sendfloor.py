"""The floor of any fan-out on this machine: one send() per stream, and nothing else.

A plain epoll server, no gevent, no WSGI, no HTTP parsing beyond finding a head's end:
any request but POST /trigger is held as a stream (answered with a chunked head and a
`connected` chunk); POST /trigger sends one `bulk_update` chunk to every stream in
a bare loop, then answers. No server that writes each stream's message with a send of
its own can fan out faster than this one (bench/idle.py runs it beside ours).

    python bench/sendfloor.py PORT
"""

import resource
import select
import socket
import sys

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
FIRST = b'event: connected\ndata: {"project": "floor"}\n\n'
CHANGE = b'id: x-2\nevent: bulk_update\ndata: {"updates": {"101": "sold"}}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def main(port: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    heads: dict[int, tuple[socket.socket, bytes]] = {}     # fd -> (socket, head so far)
    streams: dict[int, socket.socket] = {}
    change = chunk(CHANGE)
    while True:
        for fd, _ in epoll.poll():
            if fd == listener.fileno():
                try:
                    while True:
                        client, _ = listener.accept()
                        client.setblocking(False)
                        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        heads[client.fileno()] = (client, b"")
                        epoll.register(client.fileno(), select.EPOLLIN)
                except BlockingIOError:
                    continue
            if fd in streams:                  # a stream's client hung up (or spoke)
                epoll.unregister(fd)
                streams.pop(fd).close()
                continue
            client, received = heads.pop(fd)
            try:
                data = client.recv(65536)
            except BlockingIOError:
                heads[fd] = (client, received)
                continue
            received += data
            if b"\r\n\r\n" not in received:
                if data:
                    heads[fd] = (client, received)
                else:
                    epoll.unregister(fd)
                    client.close()
                continue
            if received.startswith(b"POST /trigger"):
                for stream in streams.values():    # the loop measured: one send a stream
                    stream.send(change)
                epoll.unregister(fd)
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                client.close()
                continue
            client.sendall(HEAD + chunk(FIRST))
            streams[fd] = client

if __name__ == "__main__":
    main(int(sys.argv[1]))
