//! Deterministic, seeded release trees for the benchmark: a given seed and
//! shape always produce the same bytes, half of them compressible text and
//! half incompressible noise, spread over nested directories.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The size and file count of a generated tree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) name: &'static str,
    /// Total bytes of generated content (the `swarm.toml` and `REVISION`
    /// files come on top, a few hundred bytes).
    pub(crate) bytes: u64,
    pub(crate) files: u32,
    /// Only incompressible bytes (for uploads whose size must not shrink).
    pub(crate) noise_only: bool,
}

/// How the agent of a release behaves, written into its `swarm.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentKind {
    /// Starts and answers `/health` with 200.
    Healthy,
    /// Exits at once (its listen address does not parse).
    ExitsAtOnce,
    /// Starts, but its `--health-cmd false` makes `/health` answer 503.
    Unhealthy,
}

/// What the generated `swarm.toml` points at.
#[derive(Clone, Debug)]
pub(crate) struct AgentLaunch {
    /// The agent binary: absolute (outside the tree) or relative to the
    /// release root (`bin/worker-agent`, copied into the tree).
    pub(crate) binary: String,
}

/// A generated tree on disk.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    pub(crate) root: PathBuf,
    pub(crate) shape: Shape,
    /// Bytes on disk, all files included.
    pub(crate) bytes: u64,
    pub(crate) files: u64,
}

impl Tree {
    /// Make this tree a new release: rewrite `REVISION` with `rev`, so
    /// that every push carries a different digest.
    pub(crate) fn set_revision(&self, rev: &str) -> anyhow::Result<()> {
        let path = self.root.join("REVISION");
        fs::write(&path, format!("{rev}\n")).with_context(|| format!("writing {}", path.display()))
    }
}

/// splitmix64: tiny, fast and good enough to make reproducible test data.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: &str) -> Rng {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in stream.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Words for the compressible half: source-code-ish text that gzip
/// shrinks about 3–4×, like a real tree's sources and configs.
const WORDS: &[&str] = &[
    "fn", "let", "mut", "pub", "struct", "impl", "return", "match", "Some", "None", "Ok", "Err",
    "self", "config", "release", "worker", "update", "health", "probe", "install", "tarball",
    "sha256", "manifest", "listen", "address", "timeout", "retry", "error", "status", "agent",
    "=>", "{", "}", "(", ")", ";", "::", "&", "->", "//", "0", "1", "42", "true", "false",
    "String", "Vec<u8>", "Option", "Result", "anyhow", "context", "path", "dir", "file", "bytes",
];

fn write_text(out: &mut impl Write, rng: &mut Rng, len: u64) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(128);
    let mut written = 0u64;
    while written < len {
        line.clear();
        let indent = (rng.below(4) * 4) as usize;
        line.resize(indent, b' ');
        let words = 3 + rng.below(10);
        for i in 0..words {
            if i > 0 {
                line.push(b' ');
            }
            line.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        }
        line.push(b'\n');
        let take = (line.len() as u64).min(len - written) as usize;
        out.write_all(&line[..take])?;
        written += take as u64;
    }
    Ok(())
}

fn write_noise(out: &mut impl Write, rng: &mut Rng, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// The `swarm.toml` of a generated release. The agent's port comes from
/// `${AGENT_PORT}` in each worker's `.env.local`, so one tree serves every
/// worker of a fleet.
pub(crate) fn swarm_toml(launch: &AgentLaunch, kind: AgentKind) -> String {
    let bin = toml_str(&launch.binary);
    let command = match kind {
        AgentKind::Healthy => format!(r#"[{bin}, "--listen", "127.0.0.1:${{AGENT_PORT}}"]"#),
        AgentKind::ExitsAtOnce => format!(r#"[{bin}, "--listen", "not-an-address"]"#),
        AgentKind::Unhealthy => {
            format!(r#"[{bin}, "--listen", "127.0.0.1:${{AGENT_PORT}}", "--health-cmd", "false"]"#)
        }
    };
    format!(
        "# generated by the swarm benchmark ({kind:?} agent)\n[agent]\ncommand = {command}\n\
         health_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n"
    )
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Generate `shape` under `root` (which must not exist yet) from `seed`.
///
/// File sizes are log-uniform (many small files, a few large ones) and
/// scaled so their sum is exactly `shape.bytes`; even-numbered files are
/// text, odd-numbered ones noise, so about half the bytes compress (unless
/// the shape is `noise_only`).
pub(crate) fn generate(
    root: &Path,
    shape: Shape,
    seed: u64,
    launch: &AgentLaunch,
    kind: AgentKind,
    agent_binary: Option<&Path>,
) -> anyhow::Result<Tree> {
    anyhow::ensure!(shape.files > 0, "a tree needs at least one file");
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut rng = Rng::new(seed, shape.name);

    // Sizes: log-uniform weights between 1 and 1000, scaled to the total.
    let weights: Vec<f64> = (0..shape.files)
        .map(|_| 10f64.powf(rng.unit() * 3.0))
        .collect();
    let sum: f64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (shape.bytes as f64 * w / sum) as u64)
        .collect();
    let assigned: u64 = sizes.iter().sum();
    if let Some(last) = sizes.last_mut() {
        *last += shape.bytes - assigned.min(shape.bytes);
    }

    let mut total = 0u64;
    for (i, size) in sizes.iter().enumerate() {
        // Two levels of directories, ~20 files per leaf directory.
        let dir = root
            .join(format!("src{:02}", i % 17))
            .join(format!("mod{:03}", (i / 17) % 59));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = i % 2 == 0 && !shape.noise_only;
        let path = dir.join(format!("f{i:05}.{}", if text { "rs" } else { "bin" }));
        let file =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        if text {
            write_text(&mut out, &mut rng, *size)
        } else {
            write_noise(&mut out, &mut rng, *size)
        }
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))?;
        total += size;
    }

    let toml = swarm_toml(launch, kind);
    fs::write(root.join("swarm.toml"), &toml).context("writing swarm.toml")?;
    total += toml.len() as u64;
    let mut files = u64::from(shape.files) + 1;
    if let Some(src) = agent_binary {
        let bin_dir = root.join("bin");
        fs::create_dir_all(&bin_dir).context("creating bin/")?;
        total += fs::copy(src, bin_dir.join("worker-agent"))
            .with_context(|| format!("copying {} into the tree", src.display()))?;
        files += 1;
    }
    let tree = Tree {
        root: root.to_owned(),
        shape,
        bytes: total,
        files,
    };
    tree.set_revision("0")?;
    Ok(Tree {
        bytes: tree.bytes + 2,
        files: tree.files + 1,
        ..tree
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let mut a = Rng::new(7, "small");
        let mut b = Rng::new(7, "small");
        assert_eq!(a.next_u64(), b.next_u64());
        let mut c = Rng::new(7, "large");
        assert_ne!(Rng::new(7, "small").next_u64(), c.next_u64());
    }
}
