//! Parity of the Rust model with peer implementations, on the committed fixtures made once by
//! scripts/make-model-fixtures.py: BERT text mode vs Hugging Face `BertModel` (MiniLM-L6
//! weights from assets/), the ViT vs timm's `VisionTransformer`, and the three losses vs a
//! PyTorch re-implementation of the official forward. Also the checkpoint layout round trip.
use albef_train::config::{Config, PosEmbedInit, TextConfig, VisionConfig};
use albef_train::model::bert::{BertModel, Mode};
use albef_train::model::vit::VisionTransformer;
use albef_train::model::{probe, weights, Precision};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn minilm(fusion_layer: i64) -> TextConfig {
    TextConfig {
        hidden_size: 384,
        num_layers: 6,
        fusion_layer,
        heads: 12,
        intermediate_size: 1536,
        vocab_size: 30522,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_dropout: 0.1,
        attention_dropout: 0.1,
        pad_token_id: 0,
        cls_token_id: 101,
        mask_token_id: 103,
        init: None,
    }
}

#[test]
fn bert_text_mode_matches_hugging_face() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model.safetensors");
    let fx = weights::read(&fixture("bert_minilm.safetensors")).unwrap();
    // fusion_layer 3: text mode is the first 3 layers; fusion_layer 6: all 6 (no cross-attention).
    for (fusion, expected) in [(3, "hidden_3"), (6, "hidden_6")] {
        let vs = nn::VarStore::new(Device::Cpu);
        let bert = BertModel::new(
            &(vs.root() / "text_encoder" / "bert"),
            &minilm(fusion),
            384,
            Precision::default(),
        );
        let report = weights::init_text_from_hf_bert(&vs, &assets).unwrap();
        assert!(report.mismatched.is_empty(), "{report}");
        assert!(
            report.missing.iter().all(|k| k.contains("crossattention")),
            "{report}"
        );
        assert!(
            report.unexpected.iter().all(|k| k.starts_with("pooler.")),
            "{report}"
        );
        let out = bert.forward(
            &fx["input_ids"],
            &fx["attention_mask"],
            None,
            Mode::Text,
            false,
        );
        let diff = max_abs_diff(&out, &fx[expected]);
        assert!(diff <= 1e-4, "fusion_layer {fusion}: max abs diff {diff}");
    }
}

fn timm_weights(dir: &Path) -> (PathBuf, std::collections::BTreeMap<String, Tensor>) {
    let fx = weights::read(&fixture("vit_timm.safetensors")).unwrap();
    let state: Vec<(String, Tensor)> = fx
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("weights.")
                .map(|k| (k.to_string(), v.shallow_clone()))
        })
        .collect();
    let path = dir.join("timm.safetensors");
    Tensor::write_safetensors(&state, &path).unwrap();
    (path, fx)
}

fn vit_config(image_res: i64) -> VisionConfig {
    VisionConfig {
        image_res,
        patch_size: 16,
        width: 24,
        depth: 2,
        heads: 2,
        mlp_ratio: 4.0,
        layer_norm_eps: 1e-6,
        pos_embed_init: PosEmbedInit::Normal,
    }
}

#[test]
fn vit_matches_timm() {
    let dir = tempfile::tempdir().unwrap();
    let (path, fx) = timm_weights(dir.path());
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = VisionTransformer::new(
        &(vs.root() / "visual_encoder"),
        &vit_config(32),
        Precision::default(),
    );
    let report = weights::init_vision_from_timm(&vs, &path).unwrap();
    report.ensure_complete().unwrap();
    let diff = max_abs_diff(&vit.forward(&fx["image"]), &fx["features"]);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn vit_position_embedding_is_interpolated_bicubically() {
    let dir = tempfile::tempdir().unwrap();
    let (path, fx) = timm_weights(dir.path());
    let vs = nn::VarStore::new(Device::Cpu);
    let vit = VisionTransformer::new(
        &(vs.root() / "visual_encoder"),
        &vit_config(48),
        Precision::default(),
    );
    let report = weights::init_vision_from_timm(&vs, &path).unwrap();
    report.ensure_complete().unwrap();
    assert_eq!(report.interpolated.len(), 1, "{report}");
    let diff = max_abs_diff(&vit.pos_embed, &fx["pos_embed_3x3"]);
    assert!(diff <= 1e-5, "max abs diff {diff}");
}

#[test]
fn losses_match_the_pytorch_reimplementation() {
    let config = Config::load(&fixture("albef-micro.toml")).unwrap();
    let (_vs, model) = probe::build(
        &config,
        Device::Cpu,
        7,
        Some(&fixture("albef_micro.safetensors")),
    )
    .unwrap();
    let got = probe::losses_on_batch(
        &model,
        &fixture("albef_micro_batch.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("albef_micro_expected.json")).unwrap(),
    )
    .unwrap();
    for (name, value) in [
        ("loss_itc", got.loss_itc),
        ("loss_itm", got.loss_itm),
        ("loss_mlm", got.loss_mlm),
    ] {
        let want = expected[name].as_f64().unwrap();
        assert!(
            (value - want).abs() <= 1e-4,
            "{name}: ours {value}, PyTorch {want}"
        );
    }
    assert_eq!(
        model.queue_ptr.int64_value(&[0]),
        expected["queue_ptr_after"].as_i64().unwrap()
    );
    assert!((model.temp.double_value(&[]) - expected["temp_after"].as_f64().unwrap()).abs() < 1e-7);
}

#[test]
fn distinct_pictures_leave_the_parity_losses_bit_for_bit() {
    let config = Config::load(&fixture("albef-micro.toml")).unwrap();
    let losses = |batch: &Path| {
        let weights = fixture("albef_micro.safetensors");
        let (_vs, model) = probe::build(&config, Device::Cpu, 7, Some(&weights)).unwrap();
        probe::losses_on_batch(&model, batch, Device::Cpu).unwrap()
    };
    let plain = losses(&fixture("albef_micro_batch.safetensors"));
    // The same batch file with an `idx` of distinct pictures.
    let mut batch: Vec<(String, Tensor)> = weights::read(&fixture("albef_micro_batch.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let bs = batch
        .iter()
        .find(|(k, _)| k == "input_ids")
        .unwrap()
        .1
        .size()[0];
    batch.push((
        "idx".into(),
        Tensor::arange(bs, (Kind::Int64, Device::Cpu)) * 5 + 2,
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("distinct.safetensors");
    Tensor::write_safetensors(&batch, &path).unwrap();
    let with_idx = losses(&path);
    assert_eq!(
        (plain.loss_itc, plain.loss_itm, plain.loss_mlm),
        (with_idx.loss_itc, with_idx.loss_itm, with_idx.loss_mlm)
    );
}

#[test]
fn state_dict_round_trips_in_the_official_layout() {
    let config = Config::load(&fixture("albef-micro.toml")).unwrap();
    let (vs, _model) = probe::build(&config, Device::Cpu, 1, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    weights::save(&vs, &path).unwrap();
    let saved = weights::read(&path).unwrap();
    for key in [
        "text_encoder.cls.predictions.decoder.weight",
        "text_encoder.cls.predictions.decoder.bias",
        "text_encoder_m.cls.predictions.decoder.weight",
        "text_encoder.bert.embeddings.position_ids",
        "visual_encoder.blocks.0.attn.qkv.weight",
        "text_encoder.bert.encoder.layer.2.crossattention.self.query.weight",
        "image_queue",
        "queue_ptr",
        "temp",
    ] {
        assert!(saved.contains_key(key), "saved state dict lacks {key}");
    }
    // The keys of the official file made by the PyTorch re-implementation, and the picture
    // queue of the official retrieval model.
    let official = weights::read(&fixture("albef_micro.safetensors")).unwrap();
    let mut want: Vec<&str> = official.keys().map(String::as_str).collect();
    want.push("idx_queue");
    want.sort();
    assert_eq!(saved.keys().collect::<Vec<_>>(), want);

    let (vs2, _m2) = probe::build(&config, Device::Cpu, 2, Some(&path)).unwrap();
    let a = vs.variables();
    for (name, t) in vs2.variables() {
        assert!(
            max_abs_diff(&t.to_kind(Kind::Double), &a[&name].to_kind(Kind::Double)) == 0.0,
            "{name} differs"
        );
    }
}

#[test]
fn loading_reports_missing_and_mismatched_keys() {
    let config = Config::load(&fixture("albef-micro.toml")).unwrap();
    let mut state = weights::read(&fixture("albef_micro.safetensors")).unwrap();
    state.remove("itm_head.bias");
    state.insert(
        "vision_proj.weight".into(),
        Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
    );
    state.insert(
        "extra.key".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let list: Vec<(String, Tensor)> = state.into_iter().collect();
    Tensor::write_safetensors(&list, &path).unwrap();
    let err = probe::build(&config, Device::Cpu, 0, Some(&path))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing: itm_head.bias"), "{err}");
    assert!(
        err.contains("shape mismatch vision_proj.weight: model [16, 24], file [3, 3]"),
        "{err}"
    );
    assert!(err.contains("unexpected: extra.key"), "{err}");
}
