//! Downloads into the Hugging Face cache (cargo feature `hub`), in the layout `huggingface_hub`
//! writes: `blobs/<etag>`, `snapshots/<commit>/<path>` as a relative link to the blob, and
//! `refs/main` holding the commit.
//!
//! Only what the engine reads is fetched: per component subfolder, the JSON/text configs and
//! the non-variant `*.safetensors` (not `.bin`, `.ckpt`, `.onnx`, `.fp16`/`.ema` variants),
//! plus the files a preset names (ImageReward's `ImageReward.pt`, the aesthetic head's `.pth`).
//!
//! Hand-written on `ureq` because `hf-hub`'s blocking client has no timeouts (a stalled server
//! hangs the process), takes a short download as complete, and asserts on the cache.
//!
//! What makes a cut download safe: each file is written to `blobs/<etag>.incomplete` (under a
//! lock) and renamed only once it has the listed size; a later call resumes it with a `Range`
//! request. `refs/main` is written after the last file, and within a subfolder the weights come
//! before the configs, so a snapshot cut part-way is never taken as complete
//! ([`HubClient::snapshot`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::LoadError;

/// A client of the Hugging Face Hub (or a mirror speaking its API).
#[derive(Debug, Clone)]
pub struct HubClient {
    endpoint: String,
    token: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    retries: usize,
}

impl HubClient {
    /// The hub at `endpoint` (e.g. `https://huggingface.co`), no token, a 30 s connect and a
    /// 60 s read timeout (a server silent that long is given up on), 3 in-call resumes of a
    /// cut file.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 3,
        }
    }

    /// The hub `huggingface_hub` would use: `$HF_ENDPOINT`, else huggingface.co; the token
    /// `$HF_TOKEN`, else the one `huggingface-cli login` saved (`$HF_TOKEN_PATH`, else
    /// `$HF_HOME/token`, else `~/.cache/huggingface/token`), for gated repos.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| {
            var("HF_HOME").map(PathBuf::from).map_or_else(
                || {
                    let cache = var("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))
                        .unwrap_or_else(|| PathBuf::from(".cache"));
                    cache.join("huggingface").join("token")
                },
                |home| home.join("token"),
            )
        });
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(token_file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self::new(endpoint).with_token(token)
    }

    /// Sends `token` (`Authorization: Bearer`) with every request to the hub.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Gives up on a server that sends nothing for `timeout` (listing or mid-file).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How many times one call resumes a file whose transfer was cut (0: report the cut; the
    /// next call resumes it).
    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// The snapshot folder of `repo_id` with the configs and weights of `subfolders` (`""` =
    /// the root) and every one of `files`: the cached one when it already holds them, else
    /// downloaded into `cache` (what is there is kept; a cut file is resumed).
    pub fn snapshot(
        &self,
        cache: &Path,
        repo_id: &str,
        subfolders: &[&str],
        files: &[&str],
    ) -> Result<PathBuf, LoadError> {
        if let Ok(dir) = super::cached_repo(cache, repo_id, "main")
            && holds(&dir, subfolders, files)
            && !has_incomplete_blobs(&repo_dir(cache, repo_id))
        {
            return Ok(dir);
        }
        self.download(cache, repo_id, subfolders, files)
    }

    /// Downloads what [`snapshot`](Self::snapshot) needs, whatever the cache holds, and
    /// returns the snapshot folder.
    pub fn download(
        &self,
        cache: &Path,
        repo_id: &str,
        subfolders: &[&str],
        files: &[&str],
    ) -> Result<PathBuf, LoadError> {
        let failed = |reason: String| LoadError::NotCached {
            repo: repo_id.to_string(),
            cache: cache.to_path_buf(),
            reason,
        };
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout_connect(self.connect_timeout)
            .timeout_read(self.read_timeout)
            .build();
        let listing = self.listing(&agent, repo_id).map_err(&failed)?;
        let names: Vec<&str> = listing
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect();
        let mut wanted = to_fetch(&names, subfolders, files).map_err(&failed)?;
        if wanted.is_empty() {
            return Err(failed(
                "the repo has none of the files the engine reads (configs, safetensors)".into(),
            ));
        }
        // Within a folder the configs come last: a folder whose config is there is complete.
        wanted.sort_by_key(|name| {
            (
                Path::new(name).parent().map(Path::to_path_buf),
                is_config(name),
            )
        });
        let repo_dir = repo_dir(cache, repo_id);
        let snapshot = repo_dir.join("snapshots").join(&listing.sha);
        for name in wanted {
            let sibling = listing
                .siblings
                .iter()
                .find(|s| s.rfilename == name)
                .expect("wanted names come from the listing");
            let (etag, size) = sibling.blob().ok_or_else(|| {
                failed(format!(
                    "the hub's listing gives no size and blob id for `{name}` (not a Hugging \
                     Face API?)"
                ))
            })?;
            let blob = repo_dir.join("blobs").join(etag);
            self.fetch_blob(&agent, repo_id, &listing.sha, name, &blob, size)
                .map_err(&failed)?;
            link(&blob, &snapshot.join(name))
                .map_err(|e| failed(format!("linking {name} into {}: {e}", snapshot.display())))?;
        }
        let refs = repo_dir.join("refs");
        std::fs::create_dir_all(&refs)
            .and_then(|()| std::fs::write(refs.join("main"), &listing.sha))
            .map_err(|e| failed(format!("writing {}: {e}", refs.join("main").display())))?;
        Ok(snapshot)
    }

    fn get(&self, agent: &ureq::Agent, url: &str) -> ureq::Request {
        let request = agent.get(url).set("User-Agent", "rewardsds");
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// The repo's files at `main`, with their sizes and blob ids.
    fn listing(&self, agent: &ureq::Agent, repo_id: &str) -> Result<Listing, String> {
        let url = format!(
            "{}/api/models/{repo_id}/revision/main?blobs=true",
            self.endpoint
        );
        let response = self
            .get(agent, &url)
            .call()
            .map_err(|e| self.describe(e, &format!("listing the files of `{repo_id}`")))?;
        response
            .into_json::<Listing>()
            .map_err(|e| format!("listing the files of `{repo_id}` at {url}: {e}"))
    }

    /// Makes `blob` hold `name` at `commit` (`size` bytes), resuming a `.incomplete` part.
    fn fetch_blob(
        &self,
        agent: &ureq::Agent,
        repo_id: &str,
        commit: &str,
        name: &str,
        blob: &Path,
        size: u64,
    ) -> Result<(), String> {
        if blob.metadata().is_ok_and(|m| m.len() == size) {
            return Ok(());
        }
        let dir = blob.parent().expect("a blob is in blobs/");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let part_path = blob.with_extension("incomplete");
        let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", part_path.display());
        let mut part = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part_path)
            .map_err(|e| io("opening", e))?;
        // Another process fetching the same blob: wait for it, then take its result.
        part.lock().map_err(|e| io("locking", e))?;
        if blob.metadata().is_ok_and(|m| m.len() == size) {
            std::fs::remove_file(&part_path).ok();
            return Ok(());
        }
        let url = format!("{}/{repo_id}/resolve/{commit}/{name}", self.endpoint);
        log::info!("downloading {repo_id}/{name} ({size} bytes)");
        let mut attempt = 0;
        loop {
            let had = part.metadata().map_err(|e| io("reading", e))?.len();
            match self.transfer(agent, &url, name, &mut part, had, size) {
                Ok(()) => break,
                Err(Transfer::Fatal(reason)) => return Err(reason),
                Err(Transfer::Cut(reason)) if attempt >= self.retries => {
                    let have = part.metadata().map_or(0, |m| m.len());
                    return Err(format!(
                        "downloading {name}: {reason}; {have} of {size} bytes kept in {}, the \
                         next run resumes from there",
                        part_path.display()
                    ));
                }
                Err(Transfer::Cut(reason)) => {
                    attempt += 1;
                    log::warn!("{repo_id}/{name}: {reason}; resuming (try {attempt})");
                    std::thread::sleep(Duration::from_millis(250 * attempt as u64));
                }
            }
        }
        drop(part);
        std::fs::rename(&part_path, blob).map_err(|e| {
            format!(
                "renaming {} to {}: {e}",
                part_path.display(),
                blob.display()
            )
        })
    }

    /// One request for the bytes of `part` from `had` on, appended to it.
    fn transfer(
        &self,
        agent: &ureq::Agent,
        url: &str,
        name: &str,
        part: &mut File,
        had: u64,
        size: u64,
    ) -> Result<(), Transfer> {
        if had > size {
            // Not a part of this blob: start over.
            part.set_len(0)
                .map_err(|e| Transfer::Fatal(format!("truncating the part of {name}: {e}")))?;
            return Err(Transfer::Cut(format!(
                "the kept part was longer than {size} bytes"
            )));
        }
        if had == size {
            return Ok(());
        }
        let response = match self
            .get(agent, url)
            .set("Range", &format!("bytes={had}-"))
            .call()
        {
            Ok(response) => response,
            Err(ureq::Error::Transport(t)) => {
                return Err(Transfer::Cut(format!("{t}")));
            }
            Err(e) => {
                return Err(Transfer::Fatal(
                    self.describe(e, &format!("downloading {name}")),
                ));
            }
        };
        if response.status() == 200 && had > 0 {
            // The server ignored the range: take the whole file.
            part.set_len(0)
                .map_err(|e| Transfer::Fatal(format!("truncating the part of {name}: {e}")))?;
        }
        let mut reader = response.into_reader().take(size + 1);
        let copied = std::io::copy(&mut reader, part);
        part.flush().ok();
        let now = part.metadata().map_or(0, |m| m.len());
        match copied {
            Err(e) => Err(Transfer::Cut(format!("the transfer broke off ({e})"))),
            Ok(_) if now < size => Err(Transfer::Cut(format!(
                "the server sent {now} of {size} bytes"
            ))),
            Ok(_) if now > size => {
                part.set_len(0).ok();
                Err(Transfer::Fatal(format!(
                    "downloading {name}: the server sent more than the {size} bytes the listing \
                     gives (the file changed on the hub? run again)"
                )))
            }
            Ok(_) => Ok(()),
        }
    }

    /// A failed request in words: the status and what it means, or why the server could not be
    /// reached, with the way out.
    fn describe(&self, error: ureq::Error, what: &str) -> String {
        match error {
            ureq::Error::Status(404, response) => format!(
                "{what}: the hub answers 404 (no such repo or file) at {}",
                response.get_url()
            ),
            ureq::Error::Status(code @ (401 | 403), response) => format!(
                "{what}: the hub answers {code} at {} (a gated or private repo: accept its \
                 licence on the repo page and log in with `huggingface-cli login` or set \
                 HF_TOKEN)",
                response.get_url()
            ),
            ureq::Error::Status(code, response) => format!(
                "{what}: the hub answers {code} {} at {}",
                response.status_text().to_string(),
                response.get_url()
            ),
            ureq::Error::Transport(t) if t.to_string().contains("timed out") => format!(
                "{what}: {} sent nothing for {} s ({t}); the hub or the network is stalled, try \
                 again later",
                self.endpoint,
                self.read_timeout.as_secs_f32()
            ),
            ureq::Error::Transport(t) => format!(
                "{what}: cannot reach {} ({t}); no network? `huggingface-cli download` on a \
                 connected machine fills the cache, HF_HUB_OFFLINE=1 stops the engine from \
                 trying",
                self.endpoint
            ),
        }
    }
}

/// Why one transfer did not finish.
enum Transfer {
    /// Cut or stalled: worth resuming.
    Cut(String),
    /// Refused or inconsistent: resuming would not help.
    Fatal(String),
}

/// The part of the hub's `api/models/<repo>/revision/<rev>?blobs=true` answer we read.
#[derive(Deserialize)]
struct Listing {
    /// The commit `main` points at.
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    /// The blob's name in the cache (the etag the hub serves: the LFS sha256, else the git
    /// blob id) and its size.
    fn blob(&self) -> Option<(&str, u64)> {
        match &self.lfs {
            Some(lfs) => Some((lfs.sha256.as_str(), lfs.size)),
            None => Some((self.blob_id.as_deref()?, self.size?)),
        }
    }
}

fn repo_dir(cache: &Path, repo_id: &str) -> PathBuf {
    cache.join(format!("models--{}", repo_id.replace('/', "--")))
}

/// Whether the snapshot `dir` holds every one of `files` and a config in each of `subfolders`
/// but the root (a config is written after its folder's weights, so a cut folder has none).
fn holds(dir: &Path, subfolders: &[&str], files: &[&str]) -> bool {
    let has_config = |sub: &str| {
        std::fs::read_dir(dir.join(sub)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| is_config(&e.file_name().to_string_lossy()))
        })
    };
    files.iter().all(|f| dir.join(f).is_file())
        && subfolders
            .iter()
            .filter(|s| !s.is_empty() && **s != super::resolve::ONLY_NAMED_FILES)
            .all(|s| has_config(s))
}

/// Whether a download of this repo was cut mid-file.
fn has_incomplete_blobs(repo_dir: &Path) -> bool {
    std::fs::read_dir(repo_dir.join("blobs")).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "incomplete"))
    })
}

/// Points `pointer` at `blob` as `huggingface_hub` does: a relative symbolic link (a copy where
/// links cannot be made).
fn link(blob: &Path, pointer: &Path) -> std::io::Result<()> {
    let parent = pointer
        .parent()
        .expect("a snapshot file is in its snapshot");
    std::fs::create_dir_all(parent)?;
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer)?;
    }
    // From `snapshots/<commit>/<dirs..>/` up to the repo folder, then into `blobs/`.
    let repo = blob
        .parent()
        .and_then(Path::parent)
        .expect("blobs/ is in the repo folder");
    let depth = parent
        .strip_prefix(repo)
        .map_or(0, |p| p.components().count());
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().expect("a blob has a name"));
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let made = std::fs::copy(blob, pointer).map(|_| ());
    made
}

fn is_config(name: &str) -> bool {
    name.ends_with(".json") || name.ends_with(".txt")
}

/// Of the repo's files `names`, those to fetch: the configs and weights of `subfolders` and
/// every one of `files` (an error names a file, or a subfolder but the root, the repo lacks).
fn to_fetch<'a>(
    names: &[&'a str],
    subfolders: &[&str],
    files: &[&str],
) -> Result<Vec<&'a str>, String> {
    if let Some(missing) = files.iter().find(|f| !names.contains(f)) {
        return Err(format!("the repo has no file `{missing}`"));
    }
    let wanted: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| files.contains(name) || wanted_file(name, subfolders))
        .collect();
    let lacking = subfolders.iter().find(|sub| {
        !sub.is_empty()
            && **sub != super::resolve::ONLY_NAMED_FILES
            && !wanted
                .iter()
                .any(|name| name.starts_with(&format!("{sub}/")))
    });
    match lacking {
        Some(sub) => Err(format!("the repo has no configs or weights under `{sub}/`")),
        None => Ok(wanted),
    }
}

fn wanted_file(name: &str, subfolders: &[&str]) -> bool {
    let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
    let in_scope = subfolders.is_empty() || subfolders.contains(&dir);
    let weights = file.ends_with(".safetensors")
        && !file.contains(".fp16.")
        && !file.contains(".ema")
        && !file.contains("non_ema");
    in_scope && (is_config(file) || weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_hub_is_an_error_naming_the_repo_and_the_way_out() {
        let cache = std::env::temp_dir().join(format!("rsds-hub-{}", std::process::id()));
        // Port 9 (discard) on the loopback: nothing listens, the connection is refused at once.
        let err = HubClient::new("http://127.0.0.1:9")
            .download(&cache, "org/missing", &["unet"], &[])
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LoadError::NotCached { .. }), "{err:?}");
        assert!(message.contains("`org/missing`"), "{message}");
        assert!(message.contains("listing the files"), "{message}");
        assert!(message.contains("HF_HUB_OFFLINE=1"), "{message}");
        std::fs::remove_dir_all(&cache).ok();
    }

    #[test]
    fn only_configs_and_plain_safetensors_of_the_asked_subfolders_are_fetched() {
        let sd = ["unet", "vae"];
        assert!(wanted_file("unet/config.json", &sd));
        assert!(wanted_file("unet/diffusion_pytorch_model.safetensors", &sd));
        assert!(!wanted_file(
            "unet/diffusion_pytorch_model.fp16.safetensors",
            &sd
        ));
        assert!(!wanted_file("unet/diffusion_pytorch_model.bin", &sd));
        assert!(!wanted_file(
            "vae/diffusion_pytorch_model.non_ema.safetensors",
            &sd
        ));
        assert!(!wanted_file("safety_checker/model.safetensors", &sd));
        assert!(wanted_file("model.safetensors", &[]));
        assert!(wanted_file("tokenizer.json", &[]));
    }

    #[test]
    fn a_companion_repo_gives_only_the_files_named() {
        let repo = [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
        ];
        let only = [super::super::resolve::ONLY_NAMED_FILES];
        assert_eq!(
            to_fetch(&repo, &only, &["vocab.txt"]).unwrap(),
            ["vocab.txt"]
        );
    }

    #[test]
    fn the_files_a_preset_names_are_fetched_whatever_their_kind() {
        // THUDM/ImageReward's files: the weights are a torch pickle.
        let repo = [
            "ImageReward.pt",
            "med_config.json",
            "README.md",
            "other.bin",
        ];
        let fetched = to_fetch(&repo, &[""], &["ImageReward.pt", "med_config.json"]).unwrap();
        assert_eq!(fetched, ["ImageReward.pt", "med_config.json"]);
        let err = to_fetch(&repo, &[""], &["sac+logos+ava1-l14-linearMSE.pth"]).unwrap_err();
        assert!(err.contains("sac+logos+ava1-l14-linearMSE.pth"), "{err}");
    }
}
