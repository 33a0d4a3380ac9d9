"""The JavaScript runtime's speed: onnxruntime-web in headless Chromium (wasm, one thread, and two threads
on a cross-origin isolated page) and in Node, beside native onnxruntime with one and two threads.

    npm ci && python benchmarks/web_speed.py [-m mnist -m mnist-int8 ...] [--batch-size 64] [--seconds 3]

Each model runs the same file in each runtime on the same latents (seed 0) at one batch size, in
alternating rounds (native, the browser, the isolated browser, Node, ...), --seconds per runner per
round after a warm-up; images/s is the median over the rounds, and each runtime's share of native
one-thread onnxruntime is the median of the per-round ratios.

Then the ceiling each engine sets: one float32 MatMul (--gemm N: [N, N] x [N, N], the weight an
initializer) in onnxruntime-web's wasm backend in Node against native onnxruntime, both on one
thread, in the same alternating rounds, as GFLOP/s. A network of convolutions (im2col + GEMM in
both engines) runs at most about that share of native. Ends with one JSON line.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dcgan_deploy import bundled, cpu  # noqa: E402
from dcgan_deploy import web  # noqa: E402
from dcgan_deploy.runtime import Generator  # noqa: E402

TIME_JS = """
const [file, n, seconds, threads, done] = arguments;
(async () => {
  const site = await (await fetch("site.json")).json();
  const ort = await import(site.ort.module);
  ort.env.wasm.numThreads = threads;
  const { loadGenerator } = await import("./dcgan.mjs");
  const gen = window.__bench && window.__bench.file === file ? window.__bench.gen : await loadGenerator(file, { ort });
  window.__bench = { file, gen };
  const z = gen.latents(n, 0);
  await gen.run(z);
  const times = [], end = performance.now() + seconds * 1000;
  while (performance.now() < end || times.length < 3) { const t = performance.now(); await gen.run(z); times.push(performance.now() - t); }
  times.sort((a, b) => a - b);
  done({ median_ms: times[Math.floor(times.length / 2)], runs: times.length, threads: ort.env.wasm.numThreads,
         isolated: self.crossOriginIsolated });
})().catch((e) => done({ error: String(e) }));
"""

# The end of each Node script: one timed round of its ``run()`` per line of stdin (the parent alternates
# the runtimes), answered with a line of JSON. Needs ``seconds`` and ``rounds``; holds no "%".
NODE_ROUNDS = """
process.stdin.setEncoding("utf8");
let left = rounds;
process.stdin.on("data", async () => {
  const times = [], end = performance.now() + seconds * 1000;
  while (performance.now() < end || times.length < 3) { const t = performance.now(); await run(); times.push(performance.now() - t); }
  times.sort((x, y) => x - y);
  process.stdout.write(JSON.stringify({ median_ms: times[Math.floor(times.length / 2)], runs: times.length }) + "\\n");
  if (--left === 0) process.exit(0);
});
"""

NODE_JS = """
import * as ort from "onnxruntime-web";
import { loadGenerator } from "%s";
const [file, n, seconds, threads, rounds] = process.argv.slice(2).map((v, i) => (i ? +v : v));
ort.env.wasm.numThreads = threads;
const gen = await loadGenerator(file, { ort });
const z = gen.latents(n, 0);
await gen.run(z);
const run = () => gen.run(z);
""" + NODE_ROUNDS


GEMM_JS = """
import * as ort from "onnxruntime-web";
import { readFileSync } from "node:fs";
const [file, n, seconds, rounds] = process.argv.slice(2).map((v, i) => (i ? +v : v));
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(file));
const a = new ort.Tensor("float32", Float32Array.from({ length: n * n }, (_, i) => Math.sin(i)), [n, n]);
await session.run({ a });
const run = () => session.run({ a });
""" + NODE_ROUNDS


def gemm_model(n: int, path: Path) -> Path:
    """One MatMul a[n, n] @ b[n, n] with b an initializer: each engine's best float32 kernel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def gemm_ceiling(n: int, args, tmp: Path) -> dict:
    """GFLOP/s of one [n, n] x [n, n] MatMul: native onnxruntime vs onnxruntime-web's wasm in Node, one thread."""
    import numpy as np
    import onnxruntime as rt
    file = gemm_model(n, tmp / "gemm.onnx")
    opts = rt.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = rt.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    a = np.sin(np.arange(n * n, dtype=np.float64)).astype(np.float32).reshape(n, n)
    session.run(None, {"a": a})
    script = ROOT / ".web_speed_gemm.mjs"
    script.write_text(GEMM_JS)
    node = None
    try:
        node = subprocess.Popen(["node", str(script), str(file), str(n), str(args.seconds), str(args.rounds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        medians = {"native-1": [], "node-wasm-1": []}
        for _ in range(args.rounds):
            medians["native-1"].append(median_ms(lambda: session.run(None, {"a": a}), args.seconds))
            medians["node-wasm-1"].append(node_round(node, "the MatMul ceiling"))
        node.wait(timeout=60)
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        script.unlink()
    flop = 2 * n ** 3
    row = {"gemm": n, **{f"{k}_gflops": round(flop / (statistics.median(m) / 1e3) / 1e9, 2) for k, m in medians.items()},
           "node-wasm-1_vs_native_1": round(statistics.median(x / y for x, y in
                                                              zip(medians["native-1"], medians["node-wasm-1"])), 3)}
    print(f"ceiling: MatMul {n}x{n} float32, one thread: native {row['native-1_gflops']:.1f} GFLOP/s, "
          f"wasm in Node {row['node-wasm-1_gflops']:.1f} GFLOP/s ({row['node-wasm-1_vs_native_1']:.0%})", flush=True)
    return row


def node_round(node: subprocess.Popen, what: str) -> float:
    """One round of a Node script ending in ``NODE_ROUNDS``: its median call in ms."""
    node.stdin.write("go\n")
    node.stdin.flush()
    line = node.stdout.readline()
    if not line:
        sys.exit(f"{what} in Node stopped (exit code {node.wait(timeout=60)}); its error is above")
    return json.loads(line)["median_ms"]


def median_ms(fn, seconds: float) -> float:
    """One round: call ``fn`` for ``seconds`` (at least 3 times); the median call in ms."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def native(path, n: int, seconds: float, threads: int):
    gen = Generator.load(path, device="cpu", threads=threads)
    z = gen.latents(n, 0)
    gen.run(z)
    return lambda: median_ms(lambda: gen.run(z), seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gemm", type=int, default=1024, help="the ceiling's MatMul size (0: skip it)")
    ap.add_argument("--smoke", action="store_true", help="one short round of the first model: checks the script")
    args = ap.parse_args()
    if args.gemm < 0:
        ap.error(f"--gemm {args.gemm}: give a matrix size (e.g. 1024), or 0 to skip the ceiling")
    if args.smoke:
        args.seconds, args.rounds, args.batch_size, args.gemm = 0.1, 1, 4, min(args.gemm, 64)
    dist = web.local_dist()
    if dist is None or web.find_browser() is None or not shutil.which("node"):
        sys.exit("needs `npm ci` (onnxruntime-web), Node, and chromium with chromium-driver")
    models = args.model or ["mnist"]
    if args.smoke:
        models = models[:1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        web.build(models, site, ort_dist=dist, gate=False)
        script = ROOT / ".web_speed_node.mjs"  # beside node_modules, where Node resolves onnxruntime-web
        script.write_text(NODE_JS % (web.ASSETS / "dcgan.mjs").as_uri())
        try:
            for name in (bundled.resolve(m).stem for m in models):
                rows.append(measure(name, site, script, args, Path(tmp)))
        finally:
            script.unlink()
        ceiling = gemm_ceiling(args.gemm, args, Path(tmp)) if args.gemm else None
    print(json.dumps({"cpu": cpu.features(), "batch": args.batch_size, "rounds": args.rounds, "seconds": args.seconds, "rows": rows,
                      "ceiling": ceiling}))


def measure(name: str, site: Path, script: Path, args, tmp: Path) -> dict:
    """One model in every runtime, in alternating rounds: a row of images/s and shares of native."""
    file = site / "models" / f"{name}.onnx"
    runners = {"native-1": native(file, args.batch_size, args.seconds, 1),
               "native-2": native(file, args.batch_size, args.seconds, 2)}
    node = subprocess.Popen(["node", str(script), str(file), str(args.batch_size), str(args.seconds), "1",
                             str(args.rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    medians = {k: [] for k in ("native-1", "native-2", "chromium-wasm-1", "chromium-wasm-2", "node-wasm-1")}
    with web.serve_folder(site) as url, web.serve_folder(site, isolate=True) as iso_url, \
            web.chromium(Path(tmp) / "p1") as b1, web.chromium(Path(tmp) / "p2") as b2:
        b1.get(url + "index.html")
        b2.get(iso_url + "index.html")
        for _ in range(args.rounds):
            for key, fn in runners.items():
                medians[key].append(fn())
            for key, browser, threads in (("chromium-wasm-1", b1, 1), ("chromium-wasm-2", b2, 2)):
                r = browser.execute_async_script(TIME_JS, f"models/{name}.onnx", args.batch_size,
                                                 args.seconds, threads)
                if "error" in r:
                    sys.exit(f"{name} in Chromium: {r['error']}")
                medians[key].append(r["median_ms"])
            medians["node-wasm-1"].append(node_round(node, name))
    node.wait(timeout=60)
    row = {"model": name, "batch": args.batch_size}
    for key, m in medians.items():
        row[f"{key}_images_per_s"] = round(args.batch_size / (statistics.median(m) / 1e3), 1)
        row[f"{key}_vs_native_1"] = round(statistics.median(a / b for a, b in zip(medians["native-1"], m)), 3)
    print(f"{name:<12} batch {args.batch_size}: " + ", ".join(
        f"{k} {row[f'{k}_images_per_s']:.0f} img/s ({row[f'{k}_vs_native_1']:.0%})" for k in medians), flush=True)
    return row


if __name__ == "__main__":
    main()
