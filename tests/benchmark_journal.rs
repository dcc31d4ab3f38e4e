//! The benchmark's run journal: runs written by one process are found by the next, a last line
//! torn by a cut is dropped (and the run done again), a damaged line elsewhere is an error
//! naming it.

#[path = "../examples/common/journal.rs"]
mod journal;

use journal::{Journal, Run};

fn run(caption: &str, seed: u64, method: &str) -> Run {
    Run {
        settings: "steps 200".into(),
        scene: "nerf".into(),
        caption: caption.into(),
        group: "seen".into(),
        seed,
        method: method.into(),
        steps: 200,
        seconds: 28.5,
        views: 8,
        retrieved_views: 7,
        clip_score: 84.2,
        shapes_right: 1,
        shapes: 2,
        shape_error: 0.4,
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("rsds-journal-{name}-{}.jsonl", std::process::id()));
    std::fs::remove_file(&path).ok();
    path
}

#[test]
fn runs_recorded_by_one_process_are_found_by_the_next() {
    let path = temp("reuse");
    let mut journal = Journal::open(Some(&path)).unwrap();
    let first = run("a red cube", 0, "SDS");
    journal.record(first.clone()).unwrap();
    journal.record(run("a red cube", 1, "SDS")).unwrap();

    let again = Journal::open(Some(&path)).unwrap();
    assert_eq!(
        again.find("steps 200", "nerf", "a red cube", 0, "SDS"),
        Some(&first)
    );
    assert!(
        again
            .find("steps 200", "nerf", "a red cube", 0, "RewardSDS N=4")
            .is_none()
    );
    assert!(
        again
            .find("steps 250", "nerf", "a red cube", 0, "SDS")
            .is_none(),
        "other settings"
    );
    assert!(
        again
            .find("steps 200", "gaussians", "a red cube", 0, "SDS")
            .is_none()
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_torn_last_line_is_dropped_and_a_damaged_one_elsewhere_is_named() {
    let path = temp("torn");
    let mut journal = Journal::open(Some(&path)).unwrap();
    journal.record(run("a red cube", 0, "SDS")).unwrap();
    let whole = std::fs::read_to_string(&path).unwrap();
    // A cut mid-write: half a line, no newline.
    std::fs::write(&path, format!("{whole}{{\"settings\":\"ste")).unwrap();
    let mut journal = Journal::open(Some(&path)).unwrap();
    assert!(
        journal
            .find("steps 200", "nerf", "a red cube", 0, "SDS")
            .is_some()
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        whole,
        "the torn line is gone"
    );
    journal.record(run("a red cube", 1, "SDS")).unwrap();
    let reread = Journal::open(Some(&path)).unwrap();
    assert!(
        reread
            .find("steps 200", "nerf", "a red cube", 1, "SDS")
            .is_some()
    );

    std::fs::write(&path, format!("not json\n{whole}")).unwrap();
    let err = Journal::open(Some(&path))
        .err()
        .expect("a damaged first line")
        .to_string();
    assert!(
        err.contains("line 1") && err.contains(&path.display().to_string()),
        "{err}"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn without_a_file_runs_are_kept_in_memory_only() {
    let mut journal = Journal::open(None).unwrap();
    journal.record(run("a red cube", 0, "SDS")).unwrap();
    assert!(
        journal
            .find("steps 200", "nerf", "a red cube", 0, "SDS")
            .is_some()
    );
}
