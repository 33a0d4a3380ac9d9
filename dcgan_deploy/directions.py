"""Latent directions that mean something (numpy + onnxruntime): SeFa and classifier-labelled ones.

- **SeFa** (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021):
  the generator's first layer is a linear map of z, y = A z + b (a Gemm for the MNIST nets
  and for the exported 64x64 net, a ConvTranspose on the 1x1 latent map in a plain export;
  eval-mode BatchNorm is already folded into it by the export). The directions in z that
  change y the most are A's top right singular vectors: the eigenvectors of A^T A, in order
  of singular value. Computed from the model file alone (its first layer's initializers,
  read by ``modelfile``), no torch. ``share`` is each direction's share of the spectrum's
  energy, s_i^2 / sum s^2. A singular vector's sign is arbitrary; it is fixed so that its
  largest component is positive.
- **Labelled** (InterFaceGAN-style, Shen et al. 2020): sample the generator through the
  runtime, label each image with the domain classifier's most likely class, and fit a linear
  boundary in latent space between the images of class k and all the others; its unit normal
  is "towards k". Seeded, so reproducible; ``auc`` is how well the direction ranks held-out
  samples of class k above the others (the area under the ROC curve: 0.5 is chance, 1 perfect).

Both are stored in the model file's metadata as one versioned ``directions`` entry (see
``modelfile.check_directions``) and read back by ``Generator.directions``. This module computes them
and sits above the runtime and the evaluation it uses; the ``Direction`` type, its metadata entry and
editing along a direction are in ``edits``, below the runtime.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import modelfile
from .edits import STEP, Direction, to_metadata
from .modelfile import ModelError

SEFA_COUNT = 10          # SeFa directions stored by default
LABELLED_SAMPLES = 20000  # generator samples for the labelled boundaries
RIDGE = 1.0               # the boundary's least-squares regularisation


# ---- SeFa ----------------------------------------------------------------------------------
def first_layer_map(model: modelfile.ModelFile, latent_dim: int) -> np.ndarray:
    """``A`` of the first layer y = A z + b: float64 ``[outputs, latent_dim]``.

    Follows ``z`` through ops that only reshape it (and an int8 file's quantize/dequantize pair) to
    the first Gemm, MatMul or ConvTranspose on a 1x1 map, whose weight gives ``A``. A conditional
    model joins its class embedding after ``z`` (a Concat on the feature axis): ``A`` is the columns
    that read ``z``. One that multiplies ``z`` by its class embedding ``e_y`` (pytorch-gan-dcgan) has a map
    ``A diag(e_y)`` per class: ``A`` is then those maps stacked, over the square root of the class count,
    so that ``A^T A`` is their average over the classes."""
    producers = {o: n for n in model.graph.nodes for o in n.outputs}
    consumers: dict[str, list] = {}
    for n in model.graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    name, seen, joined, scaled = "z", 0, False, False
    while seen < 16:
        seen += 1
        users = consumers.get(name, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in ("Reshape", "Unsqueeze", "Flatten", "Identity", "QuantizeLinear", "DequantizeLinear"):
            name = node.outputs[0]
            continue
        if node.op_type == "Concat" and node.inputs[0] == name and node.attributes.get("axis") in (1, -1) \
                and not joined:
            name, joined = node.outputs[0], True  # z first, then the class embedding
            continue
        if node.op_type == "Mul" and name in node.inputs and not scaled and not joined:
            name, scaled = node.outputs[0], True  # z times the class embedding
            continue
        weight = _constant(model, node.inputs[1], producers) if len(node.inputs) > 1 else None
        if weight is None:
            break
        if node.op_type == "Gemm" and node.inputs[0] == name:
            if node.attributes.get("transA"):
                break
            a = weight if node.attributes.get("transB") else weight.T            # [out, D]
        elif node.op_type == "MatMul" and node.inputs[0] == name:
            a = weight.T                                                          # weight [D, out]
        elif node.op_type == "ConvTranspose" and weight.ndim == 4 and node.inputs[0] == name:
            a = weight.reshape(weight.shape[0], -1).T                             # weight [D, C, k, k]
        else:
            break
        if a.shape[1] != latent_dim and not (joined and a.shape[1] > latent_dim):
            break
        if scaled:
            tables = {n.inputs[0] for n in model.graph.nodes if n.op_type == "Gather"}
            embeddings = [e for e in (_constant(model, t, producers) for t in tables)
                          if e is not None and e.ndim == 2 and e.shape[1] == latent_dim]
            if len(embeddings) != 1:
                break
            e = embeddings[0]
            return np.concatenate([a * row for row in e]) / np.sqrt(len(e))
        return a[:, :latent_dim].astype(np.float64)
    raise ModelError(f"{model.path}: cannot find a first layer that is a linear map of z (a Gemm, MatMul or "
                     "ConvTranspose reading z); SeFa needs one")


def _constant(model: modelfile.ModelFile, name: str, producers: dict) -> np.ndarray | None:
    """An initializer's value, or a DequantizeLinear of one (an int8 file's weight), dequantized."""
    if name in model.graph.initializers:
        return model.graph.initializers[name].array().astype(np.float64)
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.inputs[0] in model.graph.initializers:
        q = model.graph.initializers[node.inputs[0]].array().astype(np.float64)
        scale = model.graph.initializers[node.inputs[1]].array().astype(np.float64)
        zero = (model.graph.initializers[node.inputs[2]].array().astype(np.float64)
                if len(node.inputs) > 2 and node.inputs[2] in model.graph.initializers else np.zeros_like(scale))
        axis = node.attributes.get("axis", 1)
        if scale.ndim == 1 and scale.size > 1:  # per channel along ``axis``
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q - zero) * scale
    return None


def sefa(model: modelfile.ModelFile, latent_dim: int, count: int = SEFA_COUNT) -> list[Direction]:
    """The top ``count`` SeFa directions of a model file, by singular value."""
    a = first_layer_map(model, latent_dim)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    energy = s ** 2 / max(float((s ** 2).sum()), 1e-300)
    out = []
    for i in range(min(count, len(s))):
        v = vt[i] * np.sign(vt[i][np.argmax(np.abs(vt[i]))])  # sign: the largest component positive
        out.append(Direction(f"sefa-{i + 1}", "sefa", v.astype(np.float32), float(s[i]), float(energy[i])))
    return out


# ---- labelled ------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "class"


def labelled(gen, extractor, samples: int = LABELLED_SAMPLES, seed: int = 0,
             span: list[Direction] | None = None) -> list[Direction]:
    """One "towards <class>" direction per class of ``extractor`` (an ``evaluate.Extractor`` with class
    probabilities): the unit normal of a ridge least-squares boundary (with an intercept) between the samples
    the classifier calls class k and the rest, fitted on three quarters of the samples; then, where a step of
    ``STEP`` along it raises p(k) for fewer than ``REFINE_BELOW`` of ``REFINE_SEEDS`` fresh latents,
    ``refine``d within the span of all the boundaries and ``span`` (the SeFa directions). Its AUC on the held-out
    quarter and its ``raised`` share are kept. (Measured against the alternatives in training/mnist/RECORD.md.)"""
    if not extractor.has_probs:
        raise ModelError(f"{extractor.path.name} gives no class probabilities: labelled directions need a classifier")
    z = gen.latents(samples, seed).astype(np.float64)
    probs = _probabilities(gen, extractor, z)
    names = extractor.class_names or [str(k) for k in range(probs.shape[1])]
    fit = np.arange(samples) % 4 != 3
    design = np.c_[z, np.ones(samples)]  # the intercept's column
    gram = design[fit].T @ design[fit] + RIDGE * np.diag([1.0] * z.shape[1] + [0.0])
    label = probs.argmax(1)
    boundaries = {}
    for k in range(probs.shape[1]):
        if (label[fit] == k).sum() < 10:
            continue  # the generator makes (almost) none of this class: no boundary to find
        y = np.where(label == k, 1.0, -1.0)
        w = np.linalg.solve(gram, design[fit].T @ y[fit])
        boundaries[k] = w[:-1] / float(np.linalg.norm(w[:-1]))
    basis = np.array(list(boundaries.values()) + [d.vector for d in span or []], np.float64)
    fresh = gen.latents(REFINE_SEEDS, (seed + 1) % 2 ** 64).astype(np.float64)  # the next seed's stream
    before = _log_probabilities(gen, extractor, fresh)
    out = []
    for k, v in boundaries.items():
        def score(latents, k=k):
            return _log_probabilities(gen, extractor, latents)[:, k]
        raised = _raised(score, fresh, v, before[:, k])
        if raised < REFINE_BELOW:
            v, raised = refine(score, fresh, v, basis, before[:, k], share=raised)
        out.append(Direction(f"towards-{slug(names[k])}", "labelled", v.astype(np.float32),
                             auc(z[~fit] @ v, label[~fit] == k), label=names[k], raised=raised))
    return out


REFINE_SEEDS = 1000     # fresh latents the share is measured and refined on
REFINE_BELOW = 0.95     # directions raising p(k) for fewer of them than this are refined
REFINE_ROUNDS = 4
REFINE_LINEAR = 250     # of them, the ones the linear model is fitted on (the cost: one image per span vector each)


def _probabilities(gen, extractor, z: np.ndarray) -> np.ndarray:
    from .evaluate import to_float
    images = np.concatenate(list(gen.images(z.astype(np.float32), 256)))
    return extractor(to_float(images))[1]


def _log_probabilities(gen, extractor, z: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(_probabilities(gen, extractor, z).astype(np.float64), 1e-30))


def _raised(score, z: np.ndarray, v: np.ndarray, before: np.ndarray) -> float:
    return float(np.mean(score(z + STEP * v[None]) > before))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _orthonormal(vectors) -> np.ndarray:
    """An orthonormal basis (columns) of the span of ``vectors``, in their order (Gram-Schmidt, twice)."""
    out = []
    for v in vectors:
        v = np.asarray(v, np.float64)
        for _ in range(2):
            for u in out:
                v = v - (u @ v) * u
        if np.linalg.norm(v) > 1e-6:
            out.append(v / np.linalg.norm(v))
    return np.stack(out, 1)


def refine(score, z: np.ndarray, v: np.ndarray, basis: np.ndarray, before: np.ndarray, share: float | None = None,
           rounds: int = REFINE_ROUNDS, h: float = 0.5, linear: int = REFINE_LINEAR) -> tuple[np.ndarray, float]:
    """Turn the unit vector ``v`` within the span of ``v`` and ``basis`` (rows) so that a step of ``STEP`` along
    it raises ``score`` (a class's log-probability of latents) from ``before`` at as many of the latents ``z`` as
    it can: the share raised is a step function, so each round maximises its smooth stand-in,
    mean sigmoid(score(z + STEP v) - before), on a per-latent linear model of ``score`` along the span (finite
    differences of step ``h`` through the runtime, on the first ``linear`` latents), within a trust radius, and
    keeps the new ``v`` only if the true share (over all of ``z``; ``share`` is ``v``'s, if known) rises.
    Returns the vector and its share raised. Deterministic: no randomness of its own."""
    q = _orthonormal([v, *basis])                      # [D, m], q[:, 0] = v
    a = q.T @ v
    best = _raised(score, z, v, before) if share is None else share
    radius = 0.5
    for _ in range(rounds):
        x = z[:linear] + STEP * (q @ a)[None]
        now = score(x)
        jac = np.stack([(score(x + h * q[:, j][None]) - now) / h for j in range(q.shape[1])], 1) * STEP  # [N, m]
        gap = now - before[:linear]
        delta = np.zeros_like(a)
        for _ in range(300):  # projected gradient ascent on the linear model
            s = _sigmoid(gap + jac @ delta)
            grad = jac.T @ (s * (1 - s)) / len(x)
            grad -= a * (a @ grad)                           # stay tangent to the sphere
            delta += radius / 20 * grad / max(float(np.linalg.norm(grad)), 1e-12)  # steps of radius / 20
            delta -= a * (a @ delta)
            if np.linalg.norm(delta) > radius:
                delta *= radius / np.linalg.norm(delta)
        trial = (a + delta) / np.linalg.norm(a + delta)
        share = _raised(score, z, q @ trial, before)
        if share > best:
            a, best = trial, share
        else:
            radius /= 2
    v = q @ a
    return v / np.linalg.norm(v), best


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve: the chance that a positive scores above a negative (from the ranks;
    continuous scores have no ties)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return 0.5
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compute(path: str | Path, labelled_too: bool = False, count: int = SEFA_COUNT, seed: int = 0) -> list[Direction]:
    """The directions of the model at ``path``: SeFa always, labelled ones with ``labelled_too`` (needs the
    shipped classifier for the model's image size, or fails saying so)."""
    from .runtime import Generator
    gen = Generator.load(path, device="cpu")
    found = sefa(modelfile.read(gen.path), gen.latent_dim, count)
    if labelled_too:
        from .evaluate import Extractor
        found += labelled(gen, Extractor.load(None, (gen.channels, gen.height, gen.width)), seed=seed, span=found)
    return found


def store(path: str | Path, directions: list[Direction], source: str) -> None:
    """Write ``directions`` into the model file's metadata, in place and atomically (the file is re-read and
    checked first; on any error it is left as it was)."""
    model = modelfile.read(path)
    meta = modelfile.check_metadata(model.metadata, path)
    entry = to_metadata(directions, source)
    modelfile.check_directions({**meta, "directions": entry}, path)  # what is written reads back
    modelfile.write_metadata(path, {**meta, "directions": entry})
