//! Raw byte scans of a node's data directory, for the data-residency tests.
//!
//! A residency test writes values that carry unique markers, then asks: does any file a node keeps
//! (RocksDB's WAL `*.log`, `*.sst`, `MANIFEST-*`, the audit log, anything else under its data
//! directory) still contain the bytes of a marker its region may not hold? The scan knows nothing of
//! the storage format on purpose: it reads every regular file whole and looks for the markers' bytes.
//!
//! Two limits a caller must keep in mind:
//!
//! * RocksDB compresses SST blocks (LZ4 in the node). LZ4 keeps incompressible bytes as literals but
//!   replaces any run of 4+ bytes it has seen earlier in the block with a back-reference, so a marker
//!   is reliably found raw only if no 4-byte piece of it repeats nearby: make markers random over a
//!   wide alphabet (not hex, not a shared prefix) and scan for that random part. A positive control
//!   (a marker that must be found) shows the scan sees the node's storage at all.
//! * Files may be written while they are read; scan a stopped or quiesced node (the residency
//!   audit's `--compact` flushes memtables and compacts first).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// Every (file, marker index) such that the regular file under `dir` (recursively) contains
/// `markers[index]` somewhere. Each pair appears once, in path order then index order. Symbolic
/// links are not followed; a file that vanishes between the listing and the read (RocksDB deletes
/// obsolete files) is skipped. Empty markers are ignored (they would match everything).
pub fn scan_dir_for_markers(dir: &Path, markers: &[Vec<u8>]) -> io::Result<Vec<(PathBuf, usize)>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let finder = MarkerFinder::new(markers);
    let mut found = Vec::new();
    for file in files {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", file.display()))),
        };
        for index in finder.find_all(&bytes) {
            found.push((file.clone(), index));
        }
    }
    Ok(found)
}

/// Every regular file under `dir`, recursively (symbolic links neither followed nor listed).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("listing {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if file_type.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Finds many short markers in one pass over a buffer: the markers are bucketed by their first two
/// bytes, so each position of the buffer costs one table lookup and only the markers sharing those
/// two bytes are compared. Linear in the buffer for random markers (no quadratic blow-up on long
/// runs of one byte either: a run only matches the markers that start with that pair).
pub struct MarkerFinder<'a> {
    markers: &'a [Vec<u8>],
    /// First-two-bytes (as u16) → indices of the markers starting with them; markers of one byte
    /// are in `single`.
    by_prefix: std::collections::HashMap<u16, Vec<usize>>,
    single: Vec<Vec<usize>>,
}

impl<'a> MarkerFinder<'a> {
    /// A finder of `markers` (empty ones ignored).
    pub fn new(markers: &'a [Vec<u8>]) -> MarkerFinder<'a> {
        let mut by_prefix: std::collections::HashMap<u16, Vec<usize>> = std::collections::HashMap::new();
        let mut single = vec![Vec::new(); 256];
        for (i, m) in markers.iter().enumerate() {
            match m.len() {
                0 => {}
                1 => single[m[0] as usize].push(i),
                _ => by_prefix.entry(u16::from_be_bytes([m[0], m[1]])).or_default().push(i),
            }
        }
        MarkerFinder { markers, by_prefix, single }
    }

    /// The indices of the markers that occur in `haystack`, ascending.
    pub fn find_all(&self, haystack: &[u8]) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        if self.markers.is_empty() {
            return found;
        }
        for pos in 0..haystack.len() {
            for &i in &self.single[haystack[pos] as usize] {
                found.insert(i);
            }
            if pos + 1 >= haystack.len() {
                break;
            }
            let Some(candidates) = self.by_prefix.get(&u16::from_be_bytes([haystack[pos], haystack[pos + 1]])) else {
                continue;
            };
            for &i in candidates {
                if !found.contains(&i) && haystack[pos..].starts_with(&self.markers[i]) {
                    found.insert(i);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markers(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    #[test]
    fn finds_markers_anywhere_in_nested_files_and_only_those_present() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("db").join("archive");
        std::fs::create_dir_all(&deep).unwrap();
        let m = markers(&["MRKR-aaaaaaaaaaaaaaaaaaaa", "MRKR-bbbbbbbbbbbbbbbbbbbb", "MRKR-cccccccccccccccccccc"]);
        // At the very start of a file, and at the very end of another (no byte around it).
        std::fs::write(dir.path().join("000001.log"), [m[0].as_slice(), b"\x00\x01tail"].concat()).unwrap();
        std::fs::write(deep.join("000007.sst"), [b"head\xff".as_slice(), m[1].as_slice()].concat()).unwrap();
        // Only a prefix of marker 2 (cut off at the end of the file), and marker 2 with one byte
        // changed: neither is the marker.
        let cut = &m[2][..m[2].len() - 1];
        let mut changed = m[2].clone();
        changed[10] = b'X';
        std::fs::write(deep.join("MANIFEST-000003"), [changed.as_slice(), b"..", cut].concat()).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();

        let found = scan_dir_for_markers(dir.path(), &m).unwrap();
        assert_eq!(found, vec![(dir.path().join("000001.log"), 0), (deep.join("000007.sst"), 1)]);
    }

    #[test]
    fn a_file_with_several_markers_and_repeats_reports_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = markers(&["MRKR-xyz-0123456789abcdef", "MRKR-xyz-fedcba9876543210"]);
        let body = [m[1].as_slice(), m[0].as_slice(), m[1].as_slice(), m[0].as_slice()].concat();
        std::fs::write(dir.path().join("f"), body).unwrap();
        let found = scan_dir_for_markers(dir.path(), &m).unwrap();
        assert_eq!(found, vec![(dir.path().join("f"), 0), (dir.path().join("f"), 1)]);
    }

    #[test]
    fn overlapping_and_prefix_sharing_markers_are_each_found() {
        // "aab" inside "aaab": the first candidate position fails, the next one matches.
        let m = markers(&["aab", "abab", "b", "zz"]);
        let finder = MarkerFinder::new(&m);
        assert_eq!(finder.find_all(b"aaabab"), BTreeSet::from([0, 1, 2]));
        assert_eq!(finder.find_all(b""), BTreeSet::new());
        assert_eq!(finder.find_all(b"z"), BTreeSet::new());
        assert_eq!(finder.find_all(b"zz"), BTreeSet::from([3]));
    }

    #[test]
    fn nothing_found_in_a_clean_directory_or_with_no_markers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("x.sst"), vec![b'a'; 1 << 20]).unwrap();
        let m = markers(&["aaaaaaaaaaaaaaaaaaab", ""]);
        assert!(scan_dir_for_markers(dir.path(), &m).unwrap().is_empty());
        assert!(scan_dir_for_markers(dir.path(), &[]).unwrap().is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = scan_dir_for_markers(&missing, &markers(&["abc"])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
