"""A plain TCP client that knows nothing about TLS: echo_client.py PORT MESSAGE."""

import socket
import sys

message = sys.argv[2].encode()
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as sock:
    sock.sendall(message)
    reply = b""
    while len(reply) < len(message) and (chunk := sock.recv(65536)):
        reply += chunk
print(reply.decode() or "(no reply)")
