"""Train the domain classifiers that `dcgan-deploy evaluate` uses as feature extractors.

    python training/classifier/train_classifier.py mnist            # -> exports/features/mnist-classifier.onnx
    python training/classifier/train_classifier.py emoji --data emoji-twitter64.npz
                                                                    # -> exports/features/emoji-classifier.onnx

There is no offline Inception network here, so evaluation uses small CNNs trained on the
domain: the penultimate layer gives the features for FID/KID, the softmax the class
probabilities for the classifier score and class coverage.

- ``mnist``: trained on 4,000 of the embedded 5,000 digits (400 per class), tested on the
  other 1,000 (the last 100 of each digit). Input [N, 1, 28, 28]; 128-d features, 10 digits.
- ``emoji``: the Twitter 64x64 set with each emoji's ``category`` (``training/emoji/prepare.py``
  writes the file), trained on the images outside the file's held-out split and tested on the
  held-out ones -- whole base emoji, so no skin-tone variant of a test image was seen in
  training. Input [N, 3, 64, 64]; 256-d features, the file's categories.

The ONNX file takes ``image`` float32 in [-1, 1] (the generators' output range) and returns
``features`` and ``probs``; its metadata says what it was trained on and how well it does.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dcgan_deploy.data import load_dataset  # noqa: E402
from dcgan_deploy.files import write_bytes  # noqa: E402

FEATURES = ROOT / "exports" / "features"


class MnistClassifier(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),           # 28 -> 26 -> 13
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),          # 13 -> 11 -> 5
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 5 * 5, 128), nn.ReLU())
        self.head = nn.Linear(128, classes)

    def forward(self, x):
        features = self.body(x)                                         # [n, 128]
        return features, torch.softmax(self.head(features), dim=1)      # [n, classes]


class EmojiClassifier(nn.Module):
    def __init__(self, classes):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.body = nn.Sequential(
            *block(3, 32), nn.MaxPool2d(2),                             # 64 -> 32
            *block(32, 64), nn.MaxPool2d(2),                            # 32 -> 16
            *block(64, 128), nn.MaxPool2d(2),                           # 16 -> 8
            *block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),    # [n, 256]
            nn.Dropout(0.3))
        self.head = nn.Linear(256, classes)

    def forward(self, x):
        features = self.body(x)                                         # [n, 256]
        return features, torch.softmax(self.head(features), dim=1)      # [n, classes]


def mnist_split(labels, per_class_test=100):
    """The last ``per_class_test`` images of each digit are the test set."""
    test = np.concatenate([np.flatnonzero(labels == c)[-per_class_test:] for c in range(10)])
    return np.setdiff1d(np.arange(len(labels)), test), test


KINDS = {
    # name: (network, channels, size, epochs, max shift in pixels, horizontal flips)
    "mnist": (MnistClassifier, 1, 28, 20, 2, False),
    "emoji": (EmojiClassifier, 3, 64, 30, 6, True),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("--data", default=None, help="mnist: mnist-sample (default); emoji: the prepared .npz")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    net_cls, channels, size, epochs, max_shift, flips = KINDS[args.kind]
    data = args.data or ("mnist-sample" if args.kind == "mnist" else None)
    if data is None:
        ap.error("emoji needs --data: the .npz that training/emoji/prepare.py writes")
    d = load_dataset(data, channels, size)
    if args.kind == "mnist":
        train, test = mnist_split(d.labels)
        test_set = "last 100 of each digit in mnist_5k.npz (1,000 images)"
        train_set = "the other 4,000 images of mnist_5k.npz"
    else:
        if d.heldout is None or d.groups is None:
            raise SystemExit(f"{data}: needs 'groups' and 'heldout' (write it with training/emoji/prepare.py)")
        train, test = np.flatnonzero(~d.heldout), np.flatnonzero(d.heldout)
        test_set = (f"the held-out split of {Path(data).name}: {len(test)} images of "
                    f"{len(np.unique(d.groups[test]))} base emoji, none of whose variants is in training")
        train_set = f"the other {len(train)} images ({len(np.unique(d.groups[train]))} base emoji)"
    torch.manual_seed(args.seed)
    x = torch.from_numpy(d.images).float() / 127.5 - 1
    y = torch.from_numpy(d.labels).long()
    net = net_cls(len(d.classes))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        for idx in torch.from_numpy(train)[torch.randperm(len(train), generator=gen)].split(64):
            xb = x[idx]
            shift = torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)  # a sturdier feature space
            xb = torch.roll(xb, (int(shift[0]), int(shift[1])), dims=(2, 3))
            if flips and torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(3)
            _, probs = net(xb)
            loss = nn.functional.nll_loss(torch.log(probs + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}", file=sys.stderr)
    net.eval()
    with torch.no_grad():
        pred_test = torch.cat([net(x[b])[1].argmax(1) for b in torch.from_numpy(test).split(256)])
        pred_train = torch.cat([net(x[b])[1].argmax(1) for b in torch.from_numpy(train).split(256)])
    acc = (pred_test == y[test]).float().mean().item()
    train_acc = (pred_train == y[train]).float().mean().item()
    per_class = {c: round(float((pred_test[y[test] == k] == k).float().mean()), 4)
                 for k, c in enumerate(d.classes) if (y[test] == k).any()}
    print(f"test accuracy {acc:.4f} (train {train_acc:.4f}) in {time.time() - start:.0f}s; per class {per_class}")
    name = f"{args.kind}-classifier"
    out = FEATURES / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(net, (x[:2],), input_names=["image"], output_names=["features", "probs"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
    program.save(str(out))
    model = onnx.load(str(out))
    info = {"dcgan_deploy.features": "1", "name": name, "input_range": "[-1, 1]",
            "image_shape": f"{channels},{size},{size}", "feature_dim": str(net.head.in_features),
            "classes": str(len(d.classes)), "class_names": json.dumps(list(d.classes)),
            "test_accuracy": f"{acc:.4f}", "test_set": test_set, "train_set": train_set,
            "epochs": str(epochs), "seed": str(args.seed)}
    if args.kind == "emoji":
        info["attribution"] = TWEMOJI
    onnx.helper.set_model_props(model, info)
    onnx.save(model, str(out))
    write_bytes(out.with_suffix(".json"), (json.dumps({**info, "train_accuracy": round(train_acc, 4),
                                                       "test_accuracy_per_class": per_class}, indent=2)
                                           + "\n").encode())


TWEMOJI = ("Trained on Twemoji graphics (emoji-datasource-twitter 16.0.0), copyright Twitter, Inc. and other "
           "contributors, licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)")


if __name__ == "__main__":
    main()
