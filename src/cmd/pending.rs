//! Commands that are planned but not built yet. They say so and exit with status 2 rather than
//! pretending to work.
use clap::Args;

/// Arguments of a command that is not built yet (all accepted, none used).
#[derive(Args)]
pub struct Pending {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("`albef {command}` is not built yet (tracked in issue {issue})")]
pub struct NotBuilt {
    command: &'static str,
    issue: u32,
}

pub fn not_built(command: &'static str, issue: u32) -> anyhow::Result<()> {
    Err(NotBuilt { command, issue }.into())
}
