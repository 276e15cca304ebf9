//! `meridian backup` and `meridian restore`: online, incremental backups of nodes into a folder,
//! and data directories rebuilt from them.
//!
//! A backup folder holds:
//!
//! ```text
//! DIR/objects/<sha256>        every file of every backup, named by its SHA-256 (shared: a file
//!                             already there is not copied again, so backups after the first are
//!                             incremental — RocksDB never changes a table file once written)
//! DIR/backups/<id>.json       one manifest per backup: the node, the instant, the version-vector
//!                             cut it covers, its files and their hashes
//! ```
//!
//! A backup exists once its manifest does: the manifest is written last (to a temporary name,
//! then renamed), after every object is complete and synced, so an interrupted backup leaves at
//! most unreferenced objects, never a manifest naming a missing or partial file. Objects are
//! verified against their SHA-256 when written and again when restored.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use meridian_client::proto::{BackupFile, BackupOp, BackupReport, BackupSnapshot};
use meridian_client::{Client, ClusterOp};
use meridian_crdt::{NodeId, VersionVector};
use meridian_server::api::backup_admin::{sha256_of, MAX_CHUNK};
use meridian_server::region::restored::adopt_restored_store;
use meridian_server::storage::{RocksEngine, RocksOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Chunk reads in flight per file: enough to keep a WAN link busy, few enough to stay polite.
const READS_IN_FLIGHT: usize = 4;
/// A manifest larger than this is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// One backup of one node, as written to `DIR/backups/<id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// `<node name>-<taken_at_ms>`: sorts by node, then time.
    pub id: String,
    /// The backed-up node's name.
    pub node_name: String,
    /// Its id (the origin of its write log).
    pub node_id: NodeId,
    /// Its region: restore it only into a node of this region (data residency).
    pub region: String,
    /// When the checkpoint was taken (Unix ms, the node's clock).
    pub taken_at_ms: u64,
    /// The storage format of the files.
    pub storage_format: u8,
    /// Every write this cut names is in the backup.
    pub version_vector: VersionVector,
    /// The files of the node's store, each stored as `objects/<sha256>`.
    pub files: Vec<BackupFile>,
    /// The `meridian` version that took it.
    pub meridian_version: String,
}

impl Manifest {
    /// Bytes of the store.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What one node's backup did.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    /// The checkpoint's id on the node (released by the time this is returned).
    pub checkpoint_id: u64,
    /// The manifest written.
    pub manifest: Manifest,
    /// Bytes copied over the network (the rest were already in the folder).
    pub bytes_copied: u64,
    /// Files copied.
    pub files_copied: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Backs up the node `client` talks to into `dir` (created if missing).
pub async fn backup_node(client: &Client, dir: &Path, show_progress: bool) -> anyhow::Result<BackupOutcome> {
    let started = Instant::now();
    let objects = dir.join("objects");
    let manifests = dir.join("backups");
    for folder in [&objects, &manifests] {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    let snapshot = match client.backup(BackupOp::Begin).await.context("asking the node for a checkpoint")? {
        BackupReport::Begun(snapshot) => snapshot,
        other => bail!("the node answered a backup request with {other:?}"),
    };
    let id = snapshot.id;
    let copied = copy_files(client, &snapshot, &objects, show_progress).await;
    // Release the checkpoint whatever happened: it pins the node's disk until then.
    let finished = client.backup(BackupOp::Finish { id }).await;
    let (bytes_copied, files_copied) = copied?;
    if let Err(e) = finished {
        tracing::warn!(error = %e, "the node did not confirm releasing the checkpoint (it drops it after its lease)");
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: format!("{}-{}", snapshot.node_name, snapshot.taken_at_ms),
        node_name: snapshot.node_name,
        node_id: snapshot.node_id,
        region: snapshot.region,
        taken_at_ms: snapshot.taken_at_ms,
        storage_format: snapshot.storage_format,
        version_vector: snapshot.version_vector,
        files: snapshot.files,
        meridian_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_atomically(&manifests.join(format!("{}.json", manifest.id)), &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(BackupOutcome { checkpoint_id: id, manifest, bytes_copied, files_copied, elapsed: started.elapsed() })
}

/// Copies the files of `snapshot` not yet in `objects`; returns (bytes, files) copied.
async fn copy_files(
    client: &Client,
    snapshot: &BackupSnapshot,
    objects: &Path,
    show_progress: bool,
) -> anyhow::Result<(u64, usize)> {
    let missing: Vec<&BackupFile> = snapshot.files.iter().filter(|f| !object_is_complete(objects, f)).collect();
    let total: u64 = missing.iter().map(|f| f.size).sum();
    let bar = if show_progress {
        let bar = crate::bench::progress(total, "backup");
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut copied = 0u64;
    for file in &missing {
        copy_file(client, snapshot.id, file, objects, &bar).await?;
        copied += file.size;
    }
    bar.finish_and_clear();
    Ok((copied, missing.len()))
}

/// Whether `objects/<sha256>` holds the file already (same size; the name is its hash).
fn object_is_complete(objects: &Path, file: &BackupFile) -> bool {
    std::fs::metadata(objects.join(&file.sha256)).is_ok_and(|m| m.len() == file.size)
}

/// Copies one checkpoint file into `objects/<sha256>`, verifying its size and hash.
async fn copy_file(
    client: &Client,
    id: u64,
    file: &BackupFile,
    objects: &Path,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    if !is_sha256_hex(&file.sha256) || file.name.contains('/') {
        bail!("the node listed a malformed file entry {:?}", file.name);
    }
    let partial = objects.join(format!(".partial-{}-{}", file.sha256, std::process::id()));
    let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut hasher = Sha256::new();
    let offsets: Vec<u64> = (0..file.size.div_ceil(u64::from(MAX_CHUNK))).map(|i| i * u64::from(MAX_CHUNK)).collect();
    let mut chunks = futures::stream::iter(offsets)
        .map(|offset| async move {
            let op = BackupOp::Read { id, file: file.name.clone(), offset, len: MAX_CHUNK };
            match client.backup(op).await {
                Ok(BackupReport::Chunk(bytes)) => Ok((offset, bytes)),
                Ok(other) => Err(anyhow::anyhow!("the node answered a read with {other:?}")),
                Err(e) => Err(anyhow::Error::new(e).context(format!("reading {} at {offset}", file.name))),
            }
        })
        .buffered(READS_IN_FLIGHT);
    let mut written = 0u64;
    while let Some(chunk) = chunks.next().await {
        let (offset, bytes) = chunk?;
        let expected = (file.size - offset).min(u64::from(MAX_CHUNK));
        if bytes.len() as u64 != expected {
            bail!("{}: the node sent {} bytes at {offset}, expected {expected}", file.name, bytes.len());
        }
        hasher.update(&bytes);
        out.write_all(&bytes).with_context(|| format!("writing {}", partial.display()))?;
        written += bytes.len() as u64;
        bar.inc(bytes.len() as u64);
    }
    let digest = meridian_server::api::backup_admin::hex(&hasher.finalize());
    if written != file.size || digest != file.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{}: copied {written} bytes with SHA-256 {digest}, the node listed {} bytes {}",
            file.name,
            file.size,
            file.sha256
        );
    }
    out.sync_all()?;
    std::fs::rename(&partial, objects.join(&file.sha256))?;
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed (and the folder synced).
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Every member of the answering node's region that is not removed, as (name, client address).
/// Only that region's: its backups belong in its storage (data residency), so each region is
/// backed up into a folder of its own.
pub async fn region_members(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let report = client.cluster(ClusterOp::Status).await.context("listing the region's members")?;
    let region = report
        .members
        .iter()
        .find(|m| m.name == report.local)
        .map(|m| m.region.clone())
        .context("the node does not list itself among the members")?;
    Ok(report
        .members
        .into_iter()
        .filter(|m| m.state != "removed" && m.region == region)
        .map(|m| (m.name, m.client_addr))
        .collect())
}

/// The manifests in `dir`, oldest first.
pub fn manifests(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let folder = dir.join("backups");
    let entries = std::fs::read_dir(&folder)
        .with_context(|| format!("{} is not a backup folder (no backups/)", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        found.push(read_manifest(&path)?);
    }
    found.sort_by(|a, b| (a.taken_at_ms, &a.id).cmp(&(b.taken_at_ms, &b.id)));
    Ok(found)
}

fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_MANIFEST_BYTES {
        bail!("{}: {len} bytes is more than a manifest can be ({MAX_MANIFEST_BYTES})", path.display());
    }
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("{} is not a backup manifest", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "{}: manifest format {} (this build reads {MANIFEST_FORMAT}); restore it with the meridian version that wrote it ({})",
            path.display(),
            manifest.format,
            manifest.meridian_version
        );
    }
    Ok(manifest)
}

/// Which backup to restore.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// A manifest id.
    pub backup: Option<String>,
    /// The newest backup of this node.
    pub node: Option<String>,
}

/// The manifest `selector` picks in `dir`: the given id, else the newest of the given node, else
/// the newest when every backup in `dir` is of one node.
pub fn select(dir: &Path, selector: &Selector) -> anyhow::Result<Manifest> {
    let all = manifests(dir)?;
    if all.is_empty() {
        bail!("{} holds no backup yet", dir.display());
    }
    if let Some(id) = &selector.backup {
        return all.into_iter().find(|m| &m.id == id).with_context(|| format!("no backup {id} in {}", dir.display()));
    }
    let names: BTreeSet<&str> = all.iter().map(|m| m.node_name.as_str()).collect();
    let node = match (&selector.node, names.len()) {
        (Some(node), _) => node.clone(),
        (None, 1) => all[0].node_name.clone(),
        (None, _) => bail!(
            "{} holds backups of several nodes ({}): say which with --node NAME or --backup ID",
            dir.display(),
            names.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    all.into_iter()
        .rev()
        .find(|m| m.node_name == node)
        .with_context(|| format!("no backup of node {node} in {}", dir.display()))
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// The backup restored.
    pub manifest: Manifest,
    /// The data directory written.
    pub data_dir: PathBuf,
    /// The id the restored node runs under (never the backed-up one).
    pub new_id: NodeId,
    /// Whether the backed-up node was marked removed (`--replace`).
    pub removed_old: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// Rebuilds a data directory from a backup: verified copies of its files into
/// `<data_dir>/db`, then a fresh node id (and, with `replace`, the backed-up node marked removed).
/// `data_dir` must not exist or be empty; on failure it is removed again.
pub fn restore(dir: &Path, selector: &Selector, data_dir: &Path, replace: bool) -> anyhow::Result<RestoreOutcome> {
    let started = Instant::now();
    let manifest = select(dir, selector)?;
    // An older format still readable is migrated when the restored node opens it.
    let readable = meridian_server::storage::OLDEST_FORMAT_VERSION..=meridian_server::storage::FORMAT_VERSION;
    if !readable.contains(&manifest.storage_format) {
        bail!(
            "backup {} holds storage format {}, this build reads {} to {}: restore it with meridian {} and upgrade that node",
            manifest.id,
            manifest.storage_format,
            readable.start(),
            readable.end(),
            manifest.meridian_version
        );
    }
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!("{} is not empty: restore into a new data directory", data_dir.display());
    }
    let result = restore_into(dir, &manifest, data_dir, replace);
    match result {
        Ok((new_id, removed_old)) => Ok(RestoreOutcome {
            manifest,
            data_dir: data_dir.to_path_buf(),
            new_id,
            removed_old,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(data_dir);
            Err(e)
        }
    }
}

fn restore_into(dir: &Path, manifest: &Manifest, data_dir: &Path, replace: bool) -> anyhow::Result<(NodeId, bool)> {
    use std::os::unix::fs::PermissionsExt as _;
    let db = data_dir.join("db");
    std::fs::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    let bar = crate::bench::progress(manifest.files.len() as u64, "restore");
    for file in &manifest.files {
        if file.name.contains('/') || !is_sha256_hex(&file.sha256) {
            bail!("backup {}: malformed file entry {:?}", manifest.id, file.name);
        }
        let object = dir.join("objects").join(&file.sha256);
        let target = db.join(&file.name);
        std::fs::copy(&object, &target)
            .with_context(|| format!("copying {} (object {}) from the backup", file.name, object.display()))?;
        let (size, sha256) = sha256_of(&target)?;
        if size != file.size || sha256 != file.sha256 {
            bail!(
                "backup {}: {} is damaged (object {}: {size} bytes, SHA-256 {sha256}; the manifest says {} bytes, {})",
                manifest.id,
                file.name,
                object.display(),
                file.size,
                file.sha256
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let engine = RocksEngine::open(&db, RocksOptions::default()).context("opening the restored store")?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let adopted =
        adopt_restored_store(&engine, replace, now_ms, &manifest.region).context("adopting the restored store")?;
    if adopted.old_id != manifest.node_id {
        bail!("the restored store is node {}'s, the manifest names {}", adopted.old_id, manifest.node_id);
    }
    Ok((adopted.new_id, adopted.removed_old))
}

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
