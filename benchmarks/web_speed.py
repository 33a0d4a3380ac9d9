"""The JavaScript runtime's speed: onnxruntime-web in headless Chromium (wasm, one thread, and two threads
on a cross-origin isolated page) and in Node, beside native onnxruntime with one and two threads.

    npm ci && python benchmarks/web_speed.py [-m mnist -m mnist-int8 ...] [--batch-size 64] [--seconds 3]

Each model runs the same file in each runtime on the same latents (seed 0) at one batch size, in
alternating rounds (native, the browser, the isolated browser, Node, ...), --seconds per runner per
round after a warm-up; images/s is the median over the rounds, and each runtime's share of native
one-thread onnxruntime is the median of the per-round ratios. Ends with one JSON line.
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
from dcgan_deploy import bundled  # noqa: E402
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

NODE_JS = """
import * as ort from "onnxruntime-web";
import { loadGenerator } from "%s";
const [file, n, seconds, threads, rounds] = process.argv.slice(2).map((v, i) => (i ? +v : v));
ort.env.wasm.numThreads = threads;
const gen = await loadGenerator(file, { ort });
const z = gen.latents(n, 0);
await gen.run(z);
// one round per line of stdin: the parent alternates the runtimes
process.stdin.setEncoding("utf8");
let left = rounds;
process.stdin.on("data", async () => {
  const times = [], end = performance.now() + seconds * 1000;
  while (performance.now() < end || times.length < 3) { const t = performance.now(); await gen.run(z); times.push(performance.now() - t); }
  times.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({ median_ms: times[Math.floor(times.length / 2)], runs: times.length }) + "\\n");
  if (--left === 0) process.exit(0);
});
"""


def native(path, n: int, seconds: float, threads: int):
    gen = Generator.load(path, device="cpu", threads=threads)
    z = gen.latents(n, 0)
    gen.run(z)

    def round_():
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            gen.run(z)
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)
    return round_


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="one short round of the first model: checks the script")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.batch_size = 0.1, 1, 4
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
    print(json.dumps({"batch": args.batch_size, "rounds": args.rounds, "seconds": args.seconds, "rows": rows}))


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
            node.stdin.write("go\n")
            node.stdin.flush()
            medians["node-wasm-1"].append(json.loads(node.stdout.readline())["median_ms"])
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
