"""How fast can albef-tiny's ViT learn the place and the shape of the synthetic pictures at all?

Trains the ViT of the PyTorch re-implementation in make-model-fixtures.py (albef-tiny's widths,
normal(0, 0.02) init as the Rust model) from scratch with two linear heads on its CLS output,
supervised by the place (9) and shape (4) words of each caption, and prints held-out accuracy
every 100 steps. It tells the vision side's speed limit apart from the contrastive task's: at
96 px (6x6 patches) place stays at chance for 600 steps, at 48 px (3x3 patches, one per named
place) it is learnt within a few hundred; and 3e-4 beats 1e-3 there.

Usage: probe-vit-supervised.py TRAIN_DIR HELDOUT_DIR [--res 48] [--patch 16] [--pos normal|sincos]
       [--steps 600] [--lr 3e-4] [--batch 32] [--train-rows 8000]
The folders are ingested shard folders of the shapes corpus (scripts/bench-learning's
WORKDIR/data/train and WORKDIR/data/heldout). Needs, beside the torch virtualenv: pyarrow and
pillow (e.g. `pip install --target /tmp/pylib pyarrow pillow` and PYTHONPATH=/tmp/pylib).
"""
import argparse
import glob
import importlib.util
import io
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("fixtures", ROOT / "scripts" / "make-model-fixtures.py")
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)

PLACES = ["in the top left corner", "at the top", "in the top right corner", "on the left", "in the middle",
          "on the right", "in the bottom left corner", "at the bottom", "in the bottom right corner"]
SHAPES = ["circle", "square", "triangle", "cross"]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def load(folder, res, limit):
    """Pictures (bicubic to res, CLIP-normalised), place and shape labels of the success rows."""
    images, places, shapes = [], [], []
    for path in sorted(glob.glob(f"{folder}/*.parquet")):
        table = pq.read_table(path, columns=["caption", "jpg", "status"]).to_pydict()
        for caption, jpg, status in zip(table["caption"], table["jpg"], table["status"]):
            if status != "success" or len(images) >= limit:
                continue
            image = Image.open(io.BytesIO(jpg)).convert("RGB").resize((res, res), Image.BICUBIC)
            images.append(((np.asarray(image) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
            places.append(next(i for i, p in enumerate(PLACES) if p in caption))
            shapes.append(next(i for i, s in enumerate(SHAPES) if s in caption))
    return (torch.tensor(np.array(images), dtype=torch.float32), torch.tensor(places), torch.tensor(shapes))


def sincos(grid, width):
    """The 2-D sine-cosine position embedding of train/src/model/vit.rs, CLS row zero."""
    quarter = width // 4
    omega = 10000.0 ** (-np.arange(quarter) / quarter)
    out = np.zeros((grid * grid + 1, width))
    for row in range(grid):
        for col in range(grid):
            token = 1 + row * grid + col
            for half, pos in [(0, col), (1, row)]:
                base = half * 2 * quarter
                out[token, base:base + quarter] = np.sin(pos * omega)
                out[token, base + quarter:base + 2 * quarter] = np.cos(pos * omega)
    return torch.tensor(out[None], dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train_dir")
    ap.add_argument("heldout_dir")
    ap.add_argument("--res", type=int, default=48)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--pos", choices=["normal", "sincos"], default="normal")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-rows", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_train, place_train, shape_train = load(args.train_dir, args.res, args.train_rows)
    x_test, place_test, shape_test = load(args.heldout_dir, args.res, 1000)
    torch.manual_seed(0)
    vit = fixtures.Vit(dict(width=192, image_res=args.res, patch_size=args.patch, heads=3, mlp_ratio=4.0, depth=4))
    for name, p in vit.named_parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    if args.pos == "sincos":
        vit.pos_embed.data = sincos(args.res // args.patch, 192)
    head = nn.Linear(192, len(PLACES) + len(SHAPES))
    opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.02)
    start = time.time()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 100)
        pick = torch.randint(0, len(x_train), (args.batch,))
        logits = head(vit(x_train[pick])[:, 0])
        loss = F.cross_entropy(logits[:, :9], place_train[pick]) + F.cross_entropy(logits[:, 9:], shape_train[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                logits = head(vit(x_test)[:, 0])
            place = (logits[:, :9].argmax(1) == place_test).float().mean().item()
            shape = (logits[:, 9:].argmax(1) == shape_test).float().mean().item()
            print(f"{args.res} px, patch {args.patch}, {args.pos} pos, lr {args.lr:g}, batch {args.batch}, "
                  f"step {step}: held-out place {place:.2f} (chance 0.11), shape {shape:.2f} (chance 0.25) "
                  f"[{time.time() - start:.0f}s]", flush=True)


if __name__ == "__main__":
    main()
