//! The JSON-lines history format: writer/reader round trip and the errors on bad files.

use std::io::Write;

use meridian_geo_tests::history::{write_history, OP_ADD, OP_INCR, OP_READ, OP_READ_COUNTER, RESULT_OK};
use meridian_geo_tests::{read_history, Event, HistoryWriter};
use serde_json::json;

fn event(process: &str, op: &str, value: serde_json::Value, start_us: u64, end_us: u64, result: &str) -> Event {
    Event {
        process: process.into(),
        op: op.into(),
        key: "set/1".into(),
        value,
        consistency: "local_quorum".into(),
        node: "n1".into(),
        region: None,
        start_us,
        end_us,
        result: result.into(),
    }
}

#[test]
fn round_trip_through_writer_and_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let writer = HistoryWriter::create(&path).unwrap();
    assert_eq!(writer.path(), path);

    // Several workers sharing clones of one writer, as a fault test's tasks do: every line must
    // come out whole, none lost or interleaved.
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let start = writer.now_us();
                    let end = writer.now_us();
                    let element = json!(format!("w{w}-{i}"));
                    writer.record(&event(&format!("w{w}"), OP_ADD, element, start, end, RESULT_OK)).unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let special = event("w9", OP_READ, json!(["a \"quoted\"\nline", "ü", ""]), 5, 9, RESULT_OK);
    writer.record(&special).unwrap();
    writer.record(&event("w9", OP_READ, serde_json::Value::Null, 10, 20, "timeout")).unwrap();

    let history = read_history(&path).unwrap();
    assert_eq!(history.len(), 8 * 250 + 2);
    for w in 0..8 {
        let mine: Vec<&Event> = history.iter().filter(|e| e.process == format!("w{w}")).collect();
        assert_eq!(mine.len(), 250);
        // One worker's events keep its order and the clock never runs backwards for it.
        for (i, e) in mine.iter().enumerate() {
            assert_eq!(e.added_element(), Some(format!("w{w}-{i}").as_str()));
            assert!(e.start_us <= e.end_us);
        }
        assert!(mine.windows(2).all(|p| p[0].end_us <= p[1].start_us));
    }
    assert_eq!(history[8 * 250], special);
    assert_eq!(history[8 * 250].read_elements().unwrap(), vec!["a \"quoted\"\nline", "ü", ""]);
    assert_eq!(history[8 * 250 + 1].read_elements(), None);

    // write_history is read back unchanged too.
    let copy = dir.path().join("copy.jsonl");
    write_history(&copy, &history).unwrap();
    assert_eq!(read_history(&copy).unwrap(), history);
}

#[test]
fn malformed_line_error_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let good = serde_json::to_string(&event("w1", OP_ADD, json!("e1"), 1, 2, RESULT_OK)).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    // Line 3 is cut short, as a killed writer could leave it.
    writeln!(file, "{good}\n{good}\n{{\"process\":\"w1\",\"op\":\"add\"").unwrap();
    drop(file);
    let error = format!("{:#}", read_history(&path).unwrap_err());
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("history.jsonl"), "{error}");
}

#[test]
fn missing_field_error_names_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    std::fs::write(&path, "{\"process\":\"w1\",\"op\":\"add\",\"key\":\"k\",\"value\":\"e\"}\n").unwrap();
    let error = format!("{:#}", read_history(&path).unwrap_err());
    assert!(error.contains("line 1") && error.contains("consistency"), "{error}");
}

#[test]
fn blank_line_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let good = serde_json::to_string(&event("w1", OP_ADD, json!("e1"), 1, 2, RESULT_OK)).unwrap();
    std::fs::write(&path, format!("{good}\n\n{good}\n")).unwrap();
    let error = format!("{:#}", read_history(&path).unwrap_err());
    assert!(error.contains("line 2") && error.contains("blank"), "{error}");
}

#[test]
fn invalid_events_are_refused_by_writer_and_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let writer = HistoryWriter::create(&path).unwrap();
    let backwards = event("w1", OP_ADD, json!("e1"), 9, 2, RESULT_OK);
    let number = event("w1", OP_ADD, json!(7), 1, 2, RESULT_OK);
    let not_a_list = event("w1", OP_READ, json!("e1"), 1, 2, RESULT_OK);
    for bad in [&backwards, &number, &not_a_list] {
        assert!(bad.validate().is_err());
        assert!(writer.record(bad).is_err(), "{bad}");
    }
    // A failed read's value is not looked at.
    writer.record(&event("w1", OP_READ, json!("whatever"), 1, 2, "unavailable")).unwrap();
    assert_eq!(read_history(&path).unwrap().len(), 1);

    let good = serde_json::to_string(&event("w1", OP_ADD, json!("e1"), 1, 2, RESULT_OK)).unwrap();
    let bad = serde_json::to_string(&number).unwrap();
    std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
    let error = format!("{:#}", read_history(&path).unwrap_err());
    assert!(error.contains("line 2") && error.contains("string"), "{error}");
}

#[test]
fn unknown_fields_and_ops_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let mut line = serde_json::to_value(event("w1", "remove", json!({"anything": 1}), 1, 2, RESULT_OK)).unwrap();
    line["region"] = json!("eu");
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let history = read_history(&path).unwrap();
    assert_eq!(history[0].op, "remove");
}

#[test]
fn now_us_is_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let writer = HistoryWriter::create(dir.path().join("h.jsonl")).unwrap();
    let a = writer.now_us();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = writer.clone().now_us();
    assert!(b >= a + 2000, "{a} {b}");
}

#[test]
fn region_is_optional_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    // A line from before the region field, and one with it.
    let old = serde_json::to_string(&event("w1", OP_ADD, json!("e1"), 1, 2, RESULT_OK)).unwrap();
    assert!(!old.contains("region"), "None is left out when writing: {old}");
    let with = Event { region: Some("eu".into()), ..event("w1", OP_READ, json!(["e1"]), 3, 4, RESULT_OK) };
    write_history(&path, &[event("w1", OP_ADD, json!("e1"), 1, 2, RESULT_OK), with.clone()]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next().unwrap(), old);
    assert!(text.lines().nth(1).unwrap().contains("\"region\":\"eu\""), "{text}");
    let history = read_history(&path).unwrap();
    assert_eq!((history[0].region.as_deref(), history[0].region_or_default()), (None, ""));
    assert_eq!(history[1], with);
    assert_eq!(history[1].to_string(), "w1 read via n1 (eu) at local_quorum [3..4]us -> ok (1 elements)");
}

#[test]
fn counter_events_are_validated() {
    let incr = |value| event("w1", OP_INCR, value, 1, 2, RESULT_OK);
    let read = |value, result| event("w1", OP_READ_COUNTER, value, 1, 2, result);
    assert_eq!(incr(json!(3)).incr_amount(), Some(3));
    assert_eq!(read(json!(-2), RESULT_OK).counter_value(), Some(-2));
    assert_eq!(read(json!(7), "timeout").counter_value(), None);
    for good in [incr(json!(3)), read(json!(12), RESULT_OK), read(serde_json::Value::Null, "timeout")] {
        good.validate().unwrap();
    }
    // Amounts are positive integers; an ok read's value is an integer. A failed incr is still
    // validated (its amount widens the counter's upper bound).
    for bad in [incr(json!(0)), incr(json!(-1)), incr(json!(1.5)), incr(json!("3")), read(json!("3"), RESULT_OK)] {
        assert!(bad.validate().is_err(), "{bad}");
    }
    assert!(Event { result: "timeout".into(), ..incr(json!(0)) }.validate().is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let lines = [incr(json!(3)), read(json!(3), RESULT_OK)];
    write_history(&path, &lines).unwrap();
    assert_eq!(read_history(&path).unwrap(), lines);
    assert_eq!(lines[0].to_string(), "w1 incr +3 via n1 at local_quorum [1..2]us -> ok");
    assert_eq!(lines[1].to_string(), "w1 read_counter via n1 at local_quorum [1..2]us -> ok = 3");
}
