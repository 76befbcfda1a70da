"""Which attributes of the synthetic shape pictures has a checkpoint learned?

Ranks the held-out pictures by ITC similarity for each caption (as `albef eval --k-test 0`),
then reports, for the top-ranked picture, how often its caption agrees with the query on each
attribute (colour, shape, size, place, background), and the mean cosine between the text
features and between the image features of pairs that differ in one attribute only (near 1:
that encoder does not tell the attribute apart). Uses the PyTorch re-implementation in
make-model-fixtures.py on the checkpoint's official-layout weights.

Usage: probe-shapes.py MODEL.safetensors HELDOUT_DIR CONFIG.toml [TOKENIZER_JSON]
Needs, beside the torch virtualenv: tokenizers, pyarrow, pillow, safetensors, e.g.
`pip install --target /tmp/pylib tokenizers pyarrow pillow safetensors` and PYTHONPATH=/tmp/pylib.
"""
import glob
import importlib.util
import io
import sys
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("fx", ROOT / "scripts/make-model-fixtures.py")
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)

COLOURS = "red orange yellow green blue purple pink brown".split()
SHAPES = "circle square triangle cross".split()
PLACES = ["top left", "at the top", "top right", "on the left", "middle", "on the right",
          "bottom left", "at the bottom", "bottom right"]
BACKGROUNDS = ["white", "gray", "black"]
KEYS = ["colour", "shape", "size", "place", "background"]


def attributes(text):
    """The scene of a one-object caption (train/src/synth/scene.rs phrasings)."""
    return {
        "colour": next(c for c in COLOURS if f" {c} " in f" {text} "),
        "shape": next(s for s in SHAPES if s in text),
        "size": "large" if "large" in text else "small",
        "place": next(p for p in PLACES if p in text),
        "background": next(b for b in BACKGROUNDS
                           if f"{b} background" in text or f"a {b} picture" in text),
    }


def main():
    ckpt, data, config = sys.argv[1:4]
    tokenizer = sys.argv[4] if len(sys.argv) > 4 else ROOT / "assets/tokenizer.json"
    cfg = tomllib.load(open(config, "rb"))
    m, t = cfg["model"], cfg["train"]
    res = m["vision"]["image_res"]
    model = fx.Albef(m)
    model.load_state_dict(load_file(ckpt), strict=False)
    model.eval()
    rows = []
    for f in sorted(glob.glob(f"{data}/*.parquet")):
        rows += [r for r in pq.read_table(f, columns=["text", "status", "jpg"]).to_pylist()
                 if r["status"] == "success"]
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.no_padding()
    mean = torch.tensor(t["mean"]).view(3, 1, 1)
    std = torch.tensor(t["std"]).view(3, 1, 1)

    def pixels(jpg):
        im = Image.open(io.BytesIO(jpg)).convert("RGB").resize((res, res), Image.BICUBIC)
        return (torch.tensor(np.asarray(im)).permute(2, 0, 1).float() / 255 - mean) / std

    with torch.no_grad():
        images = torch.stack([pixels(r["jpg"]) for r in rows])
        ifeat = torch.cat([
            F.normalize(model.vision_proj(model.visual_encoder(images[i:i + 256])[:, 0]), dim=-1)
            for i in range(0, len(rows), 256)])
        tfeat = []
        for r in rows:
            ids = torch.tensor([tok.encode(r["text"]).ids[:t["max_tokens"]]])
            out = model.text_encoder.bert(ids, torch.ones_like(ids), mode="text")
            tfeat.append(F.normalize(model.text_proj(out[:, 0]), dim=-1))
        tfeat = torch.cat(tfeat)
    n = len(rows)
    top = (tfeat @ ifeat.T).argmax(1).tolist()
    scenes = [attributes(r["text"]) for r in rows]
    print(f"t2i R@1 (ITC) {100 * np.mean([top[i] == i for i in range(n)]):.1f}% over {n} pairs")
    wrong = Counter(len([k for k in KEYS if scenes[i][k] != scenes[top[i]][k]])
                    for i in range(n) if top[i] != i)
    print("top-1 pictures by number of wrong attributes:", dict(sorted(wrong.items())))
    for k in KEYS:
        agree = np.mean([scenes[i][k] == scenes[top[i]][k] for i in range(n)])
        print(f"top-1 {k} right: {100 * agree:.1f}%")
    for k in KEYS:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
                 if [q for q in KEYS if scenes[i][q] != scenes[j][q]] == [k]]
        if pairs:
            a, b = zip(*pairs)
            tc = (tfeat[list(a)] * tfeat[list(b)]).sum(-1).mean().item()
            ic = (ifeat[list(a)] * ifeat[list(b)]).sum(-1).mean().item()
            print(f"pairs differing only in {k}: {len(pairs)}, mean cosine text {tc:.3f}, "
                  f"image {ic:.3f}")


if __name__ == "__main__":
    main()
