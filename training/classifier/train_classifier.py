"""Train the MNIST digit classifier that `dcgan-deploy evaluate` uses as its feature extractor.

    python training/classifier/train_classifier.py        # -> exports/features/mnist-classifier.onnx

There is no offline Inception network for MNIST, so evaluation uses this small CNN:
its 128-d penultimate layer gives the features for FID/KID, its softmax the class
probabilities for the classifier score and class coverage. Trained on 4,000 of the
embedded 5,000 digits (400 per class), tested on the other 1,000 (100 per class).

The ONNX file takes ``image`` float32 [N, 1, 28, 28] in [-1, 1] (the generators' output
range) and returns ``features`` [N, 128] and ``probs`` [N, 10].
"""
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
from dcgan_deploy.files import write_bytes  # noqa: E402

OUT = ROOT / "exports" / "features" / "mnist-classifier.onnx"


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),           # 28 -> 26 -> 13
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),          # 13 -> 11 -> 5
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 5 * 5, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        features = self.body(x)                                         # [n, 128]
        return features, torch.softmax(self.head(features), dim=1)      # [n, 10]


def split(labels, per_class_test=100):
    """The last ``per_class_test`` images of each digit are the test set."""
    test = np.concatenate([np.flatnonzero(labels == c)[-per_class_test:] for c in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def main(epochs=20, seed=0):
    torch.manual_seed(seed)
    data = np.load(ROOT / "training" / "data" / "mnist_5k.npz")
    x = torch.from_numpy(data["images"]).float()[:, None] / 127.5 - 1
    y = torch.from_numpy(data["labels"]).long()
    train, test = split(data["labels"])
    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        for idx in torch.from_numpy(train)[torch.randperm(len(train), generator=gen)].split(64):
            xb = x[idx]
            shift = torch.randint(-2, 3, (2,), generator=gen)  # small translations: a sturdier feature space
            xb = torch.roll(xb, (int(shift[0]), int(shift[1])), dims=(2, 3))
            _, probs = net(xb)
            loss = nn.functional.nll_loss(torch.log(probs + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[test])[1].argmax(1) == y[test]).float().mean().item()
        train_acc = (net(x[train])[1].argmax(1) == y[train]).float().mean().item()
    print(f"test accuracy {acc:.4f} (train {train_acc:.4f}) in {time.time() - start:.0f}s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(net, (x[:2],), input_names=["image"], output_names=["features", "probs"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)
    program.save(str(OUT))
    model = onnx.load(str(OUT))
    info = {"dcgan_deploy.features": "1", "name": "mnist-classifier", "input_range": "[-1, 1]",
            "image_shape": "1,28,28", "feature_dim": "128", "classes": "10",
            "test_accuracy": f"{acc:.4f}", "test_set": "last 100 of each digit in mnist_5k.npz (1,000 images)",
            "train_set": "the other 4,000 images of mnist_5k.npz", "epochs": str(epochs), "seed": str(seed)}
    onnx.helper.set_model_props(model, info)
    onnx.save(model, str(OUT))
    write_bytes(OUT.with_suffix(".json"), (json.dumps({**info, "train_accuracy": round(train_acc, 4)}, indent=2)
                                           + "\n").encode())


if __name__ == "__main__":
    main()
