//! The tar header guard end to end (issue 10, "Memory"): hostile uploads of
//! a few hundred KB, each crafted around a way tar-rs reads a header that a
//! naive guard does not, are refused with 400 by a real updater whose peak
//! RSS stays far below what tar-rs would have buffered; a normal push works
//! afterwards.

use std::io::Write;

use pki::wire::OpStatus;
use tests::TestPki;
use tests::process::status_bytes;
use tests::release::{ReleaseTree, sha256_hex};
use tests::worker::{Worker, WorkerOptions};

const BLOCK: usize = 512;
/// What each hostile tarball would make tar-rs hold in memory.
const PAYLOAD: u64 = 256 << 20;
/// The updater's peak RSS must stay under this.
const MAX_HWM_KIB: u64 = 64 * 1024;

/// A header block: `name`, `typeflag`, the raw 12-byte `size` field, ustar
/// or GNU magic, a valid checksum.
fn header(name: &[u8], typeflag: u8, size: &[u8; 12], gnu: bool) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(size);
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    if gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..265].copy_from_slice(b"ustar\x0000");
    }
    seal(&mut h);
    h
}

fn seal(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn octal(n: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f.copy_from_slice(format!("{n:011o}\0").as_bytes());
    f
}

/// Gzip-compresses a tar stream as it is written, never holding it whole.
struct Tgz(flate2::write::GzEncoder<Vec<u8>>);

impl Tgz {
    fn new() -> Tgz {
        Tgz(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::best(),
        ))
    }
    fn put(&mut self, bytes: &[u8]) -> &mut Tgz {
        self.0.write_all(bytes).expect("gzip");
        self
    }
    /// `n` bytes of `byte`, then padding to a whole block.
    fn fill(&mut self, byte: u8, n: u64) -> &mut Tgz {
        let chunk = vec![byte; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            self.put(&chunk[..k]);
            left -= k as u64;
        }
        let pad = (BLOCK - (n % BLOCK as u64) as usize) % BLOCK;
        self.put(&vec![0u8; pad])
    }
    /// `data`, then padding to a whole block.
    fn fill_with(&mut self, data: &[u8]) -> &mut Tgz {
        self.put(data);
        self.put(&vec![0u8; (BLOCK - data.len() % BLOCK) % BLOCK])
    }
    /// A last ordinary file, the end-of-archive blocks, the gzip trailer.
    fn finish(mut self) -> Vec<u8> {
        self.put(&header(b"f", b'0', &octal(1), false))
            .fill(b'x', 1)
            .put(&[0u8; 2 * BLOCK]);
        self.0.finish().expect("gzip finish")
    }
}

/// A GNU long name of [`PAYLOAD`] bytes whose size is base-256 with a first
/// byte other than 0x80 (tar-rs reads the field's last 8 bytes).
fn base256_long_name() -> Vec<u8> {
    let mut size = [0u8; 12];
    size[0] = 0xff;
    size[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
    size[4..].copy_from_slice(&PAYLOAD.to_be_bytes());
    let mut tgz = Tgz::new();
    tgz.put(&header(b"././@LongLink", b'L', &size, true))
        .fill(b'n', PAYLOAD);
    tgz.finish()
}

/// A GNU long name of [`PAYLOAD`] bytes whose octal size has an embedded
/// NUL (tar-rs reads up to it).
fn nul_octal_long_name() -> Vec<u8> {
    let mut size = [0u8; 12];
    let text = format!("{PAYLOAD:o}\0");
    size[..text.len()].copy_from_slice(text.as_bytes());
    size[text.len()] = b'7';
    let mut tgz = Tgz::new();
    tgz.put(&header(b"././@LongLink", b'L', &size, true))
        .fill(b'n', PAYLOAD);
    tgz.finish()
}

/// A PAX size record (its block padded with NULs, as usual) gives a file 1024 bytes of data; the
/// data starts with a fake header whose size covers the real long name of
/// [`PAYLOAD`] bytes after it, so a guard that ignores the PAX size skips
/// the long name.
fn pax_hides_long_name() -> Vec<u8> {
    let pax = b"13 size=1024\n";
    let cover = BLOCK as u64 + BLOCK as u64 + PAYLOAD;
    let mut tgz = Tgz::new();
    tgz.put(&header(b"pax", b'x', &octal(pax.len() as u64), false))
        .fill_with(pax)
        .put(&header(b"f0", b'0', &octal(0), false))
        .put(&header(b"fake", b'0', &octal(cover), false))
        .put(&[0u8; BLOCK])
        .put(&header(b"././@LongLink", b'L', &octal(PAYLOAD), true))
        .fill(b'n', PAYLOAD);
    tgz.finish()
}

/// A GNU sparse file whose `isextended` chain runs for half [`PAYLOAD`]
/// of identical extension blocks (tar-rs builds a list of 21 blocks from
/// each, about as large as the chain, before it returns the entry).
fn sparse_chain() -> Vec<u8> {
    let mut h = header(b"sparse", b'S', &octal(0), true);
    h[482] = 1;
    h[483..495].copy_from_slice(b"00000000000\0");
    seal(&mut h);
    let mut ext = [0u8; BLOCK];
    for i in 0..21 {
        ext[i * 24..i * 24 + 12].copy_from_slice(b"00000000000\0");
        ext[i * 24 + 12..i * 24 + 24].copy_from_slice(b"00000000000\0");
    }
    ext[504] = 1;
    let mut tgz = Tgz::new();
    tgz.put(&h);
    let mut chunk = Vec::with_capacity(1 << 20);
    while chunk.len() < 1 << 20 {
        chunk.extend_from_slice(&ext);
    }
    for _ in 0..PAYLOAD / 2 / chunk.len() as u64 {
        tgz.put(&chunk);
    }
    ext[504] = 0;
    tgz.put(&ext);
    tgz.finish()
}

/// The updater's peak resident set, KiB.
fn peak_rss_kib(w: &Worker) -> u64 {
    status_bytes(w.updater_pid(), "VmHWM").expect("the updater's VmHWM") / 1024
}

async fn push_good(w: &Worker, client: &reqwest::Client, tag: &str) -> String {
    let tgz = ReleaseTree::new()
        .file("VERSION", tag.as_bytes())
        .file_mode("bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
        .tarball();
    let (code, body) = w.push(client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
    sha256_hex(&tgz)
}

#[tokio::test]
async fn hostile_headers_are_refused_without_the_updater_growing() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let live = push_good(&w, &client, "a").await;
    let before = peak_rss_kib(&w);
    assert!(
        before < MAX_HWM_KIB,
        "the updater already peaked at {before} KiB"
    );
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "base-256 size, first byte 0xff",
            base256_long_name(),
            "GNU long name of 268435456 bytes; extension headers are limited to 65536 bytes",
        ),
        (
            "octal size with an embedded NUL",
            nul_octal_long_name(),
            "GNU long name of 268435456 bytes",
        ),
        (
            "NUL-padded PAX size, fake header in file data",
            pax_hides_long_name(),
            "GNU long name of 268435456 bytes",
        ),
        (
            "GNU sparse isextended chain",
            sparse_chain(),
            "unsafe entry \"sparse\": GNU sparse file",
        ),
    ];
    for (what, tgz, why) in cases {
        assert!(
            (50_000..1_000_000).contains(&tgz.len()),
            "{what}: {} bytes is not a few hundred KB",
            tgz.len()
        );
        let (code, body) = w.push(&client, &tgz).await;
        // Never print a whole answer: a guard that lets a long name through
        // makes it 256 MB.
        let error = body.error.clone().unwrap_or_default();
        let shown: String = error.chars().take(300).collect();
        assert_eq!(code, 400, "{what}: {shown}");
        assert_eq!(body.status, OpStatus::Error, "{what}: {shown}");
        assert!(
            error.len() < 1024,
            "{what}: a {} byte error quotes too much: {shown}",
            error.len()
        );
        assert!(error.contains(why), "{what}: {shown:?} should say {why:?}");
        let peak = peak_rss_kib(&w);
        assert!(
            peak < MAX_HWM_KIB,
            "{what}: the updater peaked at {peak} KiB (limit {MAX_HWM_KIB} KiB)"
        );
        assert_eq!(
            w.slot_sha("active").as_deref(),
            Some(live.as_str()),
            "{what}"
        );
        assert!(
            !w.install_dir.join("releases/active.new").exists(),
            "{what}: staging left behind"
        );
    }
    // The worker is fine afterwards.
    push_good(&w, &client, "b").await;
}
