//! Model references: the Hugging Face Hub through a fake Hub on the loopback
//! address (the `resolve` and `api/models` endpoints served from a fixture
//! folder), Ollama's and LM Studio's model folders laid out as those
//! programs lay them out.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

mod common;
use common::{s, tiny, tiny_base, Dir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_fixture_token";

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fake Hub: repositories are folders `root/user/repo`; a file `.gated`
/// in one makes it answer 401 without `Authorization: Bearer TOKEN`.
struct FakeHub {
    url: String,
    /// Every request: "PATH range=RANGE".
    log: Arc<Mutex<Vec<String>>>,
    /// Cut the body of full downloads of this file half-way, this many times.
    cut: Arc<Mutex<(String, usize)>>,
}

impl FakeHub {
    fn start(root: &Path) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Mutex::new((String::new(), 0)));
        let (root, l, c) = (root.to_path_buf(), log.clone(), cut.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, l, c) = (root.clone(), l.clone(), c.clone());
                std::thread::spawn(move || serve(stream, &root, &l, &c));
            }
        });
        FakeHub { url, log, cut }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn files_of(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != ".gated" {
                out.push(p.strip_prefix(repo).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(
    mut stream: TcpStream,
    root: &Path,
    log: &Mutex<Vec<String>>,
    cut: &Mutex<(String, usize)>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned().unwrap_or_default();
    log.lock().unwrap().push(format!("{path} range={range}"));
    let authorized =
        headers.get("authorization").map(String::as_str) == Some(&format!("Bearer {TOKEN}"));
    let json = |v: String| {
        vec![
            ("Content-Type", "application/json".to_string()),
            ("Content-Length", v.len().to_string()),
        ]
    };
    let not_found = |stream: &mut TcpStream, what: &str| {
        let body = format!("{{\"error\":\"{what} not found\"}}");
        respond(
            stream,
            "404 Not Found",
            &json(body.clone()),
            body.as_bytes(),
        );
    };
    // /api/models/USER/REPO/revision/REV or /USER/REPO/resolve/REV/FILE
    let (repo, rest, api) = if let Some(p) = path.strip_prefix("/api/models/") {
        match p.split_once("/revision/") {
            Some((r, _)) => (r.to_string(), String::new(), true),
            None => return not_found(&mut stream, "endpoint"),
        }
    } else {
        let p = path.trim_start_matches('/');
        let parts: Vec<&str> = p.splitn(5, '/').collect();
        if parts.len() != 5 || parts[2] != "resolve" {
            return not_found(&mut stream, "endpoint");
        }
        (
            format!("{}/{}", parts[0], parts[1]),
            parts[4].to_string(),
            false,
        )
    };
    let dir = root.join(&repo);
    if !dir.is_dir() {
        return not_found(&mut stream, "Repository");
    }
    if dir.join(".gated").exists() && !authorized {
        let body = "{\"error\":\"Access to this model is restricted\"}".to_string();
        return respond(
            &mut stream,
            "401 Unauthorized",
            &json(body.clone()),
            body.as_bytes(),
        );
    }
    if api {
        let siblings: Vec<String> = files_of(&dir)
            .iter()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"id\":\"{repo}\",\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        return respond(&mut stream, "200 OK", &json(body.clone()), body.as_bytes());
    }
    let Ok(data) = std::fs::read(dir.join(&rest)) else {
        return not_found(&mut stream, "Entry");
    };
    let total = data.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse().unwrap_or(0),
            b.parse::<usize>()
                .map(|b| b + 1)
                .unwrap_or(total)
                .min(total),
        ),
        None => (0, total),
    };
    let body = &data[start.min(end)..end];
    let headers = vec![
        ("Content-Length", body.len().to_string()),
        (
            "Content-Range",
            format!("bytes {start}-{}/{total}", end.saturating_sub(1)),
        ),
        ("ETag", format!("\"{}\"", sha256_hex(&data))),
        ("X-Repo-Commit", COMMIT.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    let mut c = cut.lock().unwrap();
    if c.0 == rest && c.1 > 0 && body.len() > 1 {
        c.1 -= 1;
        drop(c);
        // Announce the whole body, send half, hang up.
        respond(
            &mut stream,
            "206 Partial Content",
            &headers,
            &body[..body.len() / 2],
        );
        let _ = stream.flush();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    drop(c);
    respond(
        &mut stream,
        if range.is_empty() {
            "200 OK"
        } else {
            "206 Partial Content"
        },
        &headers,
        body,
    );
}

/// The fixture Hub: `tiny/llama-gguf` (two quantizations of the tiny llama),
/// `tiny/residual` (a sharded residual beside a file it does not need),
/// `tiny/gated` (needs the token).
fn hub_root(d: &Dir) -> PathBuf {
    let root = d.p("hub");
    let put = |repo: &str, file: &str, from: &Path| {
        let p = root.join(repo).join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(from, p).unwrap();
    };
    put("tiny/llama-gguf", "tiny-Q4_K_M.gguf", &tiny_base());
    put("tiny/llama-gguf", "tiny-Q4_K.gguf", &tiny_base());
    put("tiny/llama-gguf", "README.md", &tiny("expected.json"));
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ] {
        put("tiny/residual", f, &tiny("residual-sharded").join(f));
    }
    put(
        "tiny/residual",
        "original/unneeded.bin",
        &tiny("residual-f16.safetensors"),
    );
    put("tiny/gated", "tiny-Q4_K_M.gguf", &tiny_base());
    std::fs::write(root.join("tiny/gated/.gated"), "").unwrap();
    root
}

/// Run qresidual with a clean Hub environment pointed at `hub` and `cache`.
fn run_env(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    let mut c = Command::new(common::bin());
    c.args(args);
    for k in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "OLLAMA_MODELS",
        "LMSTUDIO_MODELS",
    ] {
        c.env_remove(k);
    }
    for k in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().unwrap()
}

fn hub_env<'a>(hub: &'a FakeHub, cache: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", s(cache)),
        ("HOME", s(cache)),
    ]
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_env(args, env, None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "qresidual {args:?} failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

fn fails_env(args: &[&str], env: &[(&str, &str)], code: i32, needles: &[&str]) -> String {
    let out = run_env(args, env, None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
    err
}

/// The cache entry of a repository: (relative path, symlink target or size) of everything in it.
fn cache_listing(repo_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![repo_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(repo_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                ));
            } else if meta.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, format!("{} bytes", meta.len())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_quantization_downloads_into_the_hub_cache_layout_then_is_used_offline() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let env = hub_env(&hub, &cache);
    let shown = ok_env(&["inspect", "tiny/llama-gguf:Q4_K_M"], &env);
    assert!(shown.contains("blk.0.attn_q.weight"), "{shown}");

    let data = std::fs::read(tiny_base()).unwrap();
    let sha = sha256_hex(&data);
    let repo = cache.join("models--tiny--llama-gguf");
    assert_eq!(
        cache_listing(&repo),
        vec![
            (format!("blobs/{sha}"), format!("{} bytes", data.len())),
            ("refs/main".into(), "40 bytes".into()),
            (
                format!("snapshots/{COMMIT}/tiny-Q4_K_M.gguf"),
                format!("../../blobs/{sha}")
            ),
        ],
        "only the Q4_K_M file, in huggingface_hub's layout"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(
        std::fs::read(repo.join(format!("snapshots/{COMMIT}/tiny-Q4_K_M.gguf"))).unwrap(),
        data
    );

    // Cached: offline, and not asked again even online.
    let before = hub.requests().len();
    let mut offline = env.clone();
    offline.push(("HF_HUB_OFFLINE", "1"));
    ok_env(&["inspect", "tiny/llama-gguf:Q4_K_M"], &offline);
    ok_env(&["inspect", "tiny/llama-gguf/tiny-Q4_K_M.gguf"], &env);
    assert_eq!(hub.requests().len(), before, "{:?}", hub.requests());

    // A quantization matches as a whole word; several or none are named.
    fails_env(
        &["inspect", "tiny/llama-gguf:Q5_K_M"],
        &env,
        2,
        &[
            "tiny/llama-gguf",
            "no GGUF file of quantization Q5_K_M",
            "tiny-Q4_K.gguf, tiny-Q4_K_M.gguf",
        ],
    );
}

#[test]
fn offline_without_a_cached_copy_names_the_reference() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let mut env = hub_env(&hub, &cache);
    env.push(("HF_HUB_OFFLINE", "1"));
    fails_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M"],
        &env,
        2,
        &[
            "tiny/llama-gguf:Q4_K_M",
            "HF_HUB_OFFLINE",
            "not in the Hugging Face cache",
        ],
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[test]
fn missing_and_gated_repositories_and_files_are_named() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let env = hub_env(&hub, &cache);
    fails_env(
        &["inspect", "tiny/nothing"],
        &env,
        2,
        &["tiny/nothing", "HTTP 404"],
    );
    fails_env(
        &["inspect", "tiny/llama-gguf/missing.gguf"],
        &env,
        2,
        &["missing.gguf", "tiny/llama-gguf", "HTTP 404"],
    );
    fails_env(
        &["inspect", "tiny/gated:Q4_K_M"],
        &env,
        2,
        &["tiny/gated", "HTTP 401", "HF_TOKEN"],
    );
    fails_env(
        &["inspect", "tiny/gated/tiny-Q4_K_M.gguf"],
        &env,
        2,
        &["tiny-Q4_K_M.gguf", "tiny/gated", "HTTP 401"],
    );
    let mut wrong = env.clone();
    wrong.push(("HF_TOKEN", "hf_wrong"));
    fails_env(
        &["inspect", "tiny/gated:Q4_K_M"],
        &wrong,
        2,
        &["tiny/gated", "refused", "HTTP 401"],
    );
    let mut right = env.clone();
    right.push(("HF_TOKEN", TOKEN));
    ok_env(&["inspect", "tiny/gated:Q4_K_M"], &right);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let env = hub_env(&hub, &cache);
    let data = std::fs::read(tiny_base()).unwrap();
    // Every attempt of the first run is cut: it fails, keeping what arrived.
    *hub.cut.lock().unwrap() = ("tiny-Q4_K_M.gguf".into(), 100);
    fails_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M"],
        &env,
        2,
        &["tiny-Q4_K_M.gguf", "tiny/llama-gguf", "resumed next time"],
    );
    let blobs = cache.join("models--tiny--llama-gguf/blobs");
    let partial: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = std::fs::metadata(&partial[0]).unwrap().len() as usize;
    assert!(kept > 0 && kept < data.len(), "{kept} of {}", data.len());

    // The next run asks only for the rest.
    *hub.cut.lock().unwrap() = (String::new(), 0);
    let before = hub.requests().len();
    ok_env(&["inspect", "tiny/llama-gguf:Q4_K_M"], &env);
    let resumed: Vec<String> = hub.requests()[before..].to_vec();
    assert!(
        resumed.iter().any(|r| r.contains("tiny-Q4_K_M.gguf") && r.ends_with(&format!("range=bytes={kept}-"))),
        "{resumed:?}"
    );
    let snap = cache.join(format!(
        "models--tiny--llama-gguf/snapshots/{COMMIT}/tiny-Q4_K_M.gguf"
    ));
    assert_eq!(std::fs::read(snap).unwrap(), data);
}

#[test]
fn a_sharded_residual_downloads_only_its_shards_and_applies_as_the_local_one() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    // HF_HOME instead of HF_HUB_CACHE: the cache is HF_HOME/hub.
    let home = d.p("hf-home");
    let env = vec![
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HOME", s(&home)),
        ("HOME", s(&home)),
    ];
    let cache = home.join("hub");
    let (from_hub, local) = (d.p("hub.gguf"), d.p("local.gguf"));
    let err = ok_env(
        &[
            "apply",
            "--base",
            "tiny/llama-gguf:Q4_K_M",
            "--residual",
            "tiny/residual",
            "-o",
            s(&from_hub),
            "--strategy",
            "fresh",
            "--ollama-modelfile",
        ],
        &env,
    );
    ok_env(
        &[
            "apply",
            "--base",
            s(&tiny_base()),
            "--residual",
            s(&tiny("residual-sharded")),
            "-o",
            s(&local),
            "--strategy",
            "fresh",
            "-q",
        ],
        &env,
    );
    assert_eq!(
        std::fs::read(&from_hub).unwrap(),
        std::fs::read(&local).unwrap()
    );
    let snapshot = cache.join(format!("models--tiny--residual/snapshots/{COMMIT}"));
    let mut got: Vec<String> = std::fs::read_dir(&snapshot)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
    assert!(
        !hub.requests().iter().any(|r| r.contains("unneeded")),
        "{:?}",
        hub.requests()
    );

    // How to run it, and the Modelfile beside it.
    assert!(
        err.contains(&format!("llama-cli -m {}", s(&from_hub))),
        "{err}"
    );
    let modelfile = d.p("hub.Modelfile");
    assert_eq!(
        std::fs::read_to_string(&modelfile).unwrap(),
        "FROM ./hub.gguf\n"
    );
    assert!(
        err.contains(&format!("ollama create hub -f {}", s(&modelfile))),
        "{err}"
    );
}

#[test]
fn an_existing_path_wins_over_a_reference() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let env = hub_env(&hub, &cache);
    let work = d.p("work");
    std::fs::create_dir_all(work.join("tiny")).unwrap();
    std::fs::copy(tiny_base(), work.join("tiny/llama-gguf")).unwrap();
    let out = run_env(&["inspect", "tiny/llama-gguf"], &env, Some(&work));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

/// `OLLAMA_MODELS` as `ollama pull` leaves it: a manifest naming the blobs.
fn ollama_models(d: &Dir, name: &str, tag: &str, model: &[u8], size: usize) -> PathBuf {
    let root = d.p("ollama");
    let digest = sha256_hex(model);
    let blobs = root.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("sha256-{digest}")), model).unwrap();
    let template = b"{{ .Prompt }}";
    let tdigest = sha256_hex(template);
    std::fs::write(blobs.join(format!("sha256-{tdigest}")), template).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{tdigest}","size":13}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{digest}","size":{size}}},{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{tdigest}","size":13}}]}}"#
    );
    let dir = root.join("manifests/registry.ollama.ai/library").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(tag), manifest).unwrap();
    root
}

#[test]
fn ollama_models_resolve_to_their_model_blob() {
    let d = Dir::new();
    let data = std::fs::read(tiny_base()).unwrap();
    let root = ollama_models(&d, "tiny", "latest", &data, data.len());
    let env = [("OLLAMA_MODELS", s(&root))];
    for name in [
        "ollama:tiny",
        "ollama:tiny:latest",
        "ollama:library/tiny:latest",
    ] {
        let shown = ok_env(&["inspect", name], &env);
        assert!(shown.contains("blk.0.attn_q.weight"), "{name}: {shown}");
    }
    let out = d.p("out.gguf");
    ok_env(
        &[
            "apply",
            "--base",
            "ollama:tiny",
            "--residual",
            s(&tiny("residual-f16.safetensors")),
            "-o",
            s(&out),
            "-q",
        ],
        &env,
    );
    fails_env(
        &["inspect", "ollama:tiny:7b"],
        &env,
        2,
        &[
            "ollama:tiny:7b",
            "registry.ollama.ai/library/tiny/7b",
            "ollama list",
        ],
    );

    // A manifest whose blob is shorter than it says (an unfinished pull).
    let d2 = Dir::new();
    let root2 = ollama_models(&d2, "tiny", "latest", &data, data.len() + 1);
    fails_env(
        &["inspect", "ollama:tiny"],
        &[("OLLAMA_MODELS", s(&root2))],
        1,
        &["sha256-", "unfinished pull"],
    );
}

#[test]
fn lmstudio_models_resolve_by_path_or_search() {
    let d = Dir::new();
    let root = d.p("lmstudio");
    for f in [
        "tiny-pub/tiny-GGUF/tiny-Q4_K_M.gguf",
        "tiny-pub/tiny-GGUF/tiny-Q8_0.gguf",
        "other/x-GGUF/mmproj-tiny-Q4_K_M.gguf",
    ] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(tiny_base(), p).unwrap();
    }
    let env = [("LMSTUDIO_MODELS", s(&root))];
    ok_env(
        &["inspect", "lmstudio:tiny-pub/tiny-GGUF/tiny-Q4_K_M.gguf"],
        &env,
    );
    ok_env(&["inspect", "lmstudio:q4_k_m"], &env);
    fails_env(
        &["inspect", "lmstudio:tiny-GGUF"],
        &env,
        2,
        &["2 files", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"],
    );
    fails_env(
        &["inspect", "lmstudio:nothing"],
        &env,
        2,
        &["lmstudio:nothing", s(&root)],
    );
}

#[test]
fn a_modelfile_needs_one_merged_gguf_file() {
    let d = Dir::new();
    let residual = tiny("residual-f16.safetensors");
    let base = tiny_base();
    let out = d.p("out.gguf");
    for extra in [
        &["--split-max-size", "1M"][..],
        &["--strategy", "adapter", "--rank", "2"][..],
    ] {
        let mut args = vec![
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&residual),
            "-o",
            s(&out),
            "--ollama-modelfile",
        ];
        args.extend_from_slice(extra);
        let o = run_env(&args, &[], None);
        common::assert_fails(&o, 2, &["--ollama-modelfile", "Ollama"], &out);
    }
    let bnb = common::fixture_in("tiny_bnb", "nf4");
    let o = run_env(
        &[
            "apply",
            "--base",
            s(&bnb),
            "--residual",
            s(&residual),
            "-o",
            s(&d.p("folder")),
            "--ollama-modelfile",
        ],
        &[],
        None,
    );
    common::assert_fails(
        &o,
        2,
        &["--ollama-modelfile", "bitsandbytes"],
        &d.p("folder"),
    );
    assert!(!d.p("out.Modelfile").exists() && !d.p("folder.Modelfile").exists());
}

#[test]
fn a_revision_is_its_own_ref() {
    let d = Dir::new();
    let hub = FakeHub::start(&hub_root(&d));
    let cache = d.p("cache");
    let env = hub_env(&hub, &cache);
    ok_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M", "--revision", "v1.0"],
        &env,
    );
    assert!(
        hub.requests()
            .iter()
            .all(|r| r.contains("/v1.0/") || r.contains("/revision/v1.0")),
        "{:?}",
        hub.requests()
    );
    let refs = cache.join("models--tiny--llama-gguf/refs");
    assert_eq!(std::fs::read_to_string(refs.join("v1.0")).unwrap(), COMMIT);
    assert!(!refs.join("main").exists());
    let mut offline = env.clone();
    offline.push(("HF_HUB_OFFLINE", "1"));
    ok_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M", "--revision", "v1.0"],
        &offline,
    );
    ok_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M", "--revision", COMMIT],
        &offline,
    );
    fails_env(
        &["inspect", "tiny/llama-gguf:Q4_K_M"],
        &offline,
        2,
        &["revision main", "HF_HUB_OFFLINE"],
    );
}
