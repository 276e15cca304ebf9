//! `check-history`: re-checks a recorded history file without the cluster that produced it.
//!
//! ```text
//! check-history HISTORY.jsonl [--level LEVEL]... [--region NODE=REGION]... [--max-violations N]
//! ```
//!
//! Runs every history-only (`anytime_*`) checker that applies to the file, and names those that do
//! not:
//!
//! | checker | runs when the history has |
//! |---|---|
//! | `anytime_quorum_visibility` | ok set reads at `quorum` or `local_quorum` |
//! | `anytime_no_future_reads` | ok set reads |
//! | `anytime_causal_order`, `anytime_session_guarantees` | ok set reads at a causal `LEVEL` |
//! | `anytime_counter_within_bounds` | ok counter reads |
//!
//! `--level` names the levels whose reads are held to causal order and the session guarantees
//! (repeatable; default `causal`). `--region NODE=REGION` gives the region of the events that do
//! not record one (histories from before the `region` field); once any is given, every node of
//! such an event must be mapped. Prints the summaries, then the violations (at most `N`, default
//! 100, then a count), each once even if several checkers found it. Exit status: 0 all claims hold,
//! 1 violations, 2 usage or I/O error.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::ExitCode;

use meridian_geo_tests::check::{
    anytime_causal_order, anytime_counter_within_bounds, anytime_no_future_reads, anytime_quorum_visibility,
    anytime_session_guarantees,
};
use meridian_geo_tests::{read_history, Event, Summary, Violation};

const USAGE: &str =
    "usage: check-history HISTORY.jsonl [--level LEVEL]... [--region NODE=REGION]... [--max-violations N]";

struct Args {
    path: String,
    levels: Vec<String>,
    regions: BTreeMap<String, String>,
    max_violations: usize,
}

/// `Ok(None)` means help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut path = None;
    let mut levels = Vec::new();
    let mut regions = BTreeMap::new();
    let mut max_violations = 100;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--level" => levels.push(value("--level")?),
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
    if levels.is_empty() {
        levels.push("causal".to_string());
    }
    Ok(Some(Args { path, levels, regions, max_violations }))
}

/// Fills in the region of the events that lack one from `regions`, refusing a node it does not map
/// (it would silently land in some region and relate operations the level makes no promise about).
fn apply_regions(history: &mut [Event], regions: &BTreeMap<String, String>) -> Result<(), String> {
    if regions.is_empty() {
        return Ok(());
    }
    let unmapped: BTreeSet<&str> = history
        .iter()
        .filter(|e| e.region.is_none() && !regions.contains_key(&e.node))
        .map(|e| e.node.as_str())
        .collect();
    if !unmapped.is_empty() {
        return Err(format!("nodes without a --region: {unmapped:?}"));
    }
    for event in history.iter_mut().filter(|e| e.region.is_none()) {
        event.region = Some(regions[&event.node].clone());
    }
    Ok(())
}

type Outcome = Result<Summary, Vec<Violation>>;

/// Each checker that applies to `history`, by name, with its outcome, or `None` and why not.
fn run_checkers(history: &[Event], levels: &[&str]) -> Vec<(&'static str, Result<Outcome, &'static str>)> {
    let set_reads = |level: Option<&[&str]>| {
        history.iter().any(|e| e.read_elements().is_some() && level.is_none_or(|l| l.contains(&e.consistency.as_str())))
    };
    let applies =
        |yes: bool, run: &dyn Fn() -> Outcome, why_not: &'static str| if yes { Ok(run()) } else { Err(why_not) };
    vec![
        (
            "anytime_quorum_visibility",
            applies(
                set_reads(Some(&["quorum", "local_quorum"])),
                &|| anytime_quorum_visibility(history),
                "no ok set reads at quorum or local_quorum",
            ),
        ),
        ("anytime_no_future_reads", applies(set_reads(None), &|| anytime_no_future_reads(history), "no ok set reads")),
        (
            "anytime_causal_order",
            applies(set_reads(Some(levels)), &|| anytime_causal_order(history, levels), "no ok set reads at --level"),
        ),
        (
            "anytime_session_guarantees",
            applies(
                set_reads(Some(levels)),
                &|| anytime_session_guarantees(history, levels),
                "no ok set reads at --level",
            ),
        ),
        (
            "anytime_counter_within_bounds",
            applies(
                history.iter().any(|e| e.counter_value().is_some()),
                &|| anytime_counter_within_bounds(history),
                "no ok counter reads",
            ),
        ),
    ]
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
    let mut history = match read_history(&args.path) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("check-history: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = apply_regions(&mut history, &args.regions) {
        eprintln!("check-history: {e}");
        return ExitCode::from(2);
    }
    println!("{}: {} events", args.path, history.len());

    let levels: Vec<&str> = args.levels.iter().map(String::as_str).collect();
    // Several checkers can find the same violation (a future read, a malformed session); print
    // each once.
    let mut seen = HashSet::new();
    let mut violations = Vec::new();
    for (name, outcome) in run_checkers(&history, &levels) {
        match outcome {
            Err(why_not) => println!("{name}: not run ({why_not})"),
            Ok(Ok(summary)) => println!("{summary}"),
            Ok(Err(found)) => {
                println!("{name}: {} violations", found.len());
                violations.extend(found.into_iter().filter(|v| seen.insert(v.clone())));
            }
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
