//! `rewardsds batch` run as a user (or a cluster) runs it: a library made, verified and left
//! alone on a rerun; a worker killed mid-asset resumed from its checkpoint; two workers on one
//! library never making the same asset; a corrupt index recovered; bad input refused with
//! nothing written.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A few quick steps and a small mesh per asset: the library's bookkeeping is under test.
const QUICK: &str =
    "steps = 2\ncheckpoint_every = 0\n[overrides.mesh]\nresolution = 48\ncoarse_resolution = 24\n";

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rewardsds"));
    c.arg("batch").args(args).env("HF_HUB_OFFLINE", "1");
    c
}

fn batch(args: &[&str]) -> Output {
    command(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-batch-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The JSON events a `--json` run printed.
fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// `asset -> status` of a run's `asset` events (the last one per asset).
fn statuses(events: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in events.iter().filter(|e| e["event"] == "asset") {
        let status = e["status"].as_str().unwrap().to_string();
        if status == "started" {
            continue;
        }
        out.push((e["asset"].as_str().unwrap().into(), status));
    }
    out.sort();
    out
}

fn index(library: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(library.join("index.json")).unwrap()).unwrap()
}

fn manifest(dir: &Path, prompts: &[&str]) -> PathBuf {
    let mut toml = format!("preset = \"fast\"\n[overrides]\n{QUICK}");
    for p in prompts {
        toml.push_str(&format!("\n[[asset]]\nprompt = \"{p}\"\n"));
    }
    let path = dir.join("props.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn a_library_is_made_verified_kept_on_rerun_and_its_index_recovered() {
    let dir = temp_dir("library");
    let lib = dir.join("lib");
    let m = dir.join("props.toml");
    std::fs::write(
        &m,
        format!(
            "[overrides]\n{QUICK}\n[[asset]]\nprompt = \"a red cube\"\n\n[[asset]]\nprompt = \
             \"a red cube\"\nseed = 5\n\n[[asset]]\nprompt = \"a blue sphere\"\nname = \"ball\"\n"
        ),
    )
    .unwrap();
    let (m, l) = (m.to_str().unwrap(), lib.to_str().unwrap());
    let out = batch(&[m, "--out", l, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names = ["a-red-cube-seed0", "a-red-cube-seed5", "ball"];
    let made = statuses(&events(&out));
    let expected: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.to_string(), "done".into()))
        .collect();
    assert_eq!(made, expected);
    // The generation's own events carry their asset.
    assert!(
        events(&out)
            .iter()
            .any(|e| e["event"] == "progress" && e["asset"] == "ball")
    );

    let listed: Vec<String> = index(&lib)["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "done", "{r}");
            assert!(lib.join(r["files"]["glb"].as_str().unwrap()).is_file());
            r["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(listed, names);
    let sheet = image_size(&lib.join("contact_sheet.png"));
    assert_eq!(sheet.1, 3 * 128, "one 128 px row per asset: {sheet:?}");

    let verified = batch(&[m, "--out", l, "--verify"]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    assert!(text(&verified.stdout).contains("3 of 3 entries finished and valid"));

    // A rerun makes nothing; a corrupt index is written again from the assets' records.
    let glb = lib.join("ball/a-blue-sphere.glb");
    let before = std::fs::metadata(&glb).unwrap().modified().unwrap();
    std::fs::write(lib.join("index.json"), "{\"assets\": [").unwrap();
    let out = batch(&[m, "--out", l, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(statuses(&events(&out)).iter().all(|(_, s)| s == "finished"));
    assert_eq!(std::fs::metadata(&glb).unwrap().modified().unwrap(), before);
    assert_eq!(index(&lib)["assets"].as_array().unwrap().len(), 3);

    // An entry whose config changed is made again; the others are kept.
    let changed = std::fs::read_to_string(m).unwrap().replace(
        "name = \"ball\"",
        "name = \"ball\"\noverrides = { steps = 3 }",
    );
    std::fs::write(m, changed).unwrap();
    let unverified = batch(&[m, "--out", l, "--verify"]);
    assert_eq!(unverified.status.code(), Some(3));
    assert!(text(&unverified.stdout).contains("ball: made with another config"));
    let out = batch(&[m, "--out", l, "--json"]);
    let made = statuses(&events(&out));
    assert_eq!(
        made[2],
        ("ball".to_string(), "done".to_string()),
        "{made:?}"
    );
    assert!(made[..2].iter().all(|(_, s)| s == "finished"), "{made:?}");
    std::fs::remove_dir_all(&dir).ok();
}

fn image_size(path: &Path) -> (u32, u32) {
    let image = rewardsds::engine::rgb_image::RgbImage::load_png(path).unwrap();
    (image.width, image.height)
}

/// Reads `child`'s JSON events until `stop` matches one; returns the events read.
fn read_until(child: &mut Child, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = stop(&event);
        seen.push(event);
        if done {
            break;
        }
    }
    seen
}

#[test]
fn a_worker_killed_mid_asset_is_resumed_from_its_checkpoint() {
    let dir = temp_dir("killed");
    let lib = dir.join("lib");
    let m = dir.join("one.jsonl");
    std::fs::write(
        &m,
        "{\"prompt\": \"a green cone\", \"overrides\": {\"steps\": 8, \"checkpoint_every\": 2, \
         \"mesh\": {\"resolution\": 48, \"coarse_resolution\": 24}}}\n",
    )
    .unwrap();
    let (m, l) = (m.to_str().unwrap(), lib.to_str().unwrap());
    let mut worker = command(&[m, "--out", l, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = read_until(&mut worker, |e| e["event"] == "checkpoint");
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(seen.last().unwrap()["event"], "checkpoint", "{seen:?}");
    let asset = lib.join("a-green-cone-seed0");
    assert!(!asset.join("result.json").exists());

    // The next worker (another process, the dead one's lock left behind) resumes it.
    let out = batch(&[m, "--out", l, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = events(&out);
    let started = events
        .iter()
        .find(|e| e["event"] == "asset" && e["status"] == "started")
        .unwrap();
    assert_eq!(started["resumed"], true, "{events:?}");
    let loaded = events.iter().find(|e| e["event"] == "loaded").unwrap();
    let resumed_at = loaded["steps_done"].as_u64().unwrap();
    assert!(resumed_at >= 2, "{loaded}");
    let progress = events.iter().filter(|e| e["event"] == "progress").count() as u64;
    assert_eq!(progress, 8 - resumed_at);
    let record = &index(&lib)["assets"][0];
    assert_eq!(record["status"], "done");
    assert_eq!(record["timings"]["resumed_at_step"], resumed_at);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn workers_sharing_a_library_never_make_the_same_asset() {
    let dir = temp_dir("workers");
    let prompts = [
        "a red cube",
        "a blue cube",
        "a green sphere",
        "a white cone",
    ];
    let m = manifest(&dir, &prompts);
    let m = m.to_str().unwrap();

    // Two workers over the whole manifest at once: each asset made by exactly one.
    let lib = dir.join("shared");
    let l = lib.to_str().unwrap();
    let spawn = |id: &str, extra: &[&str]| {
        let mut args = vec![m, "--out", l, "--json", "--worker-id", id];
        args.extend_from_slice(extra);
        command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a", &[]), spawn("b", &[]));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let mut done: Vec<String> = Vec::new();
    for out in [&a, &b] {
        for (asset, status) in statuses(&events(out)) {
            assert!(
                ["done", "busy", "finished"].contains(&status.as_str()),
                "{asset}: {status}"
            );
            if status == "done" {
                done.push(asset);
            }
        }
    }
    done.sort();
    let mut names: Vec<String> = prompts
        .iter()
        .map(|p| format!("{}-seed0", p.replace(' ', "-")))
        .collect();
    names.sort();
    assert_eq!(done, names, "every asset made once");
    let records = index(&lib)["assets"].as_array().unwrap().clone();
    assert_eq!(records.len(), 4);
    for r in &records {
        assert!(r["worker"] == "a" || r["worker"] == "b", "{r}");
    }

    // Shards: two workers at once, each its share, one index with every entry.
    let lib = dir.join("sharded");
    let l = lib.to_str().unwrap();
    let run = |shard: &str| {
        command(&[m, "--out", l, "--json", "--shard", shard])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (run("0/2"), run("1/2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let share = |out: &Output| -> Vec<String> {
        statuses(&events(out)).into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(share(&a), ["a-green-sphere-seed0", "a-red-cube-seed0"]);
    assert_eq!(share(&b), ["a-blue-cube-seed0", "a-white-cone-seed0"]);
    assert_eq!(index(&lib)["assets"].as_array().unwrap().len(), 4);
    let verified = batch(&[m, "--out", l, "--verify"]);
    assert!(verified.status.success(), "{}", text(&verified.stdout));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_batch_input_is_refused_and_writes_nothing() {
    let dir = temp_dir("bad");
    let lib = dir.join("lib");
    let l = lib.to_str().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write("good.txt", "a red cube\n");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![dir.join("missing.txt").display().to_string()],
            "missing.txt",
        ),
        (
            vec![write("empty.txt", "\n# only a comment\n")],
            "has no entries",
        ),
        (
            vec![write(
                "bad.jsonl",
                "{\"prompt\": \"a red cube\"}\n{\"prompt\": 3}\n",
            )],
            "line 2",
        ),
        (
            vec![write("dup.txt", "a red cube\na blue cube\na red cube\n")],
            "line 3 repeats line 1",
        ),
        (
            vec![write(
                "big.jsonl",
                "{\"prompt\": \"a red cube\", \"overrides\": {\"render_size\": 100000}}\n",
            )],
            "render_size",
        ),
        (vec![good.clone(), "--shard".into(), "3/2".into()], "3/2"),
        (vec![good.clone(), "--shard".into(), "0/0".into()], "0/0"),
    ];
    for (mut args, named) in cases {
        args.extend(["--out".to_string(), l.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = batch(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(named),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!lib.exists(), "{args:?} left {}", lib.display());
    }
    // A library folder that cannot be made (under a file).
    let file = write("file", "x");
    let inside = format!("{file}/lib");
    let out = batch(&[&good, "--out", &inside]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("library folder"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}
