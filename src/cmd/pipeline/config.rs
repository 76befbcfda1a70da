//! The pipeline config file: where the training data comes from (`[source]`), the set the new
//! and the current checkpoint are compared on (`[eval]`), and one typed section per stage. The
//! stage sections are the very structs the commands' flags fill (`IngestOptions` for `albef
//! ingest`, `TrainOptions` for `albef train`, `FilterOptions` for `albef filter`), with the same
//! names (`_` for `-`) and defaults, so the two cannot drift. Unknown keys are errors that name
//! the key and the file; relative paths are read from the file's folder.
use super::super::corpus::CorpusOptions;
use super::super::filter::FilterOptions;
use super::super::ingest::IngestOptions;
use super::super::train::TrainOptions;
use anyhow::{bail, Context as _, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A pipeline config, checked and with its paths resolved.
#[derive(Clone, Debug, Serialize)]
pub(super) struct PipelineConfig {
    /// Names the pipeline's folder, its datasets (NAME, NAME-eval) and its experiment
    /// (pipeline-NAME).
    pub name: String,
    pub source: Source,
    /// None only with the synthetic corpus, whose held-out split is then the evaluation set.
    pub eval: Option<EvalSource>,
    pub ingest: IngestOptions,
    pub train: TrainSection,
    pub filter: FilterSection,
    pub promote: PromoteSection,
}

/// Where the training data comes from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Source {
    /// A URL list as `albef ingest --input` takes it: each run ingests the next version of
    /// dataset NAME, deduplicated against the earlier ones, so only new rows are fetched.
    Urls(String),
    /// A registered dataset version: NAME@V, or NAME for the newest finished one.
    Dataset(String),
    /// The synthetic web corpus, generated, served on 127.0.0.1 and ingested (the demo).
    Corpus(CorpusOptions),
}

/// The evaluation set.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum EvalSource {
    /// A URL list, ingested once into NAME-eval and reused by later runs.
    Urls(String),
    Dataset(String),
}

/// What the `train-filtered` stage trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum TrainData {
    /// This run's filtered version: the pairs that are new since the last run.
    #[default]
    New,
    /// This run's filtered version together with the filtered versions of the pipeline's
    /// earlier finished runs.
    Union,
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct TrainSection {
    /// Model and recipe config.
    pub config: PathBuf,
    pub data: TrainData,
    /// Tables merged over that config (e.g. `overrides = { train = { lr = 3e-4 } }`).
    pub overrides: toml::Table,
    pub opts: TrainOptions,
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct FilterSection {
    /// The checkpoint that scores the pairs [default: the holder of `[promote]`'s alias].
    pub checkpoint: Option<String>,
    pub opts: FilterOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PromoteSection {
    pub model: String,
    pub alias: String,
    /// The gate: text->image R@1 (percent) on the evaluation set at least this, and at least
    /// the current holder's on the same set, both measured in the run.
    pub min_r1_t2i: f64,
}

impl PromoteSection {
    /// MODEL@ALIAS
    pub fn spec(&self) -> String {
        format!("{}@{}", self.model, self.alias)
    }
}

/// `[source]` and `[eval]` as written: one key of the allowed ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceKeys {
    urls: Option<String>,
    dataset: Option<String>,
    corpus: Option<CorpusOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalKeys {
    urls: Option<String>,
    dataset: Option<String>,
}

const SECTIONS: [&str; 7] = [
    "name", "source", "eval", "ingest", "train", "filter", "promote",
];

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the pipeline config {}", path.display()))?;
        let mut doc: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid TOML file", path.display()))?;
        let file = path.display().to_string();
        if let Some(key) = doc.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            bail!("{file}: unknown key `{key}`; a pipeline config has {SECTIONS:?}");
        }
        let dir = folder_of(path)?;
        let name: String = required(&mut doc, &file, "name")?;
        check_name(&file, &name)?;
        let source = source(&file, &dir, required(&mut doc, &file, "source")?)?;
        let eval = match doc.remove("eval") {
            Some(v) => Some(eval_source(&file, &dir, section(&file, "eval", v)?)?),
            None if matches!(source, Source::Corpus(_)) => None,
            None => bail!(
                "{file}: [eval] is missing: give `urls = LIST` or `dataset = NAME@V`, the set on \
                 which the new checkpoint and the current holder are compared"
            ),
        };
        let ingest = match doc.remove("ingest") {
            Some(v) => section(&file, "ingest", v)?,
            None => IngestOptions::default(),
        };
        let mut train: toml::Table = required(&mut doc, &file, "train")?;
        let config: PathBuf = taken(&mut train, &file, "train", "config")?
            .with_context(|| format!("{file}: [train] needs `config`, the model config file"))?;
        let train = TrainSection {
            config: resolve(&dir, &config),
            data: taken(&mut train, &file, "train", "data")?.unwrap_or_default(),
            overrides: taken(&mut train, &file, "train", "overrides")?.unwrap_or_default(),
            opts: section(&file, "train", toml::Value::Table(train))?,
        };
        let mut filter: toml::Table = required(&mut doc, &file, "filter")?;
        let filter = FilterSection {
            checkpoint: taken(&mut filter, &file, "filter", "checkpoint")?,
            opts: section(&file, "filter", toml::Value::Table(filter))?,
        };
        let promote = required(&mut doc, &file, "promote")?;
        Ok(PipelineConfig {
            name,
            source,
            eval,
            ingest,
            train,
            filter,
            promote,
        })
    }
}

/// The absolute folder of `path`, against which its relative paths are read (so that the same
/// file named from anywhere is the same config to a rerun).
fn folder_of(path: &Path) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.canonicalize()
        .with_context(|| format!("cannot resolve the folder of {}", path.display()))
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// A URL list's location, relative ones read from `dir` (URLs and absolute paths as given).
fn resolve_list(dir: &Path, list: String) -> String {
    if list.contains("://") || Path::new(&list).is_absolute() {
        list
    } else {
        dir.join(list).display().to_string()
    }
}

fn check_name(file: &str, name: &str) -> Result<()> {
    let bad = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if name.is_empty() || name.contains(bad) {
        bail!("{file}: name {name:?} must be letters, digits, '-' or '_'");
    }
    Ok(())
}

fn section<T: DeserializeOwned>(file: &str, name: &str, value: toml::Value) -> Result<T> {
    value
        .try_into()
        .with_context(|| format!("{file}: [{name}]"))
}

fn required<T: DeserializeOwned>(doc: &mut toml::Table, file: &str, key: &str) -> Result<T> {
    let value = doc
        .remove(key)
        .with_context(|| format!("{file}: `{key}` is missing"))?;
    section(file, key, value)
}

/// Takes `key` out of a stage's table: the pipeline's own keys beside the command's options.
fn taken<T: DeserializeOwned>(
    table: &mut toml::Table,
    file: &str,
    name: &str,
    key: &str,
) -> Result<Option<T>> {
    match table.remove(key) {
        Some(v) => Ok(Some(section(file, &format!("{name}] `{key}`"), v)?)),
        None => Ok(None),
    }
}

fn source(file: &str, dir: &Path, keys: SourceKeys) -> Result<Source> {
    Ok(match (keys.urls, keys.dataset, keys.corpus) {
        (Some(urls), None, None) => Source::Urls(resolve_list(dir, urls)),
        (None, Some(dataset), None) => Source::Dataset(dataset),
        (None, None, Some(corpus)) => Source::Corpus(corpus),
        _ => bail!(
            "{file}: [source] needs exactly one of `urls = LIST` (a URL list as `albef ingest \
             --input` takes it), `dataset = NAME@V` or a `[source.corpus]` table"
        ),
    })
}

fn eval_source(file: &str, dir: &Path, keys: EvalKeys) -> Result<EvalSource> {
    Ok(match (keys.urls, keys.dataset) {
        (Some(urls), None) => EvalSource::Urls(resolve_list(dir, urls)),
        (None, Some(dataset)) => EvalSource::Dataset(dataset),
        _ => bail!("{file}: [eval] needs exactly one of `urls = LIST` or `dataset = NAME@V`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PipelineConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        PipelineConfig::load(&path)
    }

    const SMALLEST: &str = r#"
name = "mydata"
[source]
urls = "train.tsv"
[eval]
urls = "/data/val.tsv"
[train]
config = "albef-tiny.toml"
steps = 300
[filter]
keep_fraction = 0.7
[promote]
model = "albef"
alias = "production"
min_r1_t2i = 0.0
"#;

    #[test]
    fn the_smallest_config_reads_with_the_commands_defaults() {
        let cfg = load(SMALLEST).unwrap();
        assert!(
            matches!(&cfg.source, Source::Urls(u) if u.ends_with("/train.tsv") && u.starts_with('/'))
        );
        assert!(matches!(&cfg.eval, Some(EvalSource::Urls(u)) if u == "/data/val.tsv"));
        assert!(cfg.train.config.is_absolute());
        assert_eq!(cfg.train.data, TrainData::New);
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["train"]["opts"]["steps"], 300);
        // What `albef train` and `albef ingest` give without flags.
        assert_eq!(json["train"]["opts"]["k_test"], 16);
        assert_eq!(json["ingest"]["shard_size"], 10_000);
        assert_eq!(json["filter"]["opts"]["keep_fraction"], 0.7);
        assert_eq!(json["filter"]["opts"]["batch_size"], 64);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let err = format!(
            "{:#}",
            load(&SMALLEST.replace("steps = 300", "stepz = 300")).unwrap_err()
        );
        assert!(err.contains("p.toml") && err.contains("stepz"), "{err}");
        let err = format!(
            "{:#}",
            load(&SMALLEST.replace("keep_fraction", "keep_frac")).unwrap_err()
        );
        assert!(
            err.contains("[filter]") && err.contains("keep_frac"),
            "{err}"
        );
        let err = format!("{:#}", load(&format!("{SMALLEST}\n[extra]\n")).unwrap_err());
        assert!(err.contains("`extra`"), "{err}");
    }

    #[test]
    fn a_source_is_one_of_urls_dataset_or_corpus() {
        let both = SMALLEST.replace("urls = \"train.tsv\"", "urls = \"a\"\ndataset = \"b@1\"");
        assert!(format!("{:#}", load(&both).unwrap_err()).contains("exactly one"));
        let no_eval = SMALLEST.replace("[eval]\nurls = \"/data/val.tsv\"\n", "");
        assert!(format!("{:#}", load(&no_eval).unwrap_err()).contains("[eval] is missing"));
    }

    #[test]
    fn the_url_list_example_reads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = PipelineConfig::load(&root.join("configs/pipeline-urls.toml")).unwrap();
        assert!(matches!(&cfg.source, Source::Urls(u) if u == "/data/cc3m/train.tsv"));
        assert_eq!(cfg.train.opts.init.as_deref(), Some("albef@production"));
        assert_eq!(cfg.train.data, TrainData::Union);
        assert!(cfg.train.config.ends_with("configs/albef-tiny.toml"));
    }

    #[test]
    fn the_demo_config_reads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = PipelineConfig::load(&root.join("configs/demo.toml")).unwrap();
        assert!(matches!(cfg.source, Source::Corpus(_)));
        assert!(cfg.eval.is_none());
        let relative = PipelineConfig::load(Path::new("configs/demo.toml")).unwrap();
        assert_eq!(
            serde_json::to_value(&cfg).unwrap(),
            serde_json::to_value(&relative).unwrap()
        );
    }
}
