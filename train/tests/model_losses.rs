//! The semantics of the pretraining losses (docs/albef.md): distillation
//! targets, the momentum update, the queue, hard negatives, MLM masking, and where gradients
//! flow. Runs on the micro config of the parity fixtures.
use albef_train::config::{check_queue, Config};
use albef_train::model::albef::UNKNOWN_IMAGE;
use albef_train::model::losses::{
    mask_tokens, positive_targets, same_image, sample_negatives, soft_cross_entropy, soft_targets,
};
use albef_train::model::{probe, Albef, Negatives};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// libtorch's generator is global to the process and these tests seed it: they take turns.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _rng = rng_lock();
    tch::manual_seed(0);
    let sim = Tensor::randn([6, 6 + 12], (Kind::Float, Device::Cpu)) * 5.0;
    let teacher = Tensor::randn([6, 6 + 12], (Kind::Float, Device::Cpu)) * 5.0;
    let diagonal = Tensor::eye_m(6, 6 + 12, (Kind::Float, Device::Cpu));
    let ours =
        soft_cross_entropy(&sim, &soft_targets(&teacher, &diagonal, 0.0), None).double_value(&[]);
    let info_nce = sim
        .cross_entropy_for_logits(&Tensor::arange(6, (Kind::Int64, Device::Cpu)))
        .double_value(&[]);
    assert!((ours - info_nce).abs() < 1e-5, "{ours} vs {info_nce}");
    // With alpha > 0 the teacher matters.
    let distilled =
        soft_cross_entropy(&sim, &soft_targets(&teacher, &diagonal, 0.4), None).double_value(&[]);
    assert!((distilled - info_nce).abs() > 1e-3);
}

#[test]
fn soft_targets_sum_to_one_and_keep_the_diagonal_weight() {
    let _rng = rng_lock();
    tch::manual_seed(1);
    let sim = Tensor::randn([8, 8 + 32], (Kind::Float, Device::Cpu)) * 10.0;
    let diagonal = Tensor::eye_m(8, 8 + 32, (Kind::Float, Device::Cpu));
    let t = soft_targets(&sim, &diagonal, 0.4);
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
    let _rng = rng_lock();
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
    let _rng = rng_lock();
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
        let idx = Tensor::full([bs], step, (Kind::Int64, Device::Cpu));
        model.enqueue(&feat, &feat, Some(&idx)).unwrap();
        let col = model.image_queue.narrow(1, ptr, bs);
        assert_eq!(col.min().double_value(&[]), step as f64);
        assert_eq!(col.max().double_value(&[]), step as f64);
        let pictures = model.idx_queue.narrow(1, ptr, bs);
        assert_eq!(pictures.min().int64_value(&[]), step);
        assert_eq!(pictures.max().int64_value(&[]), step);
        ptr = (ptr + bs) % q;
        assert_eq!(model.queue_ptr.int64_value(&[0]), ptr);
    }
    assert_eq!(ptr, bs, "wrapped around once");
}

#[test]
fn a_queue_that_the_batch_does_not_divide_is_refused() {
    let _rng = rng_lock();
    let (config, _vs, model) = model(5);
    let feat = Tensor::zeros([3, config.model.embed_dim], (Kind::Float, Device::Cpu));
    let err = model.enqueue(&feat, &feat, None).unwrap_err().to_string();
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
    let _rng = rng_lock();
    tch::manual_seed(6);
    let bs = 8;
    for _ in 0..200 {
        // Strongly diagonal similarities: the positive would be drawn almost always.
        let sim = Tensor::randn([bs, bs + 16], (Kind::Float, Device::Cpu))
            + Tensor::eye_m(bs, bs + 16, (Kind::Float, Device::Cpu)) * 30.0;
        let neg =
            sample_negatives(&sim, &sim, &Tensor::eye(bs, (Kind::Bool, Device::Cpu))).unwrap();
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
fn a_row_sure_of_its_positive_still_draws_a_negative() {
    let _rng = rng_lock();
    tch::manual_seed(11);
    let bs = 6;
    // Row 2's off-diagonal softmax terms underflow to exactly 0 (logit gap 200), as they do
    // late in training at a low temperature; the other rows are ordinary.
    let sim = Tensor::randn([bs, bs + 4], (Kind::Float, Device::Cpu));
    let _ = sim.get(2).get(2).fill_(200.0);
    let eye = Tensor::eye(bs, (Kind::Bool, Device::Cpu));
    let mut drawn_for_row_2 = std::collections::HashSet::new();
    for _ in 0..200 {
        let neg = sample_negatives(&sim, &sim, &eye).unwrap();
        for idx in [&neg.image_idx, &neg.text_idx] {
            let idx = Vec::<i64>::try_from(idx).unwrap();
            assert!(idx.iter().enumerate().all(|(b, &j)| b as i64 != j));
            drawn_for_row_2.insert(idx[2]);
        }
    }
    // Uniform over the row's five negatives.
    assert_eq!(drawn_for_row_2.len(), 5, "{drawn_for_row_2:?}");
}

#[test]
fn sampled_negatives_never_show_the_same_picture() {
    let _rng = rng_lock();
    tch::manual_seed(10);
    let cpu = (Kind::Float, Device::Cpu);
    // Three captions of picture 7, two of picture 3, one each of pictures 1, 2 and 5.
    let ids = [7i64, 3, 7, 1, 3, 7, 2, 5];
    let bs = ids.len() as i64;
    let idx = Tensor::from_slice(&ids);
    let same = same_image(&idx);
    // Similarities that favour the other captions of the row's picture, and a queue part.
    let favour = Tensor::cat(
        &[
            same.to_kind(Kind::Float) * 30.0,
            Tensor::zeros([bs, 16], cpu),
        ],
        1,
    );
    let draws = |mask: &Tensor| {
        let mut same_picture = 0;
        let mut other_rows = std::collections::HashSet::new();
        for _ in 0..300 {
            let sim = Tensor::randn([bs, bs + 16], cpu) + &favour;
            let neg = sample_negatives(&sim, &sim, mask).unwrap();
            for drawn in [&neg.image_idx, &neg.text_idx] {
                let drawn = Vec::<i64>::try_from(drawn).unwrap();
                for (b, &j) in drawn.iter().enumerate() {
                    if ids[j as usize] == ids[b] {
                        same_picture += 1;
                    } else {
                        other_rows.insert((b, j));
                    }
                }
            }
        }
        (same_picture, other_rows.len())
    };
    let (same_picture, reached) = draws(&same);
    assert_eq!(same_picture, 0, "a caption of the same picture was drawn");
    // Every pair of another picture stays drawable: 8 rows x (8 - own picture's captions).
    let allowed: usize = ids
        .iter()
        .map(|a| ids.iter().filter(|b| *b != a).count())
        .sum();
    assert_eq!(reached, allowed);
    // Masking the diagonal alone (every pair its own picture) draws them nearly always.
    let (same_picture, _) = draws(&Tensor::eye(bs, (Kind::Bool, Device::Cpu)));
    assert!(same_picture > 1000, "{same_picture}");
}

#[test]
fn a_batch_of_one_picture_has_no_hard_negative() {
    let _rng = rng_lock();
    let idx = Tensor::from_slice(&[4i64, 4, 4, 4]);
    let sim = Tensor::randn([4, 4 + 16], (Kind::Float, Device::Cpu));
    let err = sample_negatives(&sim, &sim, &same_image(&idx))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("pair 0 of the batch has no hard negative: all 4 pairs show its picture"),
        "{err}"
    );
}

#[test]
fn itc_targets_spread_over_every_caption_of_the_picture() {
    let _rng = rng_lock();
    let idx = Tensor::from_slice(&[7i64, 3, 7, 1]);
    let queue = Tensor::from_slice(&[7i64, UNKNOWN_IMAGE, 3, 9, 7, 2]).view([1, 6]);
    let got = Vec::<Vec<f32>>::try_from(&positive_targets(&idx, &queue)).unwrap();
    let (t, h, o) = (1.0 / 4.0, 1.0 / 2.0, 0.0);
    let want: Vec<Vec<f32>> = vec![
        vec![t, o, t, o, t, o, o, o, t, o],
        vec![o, h, o, o, o, o, h, o, o, o],
        vec![t, o, t, o, t, o, o, o, t, o],
        vec![o, o, o, 1.0, o, o, o, o, o, o],
    ];
    assert_eq!(got, want);
    // Distinct pictures against a queue of unknown ones: exactly the one-hot diagonal.
    let distinct = Tensor::from_slice(&[5i64, 0, 2, 9]);
    let unknown = Tensor::full([1, 6], UNKNOWN_IMAGE, (Kind::Int64, Device::Cpu));
    let eye = Tensor::eye_m(4, 10, (Kind::Float, Device::Cpu));
    assert!(positive_targets(&distinct, &unknown).equal(&eye));
}

#[test]
fn distinct_pictures_give_the_pretraining_losses_bit_for_bit() {
    let _rng = rng_lock();
    let config = micro();
    let bs = config.train.batch_size;
    // Other captions and pixels every step (the same ones in every run), so that a queued
    // picture's features differ from its features in the batch.
    let batch_at = |step: i64| {
        tch::manual_seed(50 + step);
        let batch = probe::random_batch(&config, bs, Device::Cpu);
        tch::manual_seed(100 + step);
        batch
    };
    let run = |idx: Option<&Tensor>| {
        let (_config, _vs, model) = model(12);
        let mut values = Vec::new();
        for step in 0..3 {
            let batch = batch_at(step);
            let losses = match idx {
                Some(idx) => model.losses_with_idx(&batch, idx, None, 0.4, false),
                None => model.losses(&batch, 0.4, false),
            }
            .unwrap();
            values.extend([&losses.itc, &losses.itm, &losses.mlm].map(|l| l.double_value(&[])));
        }
        (values, model)
    };
    let (plain, plain_model) = run(None);
    assert!(
        plain_model
            .idx_queue
            .eq(UNKNOWN_IMAGE)
            .all()
            .int64_value(&[])
            == 1
    );
    // Every step the same distinct pictures: from the second step on, the queue holds them.
    let distinct: Vec<i64> = (0..bs).map(|b| 1000 + 3 * b).collect();
    let (with_idx, model_with_idx) = run(Some(&Tensor::from_slice(&distinct)));
    assert_eq!(
        plain[..3],
        with_idx[..3],
        "first step: no picture queued yet"
    );
    assert_ne!(
        plain[..],
        with_idx[..],
        "queued captions of the same picture are positives"
    );
    let queued = Vec::<i64>::try_from(model_with_idx.idx_queue.view([-1])).unwrap();
    assert_eq!(queued[..(bs as usize)], distinct[..]);
    // New pictures every step: the same numbers as without idx.
    let fresh =
        |step: i64| Tensor::arange_start(step * bs, (step + 1) * bs, (Kind::Int64, Device::Cpu));
    let (_config, _vs, fresh_model) = model(12);
    let mut values = Vec::new();
    for step in 0..3 {
        let batch = batch_at(step);
        let losses = fresh_model
            .losses_with_idx(&batch, &fresh(step), None, 0.4, false)
            .unwrap();
        values.extend([&losses.itc, &losses.itm, &losses.mlm].map(|l| l.double_value(&[])));
    }
    assert_eq!(plain, values);
}

#[test]
fn given_negatives_of_the_same_picture_and_bad_pictures_are_refused() {
    let _rng = rng_lock();
    let config = micro();
    let bs = config.train.batch_size;
    let (_config, _vs, model) = model(13);
    tch::manual_seed(14);
    let batch = probe::random_batch(&config, bs, Device::Cpu);
    let t = &config.model.text;
    let mlm = mask_tokens(
        &batch.input_ids,
        0.15,
        t.vocab_size,
        t.pad_token_id,
        t.cls_token_id,
        t.mask_token_id,
    );
    let mut ids: Vec<i64> = (0..bs).collect();
    ids[1] = 0;
    let idx = Tensor::from_slice(&ids);
    let next: Vec<i64> = (0..bs).map(|b| (b + 1) % bs).collect();
    let negatives = Negatives {
        image_idx: Tensor::from_slice(&next),
        text_idx: Tensor::from_slice(&next),
    };
    let err = model
        .losses_given(&batch, Some(&idx), 0.4, &mlm, &negatives, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("neg_image_idx[0] = 1 shows pair 0's own picture"),
        "{err}"
    );
    let negative = Tensor::from_slice(&vec![-1i64; bs as usize]);
    let err = model
        .losses_with_idx(&batch, &negative, None, 0.4, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("idx holds -1"), "{err}");
}

#[test]
fn masking_skips_cls_and_pad_and_follows_80_10_10() {
    let _rng = rng_lock();
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
    let _rng = rng_lock();
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

#[test]
fn pair_weights_scale_each_pairs_terms() {
    let _rng = rng_lock();
    let config = micro();
    let bs = config.train.batch_size;
    let ids = Tensor::arange(bs, (Kind::Int64, Device::Cpu));
    // One step of a fresh model (the same seeds every time), so that only the weights differ.
    let losses = |weight: Option<&Tensor>| {
        let (_config, _vs, model) = model(21);
        tch::manual_seed(22);
        let batch = probe::random_batch(&config, bs, Device::Cpu);
        tch::manual_seed(23);
        let l = model
            .losses_with_idx(&batch, &ids, weight, 0.4, false)
            .unwrap();
        [&l.itc, &l.itm, &l.mlm].map(|t| t.double_value(&[]))
    };
    let plain = losses(None);
    let ones = losses(Some(&Tensor::ones([bs], (Kind::Float, Device::Cpu))));
    for (p, o) in plain.iter().zip(ones) {
        assert!(
            (p - o).abs() < 1e-6,
            "all-ones weights: {plain:?} against {ones:?}"
        );
    }
    // Half weight everywhere: ITC and MLM halve; ITM's positives (a third of its terms) halve
    // while its hard negatives keep weight 1.
    let half = losses(Some(&Tensor::full([bs], 0.5, (Kind::Float, Device::Cpu))));
    assert!(
        (half[0] - plain[0] / 2.0).abs() < 1e-6,
        "{half:?} {plain:?}"
    );
    assert!(
        (half[2] - plain[2] / 2.0).abs() < 1e-6,
        "{half:?} {plain:?}"
    );
    assert!(
        half[1] < plain[1] && half[1] > plain[1] / 2.0,
        "{half:?} {plain:?}"
    );
    // Linear in the weights, pair by pair: pair 0 alone plus all the others make the whole.
    let mut w = vec![1f32; bs as usize];
    w[0] = 0.0;
    let others = losses(Some(&Tensor::from_slice(&w)));
    let mut first = vec![0f32; bs as usize];
    first[0] = 1.0;
    let first = losses(Some(&Tensor::from_slice(&first)));
    for k in [0, 2] {
        assert!(first[k] >= 0.0 && others[k] > 0.0, "{first:?} {others:?}");
        assert!(
            (first[k] + others[k] - plain[k]).abs() < 1e-5,
            "{first:?} {others:?} {plain:?}"
        );
    }
    // Bad weights are refused by name.
    let (_config, _vs, model) = model(21);
    let batch = probe::random_batch(&config, bs, Device::Cpu);
    w[1] = -1.0;
    let err = model
        .losses_with_idx(&batch, &ids, Some(&Tensor::from_slice(&w)), 0.4, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pair weight 1 is -1"), "{err}");
    let err = model
        .losses_with_idx(
            &batch,
            &ids,
            Some(&Tensor::ones([bs + 1], (Kind::Float, Device::Cpu))),
            0.4,
            false,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("pair weights must be f32"), "{err}");
}
