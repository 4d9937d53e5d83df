//! Models from the Hugging Face Hub: `--model org/name[@revision]`.
//!
//! A hub id resolves to a snapshot directory of the standard Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), the layout
//! `huggingface_hub`, transformers, vLLM and hf-hub share: `models--org--name/blobs/<etag>`,
//! `snapshots/<commit>/<file>` as relative symlinks to the blobs, `refs/<revision>` holding the
//! commit, and `.no_exist/<commit>/<file>` recording files the repository does not have.
//!
//! When the snapshot already holds what awqc reads (config.json, the safetensors weights, and
//! for each optional file either the file or its `.no_exist` record), it is used without any
//! network request. Otherwise the files are downloaded with hf-hub's sync client, honouring
//! `HF_ENDPOINT`, `HF_TOKEN` (else the token file), `HF_HUB_OFFLINE` and the proxy variables.
//!
//! hf-hub moves a finished download into its snapshot before anyone can check it, so awqc points
//! it at a private staging cache inside the repository folder (`.awqc-download/`). There the
//! partial `<etag>.part` files persist, so an interrupted download resumes (hf-hub sends
//! `Range: bytes=<have>-`). A finished file is checked against its etag (the sha256 of an LFS
//! file, the git blob sha1 of a small one) and only then moved into `blobs/` and linked from the
//! snapshot: nothing unverified or half-written ever appears under `snapshots/`.

use crate::error::{Error, ErrorKind, IoContext, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

const CONFIG: &str = "config.json";
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// Files awqc reads (or copies next to a quantized model) when the repository has them: the
/// generation and tokenizer files (`formats::awq_gemm::copy_tokenizer_files` copies the same
/// names) and AutoAWQ's legacy `quant_config.json`. Top-level `*.model` / `*.tiktoken` tokenizer
/// files are fetched too. Never `*.bin`, `*.pth`, `*.gguf` or other copies of the weights.
const OPTIONAL: [&str; 8] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "quant_config.json",
];

/// In-process retries of a transfer that broke off (each resumes where the data stopped).
const RETRIES: usize = 3;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

// ---------------------------------------------------------------------------------------------
// Hub ids

/// `org/name[@revision]` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId<'a> {
    pub repo: &'a str,
    pub revision: Option<&'a str>,
}

/// Parse a hub id, or `None` when `arg` is not one (the hub's own naming rules: two segments of
/// letters, digits, `.`, `_`, `-`, not starting with `.` or `-`, no `--` or `..`, at most 96).
pub fn parse_id(arg: &str) -> Option<HubId<'_>> {
    let (repo, revision) = match arg.split_once('@') {
        Some((r, rev)) => (r, Some(rev)),
        None => (arg, None),
    };
    let segs: Vec<&str> = repo.split('/').collect();
    let seg_ok = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !s.starts_with(['.', '-'])
            && !s.ends_with(['.', '-'])
            && !s.contains("--")
            && !s.contains("..")
    };
    if segs.len() != 2 || repo.len() > 96 || !segs.iter().all(|s| seg_ok(s)) {
        return None;
    }
    if let Some(rev) = revision {
        if !revision_ok(rev) {
            return None;
        }
    }
    Some(HubId { repo, revision })
}

/// A revision is a branch, tag or commit; it becomes a path under `refs/`, so it must not be able
/// to leave that directory.
fn revision_ok(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= 256
        && rev.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && rev.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The snapshot directory of `repo` at `revision`, downloading what is missing.
/// `arg` is what the user typed (for messages).
pub fn snapshot(arg: &str, repo: &str, revision: &str) -> Result<PathBuf> {
    if !revision_ok(revision) {
        return Err(Error::usage(format!(
            "--revision {revision:?}: not a branch, tag or commit name (letters, digits, . _ - and /)"
        )));
    }
    let env = HubEnv::from_env()?;
    let rc = RepoCache::new(&env.cache, repo);
    let cached = rc.commit_of(revision);
    let state = cached.as_deref().map(|c| rc.state(c));
    if let (Some(c), Some(st)) = (&cached, &state) {
        // Unknown optional files (a snapshot another tool made) only matter when the hub can
        // tell whether they exist; offline, config + weights are enough.
        if st.missing.is_empty() && (st.unknown.is_empty() || env.offline) {
            return Ok(rc.snapshot(c));
        }
    }
    let missing = || match &state {
        Some(st) if !st.missing.is_empty() => st.missing.join(", "),
        _ => format!("{CONFIG}, the safetensors weights"),
    };
    let label = format!("{repo}@{revision}");
    if env.offline {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{label}: not complete in the Hugging Face cache at {} (missing: {}), and HF_HUB_OFFLINE is set, so awqc does not download it (unset HF_HUB_OFFLINE to fetch them)",
                env.cache.display(),
                missing()
            ),
        ));
    }
    match download(&env, &rc, arg, repo, revision) {
        Ok(p) => Ok(p),
        Err(Fail::Unreachable(why)) => {
            let via = env.proxy.as_deref().map(|p| format!(" through the proxy {p}")).unwrap_or_default();
            if let (Some(c), Some(st)) = (&cached, &state) {
                if st.missing.is_empty() {
                    // Everything awqc needs is there; only optional files could not be checked.
                    crate::progress::status(&format!(
                        "awqc: cannot reach {}{via} ({why}); using the cached snapshot of {label}",
                        env.endpoint
                    ));
                    return Ok(rc.snapshot(c));
                }
            }
            Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{label}: cannot reach {}{via} ({why}), and the Hugging Face cache at {} lacks {} (HF_HUB_OFFLINE is not set, so awqc tried to download them)",
                    env.endpoint,
                    env.cache.display(),
                    missing()
                ),
            ))
        }
        Err(Fail::Error(e)) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

/// Where the cache is, which hub to talk to and how.
struct HubEnv {
    cache: PathBuf,
    endpoint: String,
    token: Option<String>,
    /// Where the token came from, for messages.
    token_source: &'static str,
    offline: bool,
    /// The proxy ureq will use (credentials removed), for messages.
    proxy: Option<String>,
}

/// The proxy variables ureq 2 reads, in its order (it ignores `NO_PROXY`).
const PROXY_VARS: [&str; 6] = ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];

fn env_nonempty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub`'s truthy values for boolean variables.
fn env_true(k: &str) -> bool {
    env_nonempty(k).is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

impl HubEnv {
    fn from_env() -> Result<Self> {
        // The same precedence as huggingface_hub, so awqc finds what other tools downloaded.
        let home = env_nonempty("HF_HOME").map(PathBuf::from).or_else(|| {
            env_nonempty("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|c| c.join("huggingface"))
        });
        let cache = match env_nonempty("HF_HUB_CACHE") {
            Some(c) => PathBuf::from(c),
            None => home
                .as_ref()
                .map(|h| h.join("hub"))
                .ok_or_else(|| Error::usage("cannot locate the Hugging Face cache: set HF_HOME (HOME is not set)"))?,
        };
        let endpoint = env_nonempty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        let token_file = env_nonempty("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join("token")));
        let (token, token_source) = match env_nonempty("HF_TOKEN") {
            Some(t) => (Some(t.trim().to_string()), "HF_TOKEN"),
            None => match token_file.and_then(|p| std::fs::read_to_string(p).ok()).filter(|t| !t.trim().is_empty()) {
                Some(t) => (Some(t.trim().to_string()), "the token file in HF_HOME"),
                None => (None, ""),
            },
        };
        let offline = env_true("HF_HUB_OFFLINE");
        let proxy = if offline { None } else { apply_no_proxy(&endpoint) };
        Ok(HubEnv { cache, endpoint, token, token_source, offline, proxy })
    }

    /// An hf-hub client whose cache is `staging` (see the module comment).
    fn api(&self, staging: &Path) -> Result<Api, Fail> {
        ApiBuilder::from_cache(Cache::new(staging.to_path_buf()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(RETRIES)
            .with_user_agent("awqc", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| Fail::Error(Error::internal(format!("cannot create the hub client: {e}"))))
    }
}

/// The host of an endpoint URL (`https://user@host:port/path` -> `host`).
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let hostport = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    hostport.split(':').next().unwrap_or(hostport)
}

/// Whether `NO_PROXY` (curl's rules: `*`, exact hosts, domain suffixes) exempts `host`.
fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()).filter(|e| !e.is_empty()).any(|e| {
        if e == "*" {
            return true;
        }
        let e = url_host(&e).trim_start_matches("*.").trim_start_matches('.').to_string();
        host == e || host.ends_with(&format!(".{e}"))
    })
}

/// ureq (hf-hub's HTTP client) takes its proxy from `ALL_PROXY` / `HTTPS_PROXY` / `HTTP_PROXY` but
/// ignores `NO_PROXY`. awqc applies `NO_PROXY` itself: when it exempts the endpoint's host, the
/// proxy variables are removed from this process before the client reads them (awqc makes no
/// other HTTP requests). Returns the proxy that stays in effect, without credentials.
fn apply_no_proxy(endpoint: &str) -> Option<String> {
    let no_proxy = env_nonempty("NO_PROXY").or_else(|| env_nonempty("no_proxy"));
    if no_proxy.is_some_and(|np| no_proxy_matches(&np, url_host(endpoint))) {
        for k in PROXY_VARS {
            std::env::remove_var(k);
        }
        return None;
    }
    PROXY_VARS.iter().find_map(|k| env_nonempty(k)).map(|p| match p.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, h)| h)),
        None => p.rsplit_once('@').map_or(p.as_str(), |(_, h)| h).to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// The cache layout

struct RepoCache {
    /// `<cache>/models--org--name`.
    dir: PathBuf,
}

/// What a snapshot lacks.
struct SnapshotState {
    /// Files awqc cannot work without (config.json, weights): named for messages.
    missing: Vec<String>,
    /// Optional files neither present nor recorded as absent on the hub.
    unknown: Vec<String>,
}

/// A present file (a symlink counts only when its blob is there).
fn present(p: &Path) -> bool {
    p.is_file()
}

impl RepoCache {
    fn new(cache: &Path, repo: &str) -> Self {
        RepoCache { dir: cache.join(Repo::new(repo.to_string(), RepoType::Model).folder_name()) }
    }
    fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }
    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    fn no_exist(&self, commit: &str) -> PathBuf {
        self.dir.join(".no_exist").join(commit)
    }
    fn staging(&self) -> PathBuf {
        self.dir.join(".awqc-download")
    }

    /// The commit a revision points to in the cache, if any.
    fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit(revision) && self.snapshot(revision).is_dir() {
            return Some(revision.to_string());
        }
        let c = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let c = c.trim();
        (is_commit(c) && self.snapshot(c).is_dir()).then(|| c.to_string())
    }

    fn state(&self, commit: &str) -> SnapshotState {
        let snap = self.snapshot(commit);
        let mut missing = Vec::new();
        if !present(&snap.join(CONFIG)) {
            missing.push(CONFIG.to_string());
        }
        if present(&snap.join(INDEX)) {
            match std::fs::read(snap.join(INDEX)).ok().and_then(|b| shards_of_index(&b).ok()) {
                Some(shards) => missing.extend(shards.into_iter().filter(|s| !present(&snap.join(s)))),
                None => missing.push(INDEX.to_string()),
            }
        } else if !present(&snap.join(SINGLE)) && !has_safetensors(&snap) {
            missing.push(format!("{SINGLE} (or {INDEX} and its shards)"));
        }
        let no_exist = self.no_exist(commit);
        let unknown = OPTIONAL
            .iter()
            .filter(|f| !present(&snap.join(f)) && !no_exist.join(f).exists())
            .map(|f| f.to_string())
            .collect();
        SnapshotState { missing, unknown }
    }

    /// Record `revision -> commit` (branches and tags; a commit needs no ref).
    fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        write_atomic(&path, commit.as_bytes())
    }
}

fn has_safetensors(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file())
    })
}

/// Write a small file (a ref, a `.no_exist` marker) atomically, making its folder first.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).at(parent.display())?;
    crate::fsutil::write_file_atomic(path, bytes)
}

/// The shard file names a `model.safetensors.index.json` lists (plain names only, sorted).
pub fn shards_of_index(bytes: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::input(INDEX, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::input(INDEX, "missing object \"weight_map\""))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| Error::input(INDEX, format!("weight_map entry {tensor:?} is not a file name")))?;
        if !plain_name(f) {
            return Err(Error::input(INDEX, format!("weight_map file {f:?} is not a plain file name")));
        }
        names.insert(f.to_string());
    }
    if names.is_empty() {
        return Err(Error::input(INDEX, "weight_map is empty"));
    }
    Ok(names.into_iter().collect())
}

/// A file name without directories that cannot escape the snapshot.
fn plain_name(f: &str) -> bool {
    !f.is_empty() && !f.contains(['/', '\\']) && !f.starts_with('.')
}

// ---------------------------------------------------------------------------------------------
// Downloading

/// A download failure: either the hub could not be reached (the caller may fall back to the
/// cache), or anything else, already worded.
enum Fail {
    Unreachable(String),
    Error(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Error(e)
    }
}

/// What was being asked of the hub when a request failed (for messages).
enum Asking<'a> {
    /// The file list of the repository at a revision.
    Info,
    /// One file.
    File(&'a str),
}

fn download(env: &HubEnv, rc: &RepoCache, arg: &str, repo: &str, revision: &str) -> Result<PathBuf, Fail> {
    let t0 = Instant::now();
    let staging = rc.staging();
    let api = env.api(&staging)?;
    let describe = |e: ApiError, what: Asking| describe_failure(env, arg, repo, revision, what, e);

    let info = api
        .repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()))
        .info()
        .map_err(|e| describe(e, Asking::Info))?;
    let commit = info.sha.trim().to_string();
    if !is_commit(&commit) {
        return Err(Fail::Error(Error::new(
            ErrorKind::Io,
            format!("{repo}@{revision}: {} answered an invalid commit id {commit:?}", env.endpoint),
        )));
    }
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if !listed.contains(CONFIG) {
        return Err(Fail::Error(Error::input(
            format!("{repo}@{revision}"),
            format!("the repository has no {CONFIG}: not a transformers model (files: {})", summarize(&listed)),
        )));
    }
    let snap = rc.snapshot(&commit);
    std::fs::create_dir_all(&snap).at(snap.display())?;
    rc.write_ref(revision, &commit)?;
    // Record what the repository lacks, as huggingface_hub does, so the next run can tell a
    // complete snapshot without asking the hub.
    let no_exist = rc.no_exist(&commit);
    for f in OPTIONAL.iter().filter(|f| !listed.contains(**f)) {
        let p = no_exist.join(f);
        if !p.exists() {
            write_atomic(&p, b"")?;
        }
    }

    // What to fetch: configs and tokenizer files first (the index names the shards).
    let mut first: Vec<String> = vec![CONFIG.to_string()];
    first.extend(OPTIONAL.iter().filter(|f| listed.contains(**f)).map(|f| f.to_string()));
    first.extend(
        listed.iter().filter(|f| plain_name(f) && (f.ends_with(".model") || f.ends_with(".tiktoken"))).cloned(),
    );
    let weights_listed: Vec<String> =
        listed.iter().filter(|f| plain_name(f) && f.ends_with(".safetensors")).cloned().collect();
    let sharded = listed.contains(INDEX);
    if sharded {
        first.push(INDEX.to_string());
    } else if weights_listed.is_empty() {
        return Err(Fail::Error(Error::input(
            format!("{repo}@{revision}"),
            format!(
                "the repository has no safetensors weights, and awqc reads only those (files: {})",
                summarize(&listed)
            ),
        )));
    }

    let fetcher = Fetcher { rc, api: &api, repo, revision, commit: &commit, staging: &staging };
    let mut stats = Stats::default();
    let fetch = |f: &str, stats: &mut Stats| {
        fetcher.ensure(f, stats).map_err(|e| match e {
            FetchFail::Api(e) => describe(e, Asking::File(f)),
            FetchFail::Done(e) => Fail::Error(e),
        })
    };
    for f in &first {
        fetch(f, &mut stats)?;
    }
    let weights: Vec<String> = if sharded {
        let index = snap.join(INDEX);
        let bytes = std::fs::read(&index).at(index.display())?;
        let shards = shards_of_index(&bytes).map_err(|e| e.context(format!("{repo}@{revision}")))?;
        if let Some(gone) = shards.iter().find(|s| !listed.contains(*s)) {
            return Err(Fail::Error(Error::input(
                format!("{repo}@{revision}: {INDEX}"),
                format!("weight_map names shard {gone:?}, which the repository does not have"),
            )));
        }
        shards
    } else if listed.contains(SINGLE) {
        vec![SINGLE.to_string()]
    } else {
        // No index and no model.safetensors: every top-level safetensors file, as
        // `SafetensorsRepo::open_dir` reads them.
        weights_listed
    };
    for f in &weights {
        fetch(f, &mut stats)?;
    }
    fetcher.clean_staging();
    crate::progress::status(&format!(
        "awqc: downloaded {} file{} ({}) of {repo}@{revision} from {} in {:.1} s into {}",
        stats.files,
        if stats.files == 1 { "" } else { "s" },
        indicatif::HumanBytes(stats.bytes),
        env.endpoint,
        t0.elapsed().as_secs_f64(),
        snap.display()
    ));
    Ok(snap)
}

/// A short list of a repository's files for messages.
fn summarize(listed: &BTreeSet<String>) -> String {
    let shown: Vec<&str> = listed.iter().take(8).map(String::as_str).collect();
    let more = listed.len().saturating_sub(shown.len());
    if listed.is_empty() {
        "none".into()
    } else if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[derive(Default)]
struct Stats {
    files: usize,
    bytes: u64,
}

enum FetchFail {
    /// A request failed: worded by `describe_failure`.
    Api(ApiError),
    /// Already a complete message.
    Done(Error),
}

impl From<Error> for FetchFail {
    fn from(e: Error) -> Self {
        FetchFail::Done(e)
    }
}

struct Fetcher<'a> {
    rc: &'a RepoCache,
    api: &'a Api,
    repo: &'a str,
    revision: &'a str,
    commit: &'a str,
    staging: &'a Path,
}

impl Fetcher<'_> {
    /// The staging copy of this repository (hf-hub's layout under the staging cache).
    fn staged_repo(&self) -> PathBuf {
        self.staging.join(Repo::new(self.repo.to_string(), RepoType::Model).folder_name())
    }

    /// Make sure `file` is in the snapshot: download it into staging, verify, move it in.
    /// A file whose check fails is deleted and downloaded once more, then refused.
    fn ensure(&self, file: &str, stats: &mut Stats) -> Result<(), FetchFail> {
        let target = self.rc.snapshot(self.commit).join(file);
        if present(&target) {
            return Ok(());
        }
        let mut resume_refused = false;
        for attempt in 0..2 {
            let started = Instant::now();
            let bar = FileBar::new(file);
            // Pin the commit, so every file comes from the same one even if the branch moves.
            let repo = Repo::with_revision(self.repo.to_string(), RepoType::Model, self.commit.to_string());
            let pointer = match self.api.repo(repo).download_with_progress(file, bar.clone()) {
                Ok(p) => p,
                Err(ApiError::InvalidResume) if !resume_refused => {
                    // A leftover partial file longer than the hub's file: it belongs to nothing
                    // usable; discard the partial files and start over.
                    resume_refused = true;
                    bar.clear();
                    self.discard_partials();
                    continue;
                }
                Err(e) => {
                    bar.clear();
                    return Err(self.disk_full_context(file, e));
                }
            };
            let (blob, etag) = self.staged_blob(&pointer)?;
            let size = std::fs::metadata(&blob).at(blob.display())?.len();
            match verify(&blob, &etag) {
                Ok(Verified::Yes(algo)) => {
                    bar.done(file, size, started, &format!("{algo} ok"));
                }
                Ok(Verified::Unknown) => {
                    bar.done(file, size, started, "not verified");
                    crate::progress::status(&format!(
                        "awqc: warning: {file}: the hub's etag {etag:?} is neither a sha256 nor a git sha1; it was not verified"
                    ));
                }
                Ok(Verified::Mismatch { algo, got }) => {
                    bar.clear();
                    self.remove_staged(&pointer, &blob);
                    if attempt == 0 {
                        crate::progress::status(&format!(
                            "awqc: {file}: {algo} {got} does not match the hub's {etag}; deleted it, downloading it again"
                        ));
                        continue;
                    }
                    return Err(FetchFail::Done(Error::new(
                        ErrorKind::Io,
                        format!(
                            "{}@{}: {file} failed its {algo} check twice (got {got}, the hub says {etag}); deleted it, nothing of it is in the cache",
                            self.repo, self.revision
                        ),
                    )));
                }
                Err(e) => return Err(FetchFail::Done(Error::io(blob.display(), e))),
            }
            self.install(file, &pointer, &blob, &etag)?;
            stats.files += 1;
            stats.bytes += size;
            return Ok(());
        }
        Err(FetchFail::Done(Error::new(
            ErrorKind::Io,
            format!("{}@{}: {file}: the partial download could not be resumed", self.repo, self.revision),
        )))
    }

    /// The verified-to-be blob hf-hub wrote for `pointer`, and its etag (the blob's name under
    /// `blobs/`; a weak etag `W/"x"` leaves hf-hub's name as `W/x`).
    fn staged_blob(&self, pointer: &Path) -> Result<(PathBuf, String), FetchFail> {
        let link = std::fs::read_link(pointer).at(pointer.display())?;
        let blob = pointer.parent().unwrap_or(Path::new(".")).join(&link);
        let blobs = self.staged_repo().join("blobs");
        let blob = std::fs::canonicalize(&blob).at(blob.display())?;
        let blobs_c = std::fs::canonicalize(&blobs).at(blobs.display())?;
        let name = blob
            .strip_prefix(&blobs_c)
            .map_err(|_| {
                FetchFail::Done(Error::internal(format!("{}: not a blob of the staging cache", blob.display())))
            })?
            .to_string_lossy()
            .to_string();
        let etag = name.strip_prefix("W/").unwrap_or(&name).to_string();
        Ok((blob, etag))
    }

    /// Move a verified blob into the real cache and link it from the snapshot.
    fn install(&self, file: &str, pointer: &Path, blob: &Path, etag: &str) -> Result<(), FetchFail> {
        if !plain_name(etag) {
            return Err(FetchFail::Done(Error::new(
                ErrorKind::Io,
                format!("{file}: the hub's etag {etag:?} cannot name a cache file"),
            )));
        }
        let blobs = self.rc.blobs();
        std::fs::create_dir_all(&blobs).at(blobs.display())?;
        let dest = blobs.join(etag);
        // Same content already cached (another revision or another tool): the staged copy goes
        // with the rest of the staging bookkeeping below.
        if !present(&dest) {
            std::fs::rename(blob, &dest).at(dest.display())?;
        }
        let link = self.rc.snapshot(self.commit).join(file);
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).at(dir.display())?;
        }
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).at(link.display())?;
        }
        link_blob(&dest, etag, &link).at(link.display())?;
        self.remove_staged(pointer, blob);
        Ok(())
    }

    /// Remove hf-hub's staged pointer, blob (if still there) and lock file of one download.
    fn remove_staged(&self, pointer: &Path, blob: &Path) {
        let _ = std::fs::remove_file(blob);
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(blob.with_extension("lock"));
    }

    /// Delete this repository's partial downloads in staging (after hf-hub refused to resume one).
    fn discard_partials(&self) {
        let blobs = self.staged_repo().join("blobs");
        for dir in [blobs.clone(), blobs.join("W")] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.filter_map(|e| e.ok()) {
                    if e.file_name().to_string_lossy().ends_with(".part") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Remove what the finished download left in staging: empty directories and hf-hub's
    /// refs/pointer bookkeeping. Partial files of other downloads (another process, another
    /// revision) are left alone, so only empty directories are removed.
    fn clean_staging(&self) {
        let staged = self.staged_repo();
        let _ = std::fs::remove_file(staged.join("refs").join(self.commit));
        for d in [
            staged.join("snapshots").join(self.commit),
            staged.join("snapshots"),
            staged.join("refs"),
            staged.join("blobs").join("W"),
            staged.join("blobs"),
            staged.clone(),
            self.staging.to_path_buf(),
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// hf-hub reports a failed write as a bare I/O error: name where it was writing. (An OS
    /// error that is not a broken connection came from the file system, not the network.)
    fn disk_full_context(&self, file: &str, e: ApiError) -> FetchFail {
        let blobs = self.staged_repo().join("blobs");
        match e {
            ApiError::IoError(io) if crate::error::is_disk_full(&io) => FetchFail::Done(Error::new(
                ErrorKind::Io,
                format!(
                    "{}: no space left on the device while downloading {file} of {}@{} (free some space and run again: the partial file is kept there and the download resumes; nothing was added to the snapshot)",
                    blobs.display(),
                    self.repo,
                    self.revision
                ),
            )),
            ApiError::IoError(io) if io.raw_os_error().is_some() && !is_transfer(&io) => FetchFail::Done(Error::new(
                ErrorKind::Io,
                format!("{}: {io} while downloading {file} of {}@{}", blobs.display(), self.repo, self.revision),
            )),
            e => FetchFail::Api(e),
        }
    }
}

/// Link `link` to the blob `dest` the way the cache does (a relative symlink).
fn link_blob(dest: &Path, etag: &str, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = dest;
        // snapshots/<commit>/<file> -> ../../blobs/<etag>; files are plain names (checked).
        std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), link)
    }
    #[cfg(not(unix))]
    {
        let _ = etag;
        std::fs::copy(dest, link).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// Verification

enum Verified {
    Yes(&'static str),
    Mismatch { algo: &'static str, got: String },
    /// The etag is not a content hash (a mirror that does not follow the hub's convention).
    Unknown,
}

/// Check a file against its etag: an LFS file's etag is its sha256, a regular file's is its git
/// blob id (sha1 of `"blob <len>\0"` + content).
fn verify(path: &Path, etag: &str) -> std::io::Result<Verified> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let etag = etag.to_ascii_lowercase();
    if etag.len() == 64 && hex(&etag) {
        let got = sha256_file(path)?;
        return Ok(if got == etag { Verified::Yes("sha256") } else { Verified::Mismatch { algo: "sha256", got } });
    }
    if etag.len() == 40 && hex(&etag) {
        let got = git_blob_sha1(path)?;
        return Ok(if got == etag { Verified::Yes("git sha1") } else { Verified::Mismatch { algo: "git sha1", got } });
    }
    Ok(Verified::Unknown)
}

/// The hex digest of what `prefix` then the file's bytes hash to.
fn file_digest<D: sha2::Digest>(path: &Path, prefix: &[u8]) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = D::new();
    h.update(prefix);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The etag of an LFS file.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    file_digest::<sha2::Sha256>(path, b"")
}

/// The etag of a small (non-LFS) file: its git blob id, the SHA-1 of `blob <len>\0` and the bytes.
fn git_blob_sha1(path: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    file_digest::<sha1::Sha1>(path, format!("blob {len}\0").as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An I/O error of a connection (the body stopped coming), not of the file system.
fn is_transfer(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Word a failed hub request: what was asked, what the hub said, and what to do.
fn describe_failure(env: &HubEnv, arg: &str, repo: &str, revision: &str, what: Asking, e: ApiError) -> Fail {
    let label = format!("{repo}@{revision}");
    let subject = match what {
        Asking::Info => label.clone(),
        Asking::File(f) => format!("{label}: {f}"),
    };
    match e {
        ApiError::TooManyRetries(inner) => describe_failure(env, arg, repo, revision, what, *inner),
        ApiError::RequestError(err) => {
            let text = err.to_string();
            let Some(resp) = (*err).into_response() else {
                return match what {
                    Asking::Info => Fail::Unreachable(text),
                    Asking::File(f) => Fail::Error(Error::new(
                        ErrorKind::Io,
                        format!("{label}: downloading {f} from {} failed ({text}); run again to resume", env.endpoint),
                    )),
                };
            };
            let code = resp.status();
            let hub_code = resp.header("x-error-code").map(str::to_string);
            let hub_msg = resp.header("x-error-message").map(|m| format!(": {m}")).unwrap_or_default();
            let token_hint = match &env.token {
                None => "set HF_TOKEN to an access token of an account that can read it".to_string(),
                Some(_) => format!("the token from {} has no access to it", env.token_source),
            };
            let (kind, msg) = match (code, hub_code.as_deref()) {
                (_, Some("RevisionNotFound")) => (
                    ErrorKind::Input,
                    format!("{repo}: {} has no revision {revision:?} (not a branch, tag or commit of it)", env.endpoint),
                ),
                (401 | 404, Some("RepoNotFound")) => (
                    ErrorKind::Input,
                    format!(
                        "{arg}: not a local path, and {} has no model repository {repo} (if it is private or gated, {token_hint})",
                        env.endpoint
                    ),
                ),
                (_, Some("GatedRepo")) | (403, _) => (
                    ErrorKind::Input,
                    format!(
                        "{subject}: access denied ({code}{hub_msg}): a gated repository needs its terms accepted on the hub, and {token_hint}"
                    ),
                ),
                (401, _) => match &env.token {
                    None => (
                        ErrorKind::Input,
                        format!("{subject}: {} requires authentication (401{hub_msg}): set HF_TOKEN to an access token", env.endpoint),
                    ),
                    Some(_) => (
                        ErrorKind::Input,
                        format!(
                            "{subject}: {} rejected the token from {} (401{hub_msg}): check that it is valid and can read this repository",
                            env.endpoint, env.token_source
                        ),
                    ),
                },
                (404, _) => match what {
                    Asking::Info => (
                        ErrorKind::Input,
                        format!(
                            "{arg}: not a local path, and {} has no model repository {repo} with a revision {revision:?} (404{hub_msg})",
                            env.endpoint
                        ),
                    ),
                    Asking::File(f) => (
                        ErrorKind::Input,
                        format!("{label}: the hub lists {f} but answered 404 for it{hub_msg}"),
                    ),
                },
                _ => (ErrorKind::Io, format!("{subject}: {} answered HTTP {code}{hub_msg}", env.endpoint)),
            };
            Fail::Error(Error::new(kind, msg))
        }
        ApiError::IoError(io) => {
            let transfer = is_transfer(&io);
            match what {
                Asking::Info if io.kind() == std::io::ErrorKind::InvalidData => Fail::Error(Error::new(
                    ErrorKind::Io,
                    format!("{label}: {} answered a file list that is not the hub's JSON ({io})", env.endpoint),
                )),
                Asking::Info if transfer => Fail::Unreachable(io.to_string()),
                Asking::File(f) if transfer => Fail::Error(Error::new(
                    ErrorKind::Io,
                    format!("{label}: downloading {f} from {} broke off ({io}); run again to resume", env.endpoint),
                )),
                _ => Fail::Error(Error::new(ErrorKind::Io, format!("{subject}: {io}"))),
            }
        }
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => Fail::Error(Error::new(
            ErrorKind::Io,
            format!("{subject}: {}'s answer lacks a valid {h} header (is HF_ENDPOINT a Hugging Face hub?)", env.endpoint),
        )),
        ApiError::ParseIntError(_) => Fail::Error(Error::new(
            ErrorKind::Io,
            format!("{subject}: {} answered an invalid Content-Range (is HF_ENDPOINT a Hugging Face hub?)", env.endpoint),
        )),
        ApiError::LockAcquisition(p) => Fail::Error(Error::new(
            ErrorKind::Io,
            format!("{subject}: another process is downloading it (lock {}); run again when it has finished", p.display()),
        )),
        other => Fail::Error(Error::new(ErrorKind::Io, format!("{subject}: {other}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Progress

/// hf-hub's progress callbacks on a [`crate::progress::ByteBar`]. Clones share the bar.
#[derive(Clone)]
struct FileBar {
    bar: crate::progress::ByteBar,
    /// The next update is the offset a resumed transfer starts at.
    fresh: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FileBar {
    fn new(file: &str) -> Self {
        FileBar { bar: crate::progress::byte_bar(file), fresh: Default::default() }
    }

    fn done(&self, file: &str, size: u64, started: Instant, check: &str) {
        let s = started.elapsed().as_secs_f64();
        self.bar.done(&format!(
            "awqc: {file}: {} in {s:.1} s ({}/s), {check}",
            indicatif::HumanBytes(size),
            indicatif::HumanBytes((size as f64 / s.max(1e-3)) as u64)
        ));
    }

    fn clear(&self) {
        self.bar.clear();
    }
}

impl hf_hub::api::Progress for FileBar {
    fn init(&mut self, size: usize, _filename: &str) {
        self.bar.start(size as u64);
        self.fresh.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn update(&mut self, size: usize) {
        if self.fresh.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.bar.resume_at(size as u64);
        } else {
            self.bar.inc(size as u64);
        }
    }
    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert_eq!(parse_id("org/name"), Some(HubId { repo: "org/name", revision: None }));
        assert_eq!(parse_id("Qwen/Qwen2.5-7B-Instruct@refs/pr/1"), Some(HubId { repo: "Qwen/Qwen2.5-7B-Instruct", revision: Some("refs/pr/1") }));
        for bad in ["name", "a/b/c", "./x", "/abs/path", "a/", "org/.hidden", "a--b/c", "a/b..c", "org/name@", "org/name@../x", "org/name@a//b", "org/na me"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn git_blob_ids_and_sha256_of_files() {
        // `git hash-object` of a file holding "hello\n".
        let dir = std::env::temp_dir().join(format!("awqc-sha1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        assert_eq!(git_blob_sha1(&p).unwrap(), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert!(matches!(verify(&p, "ce013625030ba8dba906f756967f9e9ca394464a").unwrap(), Verified::Yes(_)));
        assert!(matches!(
            verify(&p, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03").unwrap(),
            Verified::Yes("sha256")
        ));
        assert!(matches!(verify(&p, &"0".repeat(64)).unwrap(), Verified::Mismatch { .. }));
        assert!(matches!(verify(&p, "not-a-hash").unwrap(), Verified::Unknown));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn index_shards() {
        let idx = br#"{"metadata":{},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
        assert_eq!(shards_of_index(idx).unwrap(), vec!["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        assert!(shards_of_index(br#"{"weight_map":{"a":"../x.safetensors"}}"#).is_err());
        assert!(shards_of_index(br#"{"weight_map":{}}"#).is_err());
        assert!(shards_of_index(b"nope").is_err());
    }

    #[test]
    fn no_proxy_rules() {
        assert_eq!(url_host("http://127.0.0.1:8080/x"), "127.0.0.1");
        assert_eq!(url_host("https://user:pw@hf.example.com"), "hf.example.com");
        assert_eq!(url_host("http://[::1]:80/"), "::1");
        assert!(no_proxy_matches("localhost, 127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches(".example.com", "hf.example.com"));
        assert!(no_proxy_matches("example.com", "hf.example.com"));
        assert!(no_proxy_matches("*", "huggingface.co"));
        assert!(!no_proxy_matches("example.com", "huggingface.co"));
        assert!(!no_proxy_matches("", "huggingface.co"));
    }
}
