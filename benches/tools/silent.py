"""Connections that never speak, from many addresses: the probe of BENCHMARKS.md's "20,000
silent connections" run.

    python3 benches/tools/silent.py HOST PORT N SECS FIRST_SUBNET

opens N TCP connections that never send a byte, from loopback source addresses
127.0.FIRST_SUBNET.1 onwards (200 per address, under the default per-address cap), replaces each
as soon as the server closes it, for SECS seconds, and prints one JSON line: connections opened,
closed by the server, closed within 0.5 s (refused at once), and how long the server held them
(p50, p99, max; measured here, so a busy client adds its own lag). One process holds at most
its open-files limit: run several for more."""
import asyncio, sys, time, json
host, port, n, secs, first_src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
held_for = []; opened = 0; failed = 0; refused_fast = 0
deadline = time.monotonic() + secs
async def one(i):
    global opened, failed, refused_fast
    src = f"127.0.{first_src + i // 200}.{1 + i % 200}"
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
        except OSError:
            failed += 1; await asyncio.sleep(0.5); continue
        opened += 1; t0 = time.monotonic()
        try:
            data = await asyncio.wait_for(r.read(1), timeout=max(0.1, deadline - t0))
            d = time.monotonic() - t0
            held_for.append(d)
            if d < 0.5: refused_fast += 1; await asyncio.sleep(0.2)
        except asyncio.TimeoutError:
            pass
        except OSError:
            held_for.append(time.monotonic() - t0)
        w.close()
async def main():
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        if i % 500 == 499: await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
asyncio.run(main())
held_for.sort()
q = lambda p: round(held_for[int(p * (len(held_for) - 1))], 2) if held_for else None
print(json.dumps({"conns": n, "opened": opened, "connect_failed": failed, "closed_by_server": len(held_for),
  "closed_within_0.5s": refused_fast, "held_p50_s": q(0.5), "held_p99_s": q(0.99), "held_max_s": q(1.0)}))
