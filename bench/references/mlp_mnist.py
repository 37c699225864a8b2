"""PyTorch reference for configs/mnist-mlp.json: the same 784-256-10 ReLU MLP, cross-entropy, SGD with
momentum 0.9 and learning rate 0.05, batch 64, 5 shuffled epochs over the first 8,000 images of the
MNIST 10k set, the last 2,000 held out; one thread. One run per seed (the model's initialisation and the
shuffling both follow it, each from its own generator, as the course's reference does); prints each
run's samples/s of the training loop and held-out accuracy, one line each, for scripts/bench-train.sh.
Held-out accuracy moves by about a point from seed to seed, so comparisons take the mean over seeds.
usage: python mlp_mnist.py DATA_DIR [SEEDS]   (SEEDS: comma-separated, default 0)"""
import gzip
import sys
import time

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)
data = sys.argv[1]
seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0").split(",")]
with gzip.open(f"{data}/mnist-t10k-images-idx3-ubyte.gz") as f:
    images = torch.tensor(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784), dtype=torch.float32) / 255
with gzip.open(f"{data}/mnist-t10k-labels-idx1-ubyte.gz") as f:
    labels = torch.tensor(np.frombuffer(f.read(), np.uint8, offset=8), dtype=torch.long)
train_x, train_y, held_x, held_y = images[:8000], labels[:8000], images[8000:], labels[8000:]
for seed in seeds:
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    samples = 0
    start = time.perf_counter()
    for epoch in range(5):
        order = torch.randperm(8000, generator=shuffle)
        for i in range(0, 8000 - 63, 64):
            batch = order[i:i + 64]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(train_x[batch]), train_y[batch]).backward()
            optimizer.step()
            samples += 64
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(held_x).argmax(1) == held_y).float().mean().item() * 100
    print(f"pytorch mlp: seed {seed}: {samples / seconds:.0f} samples/s, held-out accuracy {accuracy:.2f} %", flush=True)
