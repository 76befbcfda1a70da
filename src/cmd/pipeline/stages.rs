//! What each pipeline stage does, through the same typed entry points as the commands:
//! `generate_corpus` (`albef corpus generate`), `ingest_dataset` (`albef ingest`),
//! `TrainArgs::execute` (`albef train`), `albef_filter::run` (`albef filter`), `evaluate`
//! (`albef eval`) and `Registry::judge_promotion`. Also how a rerun knows that a stage's
//! recorded outputs still exist.
use super::config::{EvalSource, Source};
use super::state::*;
use super::Pipeline;
use crate::cmd::corpus::generate_corpus;
use crate::cmd::filter::FilterArgs;
use crate::cmd::ingest::{check_complete, ingest_dataset, IngestArgs};
use crate::cmd::train::{evaluate, DistArgs, EvalOn, TrainArgs};
use crate::output::Format;
use albef_dataset::{store, write_atomic, Stats, Status};
use albef_registry::models::JudgedPromotion;
use albef_registry::{DatasetStatus, RunStatus};
use albef_train::config::Config;
use albef_train::trainer::tracking::latest_checkpoint;
use albef_train::trainer::Trained;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Seconds the ingest stage waits for another ingest of the same dataset to finish.
const INGEST_LOCK_WAIT_S: u64 = 120;

impl Pipeline<'_> {
    /// The recorded elapsed seconds of `stage` if its outputs are recorded and still exist.
    pub(super) async fn recorded(&self, stage: Stage) -> Result<Option<f64>> {
        let s = &self.state;
        Ok(match stage {
            Stage::Corpus => s
                .corpus
                .as_ref()
                .filter(|c| c.dir.join(albef_corpus::generate::PAIRS_FILE).is_file())
                .map(|c| c.elapsed_s),
            Stage::Ingest => match &s.ingest {
                Some(d)
                    if self.finished(&d.train.spec).await && self.finished(&d.eval.spec).await =>
                {
                    Some(d.elapsed_s)
                }
                _ => None,
            },
            Stage::TrainRaw => self.trained(s.train_raw.as_ref()).await,
            Stage::Filter => match &s.filter {
                Some(f) if self.finished(&f.dataset).await => Some(f.elapsed_s),
                _ => None,
            },
            Stage::TrainFiltered => self.trained(s.train_filtered.as_ref()).await,
            Stage::Eval => s.eval.as_ref().map(|e| e.elapsed_s),
            Stage::Promote => s.promote.as_ref().map(|p| p.elapsed_s),
        })
    }

    /// Whether dataset version `spec` is registered, finished and its folder still there (one in
    /// an object store is taken as there).
    pub(super) async fn finished(&self, spec: &str) -> bool {
        match self.reg.dataset_version(spec).await {
            Ok(v) => {
                v.status == DatasetStatus::Finished
                    && (store::is_remote(&v.uri) || Path::new(&v.uri).is_dir())
            }
            Err(_) => false,
        }
    }

    async fn trained(&self, t: Option<&TrainDone>) -> Option<f64> {
        let t = t?;
        let registered = self.reg.checkpoint(t.checkpoint).await.is_ok();
        (registered && t.checkpoint_path.is_file()).then_some(t.elapsed_s)
    }

    pub(super) async fn run_stage(&mut self, stage: Stage, started: Instant) -> Result<()> {
        let elapsed = || started.elapsed().as_secs_f64();
        match stage {
            Stage::Corpus => {
                let done = self.corpus().await?;
                self.state.corpus = Some(CorpusDone {
                    elapsed_s: elapsed(),
                    ..done
                });
            }
            Stage::Ingest => {
                let (train, eval, ingested) = self.ingest().await?;
                self.state.ingest = Some(IngestDone {
                    train,
                    eval,
                    ingested,
                    elapsed_s: elapsed(),
                });
            }
            Stage::TrainRaw | Stage::TrainFiltered => {
                let dataset = match stage {
                    Stage::TrainRaw => self.need(&self.state.ingest, "ingest")?.train.spec.clone(),
                    _ => self.train_data().await?,
                };
                let mut done = self.train(stage, &dataset).await?;
                done.elapsed_s = elapsed();
                match stage {
                    Stage::TrainRaw => self.state.train_raw = Some(done),
                    _ => self.state.train_filtered = Some(done),
                }
            }
            Stage::Filter => {
                let mut done = self.filter().await?;
                done.elapsed_s = elapsed();
                self.state.filter = Some(done);
            }
            Stage::Eval => {
                let mut done = self.eval().await?;
                done.elapsed_s = elapsed();
                self.state.eval = Some(done);
            }
            Stage::Promote => {
                let mut done = self.promote().await?;
                done.elapsed_s = elapsed();
                self.state.promote = Some(done);
            }
        }
        Ok(())
    }

    async fn corpus(&self) -> Result<CorpusDone> {
        let Source::Corpus(opts) = &self.cfg.source else {
            bail!("the source is not the synthetic corpus");
        };
        let dir = self.work.join("corpus");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the old corpus {}", dir.display()))?;
        }
        let s = generate_corpus(&dir, opts).await?;
        Ok(CorpusDone {
            dir,
            train_rows: s.train_rows,
            heldout_rows: s.heldout_rows,
            exact_duplicates: s.exact_duplicates,
            near_duplicates: s.near_duplicates,
            noisy_rows: s.noisy_rows,
            elapsed_s: 0.0,
        })
    }

    /// The training version, the evaluation set, and whether the training version was
    /// ingested by this run.
    async fn ingest(&self) -> Result<(DatasetDone, DatasetDone, bool)> {
        let name = &self.cfg.name;
        match &self.cfg.source {
            Source::Corpus(_) => self.ingest_corpus().await,
            Source::Urls(list) => {
                let out = self.work.join("data").join(name);
                let train = self.ingest_into(list, name, &out).await?;
                Ok((train, self.eval_set().await?, true))
            }
            Source::Dataset(spec) => {
                Ok((self.registered(spec).await?, self.eval_set().await?, false))
            }
        }
    }

    /// The demo's ingest: the corpus served on 127.0.0.1, its training list into a fresh
    /// dataset, its held-out list into another unless `[eval]` names the evaluation set.
    async fn ingest_corpus(&self) -> Result<(DatasetDone, DatasetDone, bool)> {
        let corpus = self.need(&self.state.corpus, "corpus")?;
        let server = albef_corpus::serve(&corpus.dir, "127.0.0.1:0".parse()?).await?;
        tracing::info!("serving {} on {}", corpus.dir.display(), server.base_url());
        let result = async {
            let list = corpus.dir.join(albef_corpus::generate::TRAIN_URLS);
            let train = self.ingest_fresh(&list, &self.cfg.name).await?;
            let eval = match &self.cfg.eval {
                Some(_) => self.eval_set().await?,
                None => {
                    let list = corpus.dir.join(albef_corpus::generate::HELDOUT_URLS);
                    self.ingest_fresh(&list, &format!("{}-heldout", self.cfg.name))
                        .await?
                }
            };
            Ok::<_, anyhow::Error>((train, eval, true))
        }
        .await;
        server.shutdown().await?;
        result
    }

    /// The evaluation set of `[eval]`: a registered version, or a URL list ingested into
    /// NAME-eval by the first run that needs it and reused by the later ones.
    async fn eval_set(&self) -> Result<DatasetDone> {
        match &self.cfg.eval {
            Some(EvalSource::Dataset(spec)) => self.registered(spec).await,
            Some(EvalSource::Urls(list)) => {
                let name = format!("{}-eval", self.cfg.name);
                if self.finished(&name).await {
                    tracing::info!("evaluation set: the newest version of {name}, ingested before");
                    return self.registered(&name).await;
                }
                let out = self.root.join("eval").join(&name);
                self.ingest_into(list, &name, &out).await
            }
            None => bail!("no [eval] section"),
        }
    }

    /// A registered, finished dataset version.
    async fn registered(&self, spec: &str) -> Result<DatasetDone> {
        let v = self.reg.dataset_version(spec).await?;
        if v.status != DatasetStatus::Finished {
            bail!(
                "dataset version {}@{} is {:?}, not finished",
                v.dataset,
                v.version,
                v.status
            );
        }
        Ok(dataset_done(v))
    }

    /// Ingests `list` as the first version of a fresh dataset: `base`, or `base-2`, `base-3`,
    /// ... when earlier runs already finished versions of it (the corpus is drawn anew by each
    /// run, and a new version of a dataset is deduplicated against the previous one).
    async fn ingest_fresh(&self, list: &Path, base: &str) -> Result<DatasetDone> {
        let versions = self.reg.dataset_versions(None).await?;
        let name = (1..)
            .map(|k| match k {
                1 => base.to_string(),
                k => format!("{base}-{k}"),
            })
            .find(|name| {
                !versions
                    .iter()
                    .any(|v| &v.dataset == name && v.status == DatasetStatus::Finished)
            })
            .expect("an unused name exists");
        let out = self.work.join("data").join(&name);
        self.ingest_into(&list.display().to_string(), &name, &out)
            .await
    }

    /// Ingests `list` into the next version of dataset `name` in folder `out`; a killed ingest
    /// continues the same version from its complete shards.
    async fn ingest_into(&self, list: &str, name: &str, out: &Path) -> Result<DatasetDone> {
        let args = IngestArgs::one_worker(
            list.to_string(),
            out.display().to_string(),
            name.to_string(),
            self.cfg.ingest.clone(),
            INGEST_LOCK_WAIT_S,
        );
        let outcome = ingest_dataset(&self.reg, &args, &self.ctx.home, self.stop.clone()).await?;
        check_complete(&outcome)?;
        if !outcome.finished {
            bail!(
                "dataset {name}@{} in {} is not finished after the ingest",
                outcome.version,
                outcome.uri
            );
        }
        let done = dataset_done(self.reg.dataset_version_by_id(outcome.version_id).await?);
        tracing::info!(
            dataset = %done.spec,
            input_rows = done.input_rows,
            success = done.success,
            duplicates = done.duplicates,
            "ingested"
        );
        Ok(done)
    }

    /// The model config of the train stages: the configured one with the overrides merged,
    /// written to the run folder.
    fn train_config(&self) -> Result<PathBuf> {
        let path = &self.cfg.train.config;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the train config {}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        merge(&mut table, &self.cfg.train.overrides);
        let merged = toml::to_string(&table)?;
        Config::parse(&merged).with_context(|| {
            format!(
                "{} with the pipeline's [train] overrides is not a valid model config",
                path.display()
            )
        })?;
        let out = self.work.join("train-config.toml");
        write_atomic(&out, merged.as_bytes())?;
        Ok(out)
    }

    /// Trains on `dataset`, or resumes the run this stage started before from its newest
    /// checkpoint.
    async fn train(&mut self, stage: Stage, dataset: &str) -> Result<TrainDone> {
        let eval = self.need(&self.state.ingest, "ingest")?.eval.spec.clone();
        let init = self.plan_ref()?.init_checkpoint;
        let resumable = match self.state.started_runs.get(stage.name()) {
            Some(&run) => latest_checkpoint(&self.reg, run)
                .await
                .ok()
                .map(|c| (run, c)),
            None => None,
        };
        let mut opts = self.cfg.train.opts.clone();
        let (config, data, resume) = match &resumable {
            Some((run, ckpt)) => {
                tracing::info!(
                    "resuming run {run} from checkpoint {} (step {})",
                    ckpt.id,
                    ckpt.step
                );
                // The checkpoint holds the weights, batch size and score weighting.
                opts.init = None;
                opts.batch_size = None;
                opts.score_weights = false;
                (None, None, Some(*run))
            }
            None => {
                opts.init = init.map(|id| id.to_string());
                (Some(self.train_config()?), Some(dataset.to_string()), None)
            }
        };
        let args = TrainArgs {
            config,
            dataset: data,
            eval_dataset: Some(eval),
            resume,
            resume_latest: None,
            experiment: Some(format!("pipeline-{}", self.cfg.name)),
            name: Some(format!(
                "{}-run{}-{}-{}",
                self.cfg.name,
                self.number,
                stage.name(),
                albef_registry::now_ms()
            )),
            opts,
            dist: DistArgs::default(),
            format: Format::Table,
        };
        let state = &mut self.state;
        let state_path = &self.state_path;
        let Trained {
            run,
            status,
            step,
            checkpoint,
            checkpoint_path,
            metrics,
        } = args
            .execute(&self.reg, &self.ctx.home, self.stop.clone(), None, |run| {
                state.started_runs.insert(stage.name().into(), run);
                state.save(state_path)
            })
            .await?;
        if status != RunStatus::Finished {
            bail!(
                "run {run} stopped at step {step} ({status}), checkpoint {checkpoint}; run the \
                 pipeline again to resume it"
            );
        }
        let metric = |key: &str| {
            metrics.get(key).copied().with_context(|| {
                format!("run {run} has no {key} on the evaluation set at its last step")
            })
        };
        Ok(TrainDone {
            run,
            dataset: dataset.to_string(),
            init,
            step,
            checkpoint,
            checkpoint_path,
            r1_t2i: metric("r1_t2i")?,
            r1_i2t: metric("r1_i2t")?,
            elapsed_s: 0.0,
        })
    }

    async fn filter(&self) -> Result<FilterDone> {
        self.check_stop()?;
        let checkpoint = match self.plan_ref()?.filter_checkpoint {
            Some(id) => id,
            None => self.need(&self.state.train_raw, "train-raw")?.checkpoint,
        };
        let source = &self.need(&self.state.ingest, "ingest")?.train;
        let name = source.spec.split('@').next().unwrap_or(&source.spec);
        let output = self
            .work
            .join("data")
            .join(format!("{name}-filtered-ckpt{checkpoint}"));
        let args = FilterArgs {
            checkpoint: checkpoint.to_string(),
            dataset: source.spec.clone(),
            output: Some(output.display().to_string()),
            opts: self.cfg.filter.opts.clone(),
            dry_run: false,
            format: Format::Table,
        };
        let summary = albef_filter::run(&self.reg, &args.job(&self.ctx.home)?).await?;
        let id = summary
            .version_id
            .context("the filter registered no version")?;
        let v = self.reg.dataset_version_by_id(id).await?;
        tracing::info!(
            dataset = %format!("{}@{}", v.dataset, v.version),
            scored = summary.scored,
            kept = summary.kept,
            "filtered"
        );
        Ok(FilterDone {
            dataset: format!("{}@{}", v.dataset, v.version),
            uri: v.uri,
            checkpoint,
            scored: summary.scored,
            kept: summary.kept,
            elapsed_s: 0.0,
        })
    }

    /// The candidates' figures are their runs' last evaluations on the evaluation set (the
    /// code of `albef eval`); the alias's holder is evaluated now, on the same set with the
    /// same settings, so the gate compares like with like.
    async fn eval(&self) -> Result<EvalDone> {
        self.check_stop()?;
        let dataset = self.need(&self.state.ingest, "ingest")?.eval.spec.clone();
        let measured = |t: &TrainDone, stage: Stage| Measured {
            checkpoint: t.checkpoint,
            from: stage.name().into(),
            r1_t2i: t.r1_t2i,
            r1_i2t: t.r1_i2t,
        };
        let mut candidates = vec![measured(
            self.need(&self.state.train_filtered, "train-filtered")?,
            Stage::TrainFiltered,
        )];
        if let Some(raw) = &self.state.train_raw {
            candidates.push(measured(raw, Stage::TrainRaw));
        }
        let p = &self.cfg.promote;
        let holder = match self.reg.alias_holder(&p.model, &p.alias).await? {
            Some(id) => {
                let ckpt = self.reg.checkpoint(id).await?;
                let o = &self.cfg.train.opts;
                tracing::info!(
                    "evaluating the holder of {}, checkpoint {id}, on {dataset}",
                    p.spec()
                );
                let on = EvalOn {
                    dataset: &dataset,
                    config: None,
                    device: o.device.as_deref(),
                    tokenizer: &o.tokenizer,
                    k_test: o.k_test,
                };
                let recall = evaluate(&self.reg, &ckpt, on, &self.ctx.home)
                    .await
                    .with_context(|| {
                        format!("evaluating checkpoint {id}, the holder of {}", p.spec())
                    })?;
                Some(Measured {
                    checkpoint: id,
                    from: "holder".into(),
                    r1_t2i: recall.r1_t2i,
                    r1_i2t: recall.r1_i2t,
                })
            }
            None => None,
        };
        Ok(EvalDone {
            dataset,
            candidates,
            holder,
            elapsed_s: 0.0,
        })
    }

    /// Puts the better candidate (ties go to the filtered version: the same recall from cleaner
    /// data) to the gate: at least `min_r1_t2i`, and at least the holder's figure from the eval
    /// stage. The verdict is recorded either way, with both figures and the datasets.
    async fn promote(&self) -> Result<PromoteDone> {
        self.check_stop()?;
        let eval = self.need(&self.state.eval, "eval")?;
        let best = eval
            .candidates
            .iter()
            .reduce(|a, b| if b.r1_t2i > a.r1_t2i { b } else { a })
            .context("the eval stage measured no candidate")?;
        let p = &self.cfg.promote;
        let gate = format!(
            "r1_t2i >= {} AND r1_t2i >= the holder's, both on {} in this run",
            p.min_r1_t2i, eval.dataset
        );
        let passed = best.r1_t2i >= p.min_r1_t2i
            && eval.holder.as_ref().is_none_or(|h| best.r1_t2i >= h.r1_t2i);
        let versus = match &eval.holder {
            Some(h) => format!(
                "holder checkpoint {} R@1 t2i {:.2} / i2t {:.2}",
                h.checkpoint, h.r1_t2i, h.r1_i2t
            ),
            None => "no holder".into(),
        };
        let gate_result = format!(
            "{}: checkpoint {} ({}) R@1 t2i {:.2} / i2t {:.2} vs {versus}, on {}; floor {}",
            if passed { "passed" } else { "refused" },
            best.checkpoint,
            best.from,
            best.r1_t2i,
            best.r1_i2t,
            eval.dataset,
            p.min_r1_t2i
        );
        let mut done = PromoteDone {
            model: p.model.clone(),
            alias: p.alias.clone(),
            checkpoint: best.checkpoint,
            chosen: best.from.clone(),
            gate: gate.clone(),
            gate_result: gate_result.clone(),
            outcome: "already held".into(),
            event: None,
            elapsed_s: 0.0,
        };
        if self.reg.alias_holder(&p.model, &p.alias).await? == Some(best.checkpoint) {
            tracing::info!("checkpoint {} already holds {}", best.checkpoint, p.spec());
            return Ok(done);
        }
        let event = self
            .reg
            .judge_promotion(&JudgedPromotion {
                checkpoint: best.checkpoint,
                model: p.model.clone(),
                alias: p.alias.clone(),
                compared_with: eval.holder.as_ref().map(|h| h.checkpoint),
                gate,
                gate_result,
                passed,
                reason: Some(self.reason(best)?),
                actor: format!("albef pipeline {} run {}", self.cfg.name, self.number),
            })
            .await?;
        tracing::info!("{}: {}", event.kind, done.gate_result);
        done.outcome = if passed { "promoted" } else { "refused" }.into();
        done.event = Some(event.id);
        Ok(done)
    }

    /// Where the candidate came from, for the promotion history.
    fn reason(&self, best: &Measured) -> Result<String> {
        let ingest = self.need(&self.state.ingest, "ingest")?;
        let filter = self.need(&self.state.filter, "filter")?;
        let trained = match best.from.as_str() {
            "train-raw" => self.need(&self.state.train_raw, "train-raw")?,
            _ => self.need(&self.state.train_filtered, "train-filtered")?,
        };
        let init = trained
            .init
            .map_or(String::new(), |c| format!(", starting from checkpoint {c}"));
        Ok(format!(
            "albef pipeline {} run {}: run {} trained {} steps on {}{init}; {} is {} filtered by \
             checkpoint {} (kept {} of {})",
            self.cfg.name,
            self.number,
            trained.run,
            trained.step,
            trained.dataset,
            filter.dataset,
            ingest.train.spec,
            filter.checkpoint,
            filter.kept,
            filter.scored
        ))
    }
}

/// A version's counts from its ingest statistics (zeros when it has none of albef's).
fn dataset_done(v: albef_registry::DatasetVersion) -> DatasetDone {
    let stats: Option<Stats> = v.stats.clone().and_then(|s| serde_json::from_value(s).ok());
    DatasetDone {
        spec: format!("{}@{}", v.dataset, v.version),
        uri: v.uri,
        input_rows: stats.as_ref().map_or(0, |s| s.rows),
        success: stats.as_ref().map_or(0, |s| s.status(Status::Success)),
        duplicates: stats.as_ref().map_or(0, |s| s.dedupe.values().sum()),
    }
}

/// Merges `over` into `base`, table by table.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}
