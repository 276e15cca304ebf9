//! Online backups (`meridian backup`): checkpoints of this node's storage that a client copies.
//!
//! A checkpoint lives in `<data_dir>/backup-checkpoints/<id>/`. RocksDB hard-links its table
//! files there, so taking one costs little disk until compactions rewrite the files it pins. It
//! is released by [`BackupOp::Finish`], or dropped once nobody has read it for [`LEASE`] (a client
//! that died mid-copy must not pin disk for ever); the folder is emptied when the node starts.
//! At most [`MAX_HELD`] checkpoints are held at once.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_client::proto::{BackupFile, BackupOp, BackupReport, BackupSnapshot, ErrorCode, ErrorReply};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::replica::Replica;
use crate::storage::{StorageError, FORMAT_VERSION};

/// How long a checkpoint nobody reads is kept.
pub const LEASE: Duration = Duration::from_secs(600);
/// Checkpoints held at once (each pins the table files of its instant).
pub const MAX_HELD: usize = 4;
/// The largest chunk one [`BackupOp::Read`] returns (well inside the response frame cap).
pub const MAX_CHUNK: u32 = 1 << 20;

/// The checkpoints this node holds for backups in progress.
pub struct Backups {
    /// `<data_dir>/backup-checkpoints`; `None` for a node without a data directory.
    root: Option<PathBuf>,
    held: Mutex<HashMap<u64, Held>>,
}

struct Held {
    dir: PathBuf,
    /// File name → size, as listed to the client: only these may be read.
    files: BTreeMap<String, u64>,
    last_used: Instant,
}

impl Backups {
    /// The backups of a node whose data directory is `data_dir`; removes checkpoints a previous
    /// run left behind.
    pub fn open(data_dir: &Path) -> Backups {
        let root = data_dir.is_dir().then(|| data_dir.join("backup-checkpoints"));
        if let Some(root) = &root {
            if root.exists() {
                if let Err(e) = std::fs::remove_dir_all(root) {
                    tracing::warn!(path = %root.display(), error = %e, "could not remove old backup checkpoints");
                }
            }
        }
        Backups { root, held: Mutex::new(HashMap::new()) }
    }

    /// Runs one backup operation for `replica`.
    pub async fn run(self: &Arc<Self>, replica: &Arc<Replica>, op: BackupOp) -> Result<BackupReport, ErrorReply> {
        let this = Arc::clone(self);
        let replica = Arc::clone(replica);
        tokio::task::spawn_blocking(move || this.run_blocking(&replica, op))
            .await
            .map_err(|e| Error::internal(format!("the backup task failed: {e}")))?
    }

    fn run_blocking(&self, replica: &Replica, op: BackupOp) -> Result<BackupReport, ErrorReply> {
        self.expire();
        match op {
            BackupOp::Begin => self.begin(replica).map(BackupReport::Begun),
            BackupOp::Read { id, file, offset, len } => Ok(BackupReport::Chunk(self.read(id, &file, offset, len)?)),
            BackupOp::Finish { id } => {
                let held = self.lock().remove(&id);
                match held {
                    Some(held) => {
                        remove(&held.dir);
                        Ok(BackupReport::Finished)
                    }
                    None => Err(unknown(id).into()),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, replica: &Replica) -> Result<BackupSnapshot, ErrorReply> {
        let Some(root) = &self.root else {
            return Err(
                Error::Unsupported("this node has no data directory: there is nothing to back up".into()).into()
            );
        };
        if self.lock().len() >= MAX_HELD {
            return Err(ErrorReply::new(
                ErrorCode::Overloaded,
                format!(
                "{MAX_HELD} backups are already in progress on this node; retry when one finishes (an abandoned one is dropped after {} s)",
                    LEASE.as_secs()
                ),
            ));
        }
        // Read before the checkpoint: version vectors only grow, so the checkpoint holds at least
        // every write this cut names.
        let status = replica.status()?;
        let id = rand::random::<u64>();
        std::fs::create_dir_all(root).map_err(|e| Error::Storage(e.into()))?;
        let dir = root.join(id.to_string());
        let taken_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        replica.engine().checkpoint(&dir).map_err(|e| match e {
            StorageError::Unsupported(why) => Error::Unsupported(why),
            other => Error::Storage(other),
        })?;
        let files = match list_files(&dir) {
            Ok(files) => files,
            Err(e) => {
                remove(&dir);
                return Err(Error::Storage(e.into()).into());
            }
        };
        let sizes = files.iter().map(|f| (f.name.clone(), f.size)).collect();
        self.lock().insert(id, Held { dir, files: sizes, last_used: Instant::now() });
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        tracing::info!(id, files = files.len(), bytes, "backup checkpoint taken");
        Ok(BackupSnapshot {
            id,
            node_id: status.node_id,
            node_name: status.name,
            region: status.region,
            taken_at_ms,
            storage_format: FORMAT_VERSION,
            version_vector: status.version_vector,
            files,
        })
    }

    fn read(&self, id: u64, file: &str, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        let path = {
            let mut held = self.lock();
            let held = held.get_mut(&id).ok_or_else(|| unknown(id))?;
            held.last_used = Instant::now();
            // Only names from the listing: a client cannot read anything else on this machine.
            let Some(&size) = held.files.get(file) else {
                return Err(Error::BadRequest(format!("backup {id} has no file named {file:?}")));
            };
            if offset > size {
                return Err(Error::BadRequest(format!("offset {offset} is beyond {file} ({size} bytes)")));
            }
            held.dir.join(file)
        };
        let mut f = std::fs::File::open(&path).map_err(StorageError::from)?;
        f.seek(SeekFrom::Start(offset)).map_err(StorageError::from)?;
        let mut chunk = Vec::with_capacity(len.min(MAX_CHUNK) as usize);
        f.take(u64::from(len.min(MAX_CHUNK))).read_to_end(&mut chunk).map_err(StorageError::from)?;
        Ok(chunk)
    }

    /// Drops checkpoints nobody has read for [`LEASE`].
    fn expire(&self) {
        let expired: Vec<Held> = {
            let mut held = self.lock();
            let old: Vec<u64> = held.iter().filter(|(_, h)| h.last_used.elapsed() > LEASE).map(|(id, _)| *id).collect();
            old.into_iter().filter_map(|id| held.remove(&id)).collect()
        };
        for held in expired {
            tracing::warn!(path = %held.dir.display(), "dropping a backup checkpoint nobody read for {} s", LEASE.as_secs());
            remove(&held.dir);
        }
    }

    /// Checkpoints held now (for tests and status).
    pub fn held(&self) -> usize {
        self.lock().len()
    }
}

fn unknown(id: u64) -> Error {
    Error::BadRequest(format!(
        "no backup {id} on this node (finished, dropped after {} s unread, or taken by another node)",
        LEASE.as_secs()
    ))
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(path = %dir.display(), error = %e, "could not remove a backup checkpoint");
    }
}

/// The checkpoint's files with their sizes and SHA-256, by name.
fn list_files(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let (size, sha256) = sha256_of(&entry.path())?;
        files.push(BackupFile { name, size, sha256 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// A file's size and SHA-256 (lowercase hex), read in one pass.
pub fn sha256_of(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
