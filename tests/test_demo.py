"""The Gradio demo: handlers, bad inputs over real HTTP, a burst against the bounded queue,
the CLI launcher, and an end-to-end run in headless Chromium."""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from conftest import free_port, make_model  # noqa: E402
from dcgan_deploy import Generator  # noqa: E402
from dcgan_deploy import demo as demo_mod  # noqa: E402
from dcgan_deploy.demo import Demo, DemoInputError, as_float, as_int, launch_warnings, parse_auth  # noqa: E402
from dcgan_deploy.images import grid  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"tiny": make_model(folder / "tiny.onnx"), "rgb": make_model(folder / "rgb.onnx", 5, 3, 4, 5, "uniform")}


@pytest.fixture(scope="module")
def server(models):
    demo = Demo(models)
    app = demo.build()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, demo
    app.close()
    demo.cleanup()


def call(url, api, data, timeout=60):
    """One call through Gradio's HTTP API; returns ("complete" | "error", payload)."""
    body = json.dumps({"data": data})  # json.dumps writes NaN, as a hostile client could
    r = httpx.post(f"{url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"},
                   timeout=timeout)
    if r.status_code != 200:
        return "http", {"status": r.status_code, "body": r.text}
    event_id = r.json()["event_id"]
    text = httpx.get(f"{url}gradio_api/call/{api}/{event_id}", timeout=timeout).text
    kind = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: "))
    data = json.loads(next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("data: ")))
    return kind, data


# ---- validation and handlers -------------------------------------------------------------
@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf"), "abc", None, True, -1, 10**12, [1], 10**400,
                                   "1" * 400, 2.0**60])
def test_as_int_rejects(value):
    with pytest.raises(DemoInputError) as e:
        as_int(value, "seed", 0, 2**32 - 1)
    assert len(str(e.value)) < 200  # one readable line, not Python's "int too large to convert to float"


def test_as_int_and_as_float_accept():
    assert as_int(3.0, "x", 0, 5) == 3 and as_int("4", "x", 0, 5) == 4 and as_int(np.int64(2), "x", 0, 5) == 2
    assert as_int(str(2**64 - 1), "seed", 0, 2**64 - 1) == 2**64 - 1 and as_int(2**64 - 1, "seed", 0, 2**64 - 1) == 2**64 - 1
    assert as_float(-1.5, "s", -5, 5) == -1.5
    for bad in (float("nan"), 6.0, "1"):
        with pytest.raises(DemoInputError):
            as_float(bad, "s", -5, 5)


def no_moves(demo, name):
    """Every slider at 0, on the model's first directions."""
    names = [d.name for d in demo.directions(name)]
    return [x for i in range(demo_mod.N_SLIDERS) for x in (names[i % len(names)], 0)]


def test_seed_grid_matches_generate(models):
    demo = Demo(models)
    image, caption = demo.seed_grid("tiny", 7, 3)
    expected = demo_mod.for_display(grid(Generator.load(models["tiny"]).generate(9, seed=7), nrow=3))
    np.testing.assert_array_equal(image, expected)
    assert "--seed 7" in caption and "-n 9" in caption
    demo.cleanup()


def test_interpolation_frames_and_gif(models):
    demo = Demo(models)
    frames, gif = demo.interpolate("rgb", 1, 2, 5, "lerp")  # 5 frames from seed 1 to seed 2, then seed 2
    assert len(frames) == 6 and Path(gif).exists() and Path(gif).parent.parent == demo.tmp
    from PIL import Image
    assert Image.open(gif).n_frames == 6
    first = Generator.load(models["rgb"]).generate(1, seed=1)[0]
    np.testing.assert_array_equal(frames[0], demo_mod.for_display(first))
    demo.cleanup()
    assert not demo.tmp.exists()


def test_edit_latent_round_trips_through_the_cli(models, tmp_path):
    demo = Demo(models)
    still, _, _ = demo.edit("tiny", 5, 3, *no_moves(demo, "tiny"))
    np.testing.assert_array_equal(still, demo_mod.for_display(Generator.load(models["tiny"]).generate(4, seed=5)[3]))
    names = [d.name for d in demo.directions("tiny")]
    image, npy, caption = demo.edit("tiny", 5, 3, names[0], 1.5, names[1], -2, names[2], 0, names[3], 0.5)
    assert not np.array_equal(image, still)
    z = np.load(npy)
    assert z.shape == (1, 8) and z.dtype == np.float32 and "--latents" in caption
    out = tmp_path / "edited.png"
    r = subprocess.run([sys.executable, "-m", "dcgan_deploy", "generate", "-m", str(models["tiny"]), "--latents", npy,
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from PIL import Image
    cli_image = np.asarray(Image.open(out))[2:-2, 2:-2]  # the grid's padding around one image
    np.testing.assert_array_equal(demo_mod.for_display(cli_image[..., None]), image)
    demo.cleanup()


def test_demo_files_stay_bounded(models, monkeypatch):
    monkeypatch.setattr(demo_mod, "KEEP_FILES", 3)
    demo = Demo(models)
    for seed in range(6):
        demo.edit("tiny", seed, 0, *no_moves(demo, "tiny"))
    assert len(list(demo.tmp.rglob("*.npy"))) == 3
    demo.cleanup()


def test_launch_safety_helpers():
    assert launch_warnings("127.0.0.1", False, None) == []
    assert "without --auth" in launch_warnings("0.0.0.0", False, None)[0]
    assert "share link" in launch_warnings("127.0.0.1", True, None)[0]
    assert launch_warnings("0.0.0.0", True, "me:pw") == []
    assert parse_auth("me:secret") == ("me", "secret")
    for bad in ("me", ":pw", "me:"):
        with pytest.raises(ValueError):
            parse_auth(bad)


# ---- over real HTTP ------------------------------------------------------------------------
def test_good_requests_over_http(server):
    url, _ = server
    kind, data = call(url, "grid", ["tiny", 3, 2, 1.0])
    assert kind == "complete" and data[0]["url"].startswith(url)
    assert "--seed 3" in data[1]
    kind, data = call(url, "grid", ["tiny", 3, 2, 0.5])
    assert kind == "complete" and "--truncation 0.5" in data[1]
    kind, data = call(url, "interpolate", ["rgb", 0, 9, 4, "slerp", 1.0])
    assert kind == "complete" and len(data[0]) == 5 and data[1]["url"].endswith(".gif")
    kind, data = call(url, "edit", ["tiny", 1, 2, "random-1", 0.5, "random-2", 0, "random-3", 0, "random-4", -1])
    assert kind == "complete" and data[1]["url"].endswith(".npy")


EDIT = ["random-1", 0, "random-2", 0, "random-3", 0, "random-4", 0]


@pytest.mark.slow
@pytest.mark.parametrize("api, data, message", [
    ("grid", ["tiny", float("nan"), 2, 1.0], "seed must be a whole number"),
    ("grid", ["tiny", 2.5, 2, 1.0], "seed must be a whole number, got 2.5"),
    ("grid", ["tiny", -4, 2, 1.0], "seed must be between"),
    ("grid", ["tiny", "1e400", 2, 1.0], "seed must be a whole number"),
    ("grid", ["tiny", str(2**64), 2, 1.0], "seed must be between 0 and 18446744073709551615, got 18446744073709551616"),
    ("grid", ["tiny", 2.0**60, 2, 1.0], "typed as digits above 2**53"),
    ("grid", ["tiny", 1, 0, 1.0], "grid size must be between 1 and 12"),
    ("grid", ["tiny", 1, 500, 1.0], "grid size must be between 1 and 12"),
    ("grid", ["tiny", 1, 2, 0.0], "truncation must be a number between 0.05 and 1.0"),
    ("grid", ["tiny", 1, 2, "1"], "truncation must be a number"),
    ("grid", ["../../etc/passwd", 1, 2, 1.0], "unknown model"),
    ("grid", [["a list"], 1, 2, 1.0], "unknown model"),
    ("interpolate", ["tiny", 1, 2, 10**6, "slerp", 1.0], "frames must be between 1 and 59"),
    ("interpolate", ["tiny", 1, 2, 5, "cubic", 1.0], "method must be slerp or lerp"),
    ("edit", ["tiny", 1, 2, "random-1", float("inf"), *EDIT[2:]], "slider 1 must be a number"),
    ("edit", ["tiny", 1, 2, "sefa-9", 1.0, *EDIT[2:]], "slider 1: unknown direction 'sefa-9'"),
    ("edit", ["tiny", 1, 200, *EDIT], "sample must be between"),
])
def test_bad_inputs_get_readable_errors_over_http(server, api, data, message):
    url, _ = server
    kind, payload = call(url, api, data)
    assert kind == "error" and message in payload["error"], payload
    assert call(url, "grid", ["tiny", 1, 1, 1.0])[0] == "complete"  # and the server goes on answering


def test_no_file_system_access_beyond_the_demos_files(server):
    url, demo = server
    for path in ("/etc/passwd", str(ROOT / "pyproject.toml")):
        r = httpx.get(f"{url}gradio_api/file={path}", timeout=10)
        assert r.status_code in (403, 404), (path, r.status_code)
    kind, data = call(url, "grid", ["tiny", 3, 2, 1.0])
    served = data[0]["path"]
    assert Path(served).resolve().is_relative_to(demo.tmp.resolve())  # Gradio's cache lives in the demo's folder


def test_rejected_inputs_log_one_line_each(server, caplog):
    url, _ = server
    with caplog.at_level("WARNING", logger="dcgan_deploy.demo"):
        assert call(url, "grid", ["tiny", -4, 2, 1.0])[0] == "error"
    lines = [r.getMessage() for r in caplog.records if r.name == "dcgan_deploy.demo"]
    assert lines == ["rejected seed_grid: seed must be between 0 and 18446744073709551615, got -4"]


def test_gradios_cache_is_pruned_to_its_bound(models):
    demo = Demo(models)
    cache = demo.tmp / "gradio" / "abc"
    cache.mkdir(parents=True)
    for i in range(10):
        (cache / f"{i}.png").write_bytes(b"x" * 1000)
        os.utime(cache / f"{i}.png", (i, i))
    demo.prune_cache(limit=3500)
    assert sorted(p.name for p in cache.iterdir()) == ["7.png", "8.png", "9.png"]  # the oldest went first
    demo.cleanup()


def test_the_demo_launches_with_its_bounds(models, monkeypatch):
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    demo = Demo(models)
    demo.launch(demo.build(), server_name="127.0.0.1")
    assert seen["max_file_size"] == "1mb" and seen["state_session_capacity"] == demo_mod.SESSIONS
    demo.cleanup()


def test_editing_uses_the_models_named_directions(tmp_path):
    from dcgan_deploy.bundled import bundled_models
    from dcgan_deploy.directions import compute, store
    from dcgan_deploy.modelfile import read, write_metadata
    path, plain = tmp_path / "mnist.onnx", tmp_path / "plain.onnx"
    shutil.copy(bundled_models()["mnist"], path)
    store(path, compute(path, count=3), "test")
    shutil.copy(path, plain)  # the same model with its directions entry removed
    write_metadata(plain, {k: v for k, v in read(plain).metadata.items() if k != "directions"})
    demo = Demo({"mnist": path, "plain": plain})
    assert [d.name for d in demo.directions("mnist")] == ["sefa-1", "sefa-2", "sefa-3"]
    assert "SeFa" in demo.direction_note("mnist")
    assert [d.name for d in demo.directions("plain")][:1] == ["random-1"] and "no latent directions" in demo.direction_note("plain")
    moved, _, caption = demo.edit("mnist", 3, 0, "sefa-1", 3.0, "sefa-2", 0, "sefa-3", 0, "sefa-1", 0)
    still, _, _ = demo.edit("mnist", 3, 0, *no_moves(demo, "mnist"))
    assert not np.array_equal(moved, still) and "sefa-1 +3.00" in caption
    demo.cleanup()


class SlowDemo(Demo):
    """Each grid takes 0.3 s: a stand-in for a large model, so that a burst fills the queue."""

    def seed_grid(self, *args):
        time.sleep(0.3)
        return super().seed_grid(*args)


@pytest.mark.slow
def test_a_burst_is_shed_by_the_bounded_queue(models):
    demo = SlowDemo(models)
    app = demo.build()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        burst = 60  # bounded: 60 requests, each with a 60 s timeout
        with concurrent.futures.ThreadPoolExecutor(burst) as pool:
            results = list(pool.map(lambda i: call(url, "grid", ["tiny", i, 2, 1.0]), range(burst)))
        done = sum(kind == "complete" for kind, _ in results)
        shed = [p for kind, p in results if kind != "complete"]
        assert done >= demo_mod.QUEUE_SIZE and shed, (done, len(shed))
        # shed with a clear "busy" answer (503, "queue is full"), not a crash or a hang
        assert all(p["status"] == 503 and "queue is full" in p["body"].lower() for p in shed), shed[:3]
        assert call(url, "grid", ["tiny", 1, 1, 1.0])[0] == "complete"  # still answering afterwards
    finally:
        app.close()
        demo.cleanup()


# ---- the launcher and the browser ------------------------------------------------------------
def wait_for(url, proc, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


@pytest.mark.slow
def test_cli_demo_serves_the_bundled_model_and_warns_when_exposed(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dcgan_deploy", "demo", "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/", proc)
        kind, data = call(f"http://127.0.0.1:{port}/", "grid", ["mnist", 0, 2, 1.0])
        assert kind == "complete"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "without --auth" in err


def test_cli_demo_refuses_bad_auth_and_models():
    from click.testing import CliRunner

    from dcgan_deploy.cli import main
    r = CliRunner().invoke(main, ["demo", "--auth", "nopassword"])
    assert r.exit_code == 1 and "USER:PASS" in r.output
    r = CliRunner().invoke(main, ["demo", "-m", "missing.onnx"])
    assert r.exit_code == 1 and "no such model file" in r.output


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_end_to_end_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dcgan_deploy", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400"):
        opts.add_argument(flag)
    driver = None
    try:
        wait_for(f"http://127.0.0.1:{port}/", proc)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(ec.element_to_be_clickable((By.ID, "grid-button"))).click()
        img = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#grid-image img")))
        wait.until(lambda d: img.get_attribute("naturalWidth") not in (None, "0"))
        assert int(img.get_attribute("naturalWidth")) >= 242
        assert "CPU" in driver.find_element(By.ID, "model-info").text
        driver.save_screenshot(str(tmp_path / "grid.png"))
        if os.environ.get("DEMO_SCREENSHOT"):
            driver.save_screenshot(str(ROOT / os.environ["DEMO_SCREENSHOT"]))  # relative to the repository

        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Interpolation')]").click()
        wait.until(ec.element_to_be_clickable((By.ID, "interp-button"))).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#interp-frames img")) >= 10)
        frames = driver.find_elements(By.CSS_SELECTOR, "#interp-frames img")
        assert all(f.get_attribute("src") for f in frames)
        wait.until(lambda d: ".gif" in d.find_element(By.ID, "interp-gif").text)
        driver.save_screenshot(str(tmp_path / "interpolation.png"))

        driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Latent editing')]").click()
        wait.until(ec.element_to_be_clickable((By.ID, "edit-button"))).click()
        edited = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#edit-image img")))
        wait.until(lambda d: edited.get_attribute("naturalWidth") not in (None, "0"))
    finally:
        if driver:
            driver.quit()
        proc.terminate()
        proc.communicate(timeout=30)


def test_spaces_entry_point_builds_the_app(models, monkeypatch):
    import runpy
    monkeypatch.setenv("DCGAN_DEPLOY_MODELS", f"{models['tiny']},{models['rgb']}")
    ns = runpy.run_path(str(ROOT / "demo" / "app.py"), run_name="spaces_import")
    assert isinstance(ns["app"], gr.Blocks) and set(ns["models"]) == {"tiny", "rgb"}


def test_cli_demo_offers_bundled_and_given_models(models, monkeypatch):
    from click.testing import CliRunner

    from dcgan_deploy.cli import main
    seen = {}

    def fake_launch(self, **kwargs):  # stop before serving: check what the picker would offer
        seen["choices"] = [c[0] for c in next(b for b in self.blocks.values() if isinstance(b, gr.Dropdown)).choices]
        seen["kwargs"] = kwargs

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    r = CliRunner().invoke(main, ["demo", "-m", str(models["rgb"])])
    assert r.exit_code == 0, r.output
    assert seen["choices"] == ["rgb", "mnist", "emoji64", "mnist-cond", "mnist-int8"]  # given, then the bundled, default first
    assert seen["kwargs"]["server_name"] == "127.0.0.1" and seen["kwargs"]["auth"] is None


def test_model_info_names_a_reduced_precision_variant():
    from dcgan_deploy.bundled import bundled_models
    demo = Demo(bundled_models())
    fp32, int8 = demo.model_info("mnist"), demo.model_info("mnist-int8")
    assert fp32.endswith("export parity: passed")
    assert "export parity: passed (int8, PSNR ≥ 3" in int8 and "trained on `mnist-sample`" in int8
    demo.cleanup()
