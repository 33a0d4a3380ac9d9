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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import bundled
from .runtime import CPU, Generator, ModelError

DEFAULT_EXTRACTOR = "mnist-classifier"
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
    def load(cls, spec: str | Path | None = None) -> "Extractor":
        """``spec``: an ONNX path, the FID Inception weights file of pytorch-fid / torch-fidelity
        (``.pth``: exported to ONNX once, into a cache, see :mod:`dcgan_deploy.inception`), or the
        name of a shipped extractor (default: mnist-classifier)."""
        text = str(spec or DEFAULT_EXTRACTOR)
        is_path = text.endswith((".onnx", ".pth", ".pt")) or Path(text).exists()
        path = Path(text) if is_path else bundled.exports_dir() / "features" / f"{text}.onnx"
        if path.suffix in (".pth", ".pt"):
            path = _inception_onnx(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such feature extractor. For data other than MNIST pass --features "
                             "with an ONNX extractor: image [N,C,H,W] in [-1,1] -> features [N,D] (, probs [N,K])")
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts, providers=[CPU])
        except Exception as e:
            raise ModelError(f"{path}: not a valid ONNX feature extractor ({str(e).strip().splitlines()[0][:200]})") \
                from None
        return cls(session, path, dict(session.get_modelmeta().custom_metadata_map))

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
    """The cached ONNX export of an Inception weights file (made with torch on first use)."""
    if not weights.is_file():
        raise ModelError(f"{weights}: no such Inception weights file")
    try:
        from . import inception
    except ImportError:
        raise ModelError(f"{weights}: turning Inception weights into an ONNX extractor needs torch, once "
                         "(pip install 'dcgan-deploy[train]'); the ONNX file it writes (the report's extractor "
                         "path) then works without torch: pass it to --features") from None
    return inception.cached_extractor(weights)


# ---- the evaluation ---------------------------------------------------------------------------
def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [-1, 1] (what the extractor takes)."""
    return images_uint8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1


def real_halves(data: str, channels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the real data, uint8 ``[N, H, W, C]``; stratified by label when labels exist."""
    from . import data as datasets
    images = datasets.load(data, channels, size).transpose(0, 2, 3, 1)
    rng = np.random.default_rng(seed)
    if data == "mnist-sample":
        labels = np.load(datasets.mnist_sample_path())["labels"]
        a, b = [], []
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            a.append(idx[: len(idx) // 2])
            b.append(idx[len(idx) // 2:])
        # shuffled, so that a prefix (a smaller sample) holds every class
        a, b = rng.permutation(np.concatenate(a)), rng.permutation(np.concatenate(b))
    else:
        idx = rng.permutation(len(images))
        a, b = idx[: len(idx) // 2], idx[len(idx) // 2:]
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


def evaluate(model: str | Path | None = None, data: str = "mnist-sample", n: int = 2500, seed: int = 0,
             features: str | Path | None = None, device: str = "cpu") -> dict:
    """Generated (``n`` images, ``seed``) vs the real held-out half, beside the real-vs-real floor."""
    gen = Generator.load(model, device=device)
    extractor = Extractor.load(features)
    extractor.check_images(gen.channels, gen.height, gen.width)  # before generating anything
    half_a, half_b = real_halves(data, gen.channels, gen.height, seed=0)
    m = min(n, len(half_a), len(half_b))
    if m < 100:
        raise ValueError(f"need at least 100 images per half for stable metrics, have {m}")
    fake, a, b = (extractor(to_float(x)) for x in (gen.generate(n, seed=seed), half_a[:m], half_b))
    generated = compare_features(fake, b[0], seed)  # each set's features once (Inception is slow)
    floor = compare_features(a, b[0], seed)
    real = compare_features(b, a[0], seed)
    report = {
        "model": str(gen.path), "architecture": gen.metadata.get("architecture"), "seed": seed,
        "n_generated": n, "real": {"data": data, "half_size": int(len(half_b)), "floor_sample_size": m},
        "extractor": {"path": str(extractor.path), **{k: v for k, v in extractor.info.items() if k != "dcgan_deploy.features"}},
        "generated": generated, "floor": floor,
        # KID is unbiased: its real-vs-real floor is 0 in expectation, so the ratio is taken
        # against the floor's noise level, |mean| + std over the subsets.
        "ratios": {"fid_vs_floor": generated["fid"] / max(floor["fid"], 1e-12),
                   "kid_vs_floor": generated["kid"] / max(abs(floor["kid"]) + floor["kid_std"], 1e-12)},
    }
    if "classifier_score" in generated:
        report["real_classifier_score"] = real["classifier_score"]
        report["ratios"]["score_vs_real"] = generated["classifier_score"] / real["classifier_score"]
    return report


def drift(model: str | Path, ckpt: str | Path, n: int = 1000, seed: int = 0, features: str | Path | None = None,
          arch: str | None = None) -> dict:
    """The same metrics between PyTorch samples and ONNX samples for the same seeds (needs torch)."""
    import torch

    from .export import describe
    from .images import to_uint8
    gen = Generator.load(model, device="cpu")
    torch_model = describe(ckpt, arch).model
    with torch.no_grad():
        torch_images = np.concatenate([to_uint8(torch_model(torch.from_numpy(z)).numpy())
                                       for z in _chunks(gen.latents(n, seed), 256)])
    onnx_images = gen.generate(n, seed=seed)
    out = compare_sets(Extractor.load(features), onnx_images, torch_images, seed)
    out["uint8_pixels_changed"] = float(np.mean(onnx_images != torch_images))
    return out


def _chunks(x: np.ndarray, k: int):
    for i in range(0, len(x), k):
        yield x[i:i + k]


def summary(report: dict) -> dict:
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
    return out


def format_report(report: dict) -> str:
    g, f = report["generated"], report["floor"]
    lines = [f"model      {report['model']} ({report['architecture']})",
             f"extractor  {report['extractor']['path']}"
             + (f" (test accuracy {report['extractor']['test_accuracy']})" if "test_accuracy" in report["extractor"] else ""),
             f"samples    {report['n_generated']} generated (seed {report['seed']}) vs {report['real']['half_size']} real "
             f"held-out; floor: {report['real']['floor_sample_size']} vs {report['real']['half_size']} real",
             f"{'':<18}{'generated':>12}{'real floor':>12}{'ratio':>8}",
             f"{'FID':<18}{g['fid']:>12.3f}{f['fid']:>12.3f}{report['ratios']['fid_vs_floor']:>8.2f}",
             f"{'KID':<18}{g['kid']:>12.5g}{f['kid']:>12.5g}{report['ratios']['kid_vs_floor']:>8.2f}"
             f"   (KID ratio vs the floor's noise, |mean| + std {abs(f['kid']) + f['kid_std']:.5g})"]
    if "classifier_score" in g:
        lines.append(f"{'classifier score':<18}{g['classifier_score']:>12.3f}{report['real_classifier_score']:>12.3f}"
                     f"{report['ratios']['score_vs_real']:>8.2f}")
        cov = g["coverage"]
        if "shares" in cov:
            lines.append("class shares     " + " ".join(f"{i}:{s:.1%}" for i, s in enumerate(cov["shares"])))
        else:
            lines.append(f"classes          {cov['distinct']} of {cov['classes']} hit; largest shares "
                         + " ".join(f"{c}:{s:.1%}" for c, s in cov["top"]))
        if cov["flagged"]:
            lines.append(f"WARNING: classes {cov['missing_or_rare']} are under {MIN_CLASS_SHARE:.0%} of samples")
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
