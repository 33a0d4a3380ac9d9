"""Do a model's latent directions mean something? Measured with the model's own domain classifier.

    python training/directions_study.py exports/mnist.onnx [--seeds 500] [--step 3] [--json out.json]

For the first latent of each of --seeds seeds (seed i's ``generate(1, i)``):

- SeFa vs random: the mean change of the classifier's features (its penultimate layer) when the latent
  moves by --step along each of the top SeFa directions, against the same for 32 random unit directions;
- labelled: for each "towards <class>" direction, the share of seeds whose probability of that class
  rises when the latent moves by --step along it;
- truncation: FID, classifier score and the smallest class share (``evaluate``, n = 2500), and the
  classifier's mean confidence (its top probability: how clearly each image is one class), for psi
  from 1 down to 0.5.

The model must carry directions (``dcgan-deploy directions MODEL --labelled``). numpy + onnxruntime.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dcgan_deploy import Generator  # noqa: E402
from dcgan_deploy.evaluate import Extractor, evaluate, to_float  # noqa: E402


def first_latents(gen, seeds: int) -> np.ndarray:
    return np.stack([gen.latents(1, s)[0] for s in range(seeds)])


def features_and_probs(gen, extractor, z):
    images = np.concatenate(list(gen.images(z.astype(np.float32), 256)))
    return extractor(to_float(images))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seeds", type=int, default=500)
    ap.add_argument("--step", type=float, default=3.0)
    ap.add_argument("--sefa", type=int, default=5, help="top SeFa directions to measure")
    ap.add_argument("--data", default=None, help="real images for the truncation table (default: evaluate's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    gen = Generator.load(args.model)
    if not gen.directions:
        sys.exit(f"{args.model} carries no directions: dcgan-deploy directions {args.model} --labelled")
    extractor = Extractor.load(None, (gen.channels, gen.height, gen.width))
    z = first_latents(gen, args.seeds)
    base_f, base_p = features_and_probs(gen, extractor, z)
    result = {"model": str(args.model), "seeds": args.seeds, "step": args.step}

    def change(v):
        f, _ = features_and_probs(gen, extractor, z + args.step * v[None])
        return float(np.linalg.norm(f - base_f, axis=1).mean())
    rng = np.random.default_rng(0)
    random = [change(v / np.linalg.norm(v)) for v in rng.standard_normal((32, gen.latent_dim))]
    sefa = [d for d in gen.directions if d.method == "sefa"][:args.sefa]
    result["random_feature_change"] = {"mean": float(np.mean(random)), "max": float(np.max(random))}
    result["sefa"] = [{"name": d.name, "share": d.share, "feature_change": change(d.vector),
                       "vs_random_mean": change(d.vector) / float(np.mean(random))} for d in sefa]
    names = extractor.class_names or [str(k) for k in range(base_p.shape[1])]
    result["labelled"] = []
    for d in (d for d in gen.directions if d.method == "labelled"):
        k = names.index(d.label)
        _, p = features_and_probs(gen, extractor, z + args.step * d.vector[None])
        result["labelled"].append({"name": d.name, "class": d.label, "boundary_auc": d.value,
                                   "raised_in_the_file": d.raised,
                                   "share_raised": float(np.mean(p[:, k] > base_p[:, k])),
                                   "mean_probability": [float(base_p[:, k].mean()), float(p[:, k].mean())]})
    result["truncation"] = []
    for psi in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        r = evaluate(args.model, data=args.data, n=2500, seed=0, truncation=psi)
        g = r["generated"]
        _, p = features_and_probs(gen, extractor, gen.latents(2500, 0, truncation=psi))
        result["truncation"].append({"psi": psi, "fid": g["fid"], "fid_floor": r["floor"]["fid"],
                                     "confidence": float(p.max(1).mean()),
                                     "score": g.get("classifier_score"), "real_score": r.get("real_classifier_score"),
                                     "min_class_share": g.get("coverage", {}).get("min_share")})
    print(f"random directions: feature change {result['random_feature_change']['mean']:.3f} "
          f"(max {result['random_feature_change']['max']:.3f}) at step {args.step}")
    for s in result["sefa"]:
        print(f"{s['name']:<10} {s['share']:.1%} of the spectrum: feature change {s['feature_change']:.3f} "
              f"= {s['vs_random_mean']:.2f}x random")
    for r in result["labelled"]:
        print(f"{r['name']:<14} raises p({r['class']}) for {r['share_raised']:.1%} of seeds (mean "
              f"{r['mean_probability'][0]:.3f} -> {r['mean_probability'][1]:.3f})")
    for t in result["truncation"]:
        print(f"psi {t['psi']:.1f}: FID {t['fid']:.3f} (floor {t['fid_floor']:.3f}), score {t['score']:.3f} "
              f"(real {t['real_score']:.3f}), smallest class {t['min_class_share']:.1%}, confidence "
              f"{t['confidence']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
