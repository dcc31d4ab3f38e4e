//! The `rewardsds` binary run as a user runs it: a generation on the built-in Tiny World prior
//! to a valid .glb with JSON progress events, an edit of it into a new asset beside it, the
//! other commands, and bad input refused with exit code 2 naming what is at fault.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rewardsds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewardsds"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// The `--json` events a run printed, one per stdout line.
fn json_events(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Exit code and stderr of a run expected to fail.
fn failing(args: &[&str]) -> (i32, String) {
    let out = rewardsds(args);
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

#[test]
fn generate_writes_a_valid_glb_and_reports_json_events() {
    let dir = temp_dir("generate");
    let out = rewardsds(&[
        "generate",
        "--prompt",
        "a red cube",
        "--steps",
        "2",
        "--checkpoint-every",
        "0",
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_events(&out);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"loaded"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "progress").count(), 2);
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    let progress = events.iter().find(|e| e["event"] == "progress").unwrap();
    assert_eq!(progress["step"], 1);
    assert_eq!(progress["total"], 2);
    assert!(progress["loss"].as_f64().unwrap().is_finite());

    let glb = events.iter().find(|e| e["event"] == "wrote").unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(Path::new(&glb).starts_with(&dir) && Path::new(&glb).is_file());
    assert!(dir.join("config.toml").is_file() && dir.join("turntable.png").is_file());

    let check = rewardsds(&["validate", &glb]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert!(
        text(&check.stdout).contains(": valid ("),
        "{}",
        text(&check.stdout)
    );

    // The same file cut short is invalid: exit code 3, the fault named.
    let bytes = std::fs::read(&glb).unwrap();
    let cut = dir.join("cut.glb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let check = rewardsds(&["validate", cut.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(3));
    assert!(
        text(&check.stdout).contains("cut.glb: INVALID"),
        "{}",
        text(&check.stdout)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vsd_and_the_cfg_scale_are_options_of_generate() {
    let dir = temp_dir("vsd");
    let out = rewardsds(&[
        "generate",
        "--prompt",
        "a red cube",
        "--steps",
        "1",
        "--vsd",
        "--guidance-scale",
        "7.5",
        "--checkpoint-every",
        "0",
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let progress = json_events(&out)
        .into_iter()
        .find(|e| e["event"] == "progress")
        .unwrap();
    // The LoRA trained on the step's views.
    assert!(progress["lora_loss"].as_f64().unwrap() > 0.0, "{progress}");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("[guidance.vsd]"), "{config}");
    assert!(config.contains("guidance_scale = 7.5"), "{config}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn texture_steps_add_the_texture_stage_and_a_textured_asset() {
    let dir = temp_dir("texture");
    let out = rewardsds(&[
        "generate",
        "--prompt",
        "a red cube",
        "--steps",
        "1",
        "--texture-steps",
        "1",
        "--checkpoint-every",
        "0",
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_events(&out);
    let totals: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "progress")
        .map(|e| (e["step"].as_u64().unwrap(), e["total"].as_u64().unwrap()))
        .collect();
    assert_eq!(totals, [(1, 2), (2, 2)]);
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("[texture_stage]"), "{config}");
    let glb = dir.join("a-red-cube.glb");
    let summary = rewardsds::engine::export::inspect_glb(&glb).unwrap();
    assert_eq!(summary.images, 1, "the asset carries its texture");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn edit_writes_a_new_asset_beside_the_source() {
    let root = temp_dir("edit");
    let source = root.join("a-red-cube");
    let source = source.to_str().unwrap();
    let made = rewardsds(&[
        "generate",
        "--prompt",
        "a red cube",
        "--steps",
        "2",
        "--out",
        source,
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));

    let edited = rewardsds(&["edit", source, "--prompt", "a blue cube", "--steps", "2"]);
    assert!(edited.status.success(), "{}", text(&edited.stderr));
    let out = root.join("a-blue-cube");
    assert!(
        out.join("a-blue-cube.glb").is_file(),
        "{}",
        text(&edited.stderr)
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("[edit]") && config.contains("source_prompt = \"a red cube\""),
        "{config}"
    );
    // The edit is a run like any other: it resumes from its own checkpoint folder.
    let resumed = rewardsds(&[
        "generate",
        "--resume",
        out.join("checkpoint").to_str().unwrap(),
        "--export-only",
    ]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));

    // `generate --edit` is the same command; the asset's own prompt and a missing asset are
    // refused before anything runs.
    let cases: [(&[&str], &str); 3] = [
        (
            &["generate", "--edit", source, "--prompt", "A red cube"],
            "own prompt",
        ),
        (
            &["edit", "/no/such/asset", "--prompt", "a blue cube"],
            "/no/such/asset",
        ),
        (
            &[
                "generate", "--edit", source, "--preset", "quality", "--prompt", "x",
            ],
            "--preset",
        ),
    ];
    for (args, named) in cases {
        let (code, stderr) = failing(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_input_is_refused_with_exit_code_2_naming_the_fault() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["generate", "--steps", "0", "--out", out], "steps"),
        (
            &["generate", "--preset", "nope", "--out", out],
            "unknown preset `nope`",
        ),
        (
            &["generate", "--config", "/no/such/config.toml", "--out", out],
            "/no/such/config.toml",
        ),
        (&["generate", "--backend", "tpu", "--out", out], "tpu"),
        (&["validate", "/no/such/file.glb"], "/no/such/file.glb"),
    ];
    for (args, named) in cases {
        let (code, stderr) = failing(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    // Nothing was written for the refused generations.
    assert!(!dir.exists());

    // An output folder that cannot be made (under a file).
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let inside = file.join("out");
    let (code, stderr) = failing(&["generate", "--out", inside.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("output folder"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn words_the_prior_does_not_know_are_named() {
    let dir = temp_dir("unknown-words");
    let out = rewardsds(&[
        "generate",
        "--prompt",
        "a wooden barrel with iron bands",
        "--steps",
        "1",
        "--checkpoint-every",
        "0",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "does not know the words \"wooden\", \"barrel\", \"with\", \"iron\", \"bands\""
        ) && stderr.contains("shapes cube")
            && stderr.contains("--preset sd21"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn models_lists_the_bundled_prior_and_help_shows_examples() {
    let out = rewardsds(&["models"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let row = listing
        .lines()
        .find(|l| l.starts_with("| `tiny-world` |"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(row.contains("bundled"), "{row}");

    let out = rewardsds(&["models", "--show", "mvdream-fast"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("prior: `mvdream`") && shown.contains("cost model:"),
        "{shown}"
    );

    let (code, stderr) = failing(&["models", "--show", "nope"]);
    assert_eq!(code, 2, "{stderr}");

    for command in ["generate", "models", "validate", "bench"] {
        let help = text(&rewardsds(&[command, "--help"]).stdout);
        assert!(help.contains("Example"), "{command}: {help}");
    }
}
