#!/usr/bin/env python3
"""Opens N idle TCP connections to HOST:PORT, writes "ready" to READY_FILE, then holds them
until stdin closes or HOLD_SECONDS pass. Used by run.sh for the idle-memory figure."""
import socket
import sys
import time

host, port, count, ready_file, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
conns = []
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host, port))
    conns.append(s)
with open(ready_file, "w") as f:
    f.write("ready\n")
deadline = time.time() + hold
while time.time() < deadline:
    time.sleep(0.1)
for s in conns:
    s.close()
