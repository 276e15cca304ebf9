//! `meridian config check FILE`: validates a node configuration exactly as `meridian serve` would
//! load it (defaults, then the file, then `MERIDIAN_*` environment; then [`Config::validate`]),
//! without opening storage or binding a port.
//!
//! Why it exists: configurations are now rendered elsewhere (Terraform's `modules/cluster`, cloud-init
//! templates); checking them where they are produced catches a typo or a refused value before a
//! node is started with it. The files a configuration names (certificates, keys) are checked to
//! exist only with `--files`, since a configuration is often checked on a machine other than the
//! node that will read them.

use anyhow::Context as _;
use meridian_server::config::Config;
use std::path::{Path, PathBuf};

/// `meridian config …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a node configuration the way `meridian serve` would, without starting the node:
    /// exit status 0 and a one-line summary, or 1 and the error naming the field.
    Check {
        /// The TOML file (`MERIDIAN_*` environment variables apply on top, as for `serve`).
        file: PathBuf,
        /// Also check that the certificate and key files it names exist and are readable.
        #[arg(long)]
        files: bool,
    },
}

/// Runs a `meridian config` command; returns the process exit status.
pub fn run(command: ConfigCommand) -> anyhow::Result<i32> {
    match command {
        ConfigCommand::Check { file, files } => Ok(match check(&file, files) {
            Ok(summary) => {
                println!("{}: ok: {summary}", file.display());
                0
            }
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                1
            }
        }),
    }
}

/// Loads and validates `file`; returns a one-line summary of the node it describes.
pub fn check(file: &Path, files: bool) -> anyhow::Result<String> {
    let config = Config::load(Some(file))?;
    if files {
        for (field, path) in named_files(&config) {
            std::fs::File::open(path).with_context(|| format!("`{field}` = {}", path.display()))?;
        }
    }
    Ok(summary(&config))
}

/// Every file a configuration names, with its field.
fn named_files(config: &Config) -> Vec<(&'static str, &Path)> {
    [
        ("tls.cert", config.tls.cert.as_deref()),
        ("tls.key", config.tls.key.as_deref()),
        ("peer.ca", config.peer.ca.as_deref()),
        ("peer.cert", config.peer.cert.as_deref()),
        ("peer.key", config.peer.key.as_deref()),
        ("peer.revoked", config.peer.revoked.as_deref()),
        ("auth.client_ca", config.auth.client_ca.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, path)| path.map(|p| (field, p)))
    .collect()
}

fn summary(config: &Config) -> String {
    let peer = match config.peer.listen {
        Some(listen) => format!("peer {listen} ({} seeds, rf {})", config.peer.seeds.len(), config.peer.rf),
        None => "no peers".into(),
    };
    format!(
        "node {} of cluster {} in {}/{}; client {}, HTTP {}; {peer}; auth {}; durability {}",
        config.node_name,
        config.cluster_id,
        config.region,
        config.zone,
        config.listen.client,
        config.listen.http,
        if config.auth.enabled { "on" } else { "off" },
        config.storage.durability
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn a_valid_file_is_summarised() {
        let f = file("node_name = \"eu-1\"\nregion = \"eu-west\"\nzone = \"eu-west-a\"\n");
        let summary = check(f.path(), false).unwrap();
        assert!(summary.starts_with("node eu-1 of cluster local in eu-west/eu-west-a"), "{summary}");
        assert!(summary.contains("no peers") && summary.contains("auth off"), "{summary}");
    }

    #[test]
    fn errors_name_the_field() {
        let typo = file("[storage]\ndurabilty = \"fsync\"\n");
        let err = format!("{:#}", check(typo.path(), false).unwrap_err());
        assert!(err.contains("durabilty"), "{err}");
        let refused = file("[listen]\nclient = \"0.0.0.0:7400\"\nhttp = \"127.0.0.1:7480\"\n");
        let err = format!("{:#}", check(refused.path(), false).unwrap_err());
        assert!(err.contains("auth.enabled"), "{err}");
        let missing = format!("{:#}", check(Path::new("/nonexistent/meridian.toml"), false).unwrap_err());
        assert!(missing.contains("does not exist"), "{missing}");
    }

    #[test]
    fn files_are_checked_only_when_asked() {
        let f = file("[tls]\ncert = \"/nonexistent/n1.crt\"\nkey = \"/nonexistent/n1.key\"\n");
        check(f.path(), false).unwrap();
        let err = format!("{:#}", check(f.path(), true).unwrap_err());
        assert!(err.contains("tls.cert") && err.contains("/nonexistent/n1.crt"), "{err}");
    }
}
