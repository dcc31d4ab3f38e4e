//! Hugging Face downloads end to end against a stand-in hub on the loopback address: a fresh
//! download in `huggingface_hub`'s cache layout, only the files the loader reads, a cut
//! transfer resumed (in the same call, and by the next call), a 404 and a stalled server
//! reported by name.
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewardsds_engine::weights::hub::HubClient;
use rewardsds_engine::weights::{LoadError, cached_repo};

const REPO: &str = "org/tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the stand-in does with the next request for a file.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Sends the headers for the whole range, then this many bytes, then closes.
    CutAfter(usize),
    /// Accepts the request and sends nothing.
    Stall,
}

/// A request the stand-in saw: the path and its `Range` header.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    /// Repo path -> (contents, LFS or not).
    files: Vec<(String, Vec<u8>, bool)>,
    faults: HashMap<String, Vec<Fault>>,
    seen: Vec<Seen>,
    /// Whether the listing itself stalls.
    stall_listing: bool,
}

/// A minimal HTTP/1.1 server speaking the part of the hub's API the client uses
/// (hand-written: faults mid-body need the raw socket).
struct StandIn {
    url: String,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    fn start(files: &[(&str, Vec<u8>, bool)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            files: files
                .iter()
                .map(|(n, b, lfs)| (n.to_string(), b.clone(), *lfs))
                .collect(),
            ..State::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { url, state }
    }

    fn fault(&self, path: &str, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(path.into(), faults.to_vec());
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }

    fn client(&self) -> HubClient {
        HubClient::new(&self.url).with_read_timeout(Duration::from_secs(1))
    }
}

fn etag(name: &str, lfs: bool) -> String {
    // Any distinct hex names: the client takes the blob id the listing gives.
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    if lfs {
        format!("{hash:016x}{hash:016x}{hash:016x}{hash:016x}")
    } else {
        format!("{hash:016x}{hash:016x}{:08x}", hash as u32)
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let listing_path = format!("/api/models/{REPO}/revision/main?blobs=true");
    let file_prefix = format!("/{REPO}/resolve/{COMMIT}/");
    let mut state = state.lock().unwrap();
    state.seen.push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    if path == listing_path {
        if state.stall_listing {
            drop(state);
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let siblings: Vec<String> = state
            .files
            .iter()
            .map(|(name, bytes, lfs)| {
                let tag = etag(name, *lfs);
                let lfs_field = if *lfs {
                    format!(r#","lfs":{{"sha256":"{tag}","size":{}}}"#, bytes.len())
                } else {
                    String::new()
                };
                format!(
                    r#"{{"rfilename":"{name}","size":{},"blobId":"{}"{lfs_field}}}"#,
                    bytes.len(),
                    if *lfs { etag(name, false) } else { tag }
                )
            })
            .collect();
        let body = format!(
            r#"{{"sha":"{COMMIT}","siblings":[{}]}}"#,
            siblings.join(",")
        );
        respond(&mut stream, "200 OK", "", body.as_bytes());
        return;
    }
    let Some(name) = path.strip_prefix(&file_prefix) else {
        respond(&mut stream, "404 Not Found", "", b"Repository not found");
        return;
    };
    let Some(bytes) = state
        .files
        .iter()
        .find(|(n, ..)| n == name)
        .map(|(_, b, _)| b.clone())
    else {
        respond(&mut stream, "404 Not Found", "", b"Entry not found");
        return;
    };
    let fault = state.faults.get_mut(name).and_then(|f| {
        if f.is_empty() {
            None
        } else {
            Some(f.remove(0))
        }
    });
    drop(state);
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let body = &bytes[start.min(bytes.len())..];
    let (status, extra) = if range.is_some() {
        (
            "206 Partial Content",
            format!(
                "Content-Range: bytes {start}-{}/{}\r\n",
                bytes.len() - 1,
                bytes.len()
            ),
        )
    } else {
        ("200 OK", String::new())
    };
    match fault {
        None => respond(&mut stream, status, &extra, body),
        Some(Fault::CutAfter(n)) => {
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).ok();
            stream.write_all(&body[..n.min(body.len())]).ok();
            stream.flush().ok();
        }
        Some(Fault::Stall) => std::thread::sleep(Duration::from_secs(30)),
    }
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok();
    stream.write_all(body).ok();
    stream.flush().ok();
}

/// A tiny repo: a UNet folder (config + weights, plus a `.bin` and an fp16 variant the loader
/// never reads), a folder no preset asks for, a README.
fn fixture() -> Vec<(&'static str, Vec<u8>, bool)> {
    let weights: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("README.md", b"# tiny".to_vec(), false),
        ("unet/config.json", br#"{"sample_size": 8}"#.to_vec(), false),
        (
            "unet/diffusion_pytorch_model.safetensors",
            weights.clone(),
            true,
        ),
        ("unet/diffusion_pytorch_model.bin", weights.clone(), true),
        (
            "unet/diffusion_pytorch_model.fp16.safetensors",
            weights[..100].to_vec(),
            true,
        ),
        ("safety_checker/config.json", b"{}".to_vec(), false),
        ("safety_checker/model.safetensors", weights, true),
    ]
}

fn temp_cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rsds-hub-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--org--tiny")
}

fn file_requests(seen: &[Seen]) -> Vec<Seen> {
    seen.iter()
        .filter(|s| s.path.contains("/resolve/"))
        .cloned()
        .collect()
}

#[test]
fn a_fresh_download_writes_the_huggingface_cache_layout_with_only_what_the_loader_reads() {
    let files = fixture();
    let hub = StandIn::start(&files);
    let cache = temp_cache("fresh");
    let snapshot = hub.client().snapshot(&cache, REPO, &["unet"], &[]).unwrap();

    let repo = repo_dir(&cache);
    assert_eq!(snapshot, repo.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let fetched: Vec<String> = file_requests(&hub.seen())
        .into_iter()
        .map(|s| {
            s.path
                .rsplit(&format!("{COMMIT}/"))
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    // The weights before the config (a folder with its config is complete), nothing else.
    assert_eq!(
        fetched,
        [
            "unet/diffusion_pytorch_model.safetensors",
            "unet/config.json"
        ]
    );
    for (name, bytes, lfs) in &files[1..3] {
        let pointer = snapshot.join(name);
        let target = std::fs::read_link(&pointer).unwrap();
        let expected = PathBuf::from("../../../blobs").join(etag(name, *lfs));
        assert_eq!(target, expected, "{name} links to its blob, relatively");
        assert_eq!(&std::fs::read(&pointer).unwrap(), bytes, "{name}");
    }
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 2, "no part files left: {blobs:?}");
    assert_eq!(cached_repo(&cache, REPO, "main").unwrap(), snapshot);

    // Complete in the cache: the next call asks the hub nothing.
    let again = hub.client().snapshot(&cache, REPO, &["unet"], &[]).unwrap();
    assert_eq!(again, snapshot);
    assert_eq!(hub.seen(), []);
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn a_cut_download_is_never_taken_as_cached_and_the_next_call_resumes_it() {
    let files = fixture();
    let weights = &files[2].1;
    let hub = StandIn::start(&files);
    let cache = temp_cache("cut");
    hub.fault(
        "unet/diffusion_pytorch_model.safetensors",
        &[Fault::CutAfter(8_000)],
    );
    let err = hub
        .client()
        .with_retries(0)
        .snapshot(&cache, REPO, &["unet"], &[])
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("unet/diffusion_pytorch_model.safetensors")
            && message.contains("8000 of 20000 bytes")
            && message.contains("resumes"),
        "{message}"
    );
    // Nothing claims to be the snapshot: no ref, no link, the part kept.
    assert!(matches!(
        cached_repo(&cache, REPO, "main"),
        Err(LoadError::NotCached { .. })
    ));
    let part = repo_dir(&cache).join("blobs").join(format!(
        "{}.incomplete",
        etag("unet/diffusion_pytorch_model.safetensors", true)
    ));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 8_000);
    hub.seen();

    let snapshot = hub.client().snapshot(&cache, REPO, &["unet"], &[]).unwrap();
    let requests = file_requests(&hub.seen());
    assert_eq!(
        requests[0].range.as_deref(),
        Some("bytes=8000-"),
        "{requests:?}"
    );
    assert_eq!(
        &std::fs::read(snapshot.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
        weights
    );
    assert!(!part.exists());
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn a_cut_transfer_is_resumed_within_the_call() {
    let files = fixture();
    let hub = StandIn::start(&files);
    let cache = temp_cache("retry");
    hub.fault(
        "unet/diffusion_pytorch_model.safetensors",
        &[Fault::CutAfter(5_000), Fault::CutAfter(5_000)],
    );
    let snapshot = hub.client().snapshot(&cache, REPO, &["unet"], &[]).unwrap();
    let ranges: Vec<Option<String>> = file_requests(&hub.seen())
        .into_iter()
        .filter(|s| s.path.ends_with(".safetensors"))
        .map(|s| s.range)
        .collect();
    assert_eq!(
        ranges,
        [
            Some("bytes=0-".to_string()),
            Some("bytes=5000-".to_string()),
            Some("bytes=10000-".to_string())
        ]
    );
    assert_eq!(
        std::fs::read(snapshot.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
        files[2].1
    );
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn a_missing_repo_file_or_folder_is_named() {
    let hub = StandIn::start(&fixture());
    let cache = temp_cache("missing");
    let other = hub
        .client()
        .snapshot(&cache, "org/other", &["unet"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        other.contains("`org/other`") && other.contains("404"),
        "{other}"
    );
    let file = hub
        .client()
        .snapshot(&cache, REPO, &["unet"], &["model_index.json"])
        .unwrap_err()
        .to_string();
    assert!(file.contains("no file `model_index.json`"), "{file}");
    let folder = hub
        .client()
        .snapshot(&cache, REPO, &["unet", "vae"], &[])
        .unwrap_err()
        .to_string();
    assert!(folder.contains("under `vae/`"), "{folder}");
    std::fs::remove_dir_all(&cache).ok();
}

#[test]
fn a_stalled_server_times_out_with_an_error_naming_what_it_was_doing() {
    let hub = StandIn::start(&fixture());
    let cache = temp_cache("stall");
    hub.fault("unet/diffusion_pytorch_model.safetensors", &[Fault::Stall]);
    let start = Instant::now();
    let mid_file = hub
        .client()
        .with_retries(0)
        .snapshot(&cache, REPO, &["unet"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        mid_file.contains("unet/diffusion_pytorch_model.safetensors")
            && mid_file.to_lowercase().contains("timed out"),
        "{mid_file}"
    );
    hub.state.lock().unwrap().stall_listing = true;
    let listing = hub
        .client()
        .snapshot(&cache, REPO, &["unet"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        listing.contains("listing the files of `org/tiny`")
            && listing.to_lowercase().contains("timed out"),
        "{listing}"
    );
    // Two 1 s read timeouts, not the stand-in's 30 s stalls.
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    std::fs::remove_dir_all(&cache).ok();
}
