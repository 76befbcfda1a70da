//! Which rank this process is, read from the launcher's environment: torchrun (and so Kubeflow's
//! PyTorchJob, which sets the same variables) or Slurm. No launcher variables: no world, and the
//! caller trains alone as before.
use anyhow::{anyhow, bail, Context, Result};

/// What started this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (torchrun, PyTorchJob).
    Torchrun,
    /// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`/`MASTER_PORT` set by
    /// the job script.
    Slurm,
}

/// This process's place among the ranks, and where they meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub world_size: usize,
    /// The rank on this machine: it picks the GPU.
    pub local_rank: usize,
    /// Host and port of the TCPStore where the ranks meet.
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the store (`TORCHELASTIC_USE_AGENT_STORE=True`): every
    /// rank, rank 0 included, connects to it as a client.
    pub agent_store: bool,
    /// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`): 0 for the first attempt.
    pub restart_count: usize,
    pub launcher: Launcher,
}

impl World {
    /// The world from this process's environment; `None` when no launcher set it.
    pub fn from_env() -> Result<Option<World>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The world from the variables `var` returns (`from_env` with the environment abstracted).
    /// torchrun's variables win over Slurm's: torchrun run inside a Slurm job sets its own.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        if var("RANK").is_some() {
            Self::torchrun(&var).map(Some)
        } else if var("SLURM_PROCID").is_some() {
            Self::slurm(&var)
        } else {
            Ok(None)
        }
    }

    /// Whether this process serves the TCPStore: rank 0, unless torchrun's agent does.
    pub fn serves_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// The namespace of this attempt's keys in the store. torchrun's agent keeps its store across
    /// restarts, so every attempt uses its own (as `torch.distributed` does); without it the
    /// ranks of a restart would read the dead ranks' Gloo addresses.
    pub fn store_prefix(&self) -> String {
        if self.agent_store {
            format!("/worker/attempt_{}", self.restart_count)
        } else {
            String::new()
        }
    }

    fn torchrun(var: Vars) -> Result<World> {
        let world = World {
            rank: index(var, "RANK")?,
            world_size: size(var, "WORLD_SIZE")?,
            // PyTorchJob without torchrun runs one process per pod and sets no LOCAL_RANK.
            local_rank: optional(var, "LOCAL_RANK", index)?.unwrap_or(0),
            master_addr: address(var)?,
            master_port: port(var)?,
            agent_store: optional(var, "TORCHELASTIC_USE_AGENT_STORE", flag)?.unwrap_or(false),
            restart_count: optional(var, "TORCHELASTIC_RESTART_COUNT", index)?.unwrap_or(0),
            launcher: Launcher::Torchrun,
        };
        world.check_rank("RANK", "WORLD_SIZE")
    }

    /// A single Slurm task without `MASTER_ADDR` is a plain job, not a world of one.
    fn slurm(var: Vars) -> Result<Option<World>> {
        let world_size = size(var, "SLURM_NTASKS")?;
        if world_size == 1 && var("MASTER_ADDR").is_none() {
            return Ok(None);
        }
        let world = World {
            rank: index(var, "SLURM_PROCID")?,
            world_size,
            local_rank: index(var, "SLURM_LOCALID")?,
            master_addr: address(var).map_err(|e| {
                anyhow!("{e}: Slurm started {world_size} tasks; export MASTER_ADDR (the first node's address) and MASTER_PORT in the job script")
            })?,
            master_port: port(var)?,
            agent_store: false,
            restart_count: 0,
            launcher: Launcher::Slurm,
        };
        world.check_rank("SLURM_PROCID", "SLURM_NTASKS").map(Some)
    }

    fn check_rank(self, rank_var: &str, size_var: &str) -> Result<World> {
        if self.rank >= self.world_size {
            bail!(
                "{rank_var}={} is not below {size_var}={}",
                self.rank,
                self.world_size
            );
        }
        Ok(self)
    }
}

/// The environment, abstracted so that tests need not change the process's own.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

fn required(var: Vars, name: &str) -> Result<String> {
    var(name).with_context(|| format!("{name} is not set"))
}

fn optional<T>(var: Vars, name: &str, parse: fn(Vars, &str) -> Result<T>) -> Result<Option<T>> {
    match var(name) {
        None => Ok(None),
        Some(_) => parse(var, name).map(Some),
    }
}

fn index(var: Vars, name: &str) -> Result<usize> {
    let value = required(var, name)?;
    value
        .trim()
        .parse()
        .map_err(|_| anyhow!("{name}={value:?} is not a non-negative integer"))
}

fn size(var: Vars, name: &str) -> Result<usize> {
    match index(var, name)? {
        0 => bail!("{name}=0: a world has at least one rank"),
        n => Ok(n),
    }
}

fn flag(var: Vars, name: &str) -> Result<bool> {
    let value = required(var, name)?;
    match value.trim() {
        "True" | "true" | "1" => Ok(true),
        "False" | "false" | "0" => Ok(false),
        _ => bail!("{name}={value:?} is not True or False"),
    }
}

fn address(var: Vars) -> Result<String> {
    let value = required(var, "MASTER_ADDR")?;
    match value.trim() {
        "" => bail!("MASTER_ADDR is empty"),
        host => Ok(host.to_owned()),
    }
}

fn port(var: Vars) -> Result<u16> {
    let value = required(var, "MASTER_PORT")?;
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => bail!("MASTER_PORT={value:?} is not a port (1-65535)"),
    }
}
