//! The updater's receive path under hostile uploads (issue 10): bounded
//! multipart part headers with the cause in the 400, answers that reach
//! curl and `swarm update` when a cap trips mid-upload, every gzip member
//! read, the `swarm.toml` cap, and rejected pushes followed by good ones.
//! Real updaters, real curl, the real `swarm`; memory measured through
//! `/proc/<pid>/status` `VmHWM`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use futures_util::StreamExt;
use pki::wire::{OpResponse, OpStatus};
use tests::process::status_bytes;
use tests::release::{ReleaseTree, raw, release_form, sha256_hex};
use tests::worker::{Worker, WorkerOptions};
use tests::{Swarm, TestPki};

/// The updater's peak RSS must stay under this for any hostile upload.
const MAX_HWM: u64 = 64 << 20;
/// `--max-upload-bytes` of the workers the oversized pushes go to.
const SMALL_UPLOAD_CAP: u64 = 1 << 20;

fn peak_rss(w: &Worker) -> u64 {
    status_bytes(w.updater_pid(), "VmHWM").expect("the updater's VmHWM")
}

fn good(tag: &str) -> Vec<u8> {
    ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball()
}

/// `n` bytes that do not compress (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn small_cap_worker(pki: &TestPki) -> Worker {
    Worker::start(
        pki,
        "w1",
        WorkerOptions {
            extra_args: vec!["--max-upload-bytes".into(), SMALL_UPLOAD_CAP.to_string()],
            ..WorkerOptions::default()
        },
    )
}

/// `curl -F sha256=… -F tarball=@file` with the master's identity: the
/// HTTP code and the body, or curl's own failure.
pub(crate) fn curl_push(
    pki: &TestPki,
    w: &Worker,
    file: &Path,
    sha: &str,
) -> Result<(u16, String), String> {
    let master = pki.path().join("master");
    pki.master();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(master.join("ca.crt"))
        .arg("--cert")
        .arg(master.join("master.crt"))
        .arg("--key")
        .arg(master.join("master.key"))
        .arg("-F")
        .arg(format!("sha256={sha}"))
        .arg("-F")
        .arg(format!("tarball=@{}", file.display()))
        .arg(w.url("/update"))
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl {}: {}{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("no code in {text:?}"))?;
    Ok((code, body.to_owned()))
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<OpResponse>(body)
        .ok()
        .and_then(|r| r.error)
        .unwrap_or_else(|| body.chars().take(300).collect())
}

#[tokio::test]
async fn a_part_header_without_its_blank_line_is_refused_with_its_cause() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    // A part header that never ends: 128 MiB without a blank line,
    // generated as it is sent.
    let head =
        Bytes::from_static(b"--XyZ\r\nContent-Disposition: form-data; name=\"tarball\"\r\nX-Pad: ");
    let line = Bytes::from(vec![b'a'; 1 << 20]);
    let body =
        futures_util::stream::iter(std::iter::once(head).chain(std::iter::repeat_n(line, 128)))
            .map(Ok::<_, std::io::Error>);
    let sent = client
        .post(w.url("/update"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("the updater answered");
    let code = sent.status().as_u16();
    let answer: OpResponse = sent.json().await.expect("a JSON answer");
    let error = answer.error.unwrap_or_default();
    assert_eq!(code, 400, "{error}");
    assert!(
        error.contains("part header") && error.contains("without the blank line"),
        "the 400 must name the cause: {error}"
    );
    let peak = peak_rss(&w);
    assert!(peak < MAX_HWM, "the updater peaked at {} MiB", peak >> 20);
    // Fine afterwards.
    let (code, body) = w.push(&client, &good("a")).await;
    assert_eq!(code, 200, "{body:?}");
}

#[tokio::test]
async fn oversized_curl_pushes_always_get_the_400_reason() {
    let pki = TestPki::new();
    let w = small_cap_worker(&pki);
    // Far more than the cap and than loopback's socket buffers: curl is
    // still writing when the updater refuses.
    let tgz = ReleaseTree::new()
        .file("big.bin", &noise(48 << 20, 7))
        .tarball();
    let sha = sha256_hex(&tgz);
    let file = w.dir().join("big.tgz");
    std::fs::write(&file, &tgz).expect("write the tarball");
    let mut failures = Vec::new();
    for i in 0..20 {
        match curl_push(&pki, &w, &file, &sha) {
            Ok((400, body)) if error_of(&body).contains("larger than") => {}
            other => failures.push(format!("push {i}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (code, body) = w.push(&w.master_client(&pki), &good("a")).await;
    assert_eq!(code, 200, "{body:?}");
}

#[test]
fn oversized_swarm_updates_always_show_the_400_reason() {
    let s = Swarm::new();
    let options = WorkerOptions {
        bins: tests::Bins::built(),
        extra_args: vec!["--max-upload-bytes".into(), SMALL_UPLOAD_CAP.to_string()],
        ..WorkerOptions::default()
    };
    let _w = s.try_worker("w1", options).expect("worker");
    let tree = s.tree("big");
    std::fs::write(tree.join("big.bin"), noise(6 << 20, 11)).expect("write");
    let mut failures = Vec::new();
    for i in 0..20 {
        let out = s.run(&[
            "update",
            "--host",
            "w1",
            "--root",
            tree.to_str().expect("utf-8"),
        ]);
        let text = tests::swarm::show(&out);
        if out.status.code() != Some(1) || !text.contains("larger than") {
            failures.push(format!("update {i}: {text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A gzip stream of two members, the tar split between them.
fn two_members() -> Vec<u8> {
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    };
    let first = raw::file(b"VERSION", b"two members");
    let mut second = [
        raw::entry(b"bin/", b'5', b"", 0o755, b""),
        raw::entry(b"bin/run.sh", b'0', b"#!/bin/sh\necho hi\n", 0o755, b""),
        raw::file(b"second/member.txt", b"from the second member"),
    ]
    .concat();
    second.resize(second.len() + 1024, 0);
    let mut out = gz(&first);
    out.extend(gz(&second));
    out
}

#[tokio::test]
async fn every_member_of_a_multi_member_gzip_is_installed() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let (code, body) = w.push(&client, &two_members()).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
    let live = w.install_dir.join("current");
    assert_eq!(
        std::fs::read_to_string(live.join("second/member.txt")).expect("the second member's file"),
        "from the second member"
    );
    // Two whole archives one after the other: refused, not half installed.
    let mut two = good("x");
    two.extend(good("y"));
    let (code, body) = w.push(&client, &two).await;
    assert_eq!(code, 400, "{body:?}");
    let error = body.error.unwrap_or_default();
    assert!(
        error.contains("after the end of its tar archive"),
        "{error}"
    );
}

#[tokio::test]
async fn a_huge_swarm_toml_is_refused_without_the_updater_growing() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    // 300 MiB of comments, compressed as they are written.
    let size: u64 = 300 << 20;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw::header(b"swarm.toml", b'0', size, 0o644, b""))
        .expect("gzip");
    let line = "# a comment line, over and over and over again, to make it big\n".repeat(1024);
    let mut left = size;
    while left > 0 {
        let k = left.min(line.len() as u64) as usize;
        gz.write_all(&line.as_bytes()[..k]).expect("gzip");
        left -= k as u64;
    }
    gz.write_all(&[0u8; 1024]).expect("gzip");
    let tgz = gz.finish().expect("gzip");
    assert!(tgz.len() < 4 << 20, "{} bytes", tgz.len());
    let (code, body) = w.push(&client, &tgz).await;
    let error = body.error.unwrap_or_default();
    assert_eq!(code, 400, "{error}");
    assert!(
        error.contains("swarm.toml") && error.contains("larger"),
        "{error}"
    );
    let peak = peak_rss(&w);
    assert!(peak < MAX_HWM, "the updater peaked at {} MiB", peak >> 20);
    assert!(!w.install_dir.join("releases/active.new").exists());
}

/// How many rejected-then-good rounds to run (`SWARM_HUNT_ROUNDS`, for
/// the long hunt; the default keeps the suite quick).
fn rounds() -> usize {
    std::env::var("SWARM_HUNT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

#[tokio::test]
async fn good_pushes_after_rejected_ones_never_fail_spuriously() {
    let pki = TestPki::new();
    let w = small_cap_worker(&pki);
    let client = w.master_client(&pki);
    let big = ReleaseTree::new()
        .file("big.bin", &noise(3 << 20, 3))
        .tarball();
    let file = w.dir().join("big.tgz");
    std::fs::write(&file, &big).expect("write");
    let big_sha = sha256_hex(&big);
    let mut failures = Vec::new();
    for i in 0..rounds() {
        // Rejected: over the cap (curl, then the master's client), and a
        // digest mismatch.
        match curl_push(&pki, &w, &file, &big_sha) {
            Ok((400, _)) => {}
            other => failures.push(format!("round {i}: curl oversized: {other:?}")),
        }
        let sent = client
            .post(w.url("/update"))
            .multipart(release_form(&big, &big_sha, &[]))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 400 => {}
            Ok(r) => failures.push(format!("round {i}: reqwest oversized: {}", r.status())),
            Err(e) => failures.push(format!("round {i}: reqwest oversized: {e:?}")),
        }
        let g = good(&format!("g{i}"));
        let (code, body) = w.push_with_digest(&client, &g, &"0".repeat(64)).await;
        if code != 400 {
            failures.push(format!("round {i}: bad digest: {code} {body:?}"));
        }
        // Good, right after.
        let (code, body) = w.push(&client, &g).await;
        if code != 200 {
            failures.push(format!("round {i}: good after rejected: {code} {body:?}"));
        }
        let g2 = good(&format!("h{i}"));
        let gfile = w.dir().join("good.tgz");
        std::fs::write(&gfile, &g2).expect("write");
        match curl_push(&pki, &w, &gfile, &sha256_hex(&g2)) {
            Ok((200, _)) => {}
            other => failures.push(format!("round {i}: curl good after rejected: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), w.log());
}

#[test]
fn swarm_updates_after_rejected_ones_never_fail_spuriously() {
    let s = Swarm::new();
    let options = WorkerOptions {
        bins: tests::Bins::built(),
        extra_args: vec!["--max-upload-bytes".into(), SMALL_UPLOAD_CAP.to_string()],
        ..WorkerOptions::default()
    };
    let w = s.try_worker("w1", options).expect("worker");
    let big = s.tree("big");
    std::fs::write(big.join("big.bin"), noise(3 << 20, 5)).expect("write");
    let good = s.tree("good");
    let mut failures = Vec::new();
    for i in 0..rounds() {
        let out = s.run(&[
            "update",
            "--host",
            "w1",
            "--root",
            big.to_str().expect("utf-8"),
        ]);
        let text = tests::swarm::show(&out);
        if out.status.code() != Some(1) || !text.contains("larger than") {
            failures.push(format!("round {i}: oversized: {text}"));
        }
        std::fs::write(good.join("VERSION"), format!("{i}")).expect("write");
        let out = s.run(&[
            "update",
            "--host",
            "w1",
            "--root",
            good.to_str().expect("utf-8"),
        ]);
        if out.status.code() != Some(0) {
            failures.push(format!("round {i}: good: {}", tests::swarm::show(&out)));
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), w.log());
}

#[tokio::test]
async fn form_fields_are_limited_in_number_name_and_size() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let tgz = good("a");
    let sha = sha256_hex(&tgz);
    let post = |form: reqwest::multipart::Form| {
        let client = client.clone();
        let url = w.url("/update");
        async move {
            let r = client
                .post(url)
                .multipart(form)
                .send()
                .await
                .expect("an answer");
            let code = r.status().as_u16();
            let body: OpResponse = r.json().await.expect("JSON");
            (code, body.error.unwrap_or_default())
        }
    };
    let mut many = reqwest::multipart::Form::new();
    for i in 0..17 {
        many = many.text(format!("x{i}"), "1");
    }
    let (code, error) = post(many).await;
    assert_eq!(code, 400, "{error}");
    assert!(error.contains("more than 16 fields"), "{error}");
    let (code, error) = post(release_form(&tgz, &"a".repeat(200), &[])).await;
    assert_eq!(code, 400, "{error}");
    assert!(
        error.contains("field `sha256` is longer than 128 bytes"),
        "{error}"
    );
    let (code, error) = post(release_form(
        &tgz,
        &sha,
        &[("git_commit", &"c".repeat(129))],
    ))
    .await;
    assert_eq!(code, 400, "{error}");
    assert!(
        error.contains("field `git_commit` is longer than 128"),
        "{error}"
    );
    let name = "n".repeat(100);
    let (code, error) = post(release_form(&tgz, &sha, &[(&name, "v")])).await;
    assert_eq!(code, 400, "{error}");
    assert!(
        error.contains("field name is longer than 64 bytes"),
        "{error}"
    );
    assert!(error.len() < 400, "the name is quoted capped: {error:?}");
    // The multipart cause is passed on, not "Error parsing `multipart/form-data` request".
    let r = client
        .post(w.url("/update"))
        .header("content-type", "multipart/form-data; boundary=B")
        .body("--B\r\nContent-Disposition: form-data; name=\"sha256\"\r\n\r\nabc")
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 400);
    let error = r
        .json::<OpResponse>()
        .await
        .expect("JSON")
        .error
        .unwrap_or_default();
    assert!(
        error.contains(
            "bad multipart/form-data body: field \"sha256\" received with incomplete data"
        ),
        "{error}"
    );
    // And a good push works.
    let (code, body) = w.push(&client, &tgz).await;
    assert_eq!(code, 200, "{body:?}");
}
