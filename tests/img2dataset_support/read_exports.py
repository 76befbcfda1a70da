"""Reads what `albef datasets export` wrote with the readers other trainers use, and prints one
JSON line {"json": {key: caption}, "webdataset": {key: caption}} (tests/img2dataset.rs):
usage `read_exports.py ALBEF_JSON_DIR WEBDATASET_DIR`. The annotation file is read as ALBEF's
pretraining dataset reads it (each `image` opened with PIL); the tar shards by the `webdataset`
library, decoding every picture."""
import glob
import json
import os
import sys

import webdataset as wds
from PIL import Image

json_dir, wds_dir = sys.argv[1:3]
from_json = {}
with open(os.path.join(json_dir, "annotations.json")) as f:
    for ann in json.load(f):
        with Image.open(ann["image"]) as im:
            im.convert("RGB").load()
        key = os.path.splitext(os.path.basename(ann["image"]))[0]
        from_json[key] = ann["caption"]

from_wds = {}
shards = sorted(glob.glob(os.path.join(wds_dir, "*.tar")))
for sample in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
    assert sample["jpg"].size[0] > 0, sample["__key__"]
    assert sample["json"]["key"] == sample["__key__"], sample["json"]
    from_wds[sample["__key__"]] = sample["txt"]

print(json.dumps({"json": from_json, "webdataset": from_wds}))
