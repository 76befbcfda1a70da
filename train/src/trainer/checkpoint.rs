//! Training checkpoints that a run can resume from exactly. One folder per checkpoint:
//!
//! - `model.safetensors`: the whole model in the official ALBEF key layout (student and
//!   momentum encoders, queues, `queue_ptr`, `temp`), loadable by `albef eval`, the filter
//!   stage, or a conversion back to `ALBEF.pth`; this is the file the registry records.
//! - `optimizer.safetensors`: the AdamW moments and per-parameter step counts.
//! - `trainer.json`: the step, the schedules, the seed and data position (every random draw of
//!   the loop is a function of them), the run, and the config.
//! - `manifest.json`, written last: the sha256 and size of the three files. A folder without
//!   it is an interrupted write and is never loaded.
//!
//! Every file is written to a temporary name, fsynced, renamed into place, and the folder is
//! fsynced, so a crash leaves either the old state or the new one.
//!
//! A run whose checkpoints go to an object store (`train --checkpoint-dir s3://...`) writes each
//! folder locally as above and then uploads it ([`upload`]), the manifest last, so the manifest
//! object again vouches for the rest. Readers take the registered URI of the model file and
//! [`local_copy`] downloads the folder into a local mirror (or names the local folder).
use super::adamw::AdamW;
use super::schedule::{AlphaRamp, LrSchedule};
use crate::config::Config;
use crate::model::weights;
use albef_dataset::store::{self, block_on, Remote};
use albef_dataset::{hash_file, write_atomic_with};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tch::nn;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_FILE: &str = "trainer.json";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Where the data loader stands: the next micro-batch to read is `batch` of `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: i64,
    pub batch: i64,
}

/// Everything besides tensors that a resumed run needs to continue as if never stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The registry run that wrote it.
    pub run: i64,
    /// The dataset version trained on (registry id).
    pub dataset_version: i64,
    /// Optimiser steps completed.
    pub step: i64,
    /// Optimiser steps the run was planned for.
    pub total_steps: i64,
    /// Optimiser steps per pass over the data.
    pub steps_per_epoch: i64,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub accumulate: i64,
    /// The global gradient-norm clip, if any.
    pub clip_grad: Option<f64>,
    /// The processes that trained together (data parallel); checkpoints older than the
    /// field were written by one.
    #[serde(default = "one_process")]
    pub world_size: usize,
    /// The seed; libtorch's generator is re-seeded from (seed, step, micro-batch) before every
    /// forward, so these and the data position are the whole random state.
    pub seed: u64,
    pub data: DataPosition,
    pub lr: LrSchedule,
    pub alpha: AlphaRamp,
    pub config: Config,
    /// Metrics at this step (losses, recall), as registered.
    pub metrics: BTreeMap<String, f64>,
}

fn one_process() -> usize {
    1
}

/// One file of a checkpoint, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    step: i64,
    files: Vec<ManifestEntry>,
}

/// The folder of the checkpoint at `step` under a run's checkpoint folder.
pub fn step_dir(run_dir: &Path, step: i64) -> PathBuf {
    run_dir.join(format!("step-{step:08}"))
}

/// Writes a checkpoint folder atomically (see the module docs) and returns the path of its
/// model file.
pub fn save(
    dir: &Path,
    vs: &nn::VarStore,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create checkpoint folder {}", dir.display()))?;
    // A stale manifest from an earlier, interrupted save of the same step goes first.
    remove_if_exists(&dir.join(MANIFEST_FILE))?;
    let model = write_atomic(dir, MODEL_FILE, |tmp| weights::save(vs, tmp))?;
    let optim = write_atomic(dir, OPTIMIZER_FILE, |tmp| {
        let tensors: Vec<(String, tch::Tensor)> = optimizer
            .state()
            .into_iter()
            .map(|(k, t)| (k, t.detach().to_device(tch::Device::Cpu).contiguous()))
            .collect();
        tch::Tensor::write_safetensors(&tensors, tmp)
            .with_context(|| format!("cannot write optimizer state {}", tmp.display()))
    })?;
    let trainer = write_atomic(dir, TRAINER_FILE, |tmp| {
        let json = serde_json::to_vec_pretty(state)?;
        fs::write(tmp, json).with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    let manifest = Manifest {
        step: state.step,
        files: vec![model, optim, trainer],
    };
    write_atomic(dir, MANIFEST_FILE, |tmp| {
        fs::write(tmp, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    Ok(dir.join(MODEL_FILE))
}

/// A checkpoint folder read back and verified against its manifest.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainerState,
}

impl Loaded {
    /// Checks the manifest and every file's sha256, and reads the trainer state. `path` is the
    /// folder or its model file (the path the registry records).
    pub fn open(path: &Path) -> Result<Self> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let manifest = read_manifest(&dir)?;
        for entry in &manifest.files {
            let file = dir.join(&entry.file);
            let (sha, bytes) = hash_file(&file)?;
            if sha != entry.sha256 || bytes != entry.bytes {
                bail!(
                    "checkpoint file {} has sha256 {sha} ({bytes} bytes), the manifest says {} ({} bytes)",
                    file.display(),
                    entry.sha256,
                    entry.bytes
                );
            }
        }
        let trainer_path = dir.join(TRAINER_FILE);
        let state: TrainerState = serde_json::from_slice(
            &fs::read(&trainer_path)
                .with_context(|| format!("cannot read {}", trainer_path.display()))?,
        )
        .with_context(|| format!("cannot parse {}", trainer_path.display()))?;
        if state.step != manifest.step {
            bail!(
                "{}: trainer step {} but manifest step {}",
                dir.display(),
                state.step,
                manifest.step
            );
        }
        Ok(Self { dir, state })
    }

    /// The model file (official layout).
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// Loads the model weights (all keys required) and the optimiser state.
    pub fn restore(self, vs: &nn::VarStore, optimizer: &mut AdamW) -> Result<TrainerState> {
        load_model(vs, &self.model_path())?;
        optimizer
            .load_state(weights::read(&self.dir.join(OPTIMIZER_FILE))?)
            .with_context(|| format!("restoring the optimizer from {}", self.dir.display()))?;
        Ok(self.state)
    }
}

/// Uploads the checkpoint folder `dir` to `remote` (its step's prefix): its files, then the
/// manifest. Returns the URI of the model file, as the registry records it.
pub fn upload(dir: &Path, remote: &Remote) -> Result<String> {
    let manifest = read_manifest(dir)?;
    for entry in &manifest.files {
        block_on(remote.upload(&dir.join(&entry.file), &entry.file))?;
    }
    block_on(remote.upload(&dir.join(MANIFEST_FILE), MANIFEST_FILE))?;
    Ok(remote.uri_of(MODEL_FILE))
}

/// The local model file of the checkpoint whose model file the registry records at `uri`: the
/// path itself, or for an object-store URI its copy under `mirror` (see
/// `albef_dataset::store::mirror_path`), downloaded unless the copy already has the manifest's
/// sha256. The manifest is read from the store each time and written locally last.
pub fn local_copy(uri: &str, mirror: &Path) -> Result<PathBuf> {
    if !store::is_remote(uri) {
        return Ok(PathBuf::from(uri));
    }
    let prefix = uri
        .strip_suffix(&format!("/{MODEL_FILE}"))
        .with_context(|| format!("checkpoint {uri} does not name a {MODEL_FILE}"))?;
    let remote = Remote::open(prefix)?;
    let bytes = block_on(remote.get(MANIFEST_FILE))?.with_context(|| {
        format!("checkpoint {prefix} has no {MANIFEST_FILE}: an interrupted upload?")
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("cannot parse {}", remote.uri_of(MANIFEST_FILE)))?;
    let dir = store::mirror_path(mirror, prefix);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_if_exists(&dir.join(MANIFEST_FILE))?;
    for entry in &manifest.files {
        let file = dir.join(&entry.file);
        let fresh = file.exists() && hash_file(&file)? == (entry.sha256.clone(), entry.bytes);
        if !fresh {
            block_on(remote.download(&entry.file, &file))?;
        }
    }
    albef_dataset::write_atomic(&dir.join(MANIFEST_FILE), &bytes)?;
    Ok(dir.join(MODEL_FILE))
}

/// The manifest of the checkpoint folder `dir`.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "checkpoint {} has no manifest: an interrupted write?",
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("cannot parse {}", path.display()))
}

/// Loads a model file in the official layout into `vs`, failing unless every key is present.
pub fn load_model(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let report = weights::load(vs, path)?;
    report.ensure_complete()
}

/// Writes `dir/name` through `write(tmp)` atomically (the dataset crate's publication: a
/// temporary name, fsync, rename, fsync of the folder). Returns the file's manifest entry.
fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<ManifestEntry> {
    let dst = dir.join(name);
    write_atomic_with(&dst, write)?;
    let (sha256, bytes) = hash_file(&dst)?;
    Ok(ManifestEntry {
        file: name.to_string(),
        sha256,
        bytes,
    })
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::albef::{DECAY_GROUP, NO_DECAY_GROUP};
    use crate::trainer::AdamWOptions;
    use tch::{Device, Kind, Tensor};

    fn config() -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/albef-tiny.toml");
        Config::load(&path).unwrap()
    }

    fn store(value: f64) -> (nn::VarStore, AdamW) {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let w =
            (&root / "proj")
                .set_group(DECAY_GROUP)
                .var("weight", &[3, 2], nn::Init::Const(value));
        let b =
            (&root / "proj")
                .set_group(NO_DECAY_GROUP)
                .var("bias", &[3], nn::Init::Const(value));
        let opts = AdamWOptions {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.02,
        };
        let mut opt = AdamW::new(&vs, opts).unwrap();
        (w.sum(Kind::Float) * 2.0 + b.sum(Kind::Float)).backward();
        opt.step(0.1);
        (vs, opt)
    }

    fn state(step: i64) -> TrainerState {
        let config = config();
        TrainerState {
            run: 7,
            dataset_version: 3,
            step,
            total_steps: 100,
            steps_per_epoch: 10,
            accumulate: 1,
            clip_grad: Some(1.0),
            world_size: 1,
            seed: 42,
            data: DataPosition { epoch: 1, batch: 5 },
            lr: LrSchedule::new(&config.train, 100),
            alpha: AlphaRamp::new(&config.model, &config.train, 10),
            config,
            metrics: BTreeMap::from([("loss".to_string(), 1.5)]),
        }
    }

    #[test]
    fn round_trip_restores_weights_optimizer_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, opt) = store(1.0);
        let ckpt = step_dir(dir.path(), 15);
        let model_path = save(&ckpt, &vs, &opt, &state(15)).unwrap();
        assert_eq!(model_path, ckpt.join(MODEL_FILE));
        let names: Vec<String> = fs::read_dir(&ckpt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "no temporary files left: {names:?}");

        let (vs2, mut opt2) = store(5.0);
        let restored = Loaded::open(&model_path)
            .unwrap()
            .restore(&vs2, &mut opt2)
            .unwrap();
        assert_eq!(restored, state(15));
        for (name, t) in vs.variables() {
            assert!(
                t.equal(&vs2.variables()[&name]),
                "{name} differs after restore"
            );
        }
        let a: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
        let b: BTreeMap<String, Tensor> = opt2.state().into_iter().collect();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            assert!(t.equal(&b[k]), "optimizer {k} differs after restore");
        }
    }

    #[test]
    fn a_changed_file_or_a_missing_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, opt) = store(1.0);
        let ckpt = step_dir(dir.path(), 1);
        save(&ckpt, &vs, &opt, &state(1)).unwrap();
        let trainer = ckpt.join(TRAINER_FILE);
        let text = fs::read_to_string(&trainer)
            .unwrap()
            .replace("\"seed\": 42", "\"seed\": 43");
        fs::write(&trainer, text).unwrap();
        let err = Loaded::open(&ckpt).err().unwrap().to_string();
        assert!(
            err.contains("trainer.json") && err.contains("manifest says"),
            "{err}"
        );

        fs::remove_file(ckpt.join(MANIFEST_FILE)).unwrap();
        let err = Loaded::open(&ckpt).err().unwrap().to_string();
        assert!(err.contains("no manifest"), "{err}");
    }

    #[test]
    fn a_model_of_another_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, opt) = store(1.0);
        let ckpt = step_dir(dir.path(), 1);
        save(&ckpt, &vs, &opt, &state(1)).unwrap();
        let other = nn::VarStore::new(Device::Cpu);
        let _ = (other.root() / "proj").var("weight", &[4, 2], nn::Init::Const(0.0));
        let _ = (other.root() / "proj").var("bias", &[4], nn::Init::Const(0.0));
        let err = load_model(&other, &ckpt.join(MODEL_FILE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape mismatch proj.weight"), "{err}");
    }
}
