//! `--model org/name` from a Hugging Face Hub, through the real `awqc` binary and a real HTTP
//! server process on loopback (`scripts/hub-server.py`: the hub's URL layout and headers, LFS files
//! redirected to a CDN path, Range requests, a request log, fault injection), pointed to with
//! `HF_ENDPOINT`, each test with its own fresh `HF_HOME`.
//!
//! The served repository is the real SmolLM2 directory (`fixtures/smollm2-hf`, from
//! `make fixtures`) plus files awqc must not download (`*.bin`, `*.pth`, `*.gguf`, README).
//! Cases: a fresh download then `awqc eval` on the hub id gives the golden perplexity, and later
//! runs make no request; a download killed mid-file resumes to identical bytes; a dropped
//! connection resumes in the same run; a corrupted byte is caught, deleted and downloaded again,
//! and a file corrupted every time is refused; a sharded repository; and the errors (404 repo or
//! revision, 401, offline, unreachable hub, proxy): one line each, exit 3 or 6, nothing in the
//! snapshot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = "test-org/SmolLM2-135M";
const USAGE: i32 = 2;
const INPUT: i32 = 3;
const IO: i32 = 6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    let p = root().join("fixtures/smollm2-hf");
    assert!(p.join("model.safetensors").is_file(), "{} is missing: run `make fixtures`", p.display());
    p
}

/// A fresh directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("awqc-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The files awqc fetches from the SmolLM2 repository.
const WANTED: [&str; 5] = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/// Files a real repository often has besides safetensors, which awqc must leave alone.
fn add_decoys(dir: &Path) {
    std::fs::write(dir.join("pytorch_model.bin"), b"the same weights as a pickle").unwrap();
    std::fs::write(dir.join("model.Q4_0.gguf"), b"GGUF").unwrap();
    std::fs::write(dir.join("README.md"), b"# SmolLM2\n").unwrap();
    std::fs::write(dir.join(".gitattributes"), b"*.safetensors filter=lfs\n").unwrap();
    std::fs::create_dir_all(dir.join("original")).unwrap();
    std::fs::write(dir.join("original/consolidated.00.pth"), b"pth").unwrap();
}

/// The served repository: the fixture's files (symlinks) plus the decoys.
fn served(base: &Path) -> PathBuf {
    let dir = base.join("served");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
    }
    add_decoys(&dir);
    dir
}

/// The hub stand-in; killed when dropped.
struct Hub {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Hub {
    fn start(base: &Path, repos: &[(&str, &Path)], faults: &[&str]) -> Hub {
        // One log per server: a test may run two.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = base.join(format!("requests-{}.jsonl", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let mut c = Command::new("python3");
        c.arg(root().join("scripts/hub-server.py")).arg("--log").arg(&log);
        for (id, dir) in repos {
            c.arg("--repo").arg(format!("{id}={}", dir.display()));
        }
        c.args(faults).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c.spawn().expect("python3 runs scripts/hub-server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("hub-server.py did not print its port (got {line:?})")
        });
        Hub { child, port, log }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far: `{method, path, range, status}`.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// GETs of `needle` that carried data (not hf-hub's one-byte metadata probe).
    fn transfers(&self, needle: &str) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap().contains(needle))
            .filter(|r| r["range"] != "bytes=0-0" && matches!(r["status"].as_u64(), Some(200) | Some(206)))
            .collect()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `awqc` with only the hub settings given here (none inherited from the caller's environment).
fn awqc_cmd(home: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_awqc"));
    for k in [
        "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN_PATH", "XDG_CACHE_HOME", "ALL_PROXY", "all_proxy",
        "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "AWQC_CALIB_DIR",
    ] {
        c.env_remove(k);
    }
    c.env("HF_HOME", home).env("HF_ENDPOINT", endpoint).envs(env.iter().copied()).args(args).current_dir(root());
    c
}

fn awqc(home: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    awqc_cmd(home, endpoint, args, env).output().expect("run awqc")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A refusal: the exit code, exactly one stderr line `awqc: error: ...` holding every fragment.
fn refused(out: &Output, code: i32, fragments: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {err}");
    assert!(lines[0].starts_with("awqc: error: "), "{err}");
    for f in fragments {
        assert!(lines[0].contains(f), "{f:?} not in: {err}");
    }
    lines[0].to_string()
}

fn repo_dir(home: &Path, repo: &str) -> PathBuf {
    home.join("hub").join(format!("models--{}", repo.replace('/', "--")))
}

/// Names of the files in the repository's snapshots (all commits).
fn snapshot_files(home: &Path, repo: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(snaps) = std::fs::read_dir(repo_dir(home, repo).join("snapshots")) {
        for s in snaps {
            for f in std::fs::read_dir(s.unwrap().path()).unwrap() {
                v.push(f.unwrap().file_name().to_string_lossy().to_string());
            }
        }
    }
    v.sort();
    v
}

fn snapshot(home: &Path, repo: &str) -> PathBuf {
    let commit = std::fs::read_to_string(repo_dir(home, repo).join("refs/main")).unwrap();
    repo_dir(home, repo).join("snapshots").join(commit.trim())
}

/// Every file below `dir` (following no links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// The cache after a complete download: the wanted files as relative links to verified blobs,
/// identical to the served ones; no staging, no partial file.
fn check_cache(home: &Path, repo: &str, src: &Path, wanted: &[&str]) {
    assert_eq!(snapshot_files(home, repo), wanted.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let snap = snapshot(home, repo);
    for f in wanted {
        let link = std::fs::read_link(snap.join(f)).unwrap();
        assert!(link.starts_with("../../blobs"), "{f} -> {}", link.display());
        assert!(same_bytes(&snap.join(f), &src.join(f)), "{f} differs from the served file");
    }
    let dir = repo_dir(home, repo);
    assert!(!dir.join(".awqc-download").exists(), "staging left behind");
    let partial: Vec<_> = walk(&dir).into_iter().filter(|p| p.to_string_lossy().ends_with(".part")).collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn fresh_download_gives_the_golden_perplexity_then_no_request() {
    let base = tmp("golden");
    let src = served(&base);
    let hub = Hub::start(&base, &[(REPO, &src)], &[]);
    let home = base.join("hf");
    let ep = hub.endpoint();

    let golden = root().join("goldens/smollm2-135m.json");
    let out = awqc(&home, &ep, &["eval", "--model", REPO, "--check", golden.to_str().unwrap(), "--golden", "fp"], &[]);
    ok(&out, "eval on the hub id");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("-> PASS"), "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("awqc: downloaded 5 files (") && err.contains(&format!("of {REPO}@main from {ep}")), "{err}");
    assert!(err.contains("model.safetensors: ") && err.contains("sha256 ok"), "{err}");

    check_cache(&home, REPO, &src, &WANTED);
    let commit = std::fs::read_to_string(repo_dir(&home, REPO).join("refs/main")).unwrap();
    assert!(repo_dir(&home, REPO).join(".no_exist").join(&commit).join("special_tokens_map.json").exists());
    for r in hub.requests() {
        let p = r["path"].as_str().unwrap();
        for never in [".bin", ".pth", ".gguf", "README", ".gitattributes"] {
            assert!(!p.contains(never), "requested {p}");
        }
    }

    // Complete in the cache: no request, whatever the spelling of the revision, and offline too.
    let before = hub.requests().len();
    let commit_id = format!("{REPO}@{commit}");
    for (args, env) in [
        (vec!["inspect", "--model", REPO], vec![]),
        (vec!["inspect", "--model", &commit_id], vec![]),
        (vec!["inspect", "--model", REPO, "--revision", "main"], vec![]),
        (vec!["inspect", "--model", REPO], vec![("HF_HUB_OFFLINE", "1")]),
    ] {
        let out = awqc(&home, &ep, &args, &env);
        ok(&out, &format!("{args:?} {env:?}"));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&snapshot(&home, REPO).display().to_string()));
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(hub.requests().len(), before, "a run with a complete cache asked the hub");
    drop(hub);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn killed_download_resumes_to_identical_bytes() {
    let base = tmp("resume");
    let src = served(&base);
    const CUT: u64 = 200_000_000;
    let hub = Hub::start(&base, &[(REPO, &src)], &["--stall", &format!("model.safetensors:{CUT}")]);
    let home = base.join("hf");
    let ep = hub.endpoint();

    let mut child = awqc_cmd(&home, &ep, &["--quiet", "inspect", "--model", REPO], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The server stops sending after CUT bytes and hangs; wait for them to be on disk, then kill.
    let staging = repo_dir(&home, REPO).join(".awqc-download");
    let t0 = Instant::now();
    let part = loop {
        let found = walk(&staging).into_iter().find(|p| {
            p.to_string_lossy().ends_with(".part") && std::fs::metadata(p).map(|m| m.len() >= CUT).unwrap_or(false)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no partial file of {CUT} bytes appeared");
        assert!(child.try_wait().unwrap().is_none(), "awqc ended before the stall");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::metadata(&part).unwrap().len(), CUT);
    assert!(!snapshot_files(&home, REPO).contains(&"model.safetensors".to_string()), "a partial file entered the snapshot");

    let out = awqc(&home, &ep, &["inspect", "--model", REPO], &[]);
    ok(&out, "the second run");
    let resumed = hub.transfers("/cdn-lfs/");
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert_eq!(resumed[1]["range"], format!("bytes={CUT}-"), "the second run did not resume: {resumed:?}");
    assert_eq!(resumed[1]["status"], 206);
    check_cache(&home, REPO, &src, &WANTED);
    drop(hub);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn corrupted_byte_is_caught_and_a_dropped_connection_resumes() {
    let base = tmp("corrupt-once");
    let src = served(&base);
    let hub = Hub::start(
        &base,
        &[(REPO, &src)],
        &["--corrupt", "model.safetensors:123456789", "--drop", "tokenizer.json:1000000"],
    );
    let home = base.join("hf");
    let out = awqc(&home, &hub.endpoint(), &["inspect", "--model", REPO], &[]);
    ok(&out, "download with one corrupted byte and one cut connection");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("awqc: model.safetensors: sha256 ") && err.contains("does not match the hub's") && err.contains("downloading it again"),
        "{err}"
    );
    // The corrupted transfer and a clean second one.
    assert_eq!(hub.transfers("/cdn-lfs/").len(), 2);
    // The cut transfer, then the same run asked for the rest only.
    let tok = hub.transfers("/tokenizer.json");
    assert_eq!(tok.len(), 2, "{tok:?}");
    assert_eq!(tok[1]["range"], "bytes=1000000-", "{tok:?}");
    check_cache(&home, REPO, &src, &WANTED);
    drop(hub);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_file_corrupted_every_time_is_refused() {
    let base = tmp("corrupt-always");
    let src = served(&base);
    let hub = Hub::start(&base, &[(REPO, &src)], &["--corrupt", "tokenizer.json:100:always"]);
    let home = base.join("hf");
    let out = awqc(&home, &hub.endpoint(), &["--quiet", "inspect", "--model", REPO], &[]);
    refused(&out, IO, &["tokenizer.json", "git sha1", "twice", "nothing of it is in the cache"]);
    assert_eq!(hub.transfers("/tokenizer.json").len(), 2, "not downloaded exactly twice");
    assert!(!snapshot_files(&home, REPO).contains(&"tokenizer.json".to_string()));
    // No blob of it anywhere: the staged copies were deleted.
    let size = std::fs::metadata(src.join("tokenizer.json")).unwrap().len();
    let left: Vec<_> = walk(&repo_dir(&home, REPO)).into_iter().filter(|p| std::fs::metadata(p).map(|m| m.len() == size).unwrap_or(false)).collect();
    assert!(left.is_empty(), "{left:?}");
    drop(hub);
    let _ = std::fs::remove_dir_all(&base);
}

/// A repository whose weights are split in shards listed by `model.safetensors.index.json`.
fn sharded(base: &Path) -> PathBuf {
    use awqc::formats::safetensors_writer::{ShardedWriter, TensorSpec};
    use awqc::model::weights::SafetensorsRepo;
    let dir = base.join("served-sharded");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::os::unix::fs::symlink(fixture().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("pytorch_model.bin.index.json"), b"{}").unwrap();
    let st = SafetensorsRepo::open_dir(&fixture()).unwrap();
    let names: Vec<String> = st.names().map(str::to_string).collect();
    let dtype = |d: safetensors::Dtype| match d {
        safetensors::Dtype::F32 => "F32",
        safetensors::Dtype::F16 => "F16",
        safetensors::Dtype::BF16 => "BF16",
        other => panic!("fixture dtype {other:?}"),
    };
    let specs: Vec<TensorSpec> = names
        .iter()
        .map(|n| {
            let m = st.meta(n).unwrap();
            TensorSpec::new(n.clone(), dtype(m.dtype), &m.shape)
        })
        .collect();
    let mut w = ShardedWriter::create(&dir, "model", specs, 200 << 20, &[("format", "pt")]).unwrap();
    for n in &names {
        w.write(n, st.raw(n).unwrap().1).unwrap();
    }
    w.finish().unwrap();
    dir
}

#[test]
fn sharded_repository_and_offline_names_the_missing_shard() {
    let base = tmp("sharded");
    let src = sharded(&base);
    let mut shards: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .collect();
    shards.sort();
    assert!(shards.len() >= 2, "{shards:?}");
    let repo = "test-org/SmolLM2-sharded";
    let hub = Hub::start(&base, &[(repo, &src)], &[]);
    let home = base.join("hf");
    let ep = hub.endpoint();
    let out = awqc(&home, &ep, &["--json", "inspect", "--model", repo], &[]);
    ok(&out, "inspect a sharded hub repository");
    let mut wanted = vec!["config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"];
    wanted.extend(shards.iter().map(String::as_str));
    wanted.sort();
    check_cache(&home, repo, &src, &wanted);
    assert!(hub.requests().iter().all(|r| !r["path"].as_str().unwrap().contains("pytorch_model")));

    let before = hub.requests().len();
    ok(&awqc(&home, &ep, &["--json", "inspect", "--model", repo], &[]), "cached sharded repository");
    assert_eq!(hub.requests().len(), before);

    // A shard gone from the snapshot: offline, the error names it and nothing is asked.
    std::fs::remove_file(snapshot(&home, repo).join(&shards[1])).unwrap();
    let out = awqc(&home, &ep, &["inspect", "--model", repo], &[("HF_HUB_OFFLINE", "1")]);
    refused(&out, IO, &[&format!("missing: {}", shards[1]), "HF_HUB_OFFLINE is set"]);
    assert_eq!(hub.requests().len(), before);
    // Online, only that shard is fetched again.
    ok(&awqc(&home, &ep, &["--quiet", "inspect", "--model", repo], &[]), "refetch one shard");
    let again: Vec<_> = hub.requests()[before..].iter().filter(|r| r["range"] != "bytes=0-0").map(|r| r["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(again.iter().filter(|p| p.contains("/cdn-lfs/")).count(), 1, "{again:?}");
    check_cache(&home, repo, &src, &wanted);
    drop(hub);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn errors_name_the_problem_in_one_line_and_leave_no_snapshot() {
    let base = tmp("errors");
    let src = served(&base);
    let hub = Hub::start(&base, &[(REPO, &src)], &[]);
    let private = Hub::start(&base, &[(REPO, &src)], &["--token", "hf_right"]);
    let ep = hub.endpoint();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = format!("http://127.0.0.1:{closed}");
    let home = base.join("hf");
    let nothing_cached = |repo: &str| {
        let files = walk(&repo_dir(&home, repo).join("snapshots"));
        assert!(files.is_empty(), "{files:?}");
    };
    let inspect = |model: &str| vec!["inspect".to_string(), "--model".to_string(), model.to_string()];
    let run = |endpoint: &str, args: Vec<String>, env: &[(&str, &str)]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        awqc(&home, endpoint, &a, env)
    };

    // 404: unknown repository, unknown revision (both spellings).
    refused(&run(&ep, inspect("test-org/nope"), &[]), INPUT, &["test-org/nope: not a local path", &format!("{ep} has no model repository test-org/nope")]);
    nothing_cached("test-org/nope");
    refused(&run(&ep, inspect(&format!("{REPO}@v9")), &[]), INPUT, &[&format!("{ep} has no revision \"v9\"")]);
    let mut a = inspect(REPO);
    a.extend(["--revision".into(), "v9".into()]);
    refused(&run(&ep, a, &[]), INPUT, &["has no revision \"v9\""]);
    nothing_cached(REPO);

    // 401: no token, a wrong one; the right one works.
    let pep = private.endpoint();
    refused(&run(&pep, inspect(REPO), &[]), INPUT, &["requires authentication (401", "set HF_TOKEN"]);
    refused(&run(&pep, inspect(REPO), &[("HF_TOKEN", "hf_wrong")]), INPUT, &["rejected the token from HF_TOKEN (401"]);
    nothing_cached(REPO);
    assert!(private.requests().iter().all(|r| r["status"] == 401));
    ok(&run(&pep, inspect(REPO), &[("HF_TOKEN", "hf_right")]), "the right token");
    check_cache(&home, REPO, &src, &WANTED);
    std::fs::remove_dir_all(repo_dir(&home, REPO)).unwrap();

    // Offline with nothing cached: names the files, asks nothing.
    let before = hub.requests().len();
    refused(
        &run(&ep, inspect(REPO), &[("HF_HUB_OFFLINE", "1")]),
        IO,
        &[&format!("{REPO}@main: not complete in the Hugging Face cache at {}", home.join("hub").display()), "missing: config.json, the safetensors weights", "HF_HUB_OFFLINE is set"],
    );
    assert_eq!(hub.requests().len(), before);
    // No network: the same files, and that HF_HUB_OFFLINE is not set.
    refused(&run(&dead, inspect(REPO), &[]), IO, &[&format!("cannot reach {dead}"), "lacks config.json, the safetensors weights", "HF_HUB_OFFLINE is not set"]);
    // A proxy is used (here a dead one) unless NO_PROXY exempts the hub's host.
    refused(&run(&ep, inspect("test-org/nope"), &[("ALL_PROXY", &dead)]), IO, &[&format!("through the proxy {dead}")]);
    refused(&run(&ep, inspect("test-org/nope"), &[("HTTPS_PROXY", &dead), ("NO_PROXY", "localhost,127.0.0.1")]), INPUT, &["has no model repository test-org/nope"]);
    nothing_cached(REPO);

    // --revision is for hub ids; two different revisions are a usage error.
    let fx = fixture().display().to_string();
    let mut a = inspect(&fx);
    a.extend(["--revision".into(), "main".into()]);
    refused(&run(&ep, a, &[]), USAGE, &["--revision applies to a hub id"]);
    let mut a = inspect(&format!("{REPO}@main"));
    a.extend(["--revision".into(), "v2".into()]);
    refused(&run(&ep, a, &[]), USAGE, &["names revision \"main\" and --revision says \"v2\""]);
    drop(hub);
    drop(private);
    let _ = std::fs::remove_dir_all(&base);
}
