#!/usr/bin/env python3
"""Makes the parity fixtures of the Rust ALBEF model (train/tests/fixtures/) and benchmarks an
official-style PyTorch training step.

    make-model-fixtures.py fixtures [--out train/tests/fixtures] [--assets assets]
        needs torch, transformers, timm, safetensors (a separate virtualenv; CI does not run it):
        - bert_minilm.safetensors: inputs and Hugging Face BertModel hidden states (MiniLM-L6
          weights from assets/, not committed);
        - vit_timm.safetensors: small random timm VisionTransformer weights, an input and its
          output, and a bicubically resized position embedding;
        - albef_micro.safetensors / albef_micro_batch.safetensors / albef_micro_expected.json:
          a micro ALBEF state dict in the official layout, a batch, and the three losses of
          one training forward computed by the re-implementation below.
    make-model-fixtures.py bench --config configs/albef-tiny.toml [--steps N]
        needs only torch: median ms of forward + backward + AdamW of the re-implementation
        (eager, full-vocabulary MLM and separate ITM passes like the official code).

The re-implementation follows docs/albef.md ("One pretraining step") and the official
model_pretrain.py/xbert.py semantics (step order, soft targets, enqueue, hard negatives, MLM
distillation); it is written for this script, in the official parameter layout so that its state
dict is the checkpoint's.
"""
import argparse
import json
import math
import statistics
import time
import tomllib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- the re-implementation
class Mlp(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(s, x):
        return s.fc2(F.gelu(s.fc1(x)))


class VitAttention(nn.Module):
    def __init__(s, d, heads):
        super().__init__()
        s.heads = heads
        s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(s, x):
        b, n, c = x.shape
        q, k, v = s.qkv(x).reshape(b, n, 3, s.heads, c // s.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * (c // s.heads) ** -0.5
        return s.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(s, d, heads, ratio):
        super().__init__()
        s.norm1, s.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        s.attn, s.mlp = VitAttention(d, heads), Mlp(d, int(d * ratio))

    def forward(s, x):
        x = x + s.attn(s.norm1(x))
        return x + s.mlp(s.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(s, p, d):
        super().__init__()
        s.proj = nn.Conv2d(3, d, p, p)

    def forward(s, x):
        return s.proj(x).flatten(2).transpose(1, 2)


class Vit(nn.Module):
    def __init__(s, v):
        super().__init__()
        d, g = v["width"], v["image_res"] // v["patch_size"]
        s.patch_embed = PatchEmbed(v["patch_size"], d)
        s.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        s.pos_embed = nn.Parameter(torch.randn(1, g * g + 1, d) * 0.02)
        s.blocks = nn.ModuleList([Block(d, v["heads"], v["mlp_ratio"]) for _ in range(v["depth"])])
        s.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(s, x):
        x = s.patch_embed(x)
        x = torch.cat([s.cls_token.expand(x.shape[0], -1, -1), x], 1) + s.pos_embed
        for b in s.blocks:
            x = b(x)
        return s.norm(x)


class Embeddings(nn.Module):
    def __init__(s, t):
        super().__init__()
        h = t["hidden_size"]
        s.word_embeddings = nn.Embedding(t["vocab_size"], h)
        s.position_embeddings = nn.Embedding(t["max_position_embeddings"], h)
        s.token_type_embeddings = nn.Embedding(t.get("type_vocab_size", 2), h)
        s.LayerNorm = nn.LayerNorm(h, eps=t.get("layer_norm_eps", 1e-12))
        s.dropout = nn.Dropout(t.get("hidden_dropout", 0.1))
        s.register_buffer("position_ids", torch.arange(t["max_position_embeddings"]).expand(1, -1))

    def forward(s, ids):
        n = ids.shape[1]
        e = s.word_embeddings(ids) + s.token_type_embeddings(torch.zeros_like(ids))
        e = e + s.position_embeddings(s.position_ids[:, :n])
        return s.dropout(s.LayerNorm(e))


class SelfAttn(nn.Module):
    def __init__(s, t, kv_width):
        super().__init__()
        h = t["hidden_size"]
        s.heads = t["heads"]
        s.query, s.key, s.value = nn.Linear(h, h), nn.Linear(kv_width, h), nn.Linear(kv_width, h)
        s.dropout = nn.Dropout(t.get("attention_dropout", 0.1))

    def split(s, x):
        b, n, c = x.shape
        return x.view(b, n, s.heads, c // s.heads).permute(0, 2, 1, 3)

    def forward(s, x, ctx, mask):
        q, k, v = s.split(s.query(x)), s.split(s.key(ctx)), s.split(s.value(ctx))
        a = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            a = a + mask
        o = s.dropout(a.softmax(-1)) @ v
        return o.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)


class DenseNorm(nn.Module):
    def __init__(s, t, din):
        super().__init__()
        h = t["hidden_size"]
        s.dense, s.LayerNorm = nn.Linear(din, h), nn.LayerNorm(h, eps=t.get("layer_norm_eps", 1e-12))
        s.dropout = nn.Dropout(t.get("hidden_dropout", 0.1))

    def forward(s, x, res):
        return s.LayerNorm(s.dropout(s.dense(x)) + res)


class Attention(nn.Module):
    def __init__(s, t, kv_width):
        super().__init__()
        s.self, s.output = SelfAttn(t, kv_width), DenseNorm(t, t["hidden_size"])

    def forward(s, x, ctx, mask):
        return s.output(s.self(x, ctx, mask), x)


class Intermediate(nn.Module):
    def __init__(s, t):
        super().__init__()
        s.dense = nn.Linear(t["hidden_size"], t["intermediate_size"])

    def forward(s, x):
        return F.gelu(s.dense(x))


class Layer(nn.Module):
    def __init__(s, t, i, enc_width):
        super().__init__()
        s.attention = Attention(t, t["hidden_size"])
        if i >= t["fusion_layer"]:
            s.crossattention = Attention(t, enc_width)
        s.intermediate, s.output = Intermediate(t), DenseNorm(t, t["intermediate_size"])

    def forward(s, x, mask, image):
        x = s.attention(x, x, mask)
        if hasattr(s, "crossattention"):
            x = s.crossattention(x, image, None)
        return s.output(s.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(s, t, enc_width):
        super().__init__()
        s.layer = nn.ModuleList([Layer(t, i, enc_width) for i in range(t["num_layers"])])


class Bert(nn.Module):
    def __init__(s, t, enc_width):
        super().__init__()
        s.fusion = t["fusion_layer"]
        s.embeddings, s.encoder = Embeddings(t), Encoder(t, enc_width)

    def forward(s, x, att, image=None, mode="full"):
        mask = (1.0 - att[:, None, None, :].float()) * -10000.0
        layers = s.encoder.layer
        if mode == "text":
            x, layers = s.embeddings(x), layers[: s.fusion]
        elif mode == "fusion":
            layers = layers[s.fusion:]
        else:
            x = s.embeddings(x)
        for layer in layers:
            x = layer(x, mask, image)
        return x


class Transform(nn.Module):
    def __init__(s, t):
        super().__init__()
        h = t["hidden_size"]
        s.dense, s.LayerNorm = nn.Linear(h, h), nn.LayerNorm(h, eps=t.get("layer_norm_eps", 1e-12))

    def forward(s, x):
        return s.LayerNorm(F.gelu(s.dense(x)))


class Predictions(nn.Module):
    def __init__(s, t, word):
        super().__init__()
        s.transform = Transform(t)
        s.decoder = nn.Linear(t["hidden_size"], t["vocab_size"], bias=False)
        s.bias = nn.Parameter(torch.zeros(t["vocab_size"]))
        s.decoder.weight = word.weight
        s.decoder.bias = s.bias

    def forward(s, x):
        return s.decoder(s.transform(x))


class Cls(nn.Module):
    def __init__(s, t, word):
        super().__init__()
        s.predictions = Predictions(t, word)


class BertMLM(nn.Module):
    def __init__(s, t, enc_width):
        super().__init__()
        s.bert = Bert(t, enc_width)
        s.cls = Cls(t, s.bert.embeddings.word_embeddings)


class Albef(nn.Module):
    def __init__(s, m):
        super().__init__()
        v, t, e = m["vision"], m["text"], m["embed_dim"]
        s.m = m
        s.visual_encoder, s.visual_encoder_m = Vit(v), Vit(v)
        s.vision_proj, s.vision_proj_m = nn.Linear(v["width"], e), nn.Linear(v["width"], e)
        s.text_encoder, s.text_encoder_m = BertMLM(t, v["width"]), BertMLM(t, v["width"])
        s.text_proj, s.text_proj_m = nn.Linear(t["hidden_size"], e), nn.Linear(t["hidden_size"], e)
        s.itm_head = nn.Linear(t["hidden_size"], 2)
        s.temp = nn.Parameter(torch.tensor(float(m["temp"])))
        s.register_buffer("image_queue", F.normalize(torch.randn(e, m["queue_size"]), dim=0))
        s.register_buffer("text_queue", F.normalize(torch.randn(e, m["queue_size"]), dim=0))
        s.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        s.pairs = [("visual_encoder", "visual_encoder_m"), ("vision_proj", "vision_proj_m"),
                   ("text_encoder", "text_encoder_m"), ("text_proj", "text_proj_m")]
        for a, b in s.pairs:
            for p in getattr(s, b).parameters():
                p.requires_grad = False

    def copy_params(s):
        with torch.no_grad():
            for a, b in s.pairs:
                for p, pm in zip(getattr(s, a).parameters(), getattr(s, b).parameters()):
                    pm.copy_(p)

    def forward(s, image, ids, att, alpha, mlm_ids, mlm_labels, neg_image=None, neg_text=None,
                full_vocab=True):
        """One training forward in the official order; hard negatives sampled per row with
        torch.multinomial when not given."""
        with torch.no_grad():
            s.temp.clamp_(0.001, 0.5)
        image_embeds = s.visual_encoder(image)
        image_feat = F.normalize(s.vision_proj(image_embeds[:, 0]), dim=-1)
        text_embeds = s.text_encoder.bert(ids, att, mode="text")
        text_feat = F.normalize(s.text_proj(text_embeds[:, 0]), dim=-1)
        with torch.no_grad():
            mom = s.m["momentum"]
            for a, b in s.pairs:
                for p, pm in zip(getattr(s, a).parameters(), getattr(s, b).parameters()):
                    pm.data = pm.data * mom + p.data * (1.0 - mom)
            image_embeds_m = s.visual_encoder_m(image)
            image_feat_m = F.normalize(s.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
            image_all = torch.cat([image_feat_m.t(), s.image_queue.clone()], 1)
            text_m = s.text_encoder_m.bert(ids, att, mode="text")
            text_feat_m = F.normalize(s.text_proj_m(text_m[:, 0]), dim=-1)
            text_all = torch.cat([text_feat_m.t(), s.text_queue.clone()], 1)
            sim_i2t_m = image_feat_m @ text_all / s.temp
            sim_t2i_m = text_feat_m @ image_all / s.temp
            hard = torch.zeros_like(sim_i2t_m)
            hard.fill_diagonal_(1)
            i2t_targets = alpha * sim_i2t_m.softmax(1) + (1 - alpha) * hard
            t2i_targets = alpha * sim_t2i_m.softmax(1) + (1 - alpha) * hard
        sim_i2t = image_feat @ text_all / s.temp
        sim_t2i = text_feat @ image_all / s.temp
        loss_i2t = -(F.log_softmax(sim_i2t, 1) * i2t_targets).sum(1).mean()
        loss_t2i = -(F.log_softmax(sim_t2i, 1) * t2i_targets).sum(1).mean()
        loss_itc = (loss_i2t + loss_t2i) / 2
        with torch.no_grad():
            bs, q = image.shape[0], s.m["queue_size"]
            ptr = int(s.queue_ptr)
            assert q % bs == 0
            s.image_queue[:, ptr:ptr + bs] = image_feat_m.T
            s.text_queue[:, ptr:ptr + bs] = text_feat_m.T
            s.queue_ptr[0] = (ptr + bs) % q
        out_pos = s.text_encoder.bert(text_embeds, att, image_embeds, mode="fusion")
        if neg_image is None:
            with torch.no_grad():
                w_i2t = F.softmax(sim_i2t[:, :bs], 1)
                w_t2i = F.softmax(sim_t2i[:, :bs], 1)
                w_i2t.fill_diagonal_(0)
                w_t2i.fill_diagonal_(0)
            neg_image = torch.tensor([torch.multinomial(w_t2i[b], 1).item() for b in range(bs)])
            neg_text = torch.tensor([torch.multinomial(w_i2t[b], 1).item() for b in range(bs)])
        text_all_e = torch.cat([text_embeds, text_embeds[neg_text]], 0)
        att_all = torch.cat([att, att[neg_text]], 0)
        image_all_e = torch.cat([image_embeds[neg_image], image_embeds], 0)
        out_neg = s.text_encoder.bert(text_all_e, att_all, image_all_e, mode="fusion")
        vl = torch.cat([out_pos[:, 0], out_neg[:, 0]], 0)
        labels = torch.cat([torch.ones(bs, dtype=torch.long), torch.zeros(2 * bs, dtype=torch.long)])
        loss_itm = F.cross_entropy(s.itm_head(vl), labels)
        head = s.text_encoder.cls.predictions
        head_m = s.text_encoder_m.cls.predictions
        if full_vocab:
            with torch.no_grad():
                logits_m = head_m(s.text_encoder_m.bert(mlm_ids, att, image_embeds_m))
            logits = head(s.text_encoder.bert(mlm_ids, att, image_embeds))
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), mlm_labels.view(-1))
            distill = -(F.log_softmax(logits, -1) * F.softmax(logits_m, -1)).sum(-1)
            distill = distill[mlm_labels != -100].mean()
        else:
            sel = mlm_labels != -100
            with torch.no_grad():
                logits_m = head_m(s.text_encoder_m.bert(mlm_ids, att, image_embeds_m)[sel])
            logits = head(s.text_encoder.bert(mlm_ids, att, image_embeds)[sel])
            ce = F.cross_entropy(logits, mlm_labels[sel])
            distill = -(F.log_softmax(logits, -1) * F.softmax(logits_m, -1)).sum(-1).mean()
        loss_mlm = (1 - alpha) * ce + alpha * distill
        return loss_itc, loss_itm, loss_mlm


def mask_tokens(ids, m):
    t = m["text"]
    sel = torch.bernoulli(torch.full(ids.shape, m["mlm_probability"])).bool()
    sel &= (ids != t["pad_token_id"]) & (ids != t["cls_token_id"])
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    rep = torch.bernoulli(torch.full(ids.shape, 0.8)).bool() & sel
    rnd = torch.bernoulli(torch.full(ids.shape, 0.5)).bool() & sel & ~rep
    out = torch.where(rep, torch.full_like(ids, t["mask_token_id"]), ids)
    out = torch.where(rnd, torch.randint(t["vocab_size"], ids.shape), out)
    return out, labels


def random_batch(m, bs, length):
    res = m["vision"]["image_res"]
    image = torch.randn(bs, 3, res, res)
    lengths = torch.randint(length // 2, length + 1, (bs, 1))
    att = (torch.arange(length)[None] < lengths).long()
    ids = torch.randint(min(1000, m["text"]["vocab_size"] // 2), m["text"]["vocab_size"], (bs, length)) * att
    ids[:, 0] = m["text"]["cls_token_id"]
    return image, ids, att


def save(tensors, path):
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


# ---------------------------------------------------------------- fixtures
MICRO = """# albef-micro: the shapes of the committed loss-parity fixture (small enough to commit).
[model]
embed_dim = 16
queue_size = 16
momentum = 0.995
temp = 0.6               # above the clamp: the step must clamp it to 0.5
alpha = 0.4
mlm_probability = 0.3

[model.vision]
image_res = 32
patch_size = 16
width = 24
depth = 2
heads = 2
mlp_ratio = 2.0

[model.text]
hidden_size = 24
num_layers = 3
fusion_layer = 1
heads = 2
intermediate_size = 48
vocab_size = 200
max_position_embeddings = 16
pad_token_id = 0
cls_token_id = 101
mask_token_id = 103

[train]
batch_size = 4
max_tokens = 8
lr = 1e-4
weight_decay = 0.02
warmup_steps = 0
warmup_lr = 1e-5
min_lr = 1e-5
epochs = 1
alpha_warmup_epochs = 1.0
seed = 0
device = "cpu"
flip = false
crop_scale = [1.0, 1.0]
randaugment_n = 0
randaugment_m = 0
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]
"""


def fixtures(args):
    out, assets = Path(args.out), Path(args.assets)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # BERT text mode vs Hugging Face BertModel on the MiniLM weights.
    from transformers import BertModel, BertTokenizerFast
    tok = BertTokenizerFast(tokenizer_file=str(assets / "tokenizer.json"))
    hf = BertModel.from_pretrained(str(assets), attn_implementation="eager").eval()
    enc = tok(["a dog runs on the beach", "two red apples on a wooden table", "city at night"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        o = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    save({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
          "hidden_3": o.hidden_states[3], "hidden_6": o.hidden_states[6]}, out / "bert_minilm.safetensors")

    # ViT vs timm's VisionTransformer with the same small random weights.
    import timm.models.vision_transformer as tv
    from functools import partial
    vit = tv.VisionTransformer(img_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2, mlp_ratio=4,
                               qkv_bias=True, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.2)
        image = torch.randn(2, 3, 32, 32)
        feats = vit.forward_features(image)
        g = vit.pos_embed[:, 1:].reshape(1, 2, 2, 24).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(3, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
        pos3 = torch.cat([vit.pos_embed[:, :1], g], 1)
    sd = {f"weights.{k}": v for k, v in vit.state_dict().items()}
    save({**sd, "image": image, "features": feats, "pos_embed_3x3": pos3}, out / "vit_timm.safetensors")

    # Loss parity on a micro ALBEF.
    (out / "albef-micro.toml").write_text(MICRO)
    m = tomllib.loads(MICRO)["model"]
    torch.manual_seed(1)
    model = Albef(m).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        for a, b in model.pairs:  # momentum close to, not equal to, the student
            for p, pm in zip(getattr(model, a).parameters(), getattr(model, b).parameters()):
                pm.copy_(p + 0.05 * torch.randn_like(p))
        model.temp.fill_(0.6)
        model.queue_ptr.fill_(8)
    save(model.state_dict(), out / "albef_micro.safetensors")
    image, ids, att = random_batch(m, 4, 8)
    mlm_ids, mlm_labels = mask_tokens(ids, m)
    mlm_labels[0, 1] = ids[0, 1]  # at least one masked token
    neg_image, neg_text = torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 0, 1])
    alpha = 0.3
    with torch.no_grad():
        itc, itm, mlm = model(image, ids, att, alpha, mlm_ids, mlm_labels, neg_image, neg_text)
    save({"image": image, "input_ids": ids, "attention_mask": att, "mlm_input_ids": mlm_ids,
          "mlm_labels": mlm_labels, "neg_image_idx": neg_image, "neg_text_idx": neg_text,
          "alpha": torch.tensor(alpha)}, out / "albef_micro_batch.safetensors")
    expected = {"loss_itc": itc.item(), "loss_itm": itm.item(), "loss_mlm": mlm.item(),
                "queue_ptr_after": int(model.queue_ptr), "temp_after": model.temp.item()}
    (out / "albef_micro_expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(expected)


# ---------------------------------------------------------------- bench
def bench(args):
    cfg = tomllib.loads(Path(args.config).read_text())
    m, t = cfg["model"], cfg["train"]
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    # Every tensor the model and the step make lands on the device (the official code moves the
    # model and the batch there).
    torch.set_default_device(args.device)
    torch.manual_seed(0)
    model = Albef(m).train()
    model.copy_params()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim != 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim == 1 or n.endswith(".bias"))]
    step_model = model
    if args.ddp:
        # As Pretrain.py runs it: DistributedDataParallel over a process group (here of one rank:
        # NCCL on CUDA, Gloo on the CPU), which buckets and all-reduces the gradients in backward.
        import torch.distributed as dist
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                                rank=0, world_size=1)
        ids_ = [torch.device(args.device).index or 0] if cuda else None
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids_)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=t["lr"])
    image, ids, att = random_batch(m, t["batch_size"], t["max_tokens"])
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        mlm_ids, mlm_labels = mask_tokens(ids, m)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and args.amp):
            itc, itm, mlm = step_model(image, ids, att, m["alpha"], mlm_ids, mlm_labels, full_vocab=not args.masked_only)
        opt.zero_grad()
        (itc + itm + mlm).backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    print(json.dumps({"median_step_ms": statistics.median(times), "steps": len(times),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
                      "amp": cuda and args.amp, "ddp": args.ddp, "peak_gib": peak, "step_ms": times}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures", help="write the parity fixtures")
    f.add_argument("--out", default="train/tests/fixtures", help="fixture folder")
    f.add_argument("--assets", default="assets", help="folder with MiniLM config.json, model.safetensors, tokenizer.json")
    b = sub.add_parser("bench", help="time an official-style training step")
    b.add_argument("--config", default="configs/albef-tiny.toml", help="model config (TOML)")
    b.add_argument("--steps", type=int, default=10, help="timed steps")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    b.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    b.add_argument("--masked-only", action="store_true", help="vocabulary projection at masked rows only")
    b.add_argument("--ddp", action="store_true", help="wrap the model in DistributedDataParallel (one rank)")
    b.add_argument("--port", type=int, default=29571, help="--ddp's process-group port on 127.0.0.1")
    a = ap.parse_args()
    fixtures(a) if a.cmd == "fixtures" else bench(a)


if __name__ == "__main__":
    main()
