"""`dcgan-deploy serve` under load: throughput and latency at 1, 8 and 64 concurrent clients, with Ray
Serve's batching on and off, beside the in-process runtime on the same machine.

    python benchmarks/serve_speed.py [-m mnist] [--n 1] [--seconds 10] [--replicas 1]

A local Ray; one app with batching (up to 64 images per onnxruntime call) and one without (one
request per call), each with --replicas replicas. Each client sends seed requests of --n images
(JSON over HTTP, a keep-alive session per client) for --seconds; latency percentiles are per request.
The in-process runtime's figure is ``Generator.generate`` at the same batch the server reaches (64)
and at --n, in this process. Ends with one JSON line.
"""
import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dcgan_deploy import bundled, cpu  # noqa: E402
from dcgan_deploy import serve as server  # noqa: E402
from dcgan_deploy.runtime import Generator  # noqa: E402


def load(url: str, model: str, clients: int, n: int, seconds: float) -> dict:
    latencies, errors, lock = [], {}, threading.Lock()  # errors: HTTP status -> count
    end = time.perf_counter() + seconds

    def client(i):
        session = requests.Session()
        seed = i * 1_000_000
        while time.perf_counter() < end:
            body = {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
                               {"name": "n", "datatype": "INT64", "shape": [1], "data": [n]}]}
            t = time.perf_counter()
            r = session.post(f"{url}v2/models/{model}/infer", data=json.dumps(body), timeout=120)
            with lock:
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1
            seed += 1
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": len(ms), "errors": sum(errors.values()),
            "error_statuses": {str(k): v for k, v in sorted(errors.items())}, "images_per_s": round(len(ms) * n / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def with_stalled_clients(url: str, host: str, port: int, model: str, stalled: int, n: int, seconds: float) -> dict:
    """One honest client's latency while ``stalled`` clients hold connections open: each sends its headers
    and one byte of a declared 100-byte body, then nothing (loopback only; all closed at the end)."""
    import socket
    sockets, opened_at = [], time.perf_counter()
    try:
        for _ in range(stalled):
            s = socket.create_connection((host, port), timeout=60)
            s.sendall(b"POST /v2/models/" + model.encode() + b"/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 100\r\n\r\n{")
            sockets.append(s)
        honest = load(url, model, 1, n, seconds)
        sent_away = 0
        for s in sockets:  # how many the server has answered by now (408 after the stall limit)
            s.setblocking(False)
            try:
                sent_away += s.recv(16).startswith(b"HTTP/1.1 408")
            except BlockingIOError:
                pass
    finally:
        for s in sockets:
            s.close()
    return {"stalled_clients": stalled, "held_for_s": round(time.perf_counter() - opened_at, 1),
            "stalled_sent_away_408": sent_away, **{f"honest_{k}": v for k, v in honest.items()}}


def in_process(model, batch: int, seconds: float, threads: int | None) -> float:
    gen = Generator.load(model, device="cpu", threads=threads)
    gen.generate(batch, 0, batch_size=batch)
    count, end, seed = 0, time.perf_counter() + seconds, 0
    start = time.perf_counter()
    while time.perf_counter() < end:
        gen.generate(batch, seed, batch_size=batch)
        count += batch
        seed += 1
    return round(count / (time.perf_counter() - start), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="mnist")
    ap.add_argument("--n", type=int, default=1, help="images per request")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--stalled", default="",
                    help="comma-separated counts of stalled clients (headers and one byte of a body, then nothing) "
                         "to hold open while one honest client measures its latency, e.g. 1000,3000")
    ap.add_argument("--smoke", action="store_true", help="a short run at 1 and 2 clients: checks the script")
    args = ap.parse_args()
    clients = [1, 2] if args.smoke else [int(c) for c in args.clients.split(",")]
    seconds = 0.5 if args.smoke else args.seconds
    path = str(bundled.resolve(args.model).resolve())
    from ray import serve
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = Path(path).stem
    url = server.start([path], port=port, replicas=args.replicas, max_batch_size=64)
    try:
        unbatched = server.build_app({name: path}, replicas=args.replicas, max_batch_size=1)
        serve.run(unbatched, name="unbatched", route_prefix="/unbatched")
        rows = []
        for mode, base in (("batched", url), ("unbatched", url + "unbatched/")):
            load(base, name, 1, args.n, 0.3)  # warm up
            for c in clients:
                row = {"mode": mode, **load(base, name, c, args.n, seconds)}
                rows.append(row)
                print(f"{mode:<9} {c:>3} clients: {row['images_per_s']:9.1f} img/s, p50 {row['p50_ms']:7.2f} ms, "
                      f"p95 {row['p95_ms']:7.2f}, p99 {row['p99_ms']:7.2f} ({row['requests']} requests, "
                      f"{row['errors']} errors {row['error_statuses']})", flush=True)
        stalled_rows = []
        for count in ([2] if args.smoke else [int(c) for c in args.stalled.split(",") if c]):
            row = with_stalled_clients(url, "127.0.0.1", port, name, count, args.n, seconds)
            stalled_rows.append(row)
            print(f"{count} stalled clients: the honest client's p50 {row['honest_p50_ms']:.2f} ms, p99 "
                  f"{row['honest_p99_ms']:.2f} ms ({row['honest_requests']} requests, {row['honest_errors']} errors); "
                  f"{row['stalled_sent_away_408']} stalled sent away with 408 after {row['held_for_s']} s", flush=True)
    finally:
        server.stop()
    local = {"batch_64": in_process(path, 64, seconds, None), f"batch_{args.n}": in_process(path, args.n, seconds, None)}
    print(f"in-process runtime: {local}")
    print(json.dumps({"cpu": cpu.features(), "model": name, "n": args.n, "replicas": args.replicas, "seconds": seconds,
                      "stalled": stalled_rows,
                      "in_process_images_per_s": local, "rows": rows,
                      "median_batched_over_unbatched": statistics.median(
                          a["images_per_s"] / b["images_per_s"] for a, b in
                          zip([r for r in rows if r["mode"] == "batched"], [r for r in rows if r["mode"] == "unbatched"]))}))


if __name__ == "__main__":
    main()
