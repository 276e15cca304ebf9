//! Certificate revocation: a deny list of SHA-256 certificate fingerprints.
//!
//! The cluster CA signs identities for their whole validity; a stolen node key, or a node retired
//! before its certificate expires, is shut out by listing its certificate here. The list is a text
//! file (`peer.revoked` for the peer transport), one fingerprint per line: the SHA-256 of the
//! certificate's DER encoding in hex (what `meridian certs fingerprint FILE` prints; upper or lower
//! case, `:` separators allowed, so `openssl x509 -fingerprint -sha256` output pasted after the `=`
//! works too). `#` starts a comment, to the end of the line; blank lines are ignored. A line that is
//! not a fingerprint makes the whole file invalid — a typo must not silently leave a certificate
//! trusted.
//!
//! [`Revocations`] is one parsed list; [`RevocationFile`] is a list kept up to date with its file
//! (re-read whenever its modification time or length changes, checked on every lookup: a `stat`
//! per handshake). If a changed file cannot be read or parsed, the previous list stays in force
//! (and the failure is logged and counted as `meridian_revocation_reload_failures_total`): a broken
//! edit never re-admits what was revoked. The list revokes certificates, not identities: a node
//! re-issued a certificate under the same name is admitted with the new one.
//!
//! Used by the peer transport (`crate::peer`), which refuses a revoked certificate at every
//! handshake, both ways, and on every request of a connection opened before the revocation; meant
//! to be reused for client certificates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Why a revocation list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file could not be read.
    #[error("reading the revocation list {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not a SHA-256 fingerprint.
    #[error("revocation list {}, line {line}: {reason}", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The SHA-256 fingerprint of a certificate's DER encoding, as 64 lowercase hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed deny list of certificate fingerprints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    fingerprints: BTreeSet<String>,
}

impl Revocations {
    /// The empty list (nothing revoked).
    pub fn empty() -> Revocations {
        Revocations::default()
    }

    /// Reads and parses the list at `path` (see the module docs for the format).
    pub fn load(path: &Path) -> Result<Revocations, RevocationError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RevocationError::Io { path: path.to_path_buf(), source })?;
        Revocations::parse(&text).map_err(|(line, reason)| RevocationError::BadLine {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses the text of a list; on error, the 1-based line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Revocations, (usize, String)> {
        let mut fingerprints = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let hex: String = content.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err((i + 1, format!("{content:?} is not a SHA-256 fingerprint (64 hex digits)")));
            }
            fingerprints.insert(hex);
        }
        Ok(Revocations { fingerprints })
    }

    /// Whether the certificate (DER) is on the list.
    pub fn is_revoked(&self, cert_der: &[u8]) -> bool {
        !self.fingerprints.is_empty() && self.fingerprints.contains(&fingerprint(cert_der))
    }

    /// Whether this fingerprint (64 lowercase hex digits) is on the list.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// Number of fingerprints listed.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }
}

/// What identifies a version of the file: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// A [`Revocations`] list kept in step with its file (see the module docs).
#[derive(Debug)]
pub struct RevocationFile {
    path: PathBuf,
    state: Mutex<(Stamp, Arc<Revocations>)>,
}

impl RevocationFile {
    /// Loads the list at `path`. Unlike a later reload, a list that cannot be read now is an error
    /// (a node must not start believing nothing is revoked).
    pub fn open(path: &Path) -> Result<RevocationFile, RevocationError> {
        let stamp = stamp(path).map_err(|source| RevocationError::Io { path: path.to_path_buf(), source })?;
        let list = Revocations::load(path)?;
        Ok(RevocationFile { path: path.to_path_buf(), state: Mutex::new((stamp, Arc::new(list))) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The list in force, re-read first if the file changed.
    pub fn current(&self) -> Arc<Revocations> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match stamp(&self.path) {
            Ok(now) if now == state.0 => {}
            Ok(now) => match Revocations::load(&self.path) {
                Ok(list) => {
                    tracing::info!(path = %self.path.display(), revoked = list.len(), "revocation list reloaded");
                    *state = (now, Arc::new(list));
                }
                Err(e) => reload_failed(&e.to_string()),
            },
            Err(e) => reload_failed(&format!("{}: {e}", self.path.display())),
        }
        state.1.clone()
    }

    /// Whether the certificate (DER) is revoked by the list in force.
    pub fn is_revoked(&self, cert_der: &[u8]) -> bool {
        self.current().is_revoked(cert_der)
    }
}

fn reload_failed(error: &str) {
    metrics::counter!("meridian_revocation_reload_failures_total").increment(1);
    tracing::warn!(%error, "the revocation list changed but cannot be used; the previous list stays in force");
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ab:CD:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89";

    #[test]
    fn fingerprint_is_sha256_hex() {
        // SHA-256 of the empty string.
        assert_eq!(fingerprint(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(fingerprint(b"abc").len(), 64);
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
    }

    #[test]
    fn parses_comments_case_and_colons_and_refuses_garbage() {
        let empty = fingerprint(b"");
        let list =
            Revocations::parse(&format!("# revoked\n\n{}  # n3, key stolen\n{A}\n", empty.to_uppercase())).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked(b""));
        assert!(!list.is_revoked(b"x"));
        assert!(list.contains(&A.replace(':', "").to_lowercase()));
        assert_eq!(Revocations::parse("# only comments\n").unwrap(), Revocations::empty());
        assert_eq!(Revocations::parse(&format!("{empty}\nnot-a-fingerprint\n")).unwrap_err().0, 2);
        assert_eq!(Revocations::parse(&empty[..63]).unwrap_err().0, 1);
    }

    #[test]
    fn the_file_is_reloaded_when_it_changes_and_a_broken_edit_keeps_the_old_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        std::fs::write(&path, "# none yet\n").unwrap();
        let file = RevocationFile::open(&path).unwrap();
        assert!(!file.is_revoked(b"cert"));
        std::fs::write(&path, format!("{}\n", fingerprint(b"cert"))).unwrap();
        assert!(file.is_revoked(b"cert"), "a new fingerprint takes effect at the next lookup");
        std::fs::write(&path, format!("{}\noops, a typo\n", fingerprint(b"other"))).unwrap();
        assert!(file.is_revoked(b"cert"), "an unparseable edit leaves the previous list in force");
        assert!(!file.is_revoked(b"other"));
        std::fs::remove_file(&path).unwrap();
        assert!(file.is_revoked(b"cert"), "a vanished file leaves the previous list in force");
        assert!(matches!(RevocationFile::open(&path), Err(RevocationError::Io { .. })));
    }
}
