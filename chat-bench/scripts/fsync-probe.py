#!/usr/bin/env python3
"""What one durable append costs on this machine's disk, by size (issue #13, seventh pass).

Appends N bytes to a pre-written 64 MiB file and fdatasyncs, 3,000 times per size, 2 rounds;
prints p50 / p99 / p99.9 in ms. The file lives in $TERN_CACHE (default ~/.cache/tern), on the
same file system as the server's data in the benchmarks, and is removed at the end.

    taskset -c 1 chat-bench/scripts/fsync-probe.py
"""
import os
import time

cache = os.environ.get('TERN_CACHE', os.path.expanduser('~/.cache/tern'))
os.makedirs(cache, exist_ok=True)
path = os.path.join(cache, 'fsync-probe.bin')
size = 64 << 20
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
if os.fstat(fd).st_size < size:
    zeros = b'\0' * (1 << 20)
    for i in range(size >> 20):
        os.pwrite(fd, zeros, i << 20)
    os.fsync(fd)


def run(nbytes, n=3000):
    buf = os.urandom(nbytes)
    off = 0
    lat = []
    for _ in range(n):
        if off + nbytes > size:
            off = 0
        t = time.perf_counter_ns()
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        lat.append((time.perf_counter_ns() - t) / 1e6)
        off += nbytes
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[int(len(lat) * 0.999)]


try:
    for rnd in range(2):
        for nb in (4096, 9 * 4096, 64 * 4096):
            p50, p99, p999 = run(nb)
            print(f"round {rnd + 1}: append {nb // 1024:>3} KiB + fdatasync: "
                  f"p50 {p50:.3f}  p99 {p99:.3f}  p99.9 {p999:.3f} ms")
finally:
    os.close(fd)
    os.unlink(path)
