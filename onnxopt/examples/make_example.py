"""Re-create the bundled example: a tiny residual CNN trained on scikit-learn's digits.

Writes, next to this script:
- ``digits_cnn.onnx``: Conv/BatchNorm/ReLU with a residual Add, global pooling and a Linear head
  (input ``image`` float32[N,1,8,8], output ``logits`` float32[N,10]), exported by torch's
  TorchScript exporter with a dynamic batch and no exporter-side folding;
- ``digits_calib.npz``: 256 training images (``image``) for calibration and pruning, no labels;
- ``digits_test.npz``: the 360 held-out test images with their ``labels``.

Run: ``python examples/make_example.py`` (needs the dev extra: torch and scikit-learn; ~10 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N,1,8,8] in 0..1
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=360, random_state=SEED, stratify=y)


def build_model():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(y)))

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
            self.block = Block(12)
            self.down = nn.Sequential(
                nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU()
            )
            self.head = nn.Linear(24, 10)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            x = self.down(self.block(self.stem(x)))
            x = x.mean(dim=(2, 3))
            return self.head(self.drop(x))

    return DigitsCNN()


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 40):
    import torch

    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def main() -> None:
    import torch

    from onnxopt.export import export_torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    x_tr, x_te, y_tr, y_te = load_split()
    model = train(build_model(), x_tr, y_tr)
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean() * 100
    export_torch(
        model,
        torch.from_numpy(x_te[:2]),
        HERE / "digits_cnn.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        # keep BatchNormalization and the exporter's leftovers: the demo shows the
        # exact passes folding them
        do_constant_folding=False,
    )
    np.savez(HERE / "digits_calib.npz", image=x_tr[:256])
    np.savez(HERE / "digits_test.npz", image=x_te, labels=y_te)
    print(f"test accuracy {acc:.2f}%  ->  {HERE / 'digits_cnn.onnx'}")


if __name__ == "__main__":
    main()
