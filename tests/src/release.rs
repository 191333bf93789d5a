//! Release trees for tests, built in memory: regular trees as gzip
//! tarballs, raw tar bytes for what `tar::Builder` refuses to write, the
//! multipart form `/update` takes, and the built updater to ship.

use std::io::Write;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::bin;

/// A `swarm.toml` whose agent is the reference `worker-agent` on the
/// worker's `${AGENT_PORT}`, with `extra` arguments.
pub fn agent_toml(extra: &[&str]) -> String {
    let mut cmd = vec![
        bin("worker-agent").display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:${AGENT_PORT}".to_owned(),
    ];
    cmd.extend(extra.iter().map(|s| (*s).to_owned()));
    format!(
        "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n",
        toml_array(&cmd)
    )
}

/// Write `bytes` to `root/rel` on disk, making its directories.
pub fn write_file(root: &std::path::Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
}

/// The multipart body of `/update` and `/update-self`: `sha256`, the
/// `extra` text fields, then the `tarball`, as `curl -F` would send them.
pub fn release_form(tgz: &[u8], sha256: &str, extra: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("sha256", sha256.to_owned());
    for (k, v) in extra {
        form = form.text(k.to_string(), v.to_string());
    }
    form.part(
        "tarball",
        reqwest::multipart::Part::bytes(tgz.to_vec())
            .file_name("tree.tgz")
            .mime_str("application/gzip")
            .expect("mime"),
    )
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A release tree built in memory, turned into a gzip tarball.
#[derive(Clone, Debug, Default)]
pub struct ReleaseTree {
    files: Vec<(String, Vec<u8>, u32)>,
}

impl ReleaseTree {
    pub fn new() -> ReleaseTree {
        ReleaseTree::default()
    }

    /// Add a regular file (mode 0644).
    pub fn file(self, path: &str, contents: &[u8]) -> ReleaseTree {
        self.file_mode(path, contents, 0o644)
    }

    /// Add a regular file with `mode`.
    pub fn file_mode(mut self, path: &str, contents: &[u8], mode: u32) -> ReleaseTree {
        self.files.push((path.to_owned(), contents.to_vec(), mode));
        self
    }

    /// Add a `swarm.toml` whose agent is the reference agent on `port`
    /// with extra arguments (e.g. `["--health-cmd", "false"]`).
    pub fn reference_agent(self, port: u16, extra: &[&str]) -> ReleaseTree {
        let mut cmd = vec![
            bin("worker-agent").display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        cmd.extend(extra.iter().map(|s| (*s).to_owned()));
        self.agent_command(&cmd, port)
    }

    /// Add a `swarm.toml` whose agent is the reference agent taking its
    /// listener by socket activation: `[agent] listen` on `port` and
    /// `restart = mode` (`"start-first"` or `"stop-first"`), `extra`
    /// arguments for the agent.
    pub fn activated_agent(self, port: u16, mode: &str, extra: &[&str]) -> ReleaseTree {
        let mut cmd = vec![
            bin("worker-agent").display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        cmd.extend(extra.iter().map(|s| (*s).to_owned()));
        self.activated_command(&cmd, port, mode)
    }

    /// Add a `swarm.toml` running `command` with `[agent] listen` on
    /// `port` and `restart = mode`, probed on `port`.
    pub fn activated_command(self, command: &[String], port: u16, mode: &str) -> ReleaseTree {
        let toml = format!(
            "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:{port}/health\"\nlisten = [\"127.0.0.1:{port}\"]\nrestart = \"{mode}\"\n",
            toml_array(command)
        );
        self.file("swarm.toml", toml.as_bytes())
    }

    /// Add a `swarm.toml` running `command` as the agent, probed on `port`.
    pub fn agent_command(self, command: &[String], port: u16) -> ReleaseTree {
        let toml = format!(
            "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:{port}/health\"\n",
            toml_array(command)
        );
        self.file("swarm.toml", toml.as_bytes())
    }

    /// Write the tree under `dir` (for `swarm update --root` and `swarm sign --root`).
    pub fn write_to(&self, dir: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        for (path, contents, mode) in &self.files {
            let p = dir.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, contents).expect("write tree file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
    }

    /// The gzip tarball (regular files, with their parent directories implied).
    pub fn tarball(&self) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, contents, mode) in &self.files {
            let mut h = tar::Header::new_gnu();
            h.set_size(contents.len() as u64);
            h.set_mode(*mode);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, contents.as_slice())
                .expect("append to tarball");
        }
        let gz = tar.into_inner().expect("finish tar");
        gz.finish().expect("finish gzip")
    }
}

/// A TOML array of strings.
pub fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Raw tar building, byte by byte, for tarballs `tar::Builder` refuses to
/// write (`..`, absolute paths, escaping links, devices, …).
pub mod raw {
    use super::Write;

    /// One 512-byte ustar header block with a correct checksum.
    pub fn header(name: &[u8], typeflag: u8, size: u64, mode: u32, linkname: &[u8]) -> [u8; 512] {
        let mut h = [0u8; 512];
        assert!(
            name.len() <= 100 && linkname.len() <= 100,
            "use pax for long names"
        );
        h[..name.len()].copy_from_slice(name);
        put_octal(&mut h[100..108], u64::from(mode));
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], size);
        put_octal(&mut h[136..148], 0);
        h[156] = typeflag;
        h[157..157 + linkname.len()].copy_from_slice(linkname);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    fn put_octal(field: &mut [u8], v: u64) {
        let s = format!("{v:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    /// An entry: header plus data padded to 512 bytes.
    pub fn entry(name: &[u8], typeflag: u8, data: &[u8], mode: u32, linkname: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, data.len() as u64, mode, linkname).to_vec();
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
        out
    }

    /// A regular file entry.
    pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        entry(name, b'0', data, 0o644, b"")
    }

    /// Concatenate entries, add the end-of-archive blocks, gzip it.
    pub fn tgz(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar: Vec<u8> = entries.concat();
        tar.extend(std::iter::repeat_n(0u8, 1024));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip finish")
    }
}

/// The built `worker-updater`, debug info stripped when `strip` is there
/// (a debug build is ~150 MB, too slow to ship in every self-update test),
/// for release trees that ship an updater.
pub fn shippable_updater() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("worker-updater");
        std::fs::copy(bin("worker-updater"), &copy).expect("copy worker-updater");
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&copy)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::fs::read(&copy).expect("read the updater copy")
    })
}
