//! Writing a local cluster's files: its CA, and each node's certificate and configuration (shared
//! by `meridian region init` and `meridian demo init`), each file written atomically.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_server::certs::{self, NodeIdentity};
use meridian_server::config::{AuthConfig, Config, ListenConfig, PeerConfig, TlsConfig};
use meridian_wan::plan::{ADMIN_CERT_FILE, ADMIN_KEY_FILE, ADMIN_NAME};

use super::{quote, NodePlan, CONFIG_FILE, LOG_FILE};

/// Creates `DIR/certs/` with a fresh CA for `cluster_id` (`ca.crt`, `ca.key`; replaced only with
/// `force`) and the cluster's admin client certificate (`admin.crt`, `admin.key`: the principal
/// every node's `auth.admins` names). Returns the CA and its certificate's path.
pub(crate) fn write_ca(dir: &Path, cluster_id: &str, force: bool) -> anyhow::Result<(certs::CaBundle, PathBuf)> {
    let ca = certs::generate_ca(cluster_id)?;
    let certs_dir = dir.join("certs");
    let (ca_cert, _) = ca.write(&certs_dir, force)?;
    let admin = certs::ClientIdentity { cluster_id: cluster_id.to_string(), name: ADMIN_NAME.to_string() };
    let (cert_pem, key_pem) = certs::issue_client_cert(&ca, &admin)?;
    certs::write_pair(&certs_dir, ADMIN_CERT_FILE, &cert_pem, ADMIN_KEY_FILE, &key_pem, force)?;
    Ok((ca, ca_cert))
}

/// Everything [`write_node`] needs to know about one node of a local cluster.
pub(crate) struct NodeSetup<'a> {
    /// The cluster's directory (absolute): certificates go to `dir/certs/`, the node's files to
    /// `dir/<name>/`.
    pub dir: &'a Path,
    /// The CA that issues the node's certificate, and its certificate's path.
    pub ca: &'a certs::CaBundle,
    pub ca_cert: &'a Path,
    /// cluster / region / zone / name, in the certificate and the configuration.
    pub identity: NodeIdentity,
    pub client_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `peer.seeds`.
    pub seeds: Vec<SocketAddr>,
    /// `peer.dial_via`.
    pub dial_via: BTreeMap<String, SocketAddr>,
    /// `peer.rf`.
    pub rf: usize,
    /// `storage.durability`.
    pub durability: &'a str,
    /// Replace an existing certificate.
    pub force: bool,
    /// Comment line(s) at the top of the configuration file.
    pub header: &'a str,
}

/// Issues the node's certificate (`dir/certs/<name>.crt` + `.key`: the identity, `localhost` and
/// `127.0.0.1`, serverAuth + clientAuth, used for both the peer transport and the client port) and
/// writes its complete configuration (`dir/<name>/meridian.toml`, serialised from [`Config`] and
/// validated). Returns the node's plan.
pub(crate) fn write_node(setup: NodeSetup<'_>) -> anyhow::Result<NodePlan> {
    let NodeIdentity { cluster_id, region, zone, name } = setup.identity.clone();
    let certs_dir = setup.dir.join("certs");
    let (cert_pem, key_pem) = certs::issue_node_cert(setup.ca, &setup.identity, &certs::DEFAULT_HOSTS)?;
    let (cert, key) = certs::write_pair(
        &certs_dir,
        &format!("{name}.crt"),
        &cert_pem,
        &format!("{name}.key"),
        &key_pem,
        setup.force,
    )?;
    let node_dir = setup.dir.join(&name);
    create_private_dir(&node_dir)?;
    let node = NodePlan {
        name: name.clone(),
        zone: zone.clone(),
        config: node_dir.join(CONFIG_FILE),
        data_dir: node_dir.join("data"),
        log: node_dir.join(LOG_FILE),
        client_addr: setup.client_addr,
        http_addr: setup.http_addr,
        peer_addr: setup.peer_addr,
    };
    let defaults = Config::default();
    let config = Config {
        node_name: name.clone(),
        cluster_id,
        region,
        zone,
        data_dir: node.data_dir.clone(),
        listen: ListenConfig { client: node.client_addr, http: node.http_addr },
        tls: TlsConfig { cert: Some(cert.clone()), key: Some(key.clone()) },
        storage: meridian_server::config::StorageConfig {
            durability: setup.durability.to_string(),
            ..defaults.storage.clone()
        },
        peer: PeerConfig {
            listen: Some(node.peer_addr),
            seeds: setup.seeds,
            ca: Some(setup.ca_cert.to_path_buf()),
            cert: Some(cert),
            key: Some(key),
            rf: setup.rf,
            dial_via: setup.dial_via,
            ..PeerConfig::default()
        },
        // On, as for every cluster Meridian makes: clients present the cluster's client
        // certificates (the admin's is beside the CA) or bearer tokens; HTTP is served over TLS.
        auth: AuthConfig { enabled: true, admins: vec![ADMIN_NAME.to_string()], ..AuthConfig::default() },
        ..defaults
    };
    config.validate().with_context(|| format!("the configuration of {name}"))?;
    let toml = toml::to_string_pretty(&config).with_context(|| format!("serialising {name}'s configuration"))?;
    let text = format!(
        "{}\n# Run it alone with: meridian serve --config {}\n\n{toml}",
        setup.header.trim_end(),
        quote(&node.config)
    );
    write_atomically(&node.config, text.as_bytes())?;
    Ok(node)
}
/// Creates `dir` (and its missing parents) `0700` whatever the umask: a region's and a node's
/// directories hold keys, certificates, configurations, data and logs.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half of it. The file
/// is `0644` whatever the umask (a configuration others may read, but only its owner change).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{:08x}", rand::random::<u32>()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// One `KEY=VALUE` setting of a node's configuration (`storage.log_retention_s=5`): a dotted path
/// into the configuration's TOML and a TOML value (a bare word that is not one is a string).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSetting {
    pub path: Vec<String>,
    pub value: toml::Value,
}

impl std::str::FromStr for ConfigSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<ConfigSetting, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{key:?} is not a dotted configuration key (like storage.log_retention_s)"));
        }
        let value = value.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(value.to_string())),
            Err(_) => toml::Value::String(value.to_string()),
        };
        Ok(ConfigSetting { path, value })
    }
}

/// Applies `settings` to the node configuration at `path` (written by [`write_node`]), keeping its
/// header comment. Refuses a key the configuration does not have, a value of the wrong type, and a
/// result that does not validate, naming the setting.
pub(crate) fn apply_settings(path: &Path, settings: &[ConfigSetting]) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let header: String =
        text.lines().take_while(|l| l.starts_with('#') || l.is_empty()).map(|l| format!("{l}\n")).collect();
    let mut table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for setting in settings {
        let (last, parents) = setting.path.split_last().expect("a setting has a non-empty path");
        let mut at = &mut table;
        for part in parents {
            at = at
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("setting {}: {part} is not a section", setting.path.join(".")))?;
        }
        at.insert(last.clone(), setting.value.clone());
    }
    let names = settings.iter().map(|s| s.path.join(".")).collect::<Vec<_>>().join(", ");
    let config: Config = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("{}: the settings {names} do not fit the configuration", path.display()))?;
    config.validate().with_context(|| format!("{}: with the settings {names}", path.display()))?;
    let toml = toml::to_string_pretty(&config).with_context(|| format!("serialising {}", path.display()))?;
    write_atomically(path, format!("{}\n\n{toml}", header.trim_end()).as_bytes())
}
