"""An emoji-datasource package -> one labelled 64x64 RGB ``.npz`` with a held-out split by base emoji.

    npm pack emoji-datasource-twitter@16.0.0 && tar -xzf emoji-datasource-twitter-16.0.0.tgz \
        package/emoji.json package/img/twitter/64
    python training/emoji/prepare.py package -o emoji-twitter64.npz

The file holds ``images`` uint8 [N, 3, 64, 64] (transparency composited on white), ``labels``
(the emoji's ``category`` in ``emoji.json``), ``classes``, ``groups`` (an emoji and its skin-tone
variants share a group: they are near-duplicates) and ``heldout``: every image of a seeded 15%
of the groups, which training never sees (``dcgan-deploy train`` skips them) and evaluation uses
for the memorisation check and the classifier's test set. Splitting by group keeps near-duplicates
on one side, so they cannot inflate accuracy, shrink the floor or hide copying.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dcgan_deploy.data import load_dataset  # noqa: E402
from dcgan_deploy.files import atomic_path  # noqa: E402

HELDOUT_SHARE = 0.15


def heldout_groups(groups: np.ndarray, share: float = HELDOUT_SHARE, seed: int = 0) -> np.ndarray:
    """A bool mask over images: every image of a seeded ``share`` of the groups."""
    unique = np.unique(groups)
    chosen = np.random.default_rng(seed).permutation(unique)[: round(share * len(unique))]
    return np.isin(groups, chosen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("package", help="the unpacked emoji-datasource-<set> package folder (with emoji.json)")
    ap.add_argument("-o", "--out", required=True, help="the .npz to write")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = load_dataset(args.package, 3, 64)
    heldout = heldout_groups(d.groups, seed=args.seed)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=d.images, labels=d.labels, classes=np.array(d.classes), groups=d.groups,
                                heldout=heldout)
    print(f"wrote {args.out}: {len(d.images)} images, {len(np.unique(d.groups))} emoji, {len(d.classes)} categories; "
          f"{heldout.sum()} images ({len(np.unique(d.groups[heldout]))} emoji) held out")


if __name__ == "__main__":
    main()
