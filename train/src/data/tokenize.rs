//! Text side of a batch: pre_caption, then BERT WordPiece through the `tokenizers` crate from a
//! `tokenizer.json`. The file's own truncation (128) and fixed padding (128) are replaced: each
//! caption is truncated to `max_tokens` ([CLS] and [SEP] included) and a batch is padded to its
//! longest caption, as the reference's `padding='longest', truncation=True` does.
use albef_dataset::caption::pre_caption;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_words: usize,
    pad_id: i64,
}

/// Token ids and attention mask, row-major [rows, len].
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub rows: usize,
    pub len: usize,
}

impl TextEncoder {
    pub fn load(path: &Path, max_tokens: usize, max_words: usize) -> Result<Self> {
        if max_tokens < 2 {
            anyhow::bail!("max_tokens {max_tokens} leaves no room for [CLS] and [SEP]");
        }
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("loading the tokenizer {}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))
            .context("setting the truncation")?;
        let pad_id = tokenizer
            .token_to_id("[PAD]")
            .with_context(|| format!("{} has no [PAD] token", path.display()))?;
        Ok(Self {
            tokenizer,
            max_words,
            pad_id: pad_id as i64,
        })
    }

    /// Cleans, tokenises and pads `captions` to the longest of them.
    pub fn encode(&self, captions: &[String]) -> Result<Tokens> {
        let encoded = captions
            .iter()
            .map(|c| {
                self.tokenizer
                    .encode(pre_caption(c, self.max_words), true)
                    .map_err(|e| anyhow!("tokenising {c:?}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let len = encoded.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut tokens = Tokens {
            ids: Vec::with_capacity(len * captions.len()),
            mask: Vec::with_capacity(len * captions.len()),
            rows: captions.len(),
            len,
        };
        for e in &encoded {
            let ids = e.get_ids();
            tokens.ids.extend(ids.iter().map(|&i| i as i64));
            tokens
                .ids
                .extend(std::iter::repeat_n(self.pad_id, len - ids.len()));
            tokens.mask.extend(std::iter::repeat_n(1, ids.len()));
            tokens.mask.extend(std::iter::repeat_n(0, len - ids.len()));
        }
        Ok(tokens)
    }
}
