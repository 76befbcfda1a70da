//! The semantics of the pretraining losses (ALBEF.md, "One pretraining step"): distillation
//! targets, the momentum update, the queue, hard negatives, MLM masking, and where gradients
//! flow. Runs on the micro config of the parity fixtures.
use albef_train::config::{check_queue, Config};
use albef_train::model::losses::{mask_tokens, sample_negatives, soft_cross_entropy, soft_targets};
use albef_train::model::{probe, Albef};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

fn micro() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/albef-micro.toml");
    Config::load(&path).unwrap()
}

fn model(seed: i64) -> (Config, nn::VarStore, Albef) {
    let config = micro();
    let (vs, model) = probe::build(&config, Device::Cpu, seed, None).unwrap();
    (config, vs, model)
}

#[test]
fn alpha_zero_gives_plain_info_nce() {
    tch::manual_seed(0);
    let sim = Tensor::randn([6, 6 + 12], (Kind::Float, Device::Cpu)) * 5.0;
    let teacher = Tensor::randn([6, 6 + 12], (Kind::Float, Device::Cpu)) * 5.0;
    let ours = soft_cross_entropy(&sim, &soft_targets(&teacher, 0.0)).double_value(&[]);
    let info_nce = sim
        .cross_entropy_for_logits(&Tensor::arange(6, (Kind::Int64, Device::Cpu)))
        .double_value(&[]);
    assert!((ours - info_nce).abs() < 1e-5, "{ours} vs {info_nce}");
    // With alpha > 0 the teacher matters.
    let distilled = soft_cross_entropy(&sim, &soft_targets(&teacher, 0.4)).double_value(&[]);
    assert!((distilled - info_nce).abs() > 1e-3);
}

#[test]
fn soft_targets_sum_to_one_and_keep_the_diagonal_weight() {
    tch::manual_seed(1);
    let sim = Tensor::randn([8, 8 + 32], (Kind::Float, Device::Cpu)) * 10.0;
    let t = soft_targets(&sim, 0.4);
    let sums = t.sum_dim_intlist([1].as_slice(), false, Kind::Float);
    assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-6);
    let diag_min = t.narrow(1, 0, 8).diagonal(0, 0, 1).min().double_value(&[]);
    assert!(
        diag_min >= 0.6 - 1e-6,
        "the hard target keeps 1 - alpha on the diagonal"
    );
}

#[test]
fn momentum_update_follows_the_ema_formula() {
    let (config, _vs, model) = model(3);
    let student = model.vision_proj.weight.shallow_clone();
    let momentum = model.vision_proj_m.weight.shallow_clone();
    tch::no_grad(|| {
        let _ = student.shallow_clone().uniform_(-1.0, 1.0);
    });
    let before = momentum.copy();
    model.momentum_update();
    let m = config.model.momentum;
    let expected = &before * m + &student * (1.0 - m);
    assert!((momentum - expected).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn queue_pointer_wraps_and_stores_the_features() {
    let (config, _vs, model) = model(4);
    let q = config.model.queue_size;
    let bs = 4;
    let mut ptr = 0;
    for step in 0..(q / bs + 1) {
        let feat = Tensor::full(
            [bs, config.model.embed_dim],
            step as f64,
            (Kind::Float, Device::Cpu),
        );
        model.enqueue(&feat, &feat).unwrap();
        let col = model.image_queue.narrow(1, ptr, bs);
        assert_eq!(col.min().double_value(&[]), step as f64);
        assert_eq!(col.max().double_value(&[]), step as f64);
        ptr = (ptr + bs) % q;
        assert_eq!(model.queue_ptr.int64_value(&[0]), ptr);
    }
    assert_eq!(ptr, bs, "wrapped around once");
}

#[test]
fn a_queue_that_the_batch_does_not_divide_is_refused() {
    let (config, _vs, model) = model(5);
    let feat = Tensor::zeros([3, config.model.embed_dim], (Kind::Float, Device::Cpu));
    let err = model.enqueue(&feat, &feat).unwrap_err().to_string();
    assert!(
        err.contains("queue_size 16 is not a multiple of the global batch 3"),
        "{err}"
    );
    assert!(check_queue(4096, 32).is_ok());
    assert!(check_queue(65536, 192).is_err());
    let mut bad = micro();
    bad.train.batch_size = 3;
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("not a multiple"), "{err}");
}

#[test]
fn sampled_negatives_never_equal_the_positive() {
    tch::manual_seed(6);
    let bs = 8;
    for _ in 0..200 {
        // Strongly diagonal similarities: the positive would be drawn almost always.
        let sim = Tensor::randn([bs, bs + 16], (Kind::Float, Device::Cpu))
            + Tensor::eye_m(bs, bs + 16, (Kind::Float, Device::Cpu)) * 30.0;
        let neg = sample_negatives(&sim, &sim, bs);
        let rows = Tensor::arange(bs, (Kind::Int64, Device::Cpu));
        assert_eq!(
            neg.image_idx
                .eq_tensor(&rows)
                .sum(Kind::Int64)
                .int64_value(&[]),
            0
        );
        assert_eq!(
            neg.text_idx
                .eq_tensor(&rows)
                .sum(Kind::Int64)
                .int64_value(&[]),
            0
        );
    }
}

#[test]
fn masking_skips_cls_and_pad_and_follows_80_10_10() {
    tch::manual_seed(7);
    let (rows, len) = (4000, 30);
    let words = Tensor::randint_low(1000, 30522, [rows, len], (Kind::Int64, Device::Cpu));
    let lengths = Tensor::randint_low(5, len + 1, [rows, 1], (Kind::Int64, Device::Cpu));
    let keep = Tensor::arange(len, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .lt_tensor(&lengths);
    let ids = words * keep.to_kind(Kind::Int64);
    let _ = ids.narrow(1, 0, 1).fill_(101);
    let m = mask_tokens(&ids, 0.15, 30522, 0, 101, 103);
    let selected = m.labels.ne(-100);
    let count = |t: &Tensor| t.sum(Kind::Int64).int64_value(&[]) as f64;
    assert_eq!(count(&selected.logical_and(&ids.eq(0))), 0.0, "PAD masked");
    assert_eq!(
        count(&selected.logical_and(&ids.eq(101))),
        0.0,
        "CLS masked"
    );
    assert_eq!(
        count(
            &m.input_ids
                .ne_tensor(&ids)
                .logical_and(&selected.logical_not())
        ),
        0.0,
        "unselected token changed"
    );
    let eligible = count(&ids.ne(0).logical_and(&ids.ne(101)));
    let n = count(&selected);
    assert!(
        (n / eligible - 0.15).abs() < 0.01,
        "selected share {}",
        n / eligible
    );
    let to_mask = count(&selected.logical_and(&m.input_ids.eq(103))) / n;
    let unchanged = count(&selected.logical_and(&m.input_ids.eq_tensor(&ids))) / n;
    let random = 1.0 - to_mask - unchanged;
    assert!((to_mask - 0.8).abs() < 0.015, "[MASK] share {to_mask}");
    assert!(
        (unchanged - 0.1).abs() < 0.015,
        "unchanged share {unchanged}"
    );
    assert!((random - 0.1).abs() < 0.015, "random share {random}");
}

#[test]
fn gradients_reach_the_student_only_and_temp_stays_clamped() {
    let (config, vs, model) = model(8);
    tch::no_grad(|| {
        let _ = model.temp.shallow_clone().fill_(0.9);
    });
    tch::manual_seed(9);
    let batch = probe::random_batch(&config, config.train.batch_size, Device::Cpu);
    let losses = model.losses(&batch, 0.4, true).unwrap();
    losses.total().backward();
    assert!(
        (model.temp.double_value(&[]) - 0.5).abs() < 1e-7,
        "temp clamped to 0.5"
    );
    let vars = vs.variables();
    let grad_norm = |name: &str| {
        let g = vars[name].grad();
        if g.defined() {
            g.abs().sum(Kind::Float).double_value(&[])
        } else {
            0.0
        }
    };
    for name in [
        "visual_encoder.blocks.0.attn.qkv.weight",
        "visual_encoder.pos_embed",
        "vision_proj.weight",
        "text_encoder.bert.embeddings.word_embeddings.weight",
        "text_encoder.bert.encoder.layer.0.attention.self.query.weight",
        "text_encoder.bert.encoder.layer.2.crossattention.self.key.weight",
        "text_encoder.cls.predictions.transform.dense.weight",
        "text_encoder.cls.predictions.bias",
        "text_proj.weight",
        "itm_head.weight",
        "temp",
    ] {
        assert!(grad_norm(name) > 0.0, "{name} got no gradient");
    }
    for (name, t) in &vars {
        let frozen = name.starts_with("visual_encoder_m.")
            || name.starts_with("vision_proj_m.")
            || name.starts_with("text_encoder_m.")
            || name.starts_with("text_proj_m.")
            || name.ends_with("_queue")
            || name == "queue_ptr"
            || name.ends_with("position_ids");
        if frozen {
            assert!(!t.requires_grad(), "{name} requires grad");
            assert!(!t.grad().defined(), "{name} has a gradient");
        }
    }
    // The momentum copies are not in the optimiser's set.
    let trainable = vs.trainable_variables().len();
    let students = vars
        .keys()
        .filter(|k| {
            !k.contains("_m.")
                && !k.ends_with("_queue")
                && *k != "queue_ptr"
                && !k.ends_with("position_ids")
        })
        .count();
    assert_eq!(trainable, students);
}
