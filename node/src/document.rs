//! What the declarative commands (`residency apply`, `auth apply`) share: reading their document from
//! a file or standard input, with a size cap, so a wrong path (a log, a device) gives a clear error
//! instead of filling memory; and printing their plan.

use anyhow::{bail, Context as _};
use std::io::Read as _;
use std::path::Path;

/// Largest document read: far above any real rule set or user list.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// The text of the `what` document at `path` (`-`: standard input), at most [`MAX_DOCUMENT_BYTES`].
pub fn read_document(path: &Path, what: &str) -> anyhow::Result<String> {
    let source: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening the {what} {}", path.display()))?)
    };
    let mut text = String::new();
    source
        .take(MAX_DOCUMENT_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    if text.len() as u64 > MAX_DOCUMENT_BYTES {
        bail!("the {what} {} is larger than {} MiB", path.display(), MAX_DOCUMENT_BYTES >> 20);
    }
    Ok(text)
}

/// Prints a declarative command's plan — each step, then `summary` — and says whether to stop here
/// (`dry_run`: nothing is applied).
pub fn show_plan<S: std::fmt::Display>(steps: &[S], summary: &str, dry_run: bool) -> bool {
    for step in steps {
        println!("{step}");
    }
    println!("plan: {summary}");
    if dry_run {
        println!("(dry run: nothing applied)");
    }
    dry_run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_over_the_cap_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        std::fs::write(&path, vec![b' '; MAX_DOCUMENT_BYTES as usize + 1]).unwrap();
        let err = read_document(&path, "rules document").unwrap_err().to_string();
        assert!(err.contains("larger than 4 MiB") && err.contains("rules.json"), "{err}");
        std::fs::write(&path, "{}").unwrap();
        assert_eq!(read_document(&path, "rules document").unwrap(), "{}");
        assert!(read_document(&dir.path().join("missing.json"), "rules document").is_err());
    }
}
