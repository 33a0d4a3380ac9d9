"""`dcgan-deploy web`: a static site that generates in the browser, and its parity gate in a real browser.

The site is a folder: ``index.html`` (the page), ``dcgan.mjs`` and ``ziggurat.mjs`` (the JavaScript
runtime, also usable from Node), ``models/*.onnx``, ``site.json`` (what the page offers and where
onnxruntime-web comes from), ``web-report.json`` (the browser gate's results), and with ``--ort-dist``
onnxruntime-web's own files under ``ort/``, so that the site works offline from any static host.

The browser gate: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through
Selenium) opens the built site from a local server and runs every model through onnxruntime-web's
wasm backend for seeds 0-2 at batch sizes 1, 7 and 64; the images are compared with the Python
runtime's (and, given a checkpoint, PyTorch's) in image space with the CPU gate's thresholds. WebGPU
is checked where the browser has an adapter, and reported "not checked" otherwise -- never "passed".
A model that misses gets an error and no site is written. Needs numpy + onnxruntime (and, for the
gate, selenium); torch only for the optional PyTorch comparison, in ``parity``.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import shutil
import socketserver
import threading
from pathlib import Path

import numpy as np

from . import bundled, gate
from .files import atomic_folder, write_bytes
from .gate import GateError, Thresholds, misses
from .images import compare_images, to_uint8
from .runtime import Generator

ASSETS = Path(__file__).parent / "js"
ORT_VERSION = "1.30.0"
CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_VERSION}/dist/"
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
# What each backend is checked on: (seeds, batch sizes). The page runs on wasm, one thread (or several
# where it is cross-origin isolated): both must pass. WebGPU (where the browser has an adapter; headless
# Chromium offers SwiftShader, a software one, which is slow) is checked and recorded for apps that ask
# the module for it; a model it fails is refused on it by dcgan.mjs.
PLAN = {"wasm-1-thread": ((0, 1, 2), (1, 7, 64)), "wasm-2-threads": ((0,), (1, 64)), "webgpu": ((0, 1), (1, 7))}
REQUIRED = ("wasm-1-thread", "wasm-2-threads")
THRESHOLDS = Thresholds()  # the one gate's limits (``gate``), as export and verify apply them on the CPU
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def build(models, out: str | Path, ort_dist: str | Path | None = None, gate: bool = True,
          overwrite: bool = False, references: dict | None = None, unchecked: bool = False) -> dict:
    """Write the site to ``out`` (a new or empty folder, or any with ``overwrite``) and return its report.

    ``models``: paths or bundled names (default: every bundled model). ``ort_dist``: a local
    onnxruntime-web ``dist/`` folder to copy (else the page loads it from a pinned public CDN, and the
    gate needs a local copy: ``node_modules/onnxruntime-web/dist`` is used when present).
    ``references``: {model name: callable z -> PyTorch's float images} to also compare the browser with
    PyTorch (the command line makes them from checkpoints, with torch).

    A site is written only once the gate has passed; where the gate cannot run (no Chromium, no local
    onnxruntime-web), only with ``unchecked`` (or ``gate=False``), and then ``site.json`` says so and
    the page shows it."""
    chosen = resolve_models(models)
    check_references(references or {}, chosen)
    dist = check_dist(ort_dist) if ort_dist else None
    gate_dist = dist or local_dist()
    with atomic_folder(out, overwrite) as stage:
        shutil.copy(ASSETS / "index.html", stage / "index.html")
        for name in ("dcgan.mjs", "ziggurat.mjs"):
            shutil.copy(ASSETS / name, stage / name)
        (stage / "models").mkdir()
        for name, path in chosen.items():
            shutil.copy(path, stage / "models" / f"{name}.onnx")
        if dist:
            (stage / "ort").mkdir()
            for f in ORT_FILES:
                shutil.copy(dist / f, stage / "ort" / f)
        report = {"onnxruntime_web": ORT_VERSION, "ort_source": "local copy (ort/)" if dist else CDN, "models": {}}
        site = site_json(chosen, dist is not None, report)
        write_bytes(stage / "site.json", json.dumps(site, indent=2).encode())
        report["gate"] = (run_browser_gate(stage, chosen, gate_dist, references or {}, local_ort=dist is not None) if gate
                          else {"status": "not run", "reason": "not asked for"})
        if report["gate"]["status"] != "ran":
            if gate and not unchecked:
                raise ValueError(f"the browser gate could not run ({report['gate']['reason']}); no site was written "
                                 "(--unchecked writes one that says on the page that it is unchecked)")
            site["unchecked"] = report["gate"]["reason"]
            write_bytes(stage / "site.json", json.dumps(site, indent=2).encode())
        else:
            failures = [f for m in report["gate"]["models"].values() for f in m["failures"]]
            if failures:
                raise GateError(f"browser parity gate failed ({failures[0]}); no site was written", report)
            for m in site["models"]:
                statuses = {k: v["status"] for k, v in report["gate"]["models"][m["name"]]["backends"].items()}
                m["browser_gate"] = statuses
                record_gate(stage / m["file"], statuses)
            write_bytes(stage / "site.json", json.dumps(site, indent=2).encode())
        write_bytes(stage / "web-report.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def resolve_models(models) -> dict[str, Path]:
    """{name: path} of the site's models (``bundled.pick``), each checked by the runtime; a dict from an
    earlier call is kept."""
    if isinstance(models, dict):
        return models
    chosen = bundled.pick(models)
    if models:
        for path in chosen.values():
            Generator.load(path, device="cpu")  # refuse what the runtime refuses, now
    return chosen


def check_references(references: dict, chosen: dict) -> None:
    """Every PyTorch reference names a model of the site."""
    unknown = sorted(set(references) - set(chosen))
    if unknown:
        raise ValueError(f"--ckpt {unknown[0]}=...: no model named {unknown[0]!r} in this site "
                         f"(its models: {', '.join(chosen)})")


def check_dist(path) -> Path:
    """A local onnxruntime-web ``dist/`` folder holding the files the site needs, as regular files: a site
    is published, so a link (to anything on this machine) is never followed into it."""
    path = Path(path)
    links = [f for f in ORT_FILES if (path / f).is_symlink()]
    if links:
        raise ValueError(f"--ort-dist {path}: {links[0]} is a symbolic link; the site copies regular files only")
    missing = [f for f in ORT_FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(f"--ort-dist {path}: not an onnxruntime-web dist/ folder (no {missing[0]}); after "
                         f"`npm install onnxruntime-web@{ORT_VERSION}` it is node_modules/onnxruntime-web/dist")
    version = (path.parent / "package.json")
    if version.is_file():
        found = json.loads(version.read_text()).get("version")
        if found != ORT_VERSION:
            raise ValueError(f"--ort-dist {path}: onnxruntime-web {found}; this page is tested with {ORT_VERSION}")
    return path


def local_dist() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / "node_modules" / "onnxruntime-web" / "dist"
        with contextlib.suppress(ValueError):
            return check_dist(candidate)
    return None


def site_json(chosen: dict[str, Path], local: bool, report: dict) -> dict:
    # onnxruntime-web finds its .wasm files beside its module
    ort = ({"module": "./ort/ort.min.mjs", "source": "this site (ort/)"} if local else
           {"module": CDN + "ort.min.mjs", "source": f"{CDN} (a public CDN; this page needs the network for it)"})
    ort["version"] = ORT_VERSION
    models = []
    for name, path in chosen.items():
        gen = Generator.load(path, device="cpu")
        models.append({"name": name, "file": f"models/{name}.onnx", "image": list(gen.image_shape),
                       "directions": len(gen.directions)})
        report["models"][name] = {"file": f"models/{name}.onnx", "source": str(path)}
    return {"ort": ort, "models": models}


# ---- the gate: the site in headless Chromium ----------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    isolate = False

    def end_headers(self):
        if self.isolate:  # cross-origin isolation: multi-threaded wasm
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder: Path, isolate: bool = False, extra: dict[str, Path] | None = None):
    """``folder`` over HTTP on 127.0.0.1 (a free port) while the block runs; yields the base URL.
    ``extra``: {url prefix: folder} served beside it (the gate's local onnxruntime-web)."""
    handler = type("Handler", (_Handler,), {"isolate": isolate})

    def translate(self, path, _orig=http.server.SimpleHTTPRequestHandler.translate_path):
        for prefix, where in (extra or {}).items():
            if path.startswith(prefix):
                return str(where / path[len(prefix):].split("?")[0])
        return _orig(self, path)
    handler.translate_path = translate
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chromium(profile: Path):
    """A headless Chromium driven by Selenium, logging the network (for the own-origin check)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser, driver = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-webgpu", f"--user-data-dir={profile}", "--window-size=1200,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_script_timeout(600)
    try:
        yield d
    finally:
        d.quit()


LOAD_SCRIPT = """
const [file, backend, threads, done] = arguments;
(async () => {
  const site = await (await fetch("site.json")).json();
  const ort = await import(site.ort.module);
  ort.env.wasm.numThreads = threads;
  let adapter = null;
  if (backend === "webgpu") {
    if (!navigator.gpu) return done({status: "not checked", reason: "this browser has no WebGPU"});
    const a = await Promise.race([navigator.gpu.requestAdapter(), new Promise((r) => setTimeout(() => r("timeout"), 20000))]);
    if (!a || a === "timeout") return done({status: "not checked", reason: "no WebGPU adapter (headless, no GPU)"});
    adapter = a.info ? `${a.info.vendor} ${a.info.architecture} ${a.info.description}`.trim() : "unknown";
  }
  const { loadGenerator } = await import("./dcgan.mjs");
  window.__gate = await loadGenerator(file, { ort, executionProviders: [backend] });
  done({ status: "loaded", threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated, adapter });
})().catch((e) => done({ status: "error", reason: String(e && e.message || e) }));
"""

RUN_SCRIPT = """
const [seed, n, done] = arguments;
(async () => {
  const r = await window.__gate.generate(n, seed, { batchSize: n });
  const b = new Uint8Array(r.float.buffer);
  let f = "", u = "";
  for (let i = 0; i < b.length; i += 8192) f += String.fromCharCode(...b.subarray(i, i + 8192));
  for (let i = 0; i < r.uint8.length; i += 8192) u += String.fromCharCode(...r.uint8.subarray(i, i + 8192));
  done({ seed, n, float: btoa(f), uint8: btoa(u) });
})().catch((e) => done({ error: String(e && e.message || e) }));
"""


def run_backend(browser, file: str, backend: str, threads: int, seeds, batches) -> dict:
    """One model on one backend in the open page: each seed and batch size, one script call each."""
    from selenium.common.exceptions import WebDriverException
    try:
        ran = browser.execute_async_script(LOAD_SCRIPT, file, backend, threads)
        if ran.get("status") != "loaded":
            return ran
        ran["out"] = []
        for seed in seeds:
            for n in batches:
                item = browser.execute_async_script(RUN_SCRIPT, seed, n)
                if "error" in item:
                    return {"status": "error", "reason": item["error"]}
                ran["out"].append(item)
    except WebDriverException as e:
        return {"status": "error", "reason": f"the browser failed: {str(e).strip().splitlines()[0][:200]}"}
    except Exception as e:  # noqa: BLE001 -- a browser that stops answering (timeouts) fails the gate, in words
        return {"status": "error", "reason": f"no answer from the browser ({type(e).__name__})"}
    ran["status"] = "ran"
    return ran


def run_browser_gate(site: Path, chosen: dict[str, Path], dist: Path | None, references: dict, local_ort: bool) -> dict:
    """Every model through the page's runtime in headless Chromium: wasm (one thread; several where the
    page is cross-origin isolated) and WebGPU where there is an adapter; compared with the Python runtime."""
    if find_browser() is None:
        return {"status": "not run", "reason": "no chromium and chromedriver on PATH (apt-get install chromium "
                                               "chromium-driver)", "models": {n: _not_run() for n in chosen}}
    if dist is None:
        return {"status": "not run", "reason": "no local onnxruntime-web to run the page with (give --ort-dist)",
                "models": {n: _not_run() for n in chosen}}
    try:
        import selenium  # noqa: F401
    except ImportError:
        return {"status": "not run", "reason": "the gate needs selenium: pip install 'dcgan-deploy[web]'",
                "models": {n: _not_run() for n in chosen}}
    extra = {} if local_ort else {"/_gate_ort/": dist}
    results = {name: {"backends": {}, "failures": []} for name in chosen}
    import tempfile
    with tempfile.TemporaryDirectory() as profile:
        for isolate, plan in ((False, ("wasm-1-thread", "webgpu")), (True, ("wasm-2-threads",))):
            with serve_folder(site, isolate, extra) as url, chromium(Path(profile) / f"p{isolate}") as browser:
                browser.get(url + "index.html")
                if not local_ort:  # the site points at the CDN; the gate runs the same page with the local copy
                    browser.execute_script("window.fetch = ((f) => (u, o) => u === 'site.json' ? f(u, o).then(async r "
                                           "=> { const s = await r.json(); s.ort.module = '/_gate_ort/ort.min.mjs'; "
                                           "return new Response(JSON.stringify(s)); }) : f(u, o))(window.fetch);")
                for name, path in chosen.items():
                    for key in plan:
                        backend, threads = ("webgpu", 1) if key == "webgpu" else ("wasm", 1 if key.startswith("wasm-1") else 2)
                        ran = run_backend(browser, f"models/{name}.onnx", backend, threads, *PLAN[key])
                        result = judge(ran, path, references.get(name), key)
                        results[name]["backends"][key] = result
                        if key in REQUIRED:
                            results[name]["failures"] += [f"{name} {key}: {f}" for f in result.get("failures", [])]
    for r in results.values():
        r["backends"]["wasm"] = r["backends"]["wasm-1-thread"]
    return {"status": "ran", "models": results}


def record_gate(path: Path, statuses: dict) -> None:
    """The browser gate's verdict per backend in the site's copy of the model (``web_gate`` metadata):
    dcgan.mjs refuses a backend the model failed on."""
    from .modelfile import read, write_metadata
    write_metadata(path, {**read(path).metadata, "web_gate": json.dumps(statuses)})


def _not_run() -> dict:
    return {"backends": {k: {"status": "not checked"} for k in (*PLAN, "wasm")}, "failures": []}


def judge(ran: dict, path: Path, reference=None, backend: str = "wasm") -> dict:
    """One backend's run against the Python runtime (and ``reference``, a callable z -> PyTorch's images,
    when given): max and mean abs error, PSNR, uint8 pixels changed; passed or failed by the one gate's
    limits (``gate``) for ``backend``, with the reasons."""
    if ran.get("status") == "not checked":
        return {"status": "not checked", "reason": ran.get("reason")}
    if ran.get("status") != "ran":
        return {"status": "failed", "failures": [f"did not run: {ran.get('reason')}"]}
    gen = Generator.load(path, device="cpu")
    checks, failures = [], []
    for item in ran["out"]:
        n, seed = item["n"], item["seed"]
        browser = np.frombuffer(base64.b64decode(item["float"]), np.float32).reshape(n, gen.channels, gen.height,
                                                                                   gen.width)
        z, labels = gen.latents(n, seed), gen.labels(n, seed)  # (a conditional model: the seed's classes in turn)
        c = compare_images(gen.run(z, labels), browser)
        c.update(seed=seed, batch=n)
        if reference is not None:
            c["vs_pytorch"] = compare_images(reference(z, labels), browser)
        u8 = np.frombuffer(base64.b64decode(item["uint8"]), np.uint8).reshape(n, gen.height, gen.width, gen.channels)
        c["uint8_as_python"] = bool(np.array_equal(u8, to_uint8(browser)))
        if not c["uint8_as_python"]:
            failures.append(f"seed {seed} batch {n}: the page's uint8 conversion differs from Python's")
        for against, m in (("the Python runtime", c), ("PyTorch", c.get("vs_pytorch"))):
            # an int8 file is exact everywhere (int8.report): against the Python runtime, the same values
            why = [] if m is None else misses(m, backend, THRESHOLDS, exact=gen.precision == "int8" and m is c)
            failures += [f"seed {seed} batch {n} against {against}: {w}" for w in why]
        checks.append(c)
    worst = gate.worst(checks)
    if reference is not None:
        worst["vs_pytorch_max_abs"] = max(c["vs_pytorch"]["max_abs"] for c in checks)
    return {"status": "failed" if failures else "passed", "failures": failures, "worst": worst,
            "threads": ran.get("threads"), "isolated": ran.get("isolated"), "adapter": ran.get("adapter"),
            "checks": checks}


def format_report(report: dict) -> str:
    """One line per model and backend."""
    gate = report.get("gate", {})
    lines = [f"onnxruntime-web {report['onnxruntime_web']} from {report['ort_source']}"]
    if gate.get("status") != "ran":
        lines.append(f"browser gate NOT RUN: {gate.get('reason', 'not asked for')}")
        return "\n".join(lines)
    for name, m in gate["models"].items():
        for backend, r in m["backends"].items():
            if backend == "wasm":
                continue
            note = "" if backend in REQUIRED or r["status"] != "failed" else " (not used by the page; dcgan.mjs refuses it)"
            if r["status"] == "not checked":
                lines.append(f"{name:<16} {backend:<16} not checked: {r.get('reason')}")
            else:
                w = r.get("worst", {})
                lines.append(f"{name:<16} {backend:<16} {r['status'].upper()}{note}" + (
                    f"  max abs {w['max_abs']:.3g}, PSNR {w['psnr']:.1f} dB, {w['changed']:.3%} uint8 pixels changed"
                    + (f", vs PyTorch max abs {w['vs_pytorch_max_abs']:.3g}" if "vs_pytorch_max_abs" in w else "")
                    + (f"; adapter: {r['adapter']}" if r.get("adapter") else "")
                    if w else "") + "".join(f"\n    - {f}" for f in r.get("failures", [])[:3]))
    return "\n".join(lines)
