//! `meridian certs …`: the command that creates a cluster CA and issues node and client
//! certificates. The certificate formats and identities are the server's
//! ([`meridian_server::certs`]); this module only parses the command line and prints what it wrote.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_server::certs::revocation::fingerprint;
use meridian_server::certs::{
    certs_from_pem, generate_ca_valid_for, issue_client_cert_valid_for, issue_node_cert_valid_for, parse_cert_identity,
    summarize, write_pair, CaBundle, CertError, ClientIdentity, NodeIdentity, CA_CERT_FILE, DEFAULT_HOSTS,
};

/// `meridian certs …`: create the cluster CA and issue node and client certificates.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA: OUT/ca.crt and OUT/ca.key (0600). Keep ca.key offline.
    Ca {
        /// The cluster id (1-64 of [A-Za-z0-9-_.]); nodes must be configured with the same `cluster_id`.
        #[arg(long)]
        cluster_id: String,
        /// Directory to write to (created, 0700, if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a node certificate: OUT/NAME.crt and OUT/NAME.key (0600), signed by the CA in --ca.
    Node {
        /// Directory holding ca.crt and ca.key (`meridian certs ca --out`).
        #[arg(long)]
        ca: PathBuf,
        /// The node's name (its `node_name`).
        #[arg(long)]
        name: String,
        /// The node's region, bound into the certificate.
        #[arg(long)]
        region: String,
        /// The node's zone, bound into the certificate.
        #[arg(long)]
        zone: String,
        /// A DNS name or IP address peers dial the node at (repeatable or comma-separated).
        #[arg(long = "host", value_delimiter = ',', default_values = DEFAULT_HOSTS)]
        hosts: Vec<String>,
        /// Directory to write to (created, 0700, if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a client certificate (for SDK mutual TLS): OUT/NAME.crt and OUT/NAME.key (0600).
    Client {
        /// Directory holding ca.crt and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The client's name.
        #[arg(long)]
        name: String,
        /// Directory to write to (created, 0700, if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Print the identity and host names of every certificate in a PEM file.
    Show {
        /// A PEM file.
        file: PathBuf,
    },
    /// Print the SHA-256 fingerprint of every certificate in a PEM file, one line each
    /// (`FINGERPRINT  IDENTITY`): the line to put in a revocation list (`peer.revoked`).
    Fingerprint {
        /// A PEM file.
        file: PathBuf,
    },
}

/// Refuses to write `<name>.crt`/`<name>.key` over the CA's own files.
fn guard_ca_files(ca: &Path, out: &Path, name: &str) -> Result<(), CertError> {
    let same_dir = match (std::fs::canonicalize(ca), std::fs::canonicalize(out)) {
        (Ok(ca), Ok(out)) => ca == out,
        _ => false,
    };
    if same_dir && format!("{name}.crt") == CA_CERT_FILE {
        return Err(CertError::Exists(out.join(CA_CERT_FILE)));
    }
    Ok(())
}

fn days(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

/// Runs a `meridian certs` command, printing what it wrote.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca { cluster_id, out, force, days: d } => {
            let ca = generate_ca_valid_for(&cluster_id, days(d))?;
            let (cert, key) = ca.write(&out, force)?;
            println!(
                "cluster CA for {cluster_id:?}: {} (distribute to every node), {} (keep offline)",
                cert.display(),
                key.display()
            );
        }
        CertsCommand::Node { ca, name, region, zone, hosts, out, force, days: d } => {
            guard_ca_files(&ca, &out, &name)?;
            let bundle = CaBundle::load(&ca)?;
            let node = NodeIdentity { cluster_id: bundle.cluster_id()?, region, zone, name };
            let (cert_pem, key_pem) = issue_node_cert_valid_for(&bundle, &node, &hosts, days(d))?;
            let (cert, key) = write_pair(
                &out,
                &format!("{}.crt", node.name),
                &cert_pem,
                &format!("{}.key", node.name),
                &key_pem,
                force,
            )?;
            println!(
                "{}: {} and {} (hosts {}); trust {}",
                node.uri(),
                cert.display(),
                key.display(),
                hosts.join(","),
                ca.join(CA_CERT_FILE).display()
            );
        }
        CertsCommand::Client { ca, name, out, force, days: d } => {
            guard_ca_files(&ca, &out, &name)?;
            let bundle = CaBundle::load(&ca)?;
            let client = ClientIdentity { cluster_id: bundle.cluster_id()?, name };
            let (cert_pem, key_pem) = issue_client_cert_valid_for(&bundle, &client, days(d))?;
            let (cert, key) = write_pair(
                &out,
                &format!("{}.crt", client.name),
                &cert_pem,
                &format!("{}.key", client.name),
                &key_pem,
                force,
            )?;
            println!("{}: {} and {}", client.uri(), cert.display(), key.display());
        }
        CertsCommand::Fingerprint { file } => {
            let pem = std::fs::read(&file).map_err(|source| CertError::Io { path: file.clone(), source })?;
            for cert in certs_from_pem(&pem, &file.display().to_string())? {
                let identity = parse_cert_identity(&cert).map_or_else(|_| "-".to_string(), |id| id.uri());
                println!("{}  # {identity}", fingerprint(&cert));
            }
        }
        CertsCommand::Show { file } => {
            let pem = std::fs::read(&file).map_err(|source| CertError::Io { path: file.clone(), source })?;
            for cert in certs_from_pem(&pem, &file.display().to_string())? {
                let summary = summarize(&cert)?;
                match &summary.identity {
                    Ok(identity) => println!("identity {}\n         {identity}", identity.uri()),
                    Err(e) => println!("identity none: {e}"),
                }
                let hosts: Vec<String> =
                    summary.dns_names.iter().cloned().chain(summary.ips.iter().map(IpAddr::to_string)).collect();
                if !hosts.is_empty() {
                    println!("hosts    {}", hosts.join(", "));
                }
                if let Some(not_after) = summary.not_after {
                    println!("expires  {}", describe_expiry(not_after, unix_now()));
                }
            }
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `2027-12-06 03:00:00 UTC (in 364 days)`, or `… (EXPIRED 3 days ago)`.
fn describe_expiry(not_after: i64, now: i64) -> String {
    let (days, seconds) = (not_after.div_euclid(86_400), not_after.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let left = (not_after - now) / 86_400;
    let when = if not_after >= now { format!("in {left} days") } else { format!("EXPIRED {} days ago", -left) };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC ({when})",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiry_dates_read_as_calendar_dates() {
        assert_eq!(super::describe_expiry(0, 0), "1970-01-01 00:00:00 UTC (in 0 days)");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(
            super::describe_expiry(951_827_696, 951_827_696 - 10 * 86_400),
            "2000-02-29 12:34:56 UTC (in 10 days)"
        );
        assert_eq!(
            super::describe_expiry(1_796_526_000, 1_796_526_000 + 3 * 86_400),
            "2026-12-06 03:00:00 UTC (EXPIRED 3 days ago)"
        );
    }
}
