"""`dcgan-deploy serve` on a real Ray Serve: one two-node cluster for the module (two raylets on this
machine, ``ray.cluster_utils.Cluster``), loopback only. tritonclient's HTTP client and plain HTTP;
byte-identical images to the runtime; every bad input answered with 400 and what was wrong; a
burst batched; an overload shed with 503; replicas on both nodes; a replica killed under load."""
import concurrent.futures
import io
import json
import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")
requests = pytest.importorskip("requests")

from conftest import free_port, make_model  # noqa: E402
from dcgan_deploy import Generator  # noqa: E402
from dcgan_deploy import serve as server  # noqa: E402
from dcgan_deploy.bundled import bundled_models  # noqa: E402
from dcgan_deploy.images import grid  # noqa: E402

pytestmark = pytest.mark.slow  # a real Ray Serve cluster: the full suite's, not the fast lane's


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster
    folder = tmp_path_factory.mktemp("m")
    rgb = make_model(folder / "rgb.onnx", latent_dim=5, channels=3, height=4, width=5, prior="uniform")
    cond = make_model(folder / "cond.onnx", latent_dim=4, classes=["cat", "dog", "eel"])
    fragile = fragile_model(folder / "fragile.onnx")
    for key, value in server.RAY_ENVIRONMENT.items():  # as a cluster's nodes need it (docs/DESIGN.md)
        os.environ.setdefault(key, value)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"node_a": 1}})
    c.add_node(num_cpus=2, resources={"node_b": 1})
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    try:
        url = server.start([str(bundled_models()["mnist"]), str(fragile), str(bundled_models()["emoji64"])], port=port,
                           replicas=2, max_batch_size=64,
                           address=c.address, threads=1, max_per_node=1)
        # a second app on the same proxy: one replica per model, one request in flight, a queue of 1 (for the
        # overload), and another model (RGB, uniform prior)
        small = server.build_app({"mnist": str(bundled_models()["mnist"]), "rgb": str(rgb), "cond": str(cond)}, replicas=1,
                                 max_batch_size=1, threads=1, queue_per_replica=1)
        serve.run(small, name="small", route_prefix="/small")
        yield {"url": url, "host": f"127.0.0.1:{port}", "rgb": rgb, "fragile": fragile, "cluster": c, "cond": cond}
    finally:
        server.stop()
        c.shutdown()


def fragile_model(path):
    """A contract-following model whose images are NaN where the latent's first value is below -50 (far
    outside its prior, inside the server's latent bound): it fails any batch that holds such a latent."""
    from onnx import helper, numpy_helper
    import onnx
    make_model(path)
    m = onnx.load(str(path))
    reshape = m.graph.node[-1]
    reshape.input[0] = "t_nan"
    m.graph.initializer.extend([numpy_helper.from_array(np.array(v, dtype), name) for v, dtype, name in (
        ([0], np.int64, "s0"), ([1], np.int64, "s1"), ([1], np.int64, "ax"), (50.0, np.float32, "fifty"),
        (0.0, np.float32, "zero"))])
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Slice", ["z", "s0", "s1", "ax"], ["z0"]))
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Add", ["z0", "fifty"], ["z0p"]))
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Sqrt", ["z0p"], ["root"]))
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Mul", ["root", "zero"], ["nothing"]))
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Add", ["t", "nothing"], ["t_nan"]))
    onnx.save(m, str(path))
    return path


def infer(url, model, inputs, binary=False, timeout=60):
    body = {"inputs": inputs}
    if binary:
        body["parameters"] = {"binary_data_output": True}
    return requests.post(f"{url}v2/models/{model}/infer", data=json.dumps(body), timeout=timeout)


def seed_inputs(seed, n, psi=None, seed_type="INT64"):
    out = [{"name": "seed", "datatype": seed_type, "shape": [1], "data": [seed]},
           {"name": "n", "datatype": "INT64", "shape": [1], "data": [n]}]
    if psi is not None:
        out.append({"name": "truncation", "datatype": "FP32", "shape": [1], "data": [psi]})
    return out


def as_images(response) -> np.ndarray:
    """The images of an answer, JSON or with the binary tensor extension (a JSON header, then the bytes)."""
    head = response.headers.get("inference-header-content-length")
    header = json.loads(response.content[:int(head)]) if head else response.json()
    out = header["outputs"][0]
    assert out["name"] == "image" and out["datatype"] == "UINT8"
    if head:
        return np.frombuffer(response.content[int(head):], np.uint8).reshape(out["shape"])
    return np.array(out["data"], np.uint8).reshape(out["shape"])


def test_health_and_metadata_with_tritonclient(cluster):
    client = httpclient.InferenceServerClient(cluster["host"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mnist")
    meta = client.get_model_metadata("mnist")
    assert meta["inputs"][0] == {"name": "z", "datatype": "FP32", "shape": [-1, 100]}
    assert meta["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert client.get_server_metadata()["name"] == "dcgan-deploy"


def test_z_and_seed_requests_give_the_runtimes_bytes(cluster):
    for model in ("mnist", "rgb"):
        client = httpclient.InferenceServerClient(cluster["host"] + ("" if model == "mnist" else "/small"))
        gen = Generator.load(bundled_models()["mnist"] if model == "mnist" else cluster["rgb"])
        z = gen.latents(7, 123)
        tz = httpclient.InferInput("z", list(z.shape), "FP32")
        tz.set_data_from_numpy(z)  # the binary tensor extension, as tritonclient sends by default
        got = client.infer(model, [tz]).as_numpy("image")
        assert got.dtype == np.uint8 and np.array_equal(got, gen.generate(7, 123))
        seed, n = httpclient.InferInput("seed", [1], "INT64"), httpclient.InferInput("n", [1], "INT64")
        seed.set_data_from_numpy(np.array([123], np.int64))
        n.set_data_from_numpy(np.array([7], np.int64))
        json_out = client.infer(model, [seed, n], outputs=[httpclient.InferRequestedOutput("image", binary_data=False)])
        assert np.array_equal(json_out.as_numpy("image"), gen.generate(7, 123))
        plain = infer(cluster["url"] + ("" if model == "mnist" else "small/"), model, seed_inputs(123, 3, psi=0.5))
        assert plain.status_code == 200 and np.array_equal(as_images(plain), gen.generate(3, 123, truncation=0.5))
    big = infer(cluster["url"], "mnist", seed_inputs(2**64 - 1, 2, seed_type="UINT64"))
    assert np.array_equal(as_images(big), Generator.load("mnist").generate(2, 2**64 - 1))


def test_a_grid_for_a_browser(cluster):
    from PIL import Image
    r = requests.get(f"{cluster['url']}v2/models/mnist/grid.png?seed=7&n=16", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    expected = grid(Generator.load("mnist").generate(16, 7))[..., 0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)


Z100 = {"name": "z", "datatype": "FP32", "shape": [1, 100], "data": [0.0] * 100}


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": [{**Z100, "datatype": "INT64", "data": [0] * 100}]}, 400, "input 'z' must be FP32"),
    ({"inputs": [{**Z100, "datatype": "INT64"}]}, 400, "its data are not all INT64 values"),
    ({"inputs": [{**Z100, "shape": [2, 50]}]}, 400, "input 'z' must have shape [n, 100]"),
    ({"inputs": [{**Z100, "data": [float("nan")] * 100}]}, 400, "not valid JSON"),
    ({"inputs": [{**Z100, "data": [1e39] * 100}]}, 400, "NaN or infinite"),
    ({"inputs": [{**Z100, "data": ["x"] * 100}]}, 400, "are not all FP32 values"),
    ({"inputs": [{**Z100, "data": [0.0] * 99}]}, 400, "99 values for shape [1, 100]"),
    ({"inputs": seed_inputs(1, -2)}, 400, "n must be from 1 to 4096, got -2"),
    ({"inputs": seed_inputs(1, 10**6)}, 400, "n must be from 1 to 4096"),
    ({"inputs": seed_inputs(-1, 2)}, 400, "seed must be from 0 to 2**64 - 1"),
    ({"inputs": seed_inputs(1, 2, psi=0.0)}, 400, "truncation must be"),
    ({"inputs": [*seed_inputs(1, 2), Z100]}, 400, "give either z, or seed and n"),
    ({"inputs": [{"name": "w", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400, "unknown input 'w'"),
    ({"inputs": [{"name": "n", "datatype": "FP32", "shape": [1], "data": [2.5]}, seed_inputs(1, 1)[0]]}, 400,
     "input 'n' must be an integer"),
    ({"inputs": []}, 400, "non-empty list 'inputs'"),
    ([1, 2], 400, "must be a JSON object"),
    ({"inputs": [{**Z100, "datatype": "COMPLEX"}]}, 400, "unknown datatype"),
    ({"inputs": [{**Z100, "parameters": {"binary_data_size": 400}}]}, 400, "binary_data_size does not match"),
    ({"inputs": [{**Z100, "parameters": [1]}]}, 400, "input 'z': 'parameters' must be an object"),
    ({"inputs": [Z100], "parameters": "binary"}, 400, "the request's 'parameters' must be an object"),
    ({"inputs": [Z100], "outputs": "image"}, 400, "'outputs' must be a list of objects"),
    ({"inputs": [Z100], "outputs": [{"name": "image", "parameters": 5}]}, 400, "'outputs' must be a list of objects"),
    ({"inputs": [{**Z100, "shape": [1] * 65}]}, 400, "'shape' must be a list of at most 8"),
])
def test_bad_inputs_get_400_and_what_was_wrong(cluster, body, status, message):
    r = requests.post(f"{cluster['url']}v2/models/mnist/infer", data=json.dumps(body), timeout=60)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert "Traceback" not in r.text


def test_unknown_models_oversized_bodies_and_broken_json(cluster):
    r = infer(cluster["url"], "../etc", seed_inputs(1, 1))
    assert r.status_code in (404, 405)
    r = infer(cluster["url"], "nope", seed_inputs(1, 1))
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = requests.post(f"{cluster['url']}v2/models/mnist/infer", data=b"{" * 100, timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = requests.post(f"{cluster['url']}v2/models/mnist/infer", data=b"x" * (server.MAX_BODY_BYTES + 1), timeout=120)
    assert r.status_code == 413
    r = requests.get(f"{cluster['url']}v2/models/mnist/grid.png?seed=1&n=100000", timeout=60)
    assert r.status_code == 400 and "n must be from 1 to 256" in r.json()["error"]
    # digits Python's isdigit() accepts but int() does not, numbers past int()'s 4,300 digits, deep nesting
    for query in ("seed=%C2%B2&n=4", "seed=1&n=%C2%B2", "seed=" + "9" * 5000 + "&n=4"):
        r = requests.get(f"{cluster['url']}v2/models/mnist/grid.png?{query}", timeout=60)
        assert r.status_code == 400 and "seed and n must be whole numbers" in r.json()["error"], query
    for length in ("²", "9" * 5000):
        r = requests.post(f"{cluster['url']}v2/models/mnist/infer", data=json.dumps({"inputs": seed_inputs(1, 1)}),
                          headers={"Inference-Header-Content-Length": length.encode("latin-1")}, timeout=60)
        assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    for body in (b"[" * 100000 + b"]" * 100000, b'{"inputs": [{"name": "seed", "data": [' + b"9" * 5000 + b"]}]}"):
        r = requests.post(f"{cluster['url']}v2/models/mnist/infer", data=body, timeout=60)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"] and "Traceback" not in r.text


def test_a_burst_is_answered_exactly_and_batched(cluster):
    gen = Generator.load("mnist")
    before = batch_calls(cluster)
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda s: (s, infer(cluster["url"], "mnist", seed_inputs(s, 2))), range(48)))
    for seed, r in results:
        assert r.status_code == 200 and np.array_equal(as_images(r), gen.generate(2, seed)), seed
    after = batch_calls(cluster)
    sizes = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    batched = {k: v for k, v in sizes.items() if k > 1 and v > 0}
    print(f"requests per onnxruntime call during the burst: {sizes}")
    assert batched, sizes  # several clients' requests went through one onnxruntime call


def test_a_flood_gets_503_at_once_beyond_the_queue_bound(cluster):
    """200 clients at once, 1,024 images each (answered as binary tensors), on two replicas: 32 requests in a
    replica and 32 waiting per replica are answered; the rest are told at once to retry (503), not kept
    waiting. (Each request fills a batch alone and runs alone for about half a second, so the flood outlasts
    its own arrival and the bound is reached however fast this machine answers; at 256 images a request one
    clean-clone run answered all 200.)"""
    gen = Generator.load("mnist")
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda s: (s, infer(cluster["url"], "mnist", seed_inputs(s, 1024), binary=True,
                                                     timeout=300)), range(200)))
    codes = [r.status_code for _, r in results]
    # (more than 2 x 64 are answered: slots free up while the flood is still arriving)
    assert set(codes) == {200, 503}, codes
    for seed, r in results:
        if r.status_code == 200:
            assert np.array_equal(as_images(r), gen.generate(1024, seed)), seed
        else:
            assert "queue is full" in r.json()["error"]


def batch_calls(cluster) -> dict:
    stats = requests.get(f"{cluster['url']}v2/models/mnist/stats", timeout=60).json()["model_stats"][0]["replicas"]
    total = {}
    for replica in stats:
        for k, v in replica["requests_per_call"].items():
            total[int(k)] = total.get(int(k), 0) + v
    return total


def test_one_clients_bad_latents_fail_only_that_client(cluster):
    url = cluster["url"]
    huge = [{"name": "z", "datatype": "FP32", "shape": [1, 100], "data": [3e38] * 100}]  # finite, overflows the model
    nan_for_fragile = [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": [-100.0] + [0.0] * 7}]
    jobs = [("mnist", seed_inputs(i, 2)) for i in range(40)] + [("mnist", huge)] * 10
    jobs += [("fragile", seed_inputs(i, 2)) for i in range(40)] + [("fragile", nan_for_fragile)] * 10
    order = np.random.default_rng(0).permutation(len(jobs))
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = dict(zip(order, pool.map(lambda k: infer(url, *jobs[k], timeout=120), order)))
    gens = {"mnist": Generator.load("mnist"), "fragile": Generator.load(cluster["fragile"])}
    for k, (model, inputs) in enumerate(jobs):
        r = results[k]
        if inputs is huge:
            assert r.status_code == 400 and "beyond +-10000" in r.json()["error"]
        elif inputs is nan_for_fragile:
            error = r.json()["error"]
            assert r.status_code == 500 and "ModelError" in error and "NaN" in error, error
            assert "Traceback" not in error and "\x1b" not in error and "ray::" not in error and "Ray" not in error
        else:  # every honest request answered, with its own bytes, however its batch was made up
            assert r.status_code == 200, (model, r.text)
            assert np.array_equal(as_images(r), gens[model].generate(2, inputs[0]["data"][0]))


def test_an_overload_is_shed_with_503_and_the_server_answers_afterwards(cluster):
    url = cluster["url"] + "small/"
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda s: infer(url, "mnist", seed_inputs(s, 512)), range(30)))
    codes = [r.status_code for r in results]
    assert 503 in codes and 200 in codes, codes
    assert all("queue is full" in r.json()["error"] for r in results if r.status_code == 503)
    assert all(c in (200, 503) for c in codes)
    r = infer(url, "mnist", seed_inputs(3, 2))
    assert r.status_code == 200 and np.array_equal(as_images(r), Generator.load("mnist").generate(2, 3))


def replicas(cluster, model="mnist") -> list[dict]:
    return requests.get(f"{cluster['url']}v2/models/{model}/stats", timeout=60).json()["model_stats"][0]["replicas"]


def test_replicas_run_on_both_nodes(cluster):
    # a replica that missed a health check on a loaded machine is restarted by Serve; give it time to return
    deadline = time.monotonic() + 120
    while len(seen := replicas(cluster)) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    assert len(seen) == 2 and len({r["node"] for r in seen}) == 2, seen


def test_a_replica_killed_under_load_loses_no_answered_request(cluster):
    gen = Generator.load("mnist")
    victim = replicas(cluster)[0]["pid"]
    answered, failed = [], []

    def client(i):
        r = infer(cluster["url"], "mnist", seed_inputs(1000 + i, 4), timeout=120)
        (answered if r.status_code == 200 else failed).append((i, r))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, i) for i in range(80)]
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        concurrent.futures.wait(futures, timeout=300)
    for i, r in answered:  # every answer the client was told succeeded is right
        assert np.array_equal(as_images(r), gen.generate(4, 1000 + i)), i
    # the rest were told to retry: the request was fine, its replica stopped
    assert all(r.status_code == 503 and "retry" in r.json()["error"] for _, r in failed), [r.text for _, r in failed]
    print(f"killed replica {victim}: {len(answered)} answered, {len(failed)} failed")
    deadline = time.time() + 180
    while time.time() < deadline:  # Ray restarts the replica
        pids = {r["pid"] for r in replicas(cluster)}
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(2)
    assert len(pids) == 2 and victim not in pids
    r = infer(cluster["url"], "mnist", seed_inputs(5, 2))
    assert r.status_code == 200 and np.array_equal(as_images(r), gen.generate(2, 5))


def test_the_serve_benchmark_measures_this_server(cluster):
    """benchmarks/serve_speed.py's load generator, against this cluster (its own Ray start is server.start's)."""
    from conftest import load_script
    bench = load_script("benchmarks/serve_speed.py", "serve_speed")
    row = bench.load(cluster["url"], "mnist", clients=2, n=1, seconds=0.5)
    assert row["requests"] > 0 and row["errors"] == 0 and row["p50_ms"] <= row["p99_ms"]
    host, port = cluster["host"].split(":")
    row = bench.with_stalled_clients(cluster["url"], host, int(port), "mnist", 5, n=1, seconds=0.5)
    assert row["stalled_clients"] == 5 and row["honest_requests"] > 0 and row["honest_errors"] == 0


def test_a_body_is_bounded_while_it_is_read():
    import asyncio
    consumed = []

    async def chunks():
        for i in range(100):  # 400 bytes offered, 4 at a time
            consumed.append(i)
            yield b"abcd"
    with pytest.raises(server.RequestError, match="over 10 bytes") as e:
        asyncio.run(server.read_body(chunks(), limit=10))
    assert e.value.status == 413 and len(consumed) == 3  # refused at the third piece, the rest never read
    assert asyncio.run(server.read_body(chunks(), limit=400)) == b"abcd" * 100

    async def stalls():  # a slow client: one byte, then nothing
        yield b"{"
        await asyncio.sleep(3600)
        yield b"}"
    with pytest.raises(server.RequestError, match="stopped arriving for 0.2 s") as e:
        asyncio.run(server.read_body(stalls(), stall_s=0.2))
    assert e.value.status == 408


def test_a_json_answer_is_made_a_piece_at_a_time(monkeypatch):
    monkeypatch.setattr(server, "JSON_CHUNK", 7)
    info = server.ModelInfo("mnist", str(bundled_models()["mnist"]))
    images = Generator.load("mnist").generate(3, 0)
    pieces, headers = server.encode_response(info, images, {"id": "r1"})
    pieces = list(pieces)
    assert headers["content-type"] == "application/json" and len(pieces) == 2 + -(-images.size // 7)
    assert max(len(p) for p in pieces[1:-1]) <= 7 * 4  # 7 values of at most 3 digits and a comma
    answer = json.loads(b"".join(pieces))
    out = answer["outputs"][0]
    assert answer["id"] == "r1" and np.array_equal(np.array(out["data"], np.uint8).reshape(out["shape"]), images)


def test_the_proxy_reads_a_body_whole_before_the_request_goes_on(monkeypatch):
    """``BodyFirst`` (the HTTP proxy's middleware): the app gets the body in one piece, and only once it is
    whole; a stalled body is answered 408 and a client that leaves mid-body is dropped, neither reaching the
    app; bodyless methods and declared-oversize bodies pass straight on (the ingress answers those)."""
    import asyncio
    monkeypatch.setattr(server.read_body, "__defaults__", (server.MAX_BODY_BYTES, 0.2))

    def call(method, messages, headers=()):
        seen, sent = [], []

        async def app(scope, receive, send):
            seen.append(await receive())

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": method, "headers": list(headers)}
        asyncio.run(server.BodyFirst(app)(scope, receive, send))
        return seen, sent
    pieces = [{"type": "http.request", "body": b"ab", "more_body": True},
              {"type": "http.request", "body": b"cd", "more_body": False}]
    seen, sent = call("POST", list(pieces))
    assert seen == [{"type": "http.request", "body": b"abcd", "more_body": False}] and sent == []
    seen, sent = call("POST", pieces[:1])  # then nothing: stalled
    assert seen == [] and sent[0]["status"] == 408 and b"stopped arriving" in sent[1]["body"]
    seen, sent = call("POST", [pieces[0], {"type": "http.disconnect"}])
    assert seen == [] and sent == []
    seen, _ = call("GET", list(pieces))
    assert seen == [pieces[0]]  # untouched
    seen, _ = call("POST", list(pieces), [(b"content-length", str(10 ** 9).encode())])
    assert seen == [pieces[0]]
    assert server.proxy_middlewares()[0].cls is server.BodyFirst


def test_a_stalled_body_is_sent_away_and_honest_clients_are_answered_meanwhile(cluster):
    import socket
    host, port = cluster["host"].split(":")
    slow = []
    for _ in range(20):  # clients that send their headers and one byte of a declared 100-byte body, then stall
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow.append(s)
    try:
        r = infer(cluster["url"], "mnist", seed_inputs(5, 2))  # an honest client, while they hang on
        assert r.status_code == 200 and np.array_equal(as_images(r), Generator.load("mnist").generate(2, 5))
        assert "x-request-id" in r.headers  # Serve's id for a request it routed
        for s in slow:  # each is answered 408 once its body has stalled for BODY_STALL_S
            answer = b""
            while b"stopped arriving" not in answer and (piece := s.recv(4096)):
                answer += piece
            assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer, answer[:300]
            # ... by the proxy, before routing (BodyFirst): no request id, no ingress slot or Ray call taken
            assert b"x-request-id" not in answer.lower(), answer[:300]
    finally:
        for s in slow:
            s.close()


def test_a_large_json_answer_keeps_the_servers_memory_bounded(cluster):
    """One n = 4,096 emoji64 answer as JSON: 50 M values, ~180 MB of text. The ingress and the HTTP proxy
    each grow by less than MAX_GROWTH while it streams (the text was built whole before: +1.3 GB)."""
    import threading
    psutil = pytest.importorskip("psutil")
    from ray.util.state import list_actors
    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
              if "Ingress" in a.class_name or "ProxyActor" in a.class_name]
    procs = [psutil.Process(a.pid) for a in actors]
    base = {p.pid: p.memory_info().rss for p in procs}
    peak, done = dict(base), threading.Event()

    def sample():
        while not done.is_set():
            for p in procs:
                peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = infer(cluster["url"], "emoji64", seed_inputs(0, 4096), timeout=300)
    finally:
        done.set()
        sampler.join()
    assert r.status_code == 200 and len(r.content) > 150e6 and r.content.endswith(b"]}]}")
    growth = {p.pid: (peak[p.pid] - base[p.pid]) / 2**20 for p in procs}
    print(f"peak growth while answering, MB: {growth}")
    assert max(growth.values()) < MAX_GROWTH_MB, growth


MAX_GROWTH_MB = 256


def test_a_conditional_model_takes_a_label_and_answers_the_runtimes_bytes(cluster):
    """The v2 input ``label`` (INT64, one for all or one per image), the seed's labels without it, and
    ``grid.png?label=`` by name or index: the same bytes as the Python runtime; bad labels 400."""
    url = cluster["url"] + "small/v2/models/cond"
    gen = Generator.load(cluster["cond"], device="cpu")
    meta = requests.get(url, timeout=30).json()
    assert {"name": "label", "datatype": "INT64", "shape": [-1]} in meta["inputs"]

    def infer(*extra):
        body = {"inputs": [{"name": "seed", "datatype": "UINT64", "shape": [1], "data": [5]},
                           {"name": "n", "datatype": "INT64", "shape": [1], "data": [4]}, *extra]}
        return requests.post(url + "/infer", json=body, timeout=60)

    def images(r):
        out = r.json()["outputs"][0]
        return np.array(out["data"], np.uint8).reshape(out["shape"])
    assert np.array_equal(images(infer()), gen.generate(4, seed=5))
    one = {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]}
    assert np.array_equal(images(infer(one)), gen.generate(4, seed=5, label="eel"))
    each = {"name": "label", "datatype": "INT64", "shape": [4], "data": [1, 0, 2, 1]}
    assert np.array_equal(images(infer(each)), gen.generate(4, seed=5, label=[1, 0, 2, 1]))
    for bad, words in (({"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}, "from 0 to 2"),
                       ({"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}, "INT64 [1] or [4]")):
        r = infer(bad)
        assert r.status_code == 400 and words in r.json()["error"], r.text
    png = requests.get(url + "/grid.png", params={"seed": 5, "n": 4, "label": "dog"}, timeout=60)
    same = requests.get(url + "/grid.png", params={"seed": 5, "n": 4, "label": "1"}, timeout=60)
    assert png.status_code == 200 and png.content == same.content
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), grid(gen.generate(4, seed=5, label=1))[..., 0])
    r = requests.get(url + "/grid.png", params={"label": "owl"}, timeout=60)
    assert r.status_code == 400 and "unknown class 'owl'" in r.json()["error"]
    r = requests.get(cluster["url"] + "small/v2/models/rgb/grid.png", params={"label": "1"}, timeout=60)
    assert r.status_code == 400 and "not class-conditional" in r.json()["error"]
