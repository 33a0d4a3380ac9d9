"""`dcgan-deploy serve` as a service manager runs it: options checked before anything starts, and SIGTERM
(what container runtimes and systemd send) answered with a clean stop -- requests in flight answered, exit 0,
no Ray process and no session folder left. Its own local Ray, in a process of its own, on loopback."""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

from conftest import free_port  # noqa: E402
from dcgan_deploy import Generator  # noqa: E402

pytestmark = pytest.mark.slow  # real Ray Serve processes, started and stopped: the full suite's, not the fast lane's


def test_bad_options_are_refused_before_ray_starts(tmp_path):
    for args, message in ((["--threads", "1000"], "--threads: threads=1000 is more than"),
                          (["--replicas", "0"], "--replicas must be from 1"),
                          (["--max-batch-size", "100000"], "--max-batch-size must be from 1 to 4096"),
                          (["-m", str(tmp_path / "none.onnx")], "no such model file")):
        r = subprocess.run([sys.executable, "-m", "dcgan_deploy", "serve", "--port", str(free_port()), *args],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_TMPDIR": str(tmp_path)})
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "ray").exists()  # Ray never started


@pytest.mark.slow
def test_sigterm_answers_what_is_in_flight_and_stops_cleanly():
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(ray_tmp / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "dcgan_deploy", "serve", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}v2/models/mnist/grid.png?seed=1&n=1", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or its replica still starting
                pass
            time.sleep(1)
        else:
            pytest.fail("the server did not start: " + (ray_tmp / "serve.log").read_text()[-2000:])
        body = lambda seed: json.dumps({"inputs": [  # noqa: E731
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [seed]},
            {"name": "n", "datatype": "INT64", "shape": [1], "data": [4096]}]})
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            flight = [pool.submit(requests.post, f"{url}v2/models/mnist/infer", data=body(s), timeout=120)
                      for s in range(4)]
            time.sleep(0.3)  # in flight: 4,096 images take about a second each here
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in flight]
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        output = log.read()
        log.close()
    gen = Generator.load("mnist")
    for seed, r in enumerate(answers):  # every request in flight was answered, with its bytes
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert np.array_equal(np.array(out["data"], np.uint8).reshape(out["shape"]), gen.generate(4096, seed))
    assert "SIGTERM received" not in output and "Traceback" not in output, output[-2000:]
    leftover = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
    assert not leftover  # no raylet, GCS server or worker of this server's Ray
    assert not list((ray_tmp / "ray").glob("session_*")) and not (ray_tmp / "ray" / "session_latest").exists()
    shutil.rmtree(ray_tmp, ignore_errors=True)
