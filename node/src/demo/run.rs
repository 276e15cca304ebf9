//! `meridian demo` (without `init`): start the links and the nodes, exercise them, report.

use std::path::PathBuf;

use super::{DemoOptions, DEFAULT_DIR};

/// `meridian demo [--dir DIR] [init options] [--workload-secs N] [--exit]`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The cluster's directory (written by `demo init` first when it holds no cluster.json).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub options: DemoOptions,
    /// How long the mixed workload runs.
    #[arg(long, default_value_t = 10)]
    pub workload_secs: u64,
    /// Stop the cluster after the report instead of keeping it up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

pub(super) async fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`meridian demo` without `init` is not implemented yet")
}
