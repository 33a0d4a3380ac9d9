"""`dcgan-deploy serve`: generators behind the Open Inference Protocol (KServe v2 / Triton), on Ray Serve.

One Ray Serve application: an HTTP ingress (FastAPI) that speaks the protocol and checks every
request, and one deployment per model whose replicas each hold one runtime ``Generator`` (numpy +
onnxruntime). Requests from many clients are batched into one onnxruntime call by ``@serve.batch``
(up to ``max_batch_size`` images, waiting at most ``BATCH_WAIT_S``). Without ``address`` a local Ray
instance is started; with one, the app joins that cluster, and the replicas spread over its nodes.

The protocol, over HTTP:

- ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2``, ``GET /v2/models/{name}`` (metadata),
  ``GET /v2/models/{name}/ready``, ``GET /v2/models/{name}/stats`` (batch sizes, per replica);
- ``POST /v2/models/{name}/infer``: inputs either ``z`` (FP32 ``[n, latent_dim]``) or ``seed`` (INT64 or
  UINT64 ``[1]``) with ``n`` (INT64 ``[1]``) and optionally ``truncation`` (FP32 ``[1]``); output ``image``
  (UINT8 ``[n, H, W, C]``), the same bytes as ``dcgan-deploy generate``. JSON data, or Triton's binary
  tensor extension (the ``Inference-Header-Content-Length`` header), as ``tritonclient`` sends and asks;
- ``GET /v2/models/{name}/grid.png?seed=S&n=N[&truncation=PSI]``: a PNG grid, for a browser or curl.

Every input is checked: a bad one gets 400 and ``{"error": "..."}`` saying what was wrong, an unknown
model 404, a body over ``MAX_BODY_BYTES`` 413, a full queue 503; never a traceback. The shapes and
datatypes are those of the Triton model repository entry ``export --triton`` writes, but for the
output: the server sends UINT8 images ``[n, H, W, C]`` (what ``generate`` writes), Triton's entry the
float32 ``[n, C, H, W]`` the ONNX graph computes.
"""
import io
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import bundled, modelfile
from .latent import MAX_SEED, check_truncation
from .modelfile import printable

MAX_IMAGES = 4096              # images per request
MAX_BODY_BYTES = 64 * 1024**2  # request body
MAX_GRID = 256                 # images in a grid.png
MAX_RANK = 8                   # dimensions of an input tensor
# Latent values a request may send: the seed contract's draws stay within +-14 (the ziggurat's tail from
# 53-bit uniforms), and 64 directions at the strength rule's +-100 move a latent by at most 6,400.
MAX_LATENT = 10_000.0
BATCH_WAIT_S = 0.005           # how long a replica waits to fill a batch
QUEUE_PER_REPLICA = 32         # requests waiting per replica before a 503
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "UINT64": np.uint64, "INT32": np.int32,
             "UINT8": np.uint8, "BOOL": np.bool_, "FP16": np.float16, "INT8": np.int8, "UINT32": np.uint32}


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status, the message goes to the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---- the protocol, without Ray: parse and encode -------------------------------------------------------
class ModelInfo:
    """What the ingress knows of a model, from its file alone (no session): names, shapes, its prior."""

    def __init__(self, name: str, path):
        graph = modelfile.read(path)
        meta = modelfile.check_metadata(graph.metadata, path)
        modelfile.check_ops(graph)
        self.name, self.path = name, str(path)
        self.latent_dim, self.prior = int(meta["latent_dim"]), meta["latent_prior"]
        self.shape = (int(meta["height"]), int(meta["width"]), int(meta["channels"]))
        self.classes = modelfile.check_classes(meta, path)  # a class-conditional model's

    def metadata(self) -> dict:
        h, w, c = self.shape
        return {"name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "z", "datatype": "FP32", "shape": [-1, self.latent_dim]},
                           {"name": "seed", "datatype": "INT64", "shape": [1]},
                           {"name": "n", "datatype": "INT64", "shape": [1]},
                           {"name": "truncation", "datatype": "FP32", "shape": [1]}]
                + ([{"name": "label", "datatype": "INT64", "shape": [-1]}] if self.classes else []),
                "outputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, h, w, c]}]}


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part of a request and its binary tail (Triton's binary tensor extension)."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is {len(body)} bytes; at most {MAX_BODY_BYTES}", 413)
    if header_length is not None:
        if not whole(header_length, 12) or int(header_length) > len(body):
            raise RequestError("Inference-Header-Content-Length must be the length of the JSON part of the body")
        n = int(header_length)
        head, tail = body[:n], body[n:]
    else:
        head, tail = body, b""
    try:
        request = json.loads(head, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))
    except RecursionError:
        raise RequestError("the request is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request is not valid JSON ({printable(str(e), 100)})") from None
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object with 'inputs'")
    if not isinstance(request.get("parameters") or {}, dict):
        raise RequestError("the request's 'parameters' must be an object")
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("parameters") or {}, dict)
                                                for o in outputs):
        raise RequestError("the request's 'outputs' must be a list of objects (each with an object 'parameters')")
    return request, tail


def whole(text: str, digits: int) -> bool:
    """``text`` is 1 to ``digits`` ASCII digits (not any character ``str.isdigit`` accepts, such as '²')."""
    return re.fullmatch(f"[0-9]{{1,{digits}}}", text) is not None


def read_inputs(request: dict, tail: bytes) -> dict[str, np.ndarray]:
    """{name: array} from the request's ``inputs`` (JSON ``data`` or binary), each checked against its
    declared datatype and shape."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("the request needs a non-empty list 'inputs'")
    out, offset = {}, 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(f"input {i} must be an object with a 'name'")
        name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
        if name in out:
            raise RequestError(f"input {name!r} is given twice")
        if datatype not in DATATYPES:
            raise RequestError(f"input {name!r}: unknown datatype {str(datatype)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 10**7 for d in shape):
            raise RequestError(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative integers")
        count = math.prod(shape)
        if count > MAX_IMAGES * 4096:
            raise RequestError(f"input {name!r}: {count} values is more than a request may hold")
        dtype = np.dtype(DATATYPES[datatype])
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"input {name!r}: 'parameters' must be an object")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(tail):
                raise RequestError(f"input {name!r}: binary_data_size does not match its shape and datatype")
            array = np.frombuffer(tail, dtype.newbyteorder("<"), count, offset).reshape(shape)
            offset += size
        else:
            data = tensor.get("data")
            if not isinstance(data, list):
                raise RequestError(f"input {name!r} needs 'data' (a flat list) or binary data")
            flat = _flatten(data)
            if len(flat) != count:
                raise RequestError(f"input {name!r}: {len(flat)} values for shape {shape}")
            try:
                array = _as_array(flat, dtype, name).reshape(shape)
            except (ValueError, TypeError, OverflowError):
                raise RequestError(f"input {name!r}: its data are not all {datatype} values") from None
        out[name] = array
    return out


def _flatten(data: list) -> list:
    flat, stack = [], [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def _as_array(flat: list, dtype: np.dtype, name: str) -> np.ndarray:
    if dtype.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise TypeError
        return np.array(flat, dtype=object).astype(dtype) if flat else np.zeros(0, dtype)
    if dtype.kind == "f" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise TypeError
    return np.array(flat, dtype=dtype)


def work_for(info: ModelInfo, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """What a request asks a replica for: its latents (``latents_for``) and a conditional model's int64
    labels: the ``label`` input (INT64, one for all or one per image) or, without one, the seed's
    (``latent.seed_labels``; seed 0's for given latents)."""
    from .latent import seed_labels
    label = inputs.pop("label", None)
    z = latents_for(info, inputs)
    if not info.classes:
        if label is not None:
            raise RequestError(f"model {info.name!r} is not class-conditional: it takes no input 'label'")
        return z, None
    if label is None:
        seed = 0 if "z" in inputs else int(inputs["seed"].reshape(-1)[0])
        return z, seed_labels(len(z), seed, len(info.classes))
    if label.dtype.kind not in "iu" or label.ndim != 1 or len(label) not in (1, len(z)):
        raise RequestError(f"input 'label' must be INT64 [1] or [{len(z)}] (one per image), got {label.dtype} "
                           f"{list(label.shape)}")
    if label.min() < 0 or label.max() >= len(info.classes):
        raise RequestError(f"input 'label' must hold class indices from 0 to {len(info.classes) - 1}")
    return z, np.broadcast_to(label.astype(np.int64), (len(z),)).copy()


def class_index(info: ModelInfo, label: str) -> int:
    """``grid.png``'s ``label``: a class name or index of a conditional model."""
    if not info.classes:
        raise RequestError(f"model {info.name!r} is not class-conditional: it takes no label")
    if label in info.classes:
        return info.classes.index(label)
    if whole(label, 4) and int(label) < len(info.classes):
        return int(label)
    raise RequestError(f"unknown class {printable(label[:40])!r}; this model's classes are 0 to {len(info.classes) - 1} "
                       f"({printable(', '.join(info.classes[:20]), 300)})")


def latents_for(info: ModelInfo, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 latents a request asks for: given as ``z``, or drawn from ``seed`` and ``n``."""
    from .latent import latents
    extra = set(inputs) - {"z", "seed", "n", "truncation"}
    if extra:
        raise RequestError(f"unknown input {sorted(extra)[0]!r}; this model takes z, or seed and n (and truncation"
                           + (", label" if info.classes else "") + ")")
    if "z" in inputs:
        if set(inputs) != {"z"}:
            raise RequestError("give either z, or seed and n (with truncation): not both")
        z = inputs["z"]
        if z.dtype != np.float32:
            raise RequestError(f"input 'z' must be FP32, got {z.dtype}")
        if z.ndim != 2 or z.shape[1] != info.latent_dim or not 1 <= z.shape[0] <= MAX_IMAGES:
            raise RequestError(f"input 'z' must have shape [n, {info.latent_dim}] with 1 <= n <= {MAX_IMAGES}, "
                               f"got {list(z.shape)}")
        if not np.isfinite(z).all():
            raise RequestError("input 'z' holds NaN or infinite values")
        if np.abs(z).max() > MAX_LATENT:
            raise RequestError(f"input 'z' holds values beyond +-{MAX_LATENT:g}; no latent of the model's prior, nor an "
                               "edit of one, is that large")
        return np.ascontiguousarray(z)
    if "seed" not in inputs or "n" not in inputs:
        raise RequestError("give z (FP32 [n, latent_dim]), or seed and n (INT64 [1])")
    seed, n = _scalar(inputs["seed"], "seed", "iu"), _scalar(inputs["n"], "n", "iu")
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(f"seed must be from 0 to 2**64 - 1, got {seed}")
    if not 1 <= n <= MAX_IMAGES:
        raise RequestError(f"n must be from 1 to {MAX_IMAGES}, got {n}")
    psi = 1.0
    if "truncation" in inputs:
        psi = _scalar(inputs["truncation"], "truncation", "f")
        try:
            check_truncation(psi)
        except ValueError as e:
            raise RequestError(str(e)) from None
    return latents(n, seed, info.latent_dim, info.prior, psi)


def _scalar(a: np.ndarray, name: str, kinds: str):
    if a.dtype.kind not in kinds:
        raise RequestError(f"input {name!r} must be {'an integer (INT64)' if 'i' in kinds else 'a number (FP32)'}, "
                           f"got {a.dtype}")
    if a.size != 1:
        raise RequestError(f"input {name!r} must hold one value, got shape {list(a.shape)}")
    v = a.reshape(-1)[0]
    return int(v) if a.dtype.kind in "iu" else float(v)


def wants_binary(request: dict) -> bool:
    """Whether the client asked for the image as binary data (tritonclient's default)."""
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    return any(isinstance(o, dict) and (o.get("parameters") or {}).get("binary_data")
               for o in request.get("outputs") or [])


JSON_CHUNK = 1 << 18  # image values per piece of a streamed JSON answer (about 1 MB of text)


def encode_response(info: ModelInfo, images: np.ndarray, request: dict) -> tuple[Iterator[bytes], dict]:
    """(body pieces, headers) of an infer response: JSON, or JSON + the image bytes with Triton's binary
    extension. A JSON answer is made a piece at a time: its text (3.6 bytes per value) never exists whole,
    so a large answer costs the server its image bytes and one piece."""
    out = {"name": "image", "datatype": "UINT8", "shape": list(images.shape)}
    head = {"model_name": info.name, "model_version": "1", "outputs": [out]}
    if isinstance(request.get("id"), str):
        head["id"] = request["id"][:256]
    if wants_binary(request):
        raw = np.ascontiguousarray(images).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        text = json.dumps(head).encode()
        return iter((text, raw)), {"Inference-Header-Content-Length": str(len(text)),
                                   "content-type": "application/octet-stream"}
    out["data"] = "@DATA@"
    before, after = json.dumps(head).encode().split(b'"@DATA@"')
    flat = images.reshape(-1)

    def pieces() -> Iterator[bytes]:
        yield before + b"["
        for start in range(0, len(flat), JSON_CHUNK):
            yield (b"," if start else b"") + ",".join(map(str, flat[start:start + JSON_CHUNK].tolist())).encode()
        yield b"]" + after
    return pieces(), {"content-type": "application/json"}


MAX_CONNECTIONS = 10_000  # requests the ingress holds at once (most of a flood of slow clients waits on its body)
BODY_STALL_S = 10.0  # the longest a request's body may pause; a client that stalls longer is sent away (408)


def declared_too_large(length: str | None) -> bool:
    """Whether a request's Content-Length (``None``: not given) is not a number of bytes, or is over the
    body limit: such a body is refused (413) without being read."""
    return length is not None and (not whole(length, 12) or int(length) > MAX_BODY_BYTES)


async def read_body(chunks, limit: int = MAX_BODY_BYTES, stall_s: float = BODY_STALL_S) -> bytes:
    """A request's body from its stream, refused (413) as soon as it passes ``limit`` bytes: a chunked body
    (no Content-Length) is bounded while it is read, not after. A body that stops arriving for ``stall_s``
    is refused (408), so a slow client holds its slot for seconds, not for ever."""
    import asyncio
    parts, size = [], 0
    stream = chunks.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), stall_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(f"the request body stopped arriving for {stall_s:g} s", 408) from None
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over {limit} bytes", 413)
        parts.append(chunk)
    return b"".join(parts)


class BodyFirst:
    """An ASGI middleware for Ray Serve's HTTP proxy: a request's body is read there, whole, before the
    request is routed (bounded by ``MAX_BODY_BYTES`` and ``BODY_STALL_S`` as the ingress bounds it), then
    handed on. A client that stalls its body is answered 408 by the proxy and never takes an ingress slot or
    a Ray call, so thousands of them cost the proxy a waiting coroutine each and honest requests pass."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if declared_too_large(None if length is None else length.decode("latin-1")):
            return await self.app(scope, receive, send)  # the ingress refuses it (413) without reading it

        gone = []

        async def chunks():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.append(True)
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return
        try:
            body = await read_body(chunks())
            if gone:  # the client left before its body was whole: nothing to answer
                return
        except RequestError as e:
            payload = json.dumps({"error": str(e)}).encode()
            await send({"type": "http.response.start", "status": e.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": payload})
            return
        handed = False

        async def replay():  # the body once, whole; then what the client sends next (its disconnect)
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)


def proxy_middlewares() -> list:
    """The HTTP proxy's middlewares (Ray Serve calls this in the proxy's process)."""
    from starlette.middleware import Middleware
    return [Middleware(BodyFirst)]


def describe_failure(e: BaseException) -> str:
    """One clean line for an unexpected failure: a replica's exception arrives wrapped in Ray's task error,
    whose text holds the actor's repr and terminal colour codes; the line names the cause alone."""
    from .runtime import first_line
    cause = getattr(e, "cause", None)
    cause = cause if isinstance(cause, BaseException) else e
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", first_line(cause))
    return f"{type(cause).__name__}: {printable(text, 300)}"


def png_grid(images: np.ndarray) -> bytes:
    from .images import grid, to_pil
    buffer = io.BytesIO()
    to_pil(grid(images)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- the Ray Serve application --------------------------------------------------------------------------
def build_app(models: dict[str, str], replicas: int = 1, max_batch_size: int = 256, threads: int | None = None,
              replica_resources: dict | None = None, queue_per_replica: int = QUEUE_PER_REPLICA,
              max_per_node: int | None = None):
    """The Serve application: an ingress and one deployment per model (``replicas`` each, batching up to
    ``max_batch_size`` images; at most ``queue_per_replica`` requests waiting per replica, beyond which
    the server answers 503). ``replica_resources``: Ray resources each replica needs;
    ``max_per_node``: at most this many replicas of a model on one node (to spread them)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from ray import serve
    from ray.serve.exceptions import BackPressureError

    infos = {name: ModelInfo(name, path) for name, path in models.items()}  # refuse a bad file before starting

    placement = {"max_replicas_per_node": max_per_node} if max_per_node else {}

    # A replica takes up to ``queue_per_replica`` requests at once (gathered into batches); as many again may
    # wait in the handle's queue per replica; beyond that a request is refused at once with 503.
    @serve.deployment(max_ongoing_requests=queue_per_replica, max_queued_requests=queue_per_replica * replicas,
                      num_replicas=replicas, health_check_period_s=2, health_check_timeout_s=30, **placement,
                      ray_actor_options={"num_cpus": 0, **({"resources": replica_resources} if replica_resources
                                                            else {})})
    class ModelReplica:
        """One replica: one runtime Generator; requests batched into one onnxruntime call."""

        def __init__(self, path: str, max_images: int, threads: int | None):
            from .runtime import Generator
            self.gen = Generator.load(path, device="auto", threads=threads)
            self.max_images = max_images
            self.run_batch.set_max_batch_size(max_images)
            self.run_batch.set_batch_wait_timeout_s(BATCH_WAIT_S)
            self.batches: dict[int, int] = {}  # images per onnxruntime call -> how many calls
            self.requests_per_batch: dict[int, int] = {}

        @serve.batch(max_batch_size=256, batch_wait_timeout_s=BATCH_WAIT_S,
                     batch_size_fn=lambda requests: sum(len(w[0]) for w in requests))
        async def run_batch(self, requests: list[tuple]) -> list:
            try:
                labels = None if requests[0][1] is None else np.concatenate([w[1] for w in requests])
                images = self.run_now((np.concatenate([w[0] for w in requests]), labels), len(requests))
            except Exception:
                if len(requests) == 1:
                    raise
                # one request's latents may fail the whole batch: each alone, so only that request fails
                return [self._alone(r) for r in requests]
            out, start = [], 0
            for z, _ in requests:
                out.append(images[start:start + len(z)])
                start += len(z)
            return out

        def _alone(self, work: tuple):
            try:
                return self.run_now(work)
            except Exception as e:  # handed back as the result of this request alone, raised in __call__
                return e

        def run_now(self, work: tuple, requests: int = 1) -> np.ndarray:
            from .images import to_uint8
            z, labels = work  # latents, and a conditional model's int64 labels (None otherwise), checked by run
            images = to_uint8(self.gen.run(z, labels))  # one onnxruntime call for the whole batch
            self.batches[len(z)] = self.batches.get(len(z), 0) + 1
            self.requests_per_batch[requests] = self.requests_per_batch.get(requests, 0) + 1
            return images

        async def __call__(self, work: tuple) -> np.ndarray:
            if len(work[0]) >= self.max_images:  # a request that fills a batch alone runs alone
                return self.run_now(work)
            result = await self.run_batch(work)
            if isinstance(result, Exception):
                raise result
            return result

        def stats(self) -> dict:
            import ray
            return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                    "images_per_call": dict(self.batches), "requests_per_call": dict(self.requests_per_batch)}

    app = FastAPI(title="dcgan-deploy", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def in_flight(request, call_next):
        """Count the requests being answered; once draining (a stop), refuse new model requests with 503."""
        state = ingress_state()
        if state["draining"] and request.url.path.startswith("/v2/models/"):
            return JSONResponse({"error": "the server is stopping; retry shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            response = await call_next(request)
        except BaseException:
            state["in_flight"] -= 1
            raise
        body = response.body_iterator  # a request is in flight until its last byte has gone (answers stream)

        async def counted():
            try:
                async for piece in body:
                    yield piece
            finally:
                state["in_flight"] -= 1
        response.body_iterator = counted()
        return response

    @app.exception_handler(RequestError)
    async def refused(request, e: RequestError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(Exception)
    async def failed(request, e: Exception):  # no traceback, Ray internals or escape codes to the client
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
        if isinstance(e, (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)):
            # a replica stopped (killed, restarting) with this request in flight: nothing is wrong with the
            # request, so the client may send it again
            return JSONResponse({"error": "a replica stopped while answering this request; retry it"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"error": f"the server could not answer: {describe_failure(e)}"}, status_code=500)

    # requests waiting on their bodies are coroutines here: cheap, so many may wait without blocking the rest
    @serve.deployment(max_ongoing_requests=MAX_CONNECTIONS, num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, handles: dict):
            self.handles = handles
            self.infos = infos

        def _info(self, name: str) -> ModelInfo:
            if name not in self.infos:
                raise RequestError(f"unknown model {name[:80]!r}; this server has {', '.join(self.infos)}", 404)
            return self.infos[name]

        async def _images(self, name: str, work: tuple) -> np.ndarray:
            try:
                return await self.handles[name].remote(work)
            except BackPressureError:
                raise RequestError(f"model {name!r} is busy: its queue is full; retry later", 503) from None

        @app.get("/v2/health/live")
        def live(self):
            return {"live": True}

        @app.get("/v2/health/ready")
        def ready(self):
            if ingress_state()["draining"]:  # a load balancer sends no more here
                return JSONResponse({"ready": False}, status_code=503)
            return {"ready": True}

        def drain(self) -> int:
            """Stop taking model requests; how many are still being answered."""
            state = ingress_state()
            state["draining"] = True
            return state["in_flight"]

        @app.get("/v2")
        def server(self):
            from . import __version__
            return {"name": "dcgan-deploy", "version": __version__, "extensions": ["binary_tensor_data", "statistics"]}

        @app.get("/v2/models/{name}")
        @app.get("/v2/models/{name}/versions/1")
        def model(self, name: str):
            return self._info(name).metadata()

        @app.get("/v2/models/{name}/ready")
        @app.get("/v2/models/{name}/versions/1/ready")
        def model_ready(self, name: str):
            self._info(name)
            return {"name": name, "ready": True}

        @app.get("/v2/models/{name}/stats")
        async def stats(self, name: str):
            self._info(name)
            handle = self.handles[name]
            seen = {}
            for _ in range(8 * replicas):  # ask until every replica has answered (routing picks one each time)
                s = await handle.stats.remote()
                seen[s["pid"]] = s
                if len(seen) == replicas:
                    break
            return {"model_stats": [{"name": name, "version": "1", "replicas": list(seen.values())}]}

        @app.post("/v2/models/{name}/infer")
        @app.post("/v2/models/{name}/versions/1/infer")
        async def infer(self, name: str, request: Request):
            info = self._info(name)
            if declared_too_large(request.headers.get("content-length")):
                raise RequestError(f"the request body is over {MAX_BODY_BYTES} bytes", 413)
            body = await read_body(request.stream())
            parsed, tail = split_body(body, request.headers.get("inference-header-content-length"))
            images = await self._images(name, work_for(info, read_inputs(parsed, tail)))
            pieces, headers = encode_response(info, images, parsed)
            return StreamingResponse(pieces, headers=headers)

        @app.get("/v2/models/{name}/grid.png")
        async def grid_png(self, name: str, seed: str = "0", n: str = "16", truncation: str = "1",
                           label: str | None = None):
            info = self._info(name)
            if not whole(seed, 20) or not whole(n, 6):
                raise RequestError("seed and n must be whole numbers (seed 0 to 2**64 - 1, n from 1 to "
                                   f"{MAX_GRID}), in digits")
            try:
                psi = float(truncation)
            except ValueError:
                raise RequestError(f"truncation must be a number, got {truncation[:20]!r}") from None
            if not 1 <= int(n) <= MAX_GRID or int(seed) > MAX_SEED:
                raise RequestError(f"n must be from 1 to {MAX_GRID} and seed from 0 to 2**64 - 1, got n={n}, "
                                   f"seed={seed[:30]}")
            inputs = {"seed": np.array([int(seed)], np.uint64), "n": np.array([int(n)], np.int64),
                      "truncation": np.array([psi], np.float32)}
            if label is not None:
                inputs["label"] = np.array([class_index(info, label)], np.int64)
            return Response(png_grid(await self._images(name, work_for(info, inputs))), media_type="image/png")

    handles = {name: ModelReplica.options(name=f"model-{name}").bind(infos[name].path, max_batch_size, threads)
               for name in models}
    return Ingress.bind(handles)


# What Ray's processes need in their environment (a Ray that `serve` starts inherits it; the nodes of a
# cluster given by --address need it set alike): a busy or small machine can take longer than Ray Serve's 5 s
# to start its HTTP proxy, and the controller would then restart the proxy in a loop, so give it a minute;
# and Serve's hook for the proxy's middlewares, so the proxy reads each request's body before routing it
# (``BodyFirst``).
RAY_ENVIRONMENT = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
                   "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "dcgan_deploy.serve.proxy_middlewares"}


def start(models=(), host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, max_batch_size: int = 256,
          address: str | None = None, threads: int | None = None, replica_resources: dict | None = None,
          max_per_node: int | None = None) -> str:
    """Start (or join, with ``address``) Ray, and run the app on ``host:port``; returns the base URL."""
    import ray
    from ray import serve
    if not 1 <= replicas <= 1024:
        raise ValueError(f"--replicas must be from 1 to 1024, got {replicas}")
    if not 1 <= max_batch_size <= MAX_IMAGES:
        raise ValueError(f"--max-batch-size must be from 1 to {MAX_IMAGES} images, got {max_batch_size}")
    if threads is not None:
        from .runtime import check_threads
        try:
            check_threads(threads)
        except ValueError as e:
            raise ValueError(f"--threads: {e}") from None
    chosen = {name: str(path.resolve()) for name, path in bundled.pick(models).items()}  # checked before anything starts
    app = build_app(chosen, replicas, max_batch_size, threads, replica_resources, max_per_node=max_per_node)
    for key, value in RAY_ENVIRONMENT.items():  # inherited by the Ray processes this one starts
        os.environ.setdefault(key, value)
    global _own_session
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        node = getattr(ray._private.worker, "_global_node", None)
        if address is None and node is not None and node.head:
            _own_session = node.get_session_dir_path()  # a local Ray this process began: its folder is ours
    _catch_stop_signals()  # ray.init installs its own SIGTERM handler (a stack dump, then abort)
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
    serve.run(app, name="dcgan-deploy", route_prefix="/")
    return f"http://{host}:{port}/"


_ingress = {"in_flight": 0, "draining": False}  # in the ingress's process


def ingress_state() -> dict:
    """The ingress's count of requests being answered and whether it is draining (a module-level object, so
    that the app's middleware and the ingress's methods, shipped to the ingress's process, share it)."""
    return _ingress


DRAIN_S = 30.0  # how long a stop waits for the requests being answered


def stop(drain_s: float = DRAIN_S) -> None:
    """Drain (no new model requests; those being answered finish, for up to ``drain_s``), then stop Serve
    and Ray."""
    import ray
    from ray import serve
    with _suppress():
        handle = serve.get_app_handle("dcgan-deploy")
        deadline = time.monotonic() + drain_s
        while handle.drain.remote().result(timeout_s=10) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the proxy relays the last bytes the ingress has sent
    with _suppress():
        serve.shutdown()
    with _suppress():
        ray.shutdown()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


_own_session: str | None = None  # the session folder of a local Ray that ``start`` began


_stopping = threading.Event()  # set by SIGTERM or Ctrl-C once ``start`` has begun Ray


def _catch_stop_signals() -> None:
    """SIGTERM and SIGINT set ``_stopping`` (in place of Ray's handler): a signal that arrives while the
    app is still starting stops it as soon as it has started."""
    import signal
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: _stopping.set())


def serve_forever(url: str) -> None:
    """Serve until SIGTERM (what container runtimes and service managers send) or Ctrl-C, then stop
    cleanly: Serve drains its replicas, Ray shuts down, and the session folder of a local Ray is removed."""
    _catch_stop_signals()
    try:
        while not _stopping.wait(1.0):
            pass
    finally:
        stop()
        remove_session()


def remove_session() -> None:
    """Remove the session folder of the local Ray that ``start`` began (logs, sockets; ~100 MB), and Ray's
    ``session_latest`` link when it points there."""
    global _own_session
    if not _own_session:
        return
    import shutil
    session = Path(_own_session)
    latest = session.parent / "session_latest"
    if latest.is_symlink() and latest.resolve() == session.resolve():
        latest.unlink()
    shutil.rmtree(session, ignore_errors=True)
    _own_session = None
