//! `check-history`: re-checks a recorded history file without the cluster that produced it.
//!
//! ```text
//! check-history HISTORY.jsonl [--level LEVEL] [--region NODE=REGION]... [--max-violations N]
//! ```
//!
//! Runs the history-only checkers: `quorum_reads` at `LEVEL` (default `local_quorum`; per region
//! when `--region` maps nodes to regions, and then every node in the history must be mapped) and
//! `no_future_reads` over every level. Prints the summaries, or the violations (at most `N`,
//! default 100, then a count). Exit status: 0 all claims hold, 1 violations, 2 usage or I/O error.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::ExitCode;

use meridian_geo_tests::check::{no_future_reads, quorum_reads, quorum_reads_by_region};
use meridian_geo_tests::{read_history, Summary, Violation};

const USAGE: &str = "usage: check-history HISTORY.jsonl [--level LEVEL] [--region NODE=REGION]... [--max-violations N]";

struct Args {
    path: String,
    level: String,
    regions: BTreeMap<String, String>,
    max_violations: usize,
}

/// `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut path = None;
    let mut level = "local_quorum".to_string();
    let mut regions = BTreeMap::new();
    let mut max_violations = 100;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--level" => level = value("--level")?,
            "--region" => {
                let mapping = value("--region")?;
                let (node, region) =
                    mapping.split_once('=').ok_or_else(|| format!("--region wants NODE=REGION, got {mapping:?}"))?;
                regions.insert(node.to_string(), region.to_string());
            }
            "--max-violations" => {
                let n = value("--max-violations")?;
                max_violations = n.parse().map_err(|_| format!("--max-violations wants a number, got {n:?}"))?;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if path.is_some() => return Err(format!("unexpected argument {arg:?}")),
            _ => path = Some(arg),
        }
    }
    let path = path.ok_or("missing HISTORY.jsonl")?;
    Ok(Some(Args { path, level, regions, max_violations }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("check-history: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let history = match read_history(&args.path) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("check-history: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{}: {} events", args.path, history.len());

    let quorum = if args.regions.is_empty() {
        quorum_reads(&history, &args.level)
    } else {
        // An unmapped node would silently land in some region and relate operations that the
        // level makes no promise about, so refuse instead.
        let unmapped: BTreeSet<&str> =
            history.iter().map(|e| e.node.as_str()).filter(|n| !args.regions.contains_key(*n)).collect();
        if !unmapped.is_empty() {
            eprintln!("check-history: nodes without a --region: {unmapped:?}");
            return ExitCode::from(2);
        }
        quorum_reads_by_region(&history, &args.level, |node| args.regions[node].clone())
    };
    let results: Vec<Result<Summary, Vec<Violation>>> = vec![quorum, no_future_reads(&history)];

    // Both checkers report future reads at LEVEL; print each violation once.
    let mut seen = HashSet::new();
    let mut violations = Vec::new();
    for result in results {
        match result {
            Ok(summary) => println!("{summary}"),
            Err(found) => violations.extend(found.into_iter().filter(|v| seen.insert(v.clone()))),
        }
    }
    if violations.is_empty() {
        return ExitCode::SUCCESS;
    }
    for violation in violations.iter().take(args.max_violations) {
        println!("VIOLATION {violation}");
    }
    if violations.len() > args.max_violations {
        println!("... and {} more", violations.len() - args.max_violations);
    }
    println!("{} violations", violations.len());
    ExitCode::from(1)
}
