"""The PyTorch side of scripts/bench-loader: torch's DataLoader with PIL and torchvision doing
ALBEF's pretraining transform (RandomResizedCrop(res, scale 0.2-1.0, bicubic), horizontal flip,
RandAugment(2, 7) without colour operations, ToTensor, CLIP normalisation) and BERT tokenisation
(pad to the longest, at most 30 tokens) on the same Parquet shards as the Rust loader.
Prints one JSON line. Usage: bench_loader.py SHARDS_DIR TOKENIZER_JSON [EPOCHS] [WORKERS] [RES] [BATCH]
"""
import glob
import io
import json
import random
import re
import sys
import time

import pyarrow.parquet as pq
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LEVEL = 7 / 10
FILL = (128, 128, 128)


def pre_caption(caption, max_words=30):
    caption = re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower()).replace("-", " ").replace("/", " ")
    caption = caption.replace("<person>", "person")
    return " ".join(caption.split()[:max_words])


class RandomAugment:
    """ALBEF's RandomAugment(2, 7) over Identity, AutoContrast, Equalize, Brightness, Sharpness,
    ShearX/Y, TranslateX/Y, Rotate, each drawn op applied with probability 0.5."""

    OPS = ["Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
           "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]

    def __call__(self, img):
        for op in random.choices(self.OPS, k=2):
            if random.random() > 0.5:
                continue
            sign = -1 if random.random() < 0.5 else 1
            img = self.apply(img, op, sign)
        return img

    @staticmethod
    def apply(img, op, sign):
        enhance = LEVEL * 1.8 + 0.1
        bilinear = T.InterpolationMode.BILINEAR
        if op == "AutoContrast":
            return TF.autocontrast(img)
        if op == "Equalize":
            return TF.equalize(img)
        if op == "Brightness":
            return TF.adjust_brightness(img, enhance)
        if op == "Sharpness":
            return TF.adjust_sharpness(img, enhance)
        if op == "ShearX":
            shear = sign * torch.rad2deg(torch.atan(torch.tensor(LEVEL * 0.3))).item()
            return TF.affine(img, 0, [0, 0], 1, [shear, 0], bilinear, FILL)
        if op == "ShearY":
            shear = sign * torch.rad2deg(torch.atan(torch.tensor(LEVEL * 0.3))).item()
            return TF.affine(img, 0, [0, 0], 1, [0, shear], bilinear, FILL)
        if op == "TranslateX":
            return TF.affine(img, 0, [int(sign * LEVEL * 10), 0], 1, [0, 0], bilinear, FILL)
        if op == "TranslateY":
            return TF.affine(img, 0, [0, int(sign * LEVEL * 10)], 1, [0, 0], bilinear, FILL)
        if op == "Rotate":
            return TF.rotate(img, sign * LEVEL * 30, bilinear, fill=FILL)
        return img


class Shards(Dataset):
    def __init__(self, folder, res):
        rows = []
        for path in sorted(glob.glob(f"{folder}/*.parquet")):
            table = pq.read_table(path, columns=["key", "text", "status", "jpg"]).to_pylist()
            rows += [r for r in table if r["status"] == "success"]
        self.rows = rows
        self.transform = T.Compose([
            T.RandomResizedCrop(res, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            RandomAugment(),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        image = Image.open(io.BytesIO(row["jpg"])).convert("RGB")
        return self.transform(image), pre_caption(row["text"])


class Collate:
    def __init__(self, tokenizer_path, max_tokens=30):
        self.tokenizer = Tokenizer.from_file(tokenizer_path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)

    def __call__(self, batch):
        images = torch.stack([b[0] for b in batch])
        encoded = self.tokenizer.encode_batch([b[1] for b in batch])
        length = max(len(e.ids) for e in encoded)
        ids = torch.zeros(len(batch), length, dtype=torch.long)
        mask = torch.zeros(len(batch), length, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        return images, ids, mask


def main():
    folder, tokenizer = sys.argv[1], sys.argv[2]
    epochs, workers, res, batch = (int(a) for a in (sys.argv[3:] + ["1", "2", "256", "64"][len(sys.argv) - 3:]))
    torch.set_num_threads(1)
    started = time.perf_counter()
    dataset = Shards(folder, res)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, collate_fn=Collate(tokenizer),
                        prefetch_factor=2, persistent_workers=False)
    images = 0
    for _ in range(epochs):
        for pixels, _ids, _mask in loader:
            images += pixels.shape[0]
    seconds = time.perf_counter() - started
    print(json.dumps({"loader": "torch DataLoader + PIL + torchvision", "images": images,
                      "seconds": seconds, "images_per_s": images / seconds,
                      "workers": workers, "res": res, "batch": batch}))


if __name__ == "__main__":
    main()
