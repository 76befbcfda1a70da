//! The text encoder and the multimodal (fusion) encoder: one BERT whose layers from
//! `fusion_layer` on add cross-attention to the image tokens, plus BERT's MLM head with the
//! decoder tied to the word embeddings. Parameter paths are the official keys under
//! `text_encoder.` (`bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.2.crossattention.self.query.weight`, `cls.predictions.bias`, ...).
//! Reference: salesforce/ALBEF models/xbert.py (`BertEmbeddings`, `BertSelfAttention`,
//! `BertLayer` L451-454 for the cross-attention, `BertEncoder.forward` L550-560 for the
//! modes, `BertLMPredictionHead`, `BertForMaskedLM.forward` L1423-1431 for the MLM loss).
use super::layers::{attention, gelu, linear, split_heads, LayerNorm, Linear, Precision, INIT_STD};
use crate::config::TextConfig;
use tch::{nn, Kind, Tensor};

/// Word + position + token-type embeddings, LayerNorm, dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(p: &nn::Path, cfg: &TextConfig) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: INIT_STD,
        };
        let h = cfg.hidden_size;
        // The `position_ids` buffer of HF BERT: a non-trainable entry so that checkpoints carry
        // it as the official ones do.
        let _ = p.add(
            "position_ids",
            Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, p.device())).unsqueeze(0),
            false,
        );
        BertEmbeddings {
            word_embeddings: (p / "word_embeddings").var("weight", &[cfg.vocab_size, h], init),
            position_embeddings: (p / "position_embeddings").var(
                "weight",
                &[cfg.max_position_embeddings, h],
                init,
            ),
            token_type_embeddings: (p / "token_type_embeddings").var(
                "weight",
                &[cfg.type_vocab_size, h],
                init,
            ),
            layer_norm: LayerNorm::new(&(p / "LayerNorm"), h, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout,
        }
    }

    /// `input_ids` [B, L] -> [B, L, H]; token type 0 everywhere, positions 0..L.
    fn forward(&self, input_ids: &Tensor, train: bool) -> Tensor {
        let len = input_ids.size()[1];
        let words = Tensor::embedding(&self.word_embeddings, input_ids, -1, false, false);
        let extra = self.position_embeddings.narrow(0, 0, len) + self.token_type_embeddings.get(0);
        self.layer_norm
            .forward(&(words + extra))
            .dropout(self.dropout, train)
    }
}

/// `BertSelfAttention` + `BertSelfOutput`. Self-attention projects Q, K, V with one fused
/// matmul; cross-attention projects K and V of the image tokens with one fused matmul.
#[derive(Debug)]
pub struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: i64,
    hidden_dropout: f64,
    attention_dropout: f64,
    precision: Precision,
}

impl BertAttention {
    fn new(p: &nn::Path, cfg: &TextConfig, kv_width: i64, precision: Precision) -> Self {
        let h = cfg.hidden_size;
        let s = p / "self";
        let o = p / "output";
        BertAttention {
            query: Linear::new(&(&s / "query"), h, h, true, precision),
            key: Linear::new(&(&s / "key"), kv_width, h, true, precision),
            value: Linear::new(&(&s / "value"), kv_width, h, true, precision),
            dense: Linear::new(&(&o / "dense"), h, h, true, precision),
            layer_norm: LayerNorm::new(&(&o / "LayerNorm"), h, cfg.layer_norm_eps),
            heads: cfg.heads,
            hidden_dropout: cfg.hidden_dropout,
            attention_dropout: cfg.attention_dropout,
            precision,
        }
    }

    /// Fused projection with the listed linears' weights concatenated along the output axis.
    fn fused(&self, x: &Tensor, parts: &[&Linear]) -> Tensor {
        let w = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0);
        let b = Tensor::cat(
            &parts
                .iter()
                .map(|l| l.bias.as_ref().expect("BERT linears have biases"))
                .collect::<Vec<_>>(),
            0,
        );
        linear(x, &w, Some(&b), self.precision)
    }

    /// Self-attention when `context` is None, cross-attention to `context` otherwise; `mask`
    /// is additive [B, 1, 1, Lk] (None: attend to everything).
    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (q, k, v) = match context {
            None => {
                let mut qkv = split_heads(
                    &self.fused(x, &[&self.query, &self.key, &self.value]),
                    3,
                    self.heads,
                );
                let v = qkv.pop().expect("three parts");
                let k = qkv.pop().expect("three parts");
                (qkv.pop().expect("three parts"), k, v)
            }
            Some(ctx) => {
                let q = split_heads(&self.query.forward(x), 1, self.heads)
                    .pop()
                    .expect("one part");
                let mut kv =
                    split_heads(&self.fused(ctx, &[&self.key, &self.value]), 2, self.heads);
                let v = kv.pop().expect("two parts");
                (q, kv.pop().expect("two parts"), v)
            }
        };
        let p = if train { self.attention_dropout } else { 0.0 };
        let ctx = attention(&q, &k, &v, mask, p, self.precision);
        let out = self.dense.forward(&ctx).dropout(self.hidden_dropout, train);
        self.layer_norm.forward(&(out + x))
    }
}

/// `BertLayer`: self-attention, cross-attention (fusion layers only), feed-forward.
#[derive(Debug)]
pub struct BertLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    dropout: f64,
}

impl BertLayer {
    fn new(
        p: &nn::Path,
        cfg: &TextConfig,
        index: i64,
        encoder_width: i64,
        precision: Precision,
    ) -> Self {
        let h = cfg.hidden_size;
        BertLayer {
            attention: BertAttention::new(&(p / "attention"), cfg, h, precision),
            crossattention: (index >= cfg.fusion_layer).then(|| {
                BertAttention::new(&(p / "crossattention"), cfg, encoder_width, precision)
            }),
            intermediate: Linear::new(
                &(p / "intermediate" / "dense"),
                h,
                cfg.intermediate_size,
                true,
                precision,
            ),
            output: Linear::new(
                &(p / "output" / "dense"),
                cfg.intermediate_size,
                h,
                true,
                precision,
            ),
            output_norm: LayerNorm::new(&(p / "output" / "LayerNorm"), h, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout,
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, image: Option<&Tensor>, train: bool) -> Tensor {
        let mut x = self.attention.forward(x, None, Some(mask), train);
        if let Some(cross) = &self.crossattention {
            let image = image.expect("fusion layers need the image tokens");
            // The image tokens are never padded: ALBEF's `image_atts` are all ones.
            x = cross.forward(&x, Some(image), None, train);
        }
        let y = self.output.forward(&gelu(&self.intermediate.forward(&x)));
        self.output_norm
            .forward(&(y.dropout(self.dropout, train) + x))
    }
}

/// Which layers a pass runs (`BertEncoder.forward`'s `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Layers `0..fusion_layer`: the text encoder.
    Text,
    /// Layers `fusion_layer..`: the multimodal encoder, on given text states. The MLM pass
    /// (the official `mode='full'`) is Text on the masked ids, then Fusion.
    Fusion,
}

/// `BertModel` without the pooler (`add_pooling_layer=False` in `BertForMaskedLM`).
#[derive(Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    fusion_layer: usize,
}

impl BertModel {
    pub fn new(p: &nn::Path, cfg: &TextConfig, encoder_width: i64, precision: Precision) -> Self {
        let layer = p / "encoder" / "layer";
        BertModel {
            embeddings: BertEmbeddings::new(&(p / "embeddings"), cfg),
            layers: (0..cfg.num_layers)
                .map(|i| BertLayer::new(&(&layer / i), cfg, i, encoder_width, precision))
                .collect(),
            fusion_layer: cfg.fusion_layer as usize,
        }
    }

    /// Runs `mode`'s layers. `input` is token ids [B, L] for Text, text states [B, L, H] for
    /// Fusion; `attention_mask` [B, L] is 1 for tokens and 0 for padding; `image` [B, N, W] is
    /// required for Fusion (Text ignores it).
    pub fn forward(
        &self,
        input: &Tensor,
        attention_mask: &Tensor,
        image: Option<&Tensor>,
        mode: Mode,
        train: bool,
    ) -> Tensor {
        let (range, mut x) = match mode {
            Mode::Text => (0..self.fusion_layer, self.embeddings.forward(input, train)),
            Mode::Fusion => (self.fusion_layer..self.layers.len(), input.shallow_clone()),
        };
        let mask = extended_mask(attention_mask);
        for layer in &self.layers[range] {
            x = layer.forward(&x, &mask, image, train);
        }
        x
    }
}

/// [B, L] 1/0 -> additive [B, 1, 1, L]: 0 where attended, -10000 where padded (xbert.py
/// `get_extended_attention_mask`).
fn extended_mask(attention_mask: &Tensor) -> Tensor {
    let keep = attention_mask.to_kind(Kind::Float);
    ((keep - 1.0) * 10000.0).unsqueeze(1).unsqueeze(1)
}

/// `BertLMPredictionHead`: dense -> GELU -> LayerNorm -> decoder (the word embeddings) + bias.
#[derive(Debug)]
pub struct MlmHead {
    dense: Linear,
    layer_norm: LayerNorm,
    decoder: Tensor,
    pub bias: Tensor,
    precision: Precision,
}

impl MlmHead {
    fn new(p: &nn::Path, cfg: &TextConfig, word_embeddings: &Tensor, precision: Precision) -> Self {
        let t = p / "predictions" / "transform";
        MlmHead {
            dense: Linear::new(
                &(&t / "dense"),
                cfg.hidden_size,
                cfg.hidden_size,
                true,
                precision,
            ),
            layer_norm: LayerNorm::new(&(&t / "LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps),
            decoder: word_embeddings.shallow_clone(),
            bias: (p / "predictions").var("bias", &[cfg.vocab_size], nn::Init::Const(0.0)),
            precision,
        }
    }

    /// Hidden states [N, H] -> vocabulary logits [N, V]. Apply it to the masked positions only:
    /// the head is per-token, so this equals slicing the full logits.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        let x = self.layer_norm.forward(&gelu(&self.dense.forward(hidden)));
        linear(&x, &self.decoder, Some(&self.bias), self.precision)
    }
}

/// `BertForMaskedLM`: the BERT and its MLM head (`text_encoder` and `text_encoder_m`).
#[derive(Debug)]
pub struct BertForMaskedLm {
    pub bert: BertModel,
    pub cls: MlmHead,
}

impl BertForMaskedLm {
    pub fn new(p: &nn::Path, cfg: &TextConfig, encoder_width: i64, precision: Precision) -> Self {
        let bert = BertModel::new(&(p / "bert"), cfg, encoder_width, precision);
        let cls = MlmHead::new(
            &(p / "cls"),
            cfg,
            &bert.embeddings.word_embeddings,
            precision,
        );
        BertForMaskedLm { bert, cls }
    }

    /// The MLM logits at `positions` (row-major indices into [B * L], where the labels are not
    /// -100) from `text_hidden`, the text layers' states of the masked ids: the fusion layers,
    /// then the head on the selected rows only.
    pub fn masked_logits(
        &self,
        text_hidden: &Tensor,
        attention_mask: &Tensor,
        image: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Tensor {
        let hidden = self.bert.forward(
            text_hidden,
            attention_mask,
            Some(image),
            Mode::Fusion,
            train,
        );
        let width = *hidden.size().last().expect("hidden states are [B, L, H]");
        self.cls
            .forward(&hidden.reshape([-1, width]).index_select(0, positions))
    }
}
