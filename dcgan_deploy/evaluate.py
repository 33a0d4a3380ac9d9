"""Image quality (numpy + onnxruntime): FID, KID, classifier score and class coverage.

Features come from an ONNX feature extractor: input ``image`` float32 ``[N, C, H, W]``
in [-1, 1]; first output the features ``[N, D]``, an optional second output class
probabilities ``[N, K]``. For MNIST the package ships one (``mnist-classifier``, a small
CNN trained on the embedded sample); for other data the FID Inception weights file of
pytorch-fid / torch-fidelity becomes one (:mod:`dcgan_deploy.inception`). Every score is
reported beside its floor: the same metric between two disjoint halves of the real data
at the same sample count.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import bundled, modelfile
from .runtime import CPU, Generator, ModelError

DEFAULT_EXTRACTOR = "mnist-classifier"
DIGIT_SIZE = 28           # what the digit classifier reads; square grayscale images of other sizes are resized
MAX_SAMPLES = 50_000      # generated images of one evaluation
MIN_HALF = 100            # real images per half, for stable metrics
CLOSE_QUANTILE = 0.05     # memorisation: the share of generated images nearer to a training image than this
                          # quantile of the held-out images' distances should be about this quantile, not more
MEMORISATION_SLACK = 2.0  # ... and it fails above MEMORISATION_SLACK times it
MEDIAN_NOISE = 2.0        # the generated median may sit this many standard errors of the held-out median below it
MAJOR_CLASS = 0.05        # classes with at least this share of real images must keep half of it
MIN_CLASS_SHARE = 0.05  # a class rarer than this in generated samples is flagged
MAX_COVERAGE_CLASSES = 20  # per-class shares and the flag for classifiers of up to this many classes


# ---- metrics --------------------------------------------------------------------------
def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features ``a [n, D]`` and ``b [m, D]``.

    ``tr sqrt(C_a C_b)`` is computed as ``tr sqrt(S C_b S)`` with ``S = sqrt(C_a)``: the
    same eigenvalues, on a symmetric matrix, so numpy's ``eigh`` suffices (no scipy).
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s = _sqrt_psd(ca)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(s @ cb @ s), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_covmean)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 20, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, mean and std over subsets."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def classifier_score(probs: np.ndarray) -> float:
    """The Inception-Score analogue: ``exp(E_x KL(p(y|x) || p(y)))``, 1 (worst) to K (classes)."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1)
    py = p.mean(0, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(py))).sum(1).mean()))


def coverage(probs: np.ndarray) -> dict:
    """The share of samples the classifier puts in each class, the smallest share, and a flag.

    With more than ``MAX_COVERAGE_CLASSES`` classes (Inception's 1008) no class is expected in
    every sample set, so only the number of distinct classes and the five largest shares."""
    k = probs.shape[1]
    shares = np.bincount(probs.argmax(1), minlength=k) / len(probs)
    if k > MAX_COVERAGE_CLASSES:
        top = np.argsort(-shares, kind="stable")[:5]
        return {"classes": k, "distinct": int(np.count_nonzero(shares)),
                "top": [[int(c), round(float(shares[c]), 4)] for c in top], "flagged": False}
    return {"shares": [round(float(s), 4) for s in shares], "min_share": float(shares.min()),
            "missing_or_rare": [int(c) for c in np.flatnonzero(shares < MIN_CLASS_SHARE)],
            "flagged": bool(shares.min() < MIN_CLASS_SHARE)}


# ---- feature extractors -----------------------------------------------------------------
@dataclass
class Extractor:
    """An ONNX feature extractor (see the module docstring for its contract)."""

    session: ort.InferenceSession
    path: Path
    info: dict

    @classmethod
    def load(cls, spec: str | Path | None = None, image_shape: tuple[int, int, int] | None = None) -> "Extractor":
        """``spec``: an ONNX path, the FID Inception weights file of pytorch-fid / torch-fidelity
        (``.pth``: exported to ONNX once, into a cache, see :mod:`dcgan_deploy.inception`), or the
        name of a shipped extractor. Without ``spec``, the shipped extractor made for ``image_shape``
        (channels, height, width): the digit classifier for 1x28x28, the emoji classifier for 3x64x64."""
        text = str(spec) if spec else shipped_extractor_for(image_shape)
        is_path = text.endswith((".onnx", ".pth", ".pt")) or Path(text).exists()
        path = Path(text) if is_path else bundled.exports_dir() / "features" / f"{text}.onnx"
        if path.suffix in (".pth", ".pt"):
            path = _inception_onnx(path)
        if not path.is_file() or path.stat().st_size == 0:
            raise ModelError(f"{path}: no such feature extractor{' (an empty file)' if path.is_file() else ''}. "
                             "For other data pass --features with an ONNX extractor: image [N,C,H,W] in [-1,1] -> "
                             "features [N,D] (, probs [N,K])")
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts, providers=[CPU])
        except Exception as e:
            raise ModelError(f"{path}: not a valid ONNX feature extractor ({str(e).strip().splitlines()[0][:200]})") \
                from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if "dcgan_deploy.format" in meta:
            raise ModelError(f"{path}: a generator, not a feature extractor; --features takes an ONNX extractor: "
                             "image [N,C,H,W] in [-1,1] -> features [N,D] (, probs [N,K])")
        inputs = session.get_inputs()
        if not 1 <= len(session.get_outputs()) <= 2 or len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{path}: a feature extractor takes one input (the images, [N,C,H,W]) and returns "
                             "features and optionally class probabilities")
        return cls(session, path, meta)

    @property
    def class_names(self) -> list[str] | None:
        try:
            names = json.loads(self.info.get("class_names", "null"))
        except ValueError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    def check_images(self, channels: int, height: int, width: int) -> None:
        """Refuse images this extractor cannot take, saying what to pass instead."""
        shape = self.session.get_inputs()[0].shape
        want = [d if isinstance(d, int) else None for d in shape[1:]] if len(shape) == 4 else [None] * 3
        fits = want[0] in (None, channels) or (channels == 1 and want[0] == 3)
        fits = fits and all(w in (None, g) for w, g in zip(want[1:], (height, width)))
        if not fits:
            takes = "x".join("?" if d is None else str(d) for d in want)
            raise ModelError(f"the feature extractor {self.path.name} takes {takes} images (channels x height x "
                             f"width), the model makes {channels}x{height}x{width}. For data other than MNIST pass "
                             "--features: an ONNX extractor, or the FID Inception weights file "
                             "(pt_inception-2015-12-05-6726825d.pth) as a local path")

    @property
    def has_probs(self) -> bool:
        return len(self.session.get_outputs()) > 1

    def __call__(self, images: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """float ``[N, C, H, W]`` in [-1, 1] -> (features ``[N, D]``, probabilities ``[N, K]`` or None).

        Grayscale images go to a 3-channel extractor (Inception) with their channel repeated."""
        inp = self.session.get_inputs()[0]
        name, channels = inp.name, inp.shape[1] if len(inp.shape) == 4 else None
        self.check_images(*images.shape[1:])
        if images.shape[1] == 1 and channels == 3:
            images = np.repeat(images, 3, axis=1)
        batch_size = batch_size or int(self.info.get("batch_size", 500))
        outs = [self.session.run(None, {name: images[i:i + batch_size].astype(np.float32)})
                for i in range(0, len(images), batch_size)]
        feats = np.concatenate([o[0] for o in outs])
        probs = np.concatenate([o[1] for o in outs]) if self.has_probs else None
        return feats, probs


def _inception_onnx(weights: Path) -> Path:
    """The ONNX extractor already made from an Inception weights file (``inception.cached_extractor`` makes it,
    once, with torch; ``dcgan-deploy evaluate --features FILE.pth`` does that first)."""
    if not weights.is_file():
        raise ModelError(f"{weights}: no such Inception weights file")
    path = inception_cache_path(weights)
    if not path.is_file():
        raise ModelError(f"{weights}: Inception weights must be turned into an ONNX extractor once, with torch: "
                         "`dcgan-deploy evaluate --features FILE.pth` does it (pip install 'dcgan-deploy[train]'); "
                         "afterwards this works without torch")
    return path


def inception_cache_path(weights: Path) -> Path:
    """Where the ONNX extractor made from an Inception weights file lives: the cache folder
    (``$DCGAN_DEPLOY_CACHE``, else ``~/.cache/dcgan-deploy``), named by the file's SHA-256."""
    if os.environ.get("DCGAN_DEPLOY_CACHE"):
        cache = Path(os.environ["DCGAN_DEPLOY_CACHE"])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcgan-deploy"
    return cache / f"inception-v3-fid-{file_sha256(weights)[:16]}.onnx"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_extractor_for(image_shape: tuple[int, int, int] | None) -> str:
    """The shipped extractor whose ``image_shape`` metadata is the model's (default: the digit classifier)."""
    if image_shape is None:
        return DEFAULT_EXTRACTOR
    want = ",".join(map(str, image_shape))
    for path in sorted((bundled.exports_dir() / "features").glob("*.onnx")):
        if modelfile.read(path).metadata.get("image_shape") == want:
            return path.stem
    raise ModelError(f"no shipped feature extractor takes {'x'.join(map(str, image_shape))} images; pass --features "
                     "(an ONNX extractor, or the FID Inception weights file pt_inception-2015-12-05-6726825d.pth)")


# ---- the evaluation ---------------------------------------------------------------------------
def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [-1, 1] (what the extractor takes)."""
    return images_uint8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1


def split_halves(d, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of a ``data.Dataset``'s training images (indices), shuffled. Near-duplicates
    (one group: an emoji's skin-tone variants) stay on one side, and each class is split in half
    where labels are known, so that both halves hold every class and no near-copy of a floor image
    sits in the other half."""
    rng = np.random.default_rng(seed)
    n = len(d.images)
    groups = d.groups if d.groups is not None else np.arange(n)
    labels = d.labels if d.labels is not None else np.zeros(n, np.int64)
    a, b = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        units = rng.permutation(np.unique(groups[members]))  # whole groups of this class, shuffled
        by_unit = [members[groups[members] == u] for u in units]
        half = len(units) // 2
        a.append(np.concatenate(by_unit[:half]) if half else np.zeros(0, np.int64))
        b.append(np.concatenate(by_unit[half:]))
    # shuffled, so that a prefix (a smaller sample) holds every class
    return rng.permutation(np.concatenate(a)), rng.permutation(np.concatenate(b))


def real_halves(data: str, channels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the real training images, uint8 ``[N, H, W, C]`` (see ``split_halves``)."""
    from . import data as datasets
    d = datasets.load_dataset(data, channels, size).training
    a, b = split_halves(d, seed)
    images = d.images.transpose(0, 2, 3, 1)
    return images[a], images[b]


def compare_sets(extractor: Extractor, x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Metrics of set ``x`` against reference set ``y`` (both uint8 ``[N, H, W, C]``)."""
    return compare_features(extractor(to_float(x)), extractor(to_float(y))[0], seed)


def compare_features(x: tuple[np.ndarray, np.ndarray | None], fy: np.ndarray, seed: int = 0) -> dict:
    """Metrics of a set's (features, probabilities) ``x`` against reference features ``fy``."""
    fx, px = x
    kid_mean, kid_std = kid(fx, fy, seed=seed)
    out = {"n": len(fx), "n_reference": len(fy), "fid": fid(fx, fy), "kid": kid_mean, "kid_std": kid_std}
    if px is not None:
        out["classifier_score"] = classifier_score(px)
        out["coverage"] = coverage(px)
    return out


def nearest_distances(x: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Each row of ``x``'s Euclidean distance to its nearest row of ``reference`` (features)."""
    x, reference = x.astype(np.float64), reference.astype(np.float64)
    r2 = (reference ** 2).sum(1)
    out = []
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk]
        d2 = (part ** 2).sum(1)[:, None] - 2 * part @ reference.T + r2[None]
        out.append(np.sqrt(np.clip(d2.min(1), 0, None)))
    return np.concatenate(out)


def memorisation(generated: np.ndarray, heldout: np.ndarray, training: np.ndarray) -> dict:
    """Are generated images nearer to the training images than unseen real images are? In feature space:
    each generated and each held-out image's distance to its nearest training image. A generator that
    copies its training set puts many generated images nearer than almost any held-out image is.

    Passes when the generated images' median distance is not significantly below the held-out images' (at
    least their median less ``MEDIAN_NOISE`` of its standard errors, bootstrapped: a generator as far from
    its training images as unseen real images are sits at a ratio of 1 give or take that noise) and no more
    than ``MEMORISATION_SLACK`` x ``CLOSE_QUANTILE`` of them are nearer than the held-out distances'
    ``CLOSE_QUANTILE`` quantile."""
    dg, dh = nearest_distances(generated, training), nearest_distances(heldout, training)
    close = float(np.quantile(dh, CLOSE_QUANTILE))
    median = max(float(np.median(dh)), 1e-12)
    rng = np.random.default_rng(0)
    error = float(np.std([np.median(rng.choice(dh, len(dh))) for _ in range(1000)])) / median
    out = {"n_generated": len(dg), "n_heldout": len(dh), "n_training": len(training),
           "median_generated": float(np.median(dg)), "median_heldout": float(np.median(dh)),
           "median_ratio": float(np.median(dg)) / median, "median_ratio_floor": 1.0 - MEDIAN_NOISE * error,
           "close_threshold": close, "close_share": float(np.mean(dg < close)), "close_expected": CLOSE_QUANTILE}
    out["passed"] = bool(out["median_ratio"] >= out["median_ratio_floor"]
                         and out["close_share"] <= MEMORISATION_SLACK * CLOSE_QUANTILE)
    return out


def class_shares(generated_probs: np.ndarray, real_probs: np.ndarray, names: list[str] | None) -> dict:
    """Each class's share among generated and among real images (the same classifier on both), and
    whether every class with at least ``MAJOR_CLASS`` of the real images keeps half its share."""
    k = real_probs.shape[1]
    g = np.bincount(generated_probs.argmax(1), minlength=k) / len(generated_probs)
    r = np.bincount(real_probs.argmax(1), minlength=k) / len(real_probs)
    names = names if names and len(names) == k else [str(i) for i in range(k)]
    rows = {names[i]: {"generated": round(float(g[i]), 4), "real": round(float(r[i]), 4)} for i in range(k)}
    major = [i for i in range(k) if r[i] >= MAJOR_CLASS]
    short = [names[i] for i in major if g[i] < r[i] / 2]
    return {"classes": rows, "major": [names[i] for i in major], "short": short, "passed": not short}


def evaluate(model: str | Path | None = None, data: str | None = None, n: int = 2500, seed: int = 0,
             features: str | Path | None = None, device: str = "cpu", truncation: float = 1.0) -> dict:
    """Generated (``n`` images, ``seed``) vs the real held-out half, beside the real-vs-real floor.

    ``data``: default the embedded MNIST sample for square grayscale models; other models need it.
    A data set that marks held-out images (never trained on) also gets the memorisation check.
    A square grayscale model of another size than 28 (a pytorch-GAN import at 32x32, say) is measured with
    the digit classifier on images resized to 28x28, the real ones (read at the model's size, as it was
    trained) and the generated ones alike, unless ``features`` names an extractor."""
    from . import data as datasets
    from .latent import check_count, check_seed
    n, seed = check_count(n, "-n"), check_seed(seed)
    if n > MAX_SAMPLES:
        raise ValueError(f"-n {n} is more than {MAX_SAMPLES:,} samples; FID and KID settle well below that")
    gen = Generator.load(model, device=device)
    digits = gen.channels == 1 and gen.height == gen.width
    if data is None:
        if not digits:
            raise ValueError(f"{gen.path.name} makes {gen.height}x{gen.width}x{gen.channels} images: give --data, the "
                             "real images it was trained on (for the emoji model: the .npz of training/emoji/prepare.py)")
        # the embedded sample, with its held-out digits where the model was trained without them
        data = datasets.MNIST_HELDOUT if gen.metadata.get("dataset") == datasets.MNIST_HELDOUT else "mnist-sample"
    size = DIGIT_SIZE if features is None and digits else gen.height  # what the extractor reads
    shape = (gen.channels, size, size) if digits else (gen.channels, gen.height, gen.width)
    extractor = Extractor.load(features, shape)
    extractor.check_images(*shape)  # before generating anything

    def measure(images: np.ndarray) -> tuple:
        """uint8 ``[N, H, W, C]`` at the model's size -> the extractor's (features, probabilities)."""
        if size != gen.height:
            images = datasets.fit(images.transpose(0, 3, 1, 2), gen.channels, size).transpose(0, 2, 3, 1)
        return extractor(to_float(images))
    dataset = datasets.load_dataset(data, gen.channels, gen.height)
    train = dataset.training
    ia, ib = split_halves(train, seed=0)
    real = train.images.transpose(0, 2, 3, 1)
    m = min(n, len(ia), len(ib))
    if m < MIN_HALF:
        raise ValueError(f"need at least {MIN_HALF} images per half for stable metrics, have {m}")
    fake, a, b = (measure(x) for x in (gen.generate(n, seed=seed, truncation=truncation), real[ia[:m]], real[ib]))
    generated = compare_features(fake, b[0], seed)  # each set's features once (Inception is slow)
    floor = compare_features(a, b[0], seed)
    real_b = compare_features(b, a[0], seed)
    report = {
        "model": str(gen.path), "architecture": gen.metadata.get("architecture"), "seed": seed, "truncation": truncation,
        "n_generated": n, "real": {"data": data, "half_size": int(len(ib)), "floor_sample_size": m,
                                   "split": "by group (near-duplicates on one side)" if train.groups is not None
                                   else "by class" if train.labels is not None else "random"},
        "extractor": {"path": str(extractor.path), **{k: v for k, v in extractor.info.items()
                                                     if k not in ("dcgan_deploy.features", "class_names")},
                      **({"resized_to": f"{size}x{size}"} if size != gen.height else {})},
        "generated": generated, "floor": floor,
        # KID is unbiased: its real-vs-real floor is 0 in expectation, so the ratio is taken
        # against the floor's noise level, |mean| + std over the subsets.
        "ratios": {"fid_vs_floor": generated["fid"] / max(floor["fid"], 1e-12),
                   "kid_vs_floor": generated["kid"] / max(abs(floor["kid"]) + floor["kid_std"], 1e-12)},
    }
    if "classifier_score" in generated:
        report["real_classifier_score"] = real_b["classifier_score"]
        report["ratios"]["score_vs_real"] = generated["classifier_score"] / real_b["classifier_score"]
        if len(extractor.class_names or []) <= MAX_COVERAGE_CLASSES:
            report["shares"] = class_shares(fake[1], b[1], extractor.class_names)
    if gen.classes:
        report["per_class"] = per_class(gen, n, seed, fake, (a[0], train.labels[ia[:m]]), (b[0], train.labels[ib]),
                                        extractor.class_names)
    if dataset.heldout is not None and dataset.heldout.any():
        held = measure(dataset.images[dataset.heldout].transpose(0, 2, 3, 1))[0]
        training = np.concatenate([a[0], b[0]]) if m == len(ia) else measure(real)[0]
        report["memorisation"] = memorisation(fake[0], held, training)
    return report


def per_class(gen, n: int, seed: int, fake: tuple, real_a: tuple, real_b: tuple, class_names) -> dict:
    """A conditional model's quality by class: the generated images carry the seed's labels (the classes in
    turn, ``latent.seed_labels``), so each class has n / K of them. Per class: ``accuracy``, the share the
    extractor's classifier calls that class (where it has a class of that name); ``fid`` of the class's
    images against the real reference half's images of the class, and its ``floor``, the other real half's
    against it (the real data's labels must be the model's classes, in order)."""
    labels = gen.labels(n, seed)
    # a classifier without class names (the MNIST one) is read by index: its class i is named "i"
    names = list(class_names or ([] if fake[1] is None else [str(i) for i in range(fake[1].shape[1])]))
    out = {}
    for k, name in enumerate(gen.classes):
        mine, ra, rb = fake[0][labels == k], real_a[0][real_a[1] == k], real_b[0][real_b[1] == k]
        row = {"n": int(len(mine))}
        if name in names and fake[1] is not None:
            row["accuracy"] = float(np.mean(fake[1][labels == k].argmax(1) == names.index(name)))
        if min(len(mine), len(ra), len(rb)) >= 2:
            row.update(fid=fid(mine, rb), floor=fid(ra, rb))
            row["fid_vs_floor"] = row["fid"] / max(row["floor"], 1e-12)
        out[name] = row
    return out


def quality_summary(report: dict) -> dict:
    """The compact form stored in a model's metadata (``evaluation``) and shown by ``info``."""
    g, f, r = report["generated"], report["floor"], report["ratios"]
    out = {"n": report["n_generated"], "extractor": Path(report["extractor"]["path"]).stem,
           "fid": round(g["fid"], 3), "fid_floor": round(f["fid"], 3), "kid": round(g["kid"], 5),
           "kid_floor": round(f["kid"], 5)}
    if "classifier_score" in g:
        out.update(score=round(g["classifier_score"], 3), real_score=round(report["real_classifier_score"], 3))
        if "min_share" in g["coverage"]:
            out["min_class_share"] = round(g["coverage"]["min_share"], 4)
    out["ratios"] = {k: round(v, 3) for k, v in r.items()}
    if "shares" in report:
        out["shares"] = {"passed": report["shares"]["passed"], "short": report["shares"]["short"]}
    if "per_class" in report:
        rows = report["per_class"].values()
        accuracy = [r["accuracy"] for r in rows if "accuracy" in r]
        ratios = [r["fid_vs_floor"] for r in rows if "fid_vs_floor" in r]
        out["ratios"].update({"min_class_accuracy": round(min(accuracy), 4)} if accuracy else {})
        out["ratios"].update({"max_class_fid_vs_floor": round(max(ratios), 3)} if ratios else {})
    if "memorisation" in report:
        mem = report["memorisation"]
        out["memorisation"] = {"passed": mem["passed"], "median_ratio": round(mem["median_ratio"], 3),
                               "close_share": round(mem["close_share"], 4)}
    return out


def quality_line(summary: dict) -> str:
    """One line for ``info``: a stored ``evaluation`` summary."""
    e = summary
    return (f"FID {e['fid']} (real floor {e['fid_floor']}), KID {e['kid']} (floor {e['kid_floor']})"
            + (f", classifier score {e['score']} (real {e['real_score']})" if "score" in e else "")
            + (f", smallest class {e['min_class_share']:.1%}" if "min_class_share" in e else "")
            + (f", memorisation check {'passed' if e['memorisation'].get('passed') else 'FAILED'}"
               if isinstance(e.get("memorisation"), dict) else "")
            + f"; n={e['n']}, features: {modelfile.printable(e['extractor'], 100)}")


def save_summary(report: dict) -> None:
    """Store ``quality_summary(report)`` as the model file's ``evaluation`` metadata (atomically; no torch)."""
    meta = modelfile.read(report["model"]).metadata
    modelfile.write_metadata(report["model"], {**meta, "evaluation": json.dumps(quality_summary(report))})


def format_quality(report: dict) -> str:
    g, f = report["generated"], report["floor"]
    lines = [f"model      {report['model']} ({report['architecture']})",
             f"extractor  {report['extractor']['path']}"
             + (f" (test accuracy {report['extractor']['test_accuracy']})" if "test_accuracy" in report["extractor"] else ""),
             f"samples    {report['n_generated']} generated (seed {report['seed']}"
             + (f", truncation {report['truncation']}" if report.get("truncation", 1.0) != 1.0 else "")
             + f") vs {report['real']['half_size']} real held-out; floor: {report['real']['floor_sample_size']} vs "
             f"{report['real']['half_size']} real",
             f"{'':<18}{'generated':>12}{'real floor':>12}{'ratio':>8}",
             f"{'FID':<18}{g['fid']:>12.3f}{f['fid']:>12.3f}{report['ratios']['fid_vs_floor']:>8.2f}",
             f"{'KID':<18}{g['kid']:>12.5g}{f['kid']:>12.5g}{report['ratios']['kid_vs_floor']:>8.2f}"
             f"   (KID ratio vs the floor's noise, |mean| + std {abs(f['kid']) + f['kid_std']:.5g})"]
    if "classifier_score" in g:
        lines.append(f"{'classifier score':<18}{g['classifier_score']:>12.3f}{report['real_classifier_score']:>12.3f}"
                     f"{report['ratios']['score_vs_real']:>8.2f}")
        cov = g["coverage"]
        if "shares" in report:
            sh = report["shares"]
            lines.append("class shares     " + ", ".join(f"{name}: {v['generated']:.1%} (real {v['real']:.1%})"
                                                          for name, v in sh["classes"].items()))
            if sh["short"]:
                lines.append(f"WARNING: {', '.join(sh['short'])} below half their real share")
        elif "shares" in cov:
            lines.append("class shares     " + " ".join(f"{i}:{s:.1%}" for i, s in enumerate(cov["shares"])))
        else:
            lines.append(f"classes          {cov['distinct']} of {cov['classes']} hit; largest shares "
                         + " ".join(f"{c}:{s:.1%}" for c, s in cov["top"]))
        if cov["flagged"] and "shares" not in report:
            lines.append(f"WARNING: classes {cov['missing_or_rare']} are under {MIN_CLASS_SHARE:.0%} of samples")
    if "memorisation" in report:
        mem = report["memorisation"]
        lines.append(f"memorisation     {'passed' if mem['passed'] else 'FAILED'}: nearest training image at median "
                     f"{mem['median_generated']:.3g} for generated vs {mem['median_heldout']:.3g} for "
                     f"{mem['n_heldout']} held-out real images ({mem['median_ratio']:.2f}x, at least "
                     f"{mem.get('median_ratio_floor', 1.0):.2f}x); "
                     f"{mem['close_share']:.1%} of generated nearer than the held-out {CLOSE_QUANTILE:.0%} quantile")
    for name, row in report.get("per_class", {}).items():
        lines.append(f"class {modelfile.printable(name, 30):<11}"
                     + (f" {row['accuracy']:.1%} classified as it" if "accuracy" in row else "")
                     + (f"; FID {row['fid']:.3f} (floor {row['floor']:.3f}, {row['fid_vs_floor']:.2f}x)" if "fid" in row
                        else "") + f"; n={row['n']}")
    if "drift" in report:
        d = report["drift"]
        lines.append(f"drift      PyTorch vs ONNX, {d['n']} images: FID {d['fid']:.4f}, KID {d['kid']:.5f}, "
                     f"{d['uint8_pixels_changed']:.4%} of uint8 pixels changed")
    return "\n".join(lines)
