
import * as ort from "onnxruntime-web";
import { loadGenerator } from "file:///work/main/dcgan_deploy/js/dcgan.mjs";
const [file, n, seconds, threads, rounds] = process.argv.slice(2).map((v, i) => (i ? +v : v));
ort.env.wasm.numThreads = threads;
const gen = await loadGenerator(file, { ort });
const z = gen.latents(n, 0);
await gen.run(z);
const run = () => gen.run(z);

process.stdin.setEncoding("utf8");
let left = rounds;
process.stdin.on("data", async () => {
  const times = [], end = performance.now() + seconds * 1000;
  while (performance.now() < end || times.length < 3) { const t = performance.now(); await run(); times.push(performance.now() - t); }
  times.sort((x, y) => x - y);
  process.stdout.write(JSON.stringify({ median_ms: times[Math.floor(times.length / 2)], runs: times.length }) + "\n");
  if (--left === 0) process.exit(0);
});
