"""The model file: a dcgan-deploy generator in ONNX, read, checked and re-labelled with numpy alone.

The file is untrusted input. Everything that reads it goes through here: the metadata
(``metadata_props``) through one validated reader, the graph through a small reader of
ONNX's protobuf encoding (wire format: each field a tag ``number << 3 | wire type`` and a
value), which needs neither torch nor the onnx package. It lists every node -- in
subgraphs and local functions too -- to refuse random or training-only ops, tells a
file's precision from its graph, and decodes initializers (the first layer's weights,
for latent directions). ``write_metadata`` replaces the metadata entries and copies
every other byte of the file as it is.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_path

FORMAT = "1"
FORMAT_KEY = "dcgan_deploy.format"
SUPPORTED_FORMATS = (FORMAT,)
REQUIRED_KEYS = ("architecture", "latent_dim", "latent_prior", "channels", "height", "width")
PRIORS = ("normal", "uniform")
# Ops that must never appear in a deployable generator graph: the same seed must give the same bytes.
FORBIDDEN_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                           "Bernoulli", "Dropout"})
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                           "QLinearMatMul", "ConvInteger", "MatInteger", "MatMulInteger", "QGemm"})
# Sizes a model file may claim (a larger claim is refused before anything is allocated).
MAX_LATENT_DIM = 4096
MAX_SIDE = 1024
CHANNELS = (1, 3)
MAX_FILE_BYTES = 2 * 1024**3  # protobuf's own limit


class ModelError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""


# ---- protobuf wire format ------------------------------------------------------------
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object, int, int]]:
    """The fields of one message in ``buf[start:end]``: ``(number, wire type, value, first byte, end)``.
    ``value``: an int for varint and fixed fields, a ``(start, end)`` slice for length-delimited ones."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        first = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == FIXED64:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == FIXED32:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == LENGTH:
            size, pos = _varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end or number == 0:
            raise ValueError("a field runs past the end of its message")
        yield number, wire, value, first, pos


def _text(buf: bytes, span) -> str:
    return buf[span[0]:span[1]].decode("utf-8", "replace")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | LENGTH) + _encode_varint(len(payload)) + payload


# ---- the ONNX messages this module needs ---------------------------------------------
# ONNX TensorProto data types -> numpy (the ones a generator's initializers use)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 10: np.float16,
          11: np.float64, 9: np.bool_}


@dataclass
class Tensor:
    """An initializer: its name, shape and ONNX data type, decoded on demand."""

    name: str
    dims: tuple[int, ...]
    data_type: int
    _buf: bytes = field(repr=False)
    _raw: tuple[int, int] | None = field(default=None, repr=False)
    _values: list = field(default_factory=list, repr=False)
    external: bool = False

    def array(self) -> np.ndarray:
        dtype = DTYPES.get(self.data_type)
        if dtype is None:
            raise ValueError(f"initializer {self.name!r} has an unsupported data type {self.data_type}")
        if self.external:
            raise ValueError(f"initializer {self.name!r} is stored outside the file (external data)")
        count = int(np.prod(self.dims)) if self.dims else 1
        if self._raw is not None:
            a = np.frombuffer(self._buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=self._raw[0])
        elif self.data_type == 1:
            a = np.array(self._values, np.float32)
        elif self.data_type == 10:  # float16 values travel as int32 bit patterns
            a = np.array(self._values, np.uint16).view(np.float16)
        else:
            a = np.array(self._values).astype(dtype)
        if a.size != count:
            raise ValueError(f"initializer {self.name!r} holds {a.size} values for shape {list(self.dims)}")
        return a.reshape(self.dims).astype(dtype)


@dataclass
class Node:
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, object]  # ints, floats, strings and int lists; subgraphs are in ``subgraphs``
    subgraphs: list["Graph"]


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, Tensor]
    inputs: list[str]
    outputs: list[str]


@dataclass
class ModelFile:
    path: Path
    graph: Graph
    functions: list[list[Node]]
    metadata: dict[str, str]
    opsets: dict[str, int]

    def nodes(self) -> Iterator[Node]:
        """Every node: the main graph's, its subgraphs' (If, Loop, Scan bodies) and local functions'."""
        stack = [self.graph.nodes, *self.functions]
        while stack:
            for node in stack.pop():
                yield node
                stack += [g.nodes for g in node.subgraphs]

    @property
    def precision(self) -> str:
        """What the graph computes in: ``int8`` (quantize/dequantize ops), ``float16`` (float16 weights
        or casts to float16), else ``float32``. Read from the graph, never from the metadata's claim."""
        ops = {n.op_type for n in self.nodes()}
        if ops & QUANTIZED_OPS:
            return "int8"
        if any(t.data_type == 10 for t in self.graph.initializers.values()) or any(
                n.op_type == "Cast" and n.attributes.get("to") == 10 for n in self.nodes()):
            return "float16"
        return "float32"


def _tensor(buf: bytes, start: int, end: int) -> Tensor:
    name, dims, dtype, raw, values, external = "", [], 0, None, [], False
    for number, wire, value, *_ in fields(buf, start, end):
        if number == 1:
            dims += _ints(buf, wire, value)
        elif number == 2:
            dtype = value
        elif number == 8:
            name = _text(buf, value)
        elif number == 9:
            raw = value
        elif number == 4:  # float_data: packed fixed32, or one per field
            values += (np.frombuffer(buf[value[0]:value[1]], "<f4").tolist() if wire == LENGTH
                       else [np.array([value], "<u4").view("<f4")[0]])
        elif number in (5, 7):  # int32_data, int64_data (varints)
            values += _ints(buf, wire, value, signed=True)
        elif number == 14:
            external = value == 1
    return Tensor(name, tuple(dims), dtype, buf, raw, values, external)


def _ints(buf: bytes, wire: int, value, signed: bool = False) -> list[int]:
    if wire == VARINT:
        out = [value]
    else:
        out, pos = [], value[0]
        while pos < value[1]:
            v, pos = _varint(buf, pos)
            out.append(v)
    return [v - (1 << 64) if signed and v >= 1 << 63 else v for v in out]


def _attribute(buf: bytes, start: int, end: int, depth: int) -> tuple[str, object, list[Graph]]:
    name, value, graphs = "", None, []
    for number, wire, v, *_ in fields(buf, start, end):
        if number == 1:
            name = _text(buf, v)
        elif number == 3:
            value = v - (1 << 64) if v >= 1 << 63 else v
        elif number == 2:
            value = float(np.array([v], "<u4").view("<f4")[0])
        elif number == 4:
            value = _text(buf, v)
        elif number == 8:
            value = (value or []) + _ints(buf, wire, v, signed=True)
        elif number in (6, 11):  # g, graphs
            graphs.append(_graph(buf, *v, depth + 1))
    return name, value, graphs


def _node(buf: bytes, start: int, end: int, depth: int) -> Node:
    node = Node("", "", [], [], {}, [])
    for number, _, v, *_ in fields(buf, start, end):
        if number == 1:
            node.inputs.append(_text(buf, v))
        elif number == 2:
            node.outputs.append(_text(buf, v))
        elif number == 4:
            node.op_type = _text(buf, v)
        elif number == 7:
            node.domain = _text(buf, v)
        elif number == 5:
            name, value, graphs = _attribute(buf, *v, depth)
            node.attributes[name] = value
            node.subgraphs += graphs
    return node


def _graph(buf: bytes, start: int, end: int, depth: int = 0) -> Graph:
    if depth > 32:
        raise ValueError("subgraphs nested more than 32 deep")
    graph = Graph([], {}, [], [])
    for number, _, v, *_ in fields(buf, start, end):
        if number == 1:
            graph.nodes.append(_node(buf, *v, depth))
        elif number == 5:
            t = _tensor(buf, *v)
            graph.initializers[t.name] = t
        elif number in (11, 12):  # input, output: ValueInfoProto, name = 1
            name = next((_text(buf, x) for n, _, x, *_ in fields(buf, *v) if n == 1), "")
            (graph.inputs if number == 11 else graph.outputs).append(name)
    return graph


def read(path: str | os.PathLike, data: bytes | None = None) -> ModelFile:
    """Parse an ONNX file's graph, functions, metadata and opsets; ``ModelError`` if it is not one."""
    path = Path(path)
    try:
        if data is None:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ModelError(f"{path}: larger than 2 GB, which an ONNX file cannot be")
            data = path.read_bytes()
        graph, functions, metadata, opsets = None, [], {}, {}
        for number, wire, v, *_ in fields(data):
            if wire != LENGTH:
                continue
            if number == 7:
                graph = _graph(data, *v)
            elif number == 25:  # FunctionProto, node = 7
                functions.append([_node(data, *x, 1) for n, _, x, *_ in fields(data, *v) if n == 7])
            elif number == 14:
                entry = {n: _text(data, x) for n, w, x, *_ in fields(data, *v) if w == LENGTH}
                metadata[entry.get(1, "")] = entry.get(2, "")
            elif number == 8:
                entry = {n: x for n, _, x, *_ in fields(data, *v)}
                opsets[_text(data, entry[1]) if 1 in entry else ""] = int(entry.get(2, 0))
    except (OSError, ValueError, IndexError, KeyError, TypeError) as e:
        if isinstance(e, OSError) and not path.exists():
            raise ModelError(f"{path}: no such model file") from None
        raise ModelError(f"{path}: not a valid ONNX model (unreadable protobuf: {e})") from None
    if graph is None:
        raise ModelError(f"{path}: not a valid ONNX model (no graph)")
    return ModelFile(path, graph, functions, metadata, opsets)


def check_ops(model: ModelFile) -> None:
    """Refuse a graph that holds random or training-only ops (the same seed must give the same bytes)."""
    ops = {n.op_type for n in model.nodes() if n.domain in ("", "ai.onnx")}
    bad = ops & FORBIDDEN_OPS
    if bad:
        raise ModelError(f"{model.path}: the graph holds random or training-only ops ({', '.join(sorted(bad))}); "
                         "a generator must compute the same image for the same latent every time")
    for node in model.nodes():
        if node.op_type == "BatchNormalization" and node.attributes.get("training_mode"):
            raise ModelError(f"{model.path}: the graph holds a training-mode BatchNormalization")


def write_metadata(path: str | os.PathLike, meta: dict[str, str]) -> None:
    """Replace the file's ``metadata_props`` with ``meta`` (string keys and values), atomically; every other
    byte of the file is copied as it is. A symbolic link is followed: the file it points to is rewritten,
    and the link stays a link."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    data = path.read_bytes()
    read(path, data)  # refuse what is not an ONNX file before writing anything
    kept = bytearray()
    for number, wire, _, first, end in fields(data):
        if not (number == 14 and wire == LENGTH):
            kept += data[first:end]
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be strings: {key!r}")
        entry = _length_field(1, key.encode()) + _length_field(2, value.encode())
        kept += _length_field(14, entry)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(kept))


# ---- the metadata: one validated reader ------------------------------------------------
def check_metadata(meta: dict[str, str], path: Path | str) -> dict[str, str]:
    """Raise ``ModelError`` unless ``meta`` follows the model-file contract (``docs/DESIGN.md``)."""
    if FORMAT_KEY not in meta:
        raise ModelError(f"{path}: not a dcgan-deploy generator (no {FORMAT_KEY!r} metadata)")
    fmt = meta[FORMAT_KEY]
    if fmt not in SUPPORTED_FORMATS:
        raise ModelError(f"{path}: unknown model format {printable(fmt)!r}; this dcgan-deploy reads format "
                         f"{', '.join(SUPPORTED_FORMATS)} (upgrade dcgan-deploy?)")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: metadata lacks {', '.join(missing)}")
    limits = {"latent_dim": MAX_LATENT_DIM, "height": MAX_SIDE, "width": MAX_SIDE, "channels": max(CHANNELS)}
    for key, limit in limits.items():
        value = meta[key]
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= limit:
            raise ModelError(f"{path}: metadata {key}={printable(value)!r} is not a whole number from 1 to {limit}")
    if int(meta["channels"]) not in CHANNELS:
        raise ModelError(f"{path}: metadata channels={meta['channels']} is not 1 (grayscale) or 3 (RGB)")
    if meta["latent_prior"] not in PRIORS:
        raise ModelError(f"{path}: unknown latent_prior {printable(meta['latent_prior'])!r}; expected one of "
                         f"{', '.join(PRIORS)}")
    for key in JSON_ENTRIES:
        json_entry(meta, key, path)
    check_directions(meta, path)
    check_classes(meta, path)
    return meta


MAX_CLASSES = 1000
MAX_CLASS_NAME = 100


def check_classes(meta: dict[str, str], path: Path | str) -> tuple[str, ...]:
    """A class-conditional model's ``classes``: a JSON list of 2 to ``MAX_CLASSES`` different, printable
    names (label ``i`` is ``classes[i]``); ``()`` for an unconditional model."""
    if "classes" not in meta:
        return ()
    value = _json(meta["classes"], "classes", path)
    if not (isinstance(value, list) and 2 <= len(value) <= MAX_CLASSES and len(set(map(str, value))) == len(value)
            and all(isinstance(x, str) and x and len(x) <= MAX_CLASS_NAME and printable(x, MAX_CLASS_NAME) == x
                    for x in value)):
        raise ModelError(f"{path}: metadata 'classes' must be a list of 2 to {MAX_CLASSES} different, printable "
                         f"names of at most {MAX_CLASS_NAME} characters")
    return tuple(value)


NUMBER = (int, float)
# key -> (required fields, optional fields), each {name: allowed types}
JSON_ENTRIES = {
    "parity": ({"passed": (bool, type(None))},
               {"providers": list, "worst": dict, "verified": bool, "reason": str, "failures": list,
                "seeds": list, "batch_sizes": list, "thresholds": dict, "precision": str}),
    "evaluation": ({"n": int, "extractor": str, "fid": NUMBER, "fid_floor": NUMBER, "kid": NUMBER,
                    "kid_floor": NUMBER},
                   {"score": NUMBER, "real_score": NUMBER, "min_class_share": NUMBER, "ratios": dict,
                    "shares": dict, "memorisation": dict}),
}


def json_entry(meta: dict[str, str], key: str, path: Path | str) -> dict | None:
    """A JSON metadata entry, parsed and checked against its schema; ``None`` when absent."""
    if key not in meta:
        return None
    value = _json(meta[key], key, path)
    if not isinstance(value, dict):
        raise ModelError(f"{path}: metadata {key!r} must be a JSON object, is a {type(value).__name__}")
    required, optional = JSON_ENTRIES[key]
    missing = [k for k in required if k not in value]
    if missing:
        raise ModelError(f"{path}: metadata {key!r} lacks {', '.join(missing)}")
    for name, types in {**optional, **required}.items():
        if name in value and not _is(value[name], types):
            raise ModelError(f"{path}: metadata {key}.{name} has the wrong type ({type(value[name]).__name__})")
    return value


MAX_DIRECTIONS = 64


def check_direction_name(name) -> str:
    """A direction's name: a letter or digit, then up to 63 of letters, digits, ``.``, ``_``, ``-``; not all
    digits (docs/DESIGN.md, "Input rules")."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name.isdigit():
        raise ValueError(f"a direction's name must be 1-64 letters, digits, '.', '_' or '-' (not all digits), "
                         f"got {printable(repr(name), 80)}")
    return name


def check_direction_vector(vector, dim: int) -> list:
    """A direction's vector: ``dim`` finite numbers of unit norm (within 1e-3)."""
    if not isinstance(vector, list) or len(vector) != dim or not all(_is(v, NUMBER) for v in vector):
        raise ValueError(f"vector must be {dim} finite numbers")
    norm = math.sqrt(math.fsum(float(v) ** 2 for v in vector)) if max(map(abs, vector), default=0) < 1e150 else math.inf
    if not math.isfinite(norm) or abs(norm - 1) > 1e-3:
        raise ValueError(f"vector is not a unit vector (norm {norm:.6g})")
    return vector


def check_directions(meta: dict[str, str], path: Path | str) -> dict | None:
    """The ``directions`` entry (see ``directions.py``): version 1, at most ``MAX_DIRECTIONS`` uniquely
    named unit vectors of ``latent_dim`` finite numbers; ``None`` when absent."""
    if "directions" not in meta:
        return None
    entry = _json(meta["directions"], "directions", path)
    where = f"{path}: metadata 'directions'"
    if not isinstance(entry, dict) or entry.get("version") != 1 or not isinstance(entry.get("directions"), list):
        raise ModelError(f"{where} must be an object with version 1 and a list of directions")
    items = entry["directions"]
    if len(items) > MAX_DIRECTIONS:
        raise ModelError(f"{where} holds {len(items)} directions; at most {MAX_DIRECTIONS}")
    dim, names = int(meta["latent_dim"]), set()
    for i, d in enumerate(items):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d.get("method") not in ("sefa", "labelled"):
            raise ModelError(f"{where}: direction {i + 1} needs a name and a method (sefa or labelled)")
        name = d["name"]
        try:
            check_direction_name(name)
        except ValueError:
            raise ModelError(f"{where}: direction {i + 1} has a bad name {printable(name, 80)!r}") from None
        if name in names:
            raise ModelError(f"{where}: direction {i + 1} repeats the name {name!r}")
        names.add(name)
        try:
            check_direction_vector(d.get("vector"), dim)
        except ValueError as e:
            raise ModelError(f"{where}: {name}'s {e}") from None
        for key in ("singular_value", "share", "auc", "raised", "step"):
            if key in d and not _is(d[key], NUMBER):
                raise ModelError(f"{where}: {name}'s {key} must be a finite number")
        if "label" in d and not isinstance(d["label"], str):
            raise ModelError(f"{where}: {name}'s label must be a string")
    return entry


def _json(text: str, key: str, path: Path | str):
    """A metadata entry's JSON; one ModelError naming the file and key for anything else (NaN, a number
    too long to read, nesting deeper than the parser's recursion)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else printable(str(e), 200)
        raise ModelError(f"{path}: metadata {key!r} is not valid JSON ({why})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _is(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, int) and float in types and abs(value) >= 2**1023:  # a JSON number no float can hold
        return False
    return isinstance(value, types) and not (isinstance(value, float) and not math.isfinite(value))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = 2000) -> str:
    """``text`` safe for a terminal: control characters (escape codes, CR, LF) shown as ``\\xNN``, and cut
    at ``limit`` characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"
