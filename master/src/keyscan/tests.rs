//! Tests of the key scanner: real keys from rcgen and the openssl CLI, in
//! every place the packer used to miss them, and text and noise that must
//! not count.

use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};

use super::*;

fn strict() -> ScanOptions {
    ScanOptions::for_name("file.txt")
}

fn scan(bytes: &[u8]) -> Option<KeyFinding> {
    scan_reader(bytes, strict()).unwrap()
}

fn scan_named(name: &str, bytes: &[u8]) -> Option<KeyFinding> {
    scan_reader(bytes, ScanOptions::for_name(name)).unwrap()
}

/// A reader that hands out at most `step` bytes per read (and some
/// `Interrupted`s), to put every boundary everywhere.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(7) {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn trickle(data: &[u8], step: usize) -> Option<KeyFinding> {
    let r = Trickle {
        data,
        step,
        calls: 0,
    };
    scan_reader(r, strict()).unwrap()
}

fn ec_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn cert_pem() -> String {
    let key = ec_key();
    let params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn is_pem(f: Option<KeyFinding>, label: &str) -> u64 {
    match f {
        Some(KeyFinding {
            kind: KeyKind::Pem { label: l, .. },
            offset,
        }) if l == label => offset,
        other => panic!("expected a PEM {label} block, got {other:?}"),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs (install openssl to run these tests)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OCTET STRING inside a PKCS#8 PrivateKeyInfo: SEC1 for EC keys,
/// PKCS#1 for RSA keys.
fn unwrap_pkcs8(der: &[u8]) -> Vec<u8> {
    let (_, content, _) = der::tlv(der).unwrap();
    let e = der::elements(content).unwrap();
    assert_eq!(e[2].0, der::OCTET_STRING);
    e[2].1.to_vec()
}

#[test]
fn haproxy_bundle_with_the_key_after_8_kib() {
    let mut bundle = String::new();
    while bundle.len() < 9 * 1024 {
        bundle.push_str(&cert_pem());
    }
    let key_at = bundle.len() as u64;
    bundle.push_str(&ec_key().serialize_pem());
    for name in ["site.pem", "cert+key.txt", "haproxy.crt"] {
        let found = scan_named(name, bundle.as_bytes()).expect(name);
        assert!(found.offset >= key_at, "{name}: {found:?}");
    }
    assert_eq!(
        is_pem(scan(bundle.as_bytes()), "PRIVATE KEY"),
        key_at,
        "the offset names the key block"
    );
    // The certificates alone are not a key (not even in a .pem file).
    let certs = &bundle.as_bytes()[..key_at as usize];
    assert_eq!(scan(certs), None);
    assert_eq!(scan_named("chain.pem", certs), None);
}

#[test]
fn json_credentials_with_escaped_newlines() {
    let pem = ec_key().serialize_pem();
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "0123",
        "private_key": pem,
        "client_email": "x@p.iam.example",
    })
    .to_string();
    assert!(json.contains("-----\\n"), "{json}");
    let found = scan_named("sa.json", json.as_bytes()).unwrap();
    assert_eq!(
        found.kind,
        KeyKind::Pem {
            label: "PRIVATE KEY".into(),
            escaped: true
        }
    );
    // Pretty-printed, with `\/` escapes (PHP), `\r\n`, and inside a JSON
    // string inside a JSON string (`\\n`).
    let slashes = json.replace('/', "\\/");
    assert!(scan(slashes.as_bytes()).is_some());
    let crlf = json.replace("\\n", "\\r\\n");
    assert!(scan(crlf.as_bytes()).is_some());
    let nested = serde_json::json!({ "config": json }).to_string();
    assert!(nested.contains("\\\\n"), "{nested}");
    assert!(scan(nested.as_bytes()).is_some());
    let pretty = serde_json::to_string_pretty(&serde_json::json!({ "key": pem })).unwrap();
    assert!(scan(pretty.as_bytes()).is_some());
}

#[test]
fn pem_keys_in_yaml_source_and_one_line() {
    let pem = ec_key().serialize_pem();
    let yaml = format!(
        "tls:\n  key: |\n{}",
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    assert!(scan(yaml.as_bytes()).is_some(), "{yaml}");
    // A Rust string literal holding a real key (`\n\` continuations).
    let rust = format!("const KEY: &str = \"{}\";\n", pem.replace('\n', "\\n\\\n"));
    assert!(scan(rust.as_bytes()).is_some(), "{rust}");
    let one_line = pem.replace('\n', " ");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let one_line_joined = format!("-----BEGIN PRIVATE KEY----- {body} -----END PRIVATE KEY-----");
    assert!(scan(one_line_joined.as_bytes()).is_some());
    // Spaces inside the body are not a PEM body (prose looks like that).
    assert_eq!(scan(one_line.as_bytes()), None, "{one_line}");
}

#[test]
fn every_pem_private_label() {
    for label in [
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "DSA PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PRIVATE KEY",
    ] {
        let pem = format!(
            "-----BEGIN {label}-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END {label}-----\n"
        );
        assert_eq!(is_pem(scan(pem.as_bytes()), label), 0);
    }
    let openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\n\
        b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n\
        -----END OPENSSH PRIVATE KEY-----\n";
    is_pem(scan(openssh.as_bytes()), "OPENSSH PRIVATE KEY");
    let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nComment: test\n\n\
        lQOYBF0AAAABCADGu7rQx4u3H9kZk0e4v0Yv\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----\n";
    is_pem(scan(pgp.as_bytes()), "PGP PRIVATE KEY BLOCK");
    // An OpenSSH label over a body that is not openssh-key-v1 is not one.
    let fake = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    assert_eq!(scan(fake.as_bytes()), None);
}

#[test]
fn pem_keys_as_the_tools_write_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.txt",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ec.txt",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-out",
            "enc.txt",
        ],
    );
    openssl(
        d,
        &[
            "ec",
            "-in",
            "ec.txt",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            "legacy.txt",
        ],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.txt", "2048"]);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "t", "-f"])
        .arg(d.join("ssh.txt"))
        .output()
        .expect("ssh-keygen runs (install openssh-client to run these tests)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases = [
        ("ec.txt", "PEM PRIVATE KEY block"),
        ("enc.txt", "PEM ENCRYPTED PRIVATE KEY block"),
        ("legacy.txt", "encrypted PEM EC PRIVATE KEY block"),
        ("rsa.txt", "PEM RSA PRIVATE KEY block"),
        ("ssh.txt", "PEM OPENSSH PRIVATE KEY block"),
    ];
    for (name, want) in cases {
        let found = scan_file(&d.join(name)).unwrap();
        let text = found.map(|f| f.to_string()).unwrap_or_default();
        assert!(text.starts_with(want), "{name}: {text:?}");
    }
    // Their public halves are not keys.
    assert_eq!(scan_file(&d.join("ssh.txt.pub")).unwrap(), None);
}

#[test]
fn the_packers_existing_cases_keep_their_verdicts() {
    // From pack.rs `private_keys_are_found_by_content_and_name`.
    let short =
        b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx0p+8Yq/abc=\n-----END EC PRIVATE KEY-----\n";
    is_pem(scan(short), "EC PRIVATE KEY");
    let legacy = b"-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\n\r\nabc\r\n";
    assert_eq!(
        scan(legacy).map(|f| f.kind),
        Some(KeyKind::LegacyEncryptedPem {
            label: "RSA PRIVATE KEY".into()
        })
    );
    let code = b"const BEGIN: &str = \"-----BEGIN PRIVATE KEY-----\";\nfn f() {}\n";
    assert_eq!(scan(code), None);
    assert_eq!(scan(b"-----BEGIN PRIVATE KEY-----\n\nprose\n"), None);
    assert_eq!(scan(&b"z".repeat(100_000)), None);
    // In a .pem file any marker counts, wherever it is.
    let mut pem_file = "x".repeat(200_000).into_bytes();
    pem_file.extend_from_slice(b"PRIVATE KEY");
    assert_eq!(
        scan_named("a.pem", &pem_file),
        Some(KeyFinding {
            kind: KeyKind::PemFileMarker,
            offset: 200_000
        })
    );
    assert_eq!(scan(&pem_file), None);
}

#[test]
fn source_and_docs_that_mention_the_markers_are_not_keys() {
    let cases: &[&str] = &[
        // This scanner's own kind of code.
        "const BEGIN: &[u8] = b\"-----BEGIN \";\nconst END: &[u8] = b\"-----END \";\n",
        "if line.starts_with(\"-----BEGIN RSA PRIVATE KEY-----\") {\n    return true;\n}\n",
        "let pem = \"-----BEGIN PRIVATE KEY-----\\n\" + body + \"\\n-----END PRIVATE KEY-----\\n\";\n",
        // Docs with placeholders.
        "-----BEGIN PRIVATE KEY-----\n(your key here)\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\npaste your private key here\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B...\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\n<base64>\n-----END PRIVATE KEY-----\n",
        // Too short to be a key, END with another label, no END at all.
        "-----BEGIN PRIVATE KEY-----\nMIIBCg==\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9\n",
        // Public keys and certificates.
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
        "-----BEGIN lower private key-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9\n-----END lower private key-----\n",
        "-----BEGIN  -----\n",
        "-----BEGIN ",
        "-----BEGIN PRIVATE KEY",
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9\n-----END",
        "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9\\",
    ];
    for case in cases {
        assert_eq!(scan(case.as_bytes()), None, "{case}");
        for step in [1, 3] {
            assert_eq!(trickle(case.as_bytes(), step), None, "{case}");
        }
    }
    let cert = cert_pem();
    assert_eq!(scan(cert.as_bytes()), None);
    assert_eq!(scan(ec_key().public_key_pem().as_bytes()), None);
}

#[test]
fn der_keys_whatever_their_name() {
    let ec = ec_key().serialize_der();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .serialize_der();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_der();
    assert_eq!(der_key(&ec), Some(DerKey::Pkcs8));
    assert_eq!(der_key(&ed), Some(DerKey::Pkcs8));
    assert_eq!(der_key(&rsa), Some(DerKey::Pkcs8));
    assert_eq!(der_key(&unwrap_pkcs8(&ec)), Some(DerKey::Sec1));
    assert_eq!(der_key(&unwrap_pkcs8(&rsa)), Some(DerKey::Pkcs1));

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ec.pem",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-outform",
            "DER",
            "-out",
            "enc.p8",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ec.pem",
            "-v1",
            "PBE-SHA1-3DES",
            "-passout",
            "pass:x",
            "-outform",
            "DER",
            "-out",
            "enc-v1.pk8",
        ],
    );
    openssl(
        d,
        &["ec", "-in", "ec.pem", "-outform", "DER", "-out", "ec-sec1"],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.pem", "2048"]);
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "rsa.pem",
            "-traditional",
            "-outform",
            "DER",
            "-out",
            "rsa.der",
        ],
    );
    openssl(
        d,
        &["dsaparam", "-genkey", "-noout", "-out", "dsa.pem", "1024"],
    );
    openssl(
        d,
        &[
            "dsa",
            "-in",
            "dsa.pem",
            "-outform",
            "DER",
            "-out",
            "dsa.key.bin",
        ],
    );
    openssl(
        d,
        &[
            "req", "-x509", "-new", "-key", "ec.pem", "-subj", "/CN=t", "-out", "cert.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-in",
            "cert.pem",
            "-inkey",
            "ec.pem",
            "-passout",
            "pass:x",
            "-out",
            "store.bin",
        ],
    );
    openssl(
        d,
        &[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ],
    );
    openssl(
        d,
        &[
            "pkey", "-in", "ec.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
        ],
    );

    let cases = [
        ("enc.p8", Some(DerKey::EncryptedPkcs8)),
        ("enc-v1.pk8", Some(DerKey::EncryptedPkcs8)),
        ("ec-sec1", Some(DerKey::Sec1)),
        ("rsa.der", Some(DerKey::Pkcs1)),
        ("dsa.key.bin", Some(DerKey::Dsa)),
        ("store.bin", Some(DerKey::Pkcs12)),
        ("cert.der", None),
        ("pub.der", None),
    ];
    for (name, want) in cases {
        let found = scan_file(&d.join(name)).unwrap();
        assert_eq!(found.map(|f| f.kind), want.map(KeyKind::Der), "{name}");
    }
    // Through scan_file under any name, and trickled.
    for (name, der) in [("k.der", &ec), ("k.p8", &ed), ("k.pk8", &rsa), ("k", &ec)] {
        std::fs::write(d.join(name), der).unwrap();
        let found = scan_file(&d.join(name)).unwrap();
        assert_eq!(
            found.map(|f| f.kind),
            Some(KeyKind::Der(DerKey::Pkcs8)),
            "{name}"
        );
        assert!(trickle(der, 5).is_some(), "{name}");
    }
    // A key with something after it, or cut short, is not a DER key file.
    let mut longer = ec.clone();
    longer.extend_from_slice(b"xyz");
    assert_eq!(scan(&longer), None);
    assert_eq!(scan(&ec[..ec.len() - 1]), None);
    let mut newline = ec.clone();
    newline.push(b'\n');
    assert!(scan(&newline).is_some(), "a trailing newline is tolerated");
}

#[test]
fn random_blobs_are_not_keys() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for i in 0..200 {
        let mut blob = vec![0u8; 4096];
        rng.fill(&mut blob[..]);
        // Half of them look like the start of a DER SEQUENCE.
        if i % 2 == 0 {
            blob[0] = 0x30;
            blob[1] = 0x82;
        }
        assert_eq!(scan(&blob), None, "blob {i}");
        assert_eq!(der_key(&blob), None, "blob {i}");
    }
    // A blob whose SEQUENCE length fits exactly but holds no key shape.
    let mut seq = vec![0x30, 0x82, 0x0f, 0xfc];
    seq.extend((0..4092).map(|_| rng.random::<u8>()));
    assert_eq!(scan(&seq), None);
}

#[test]
fn keys_split_across_read_boundaries() {
    let pem = ec_key().serialize_pem();
    let json = serde_json::json!({ "private_key": pem }).to_string();
    for text in [pem.as_str(), json.as_str()] {
        // The key at every position around the first chunk boundary:
        // the marker, the label, the body and the END line split.
        for shift in (0..text.len() + 12).step_by(7) {
            let mut data = vec![b'.'; CHUNK + shift - text.len()];
            let at = data.len() + text.find("-----BEGIN").unwrap();
            data.extend_from_slice(text.as_bytes());
            data.extend_from_slice(&[b'.'; 100]);
            let found = scan(&data).unwrap_or_else(|| panic!("shift {shift}"));
            assert_eq!(found.offset, at as u64, "shift {shift}");
        }
        for step in [1, 2, 10, 4093] {
            let mut data = vec![b'x'; 3 * CHUNK + 5];
            data.extend_from_slice(text.as_bytes());
            let found = trickle(&data, step).unwrap_or_else(|| panic!("step {step}"));
            let at = 3 * CHUNK + 5 + text.find("-----BEGIN").unwrap();
            assert_eq!(found.offset, at as u64);
        }
    }
}

#[test]
fn the_window_stays_bounded_on_hostile_input() {
    // Markers that each ask for more, back to back, and a huge body that
    // never ends: the scan finishes with a bounded window.
    let mut data = Vec::new();
    while data.len() < 4 * BLOCK_MAX {
        data.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\n");
    }
    data.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nMIIB");
    data.extend(std::iter::repeat_n(b'A', 3 * BLOCK_MAX));
    data.extend_from_slice(b"\n-----END PRIVATE KEY-----\n");
    let mut s = Scanner::new(strict());
    let mut r = &data[..];
    let mut peak = 0;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = r.read(&mut chunk).unwrap();
        s.window.extend_from_slice(&chunk[..n]);
        peak = peak.max(s.window.len());
        assert_eq!(s.search(n == 0), None);
        if n == 0 {
            break;
        }
    }
    assert!(peak <= CHUNK + BLOCK_MAX, "{peak}");
    assert_eq!(scan(&data), None, "a body longer than BLOCK_MAX is no key");
}

#[test]
fn files_over_the_ceiling_are_refused() {
    let opts = ScanOptions {
        any_marker: false,
        ceiling: 1000,
    };
    let err = scan_reader(io::repeat(b'a').take(1001), opts).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    let cause = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<TooLargeToScan>())
        .unwrap();
    assert_eq!(cause.ceiling, 1000);
    assert!(err.to_string().contains("[release] include"), "{err}");
    assert_eq!(
        scan_reader(io::repeat(b'a').take(1000), opts).unwrap(),
        None
    );
    // A stream of 20 MiB goes through whole (the key is at the very end).
    let key = ec_key().serialize_pem();
    let big = io::repeat(b'a').take(20 << 20).chain(key.as_bytes());
    let found = scan_reader(big, strict()).unwrap().unwrap();
    assert_eq!(found.offset, 20 << 20);
    assert!(
        found.to_string().contains("PEM PRIVATE KEY block at byte"),
        "{found}"
    );
}

#[test]
fn an_open_file_is_scanned_and_rewound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.crt");
    let text = format!("{}{}", cert_pem(), ec_key().serialize_pem());
    std::fs::write(&path, &text).unwrap();
    let mut f = File::open(&path).unwrap();
    assert!(scan_open_file(&mut f, "bundle.crt").unwrap().is_some());
    let mut again = String::new();
    f.read_to_string(&mut again).unwrap();
    assert_eq!(again, text, "rewound to the start");
    assert!(scan_file(&path).unwrap().is_some());
    assert!(scan_file(&dir.path().join("missing")).is_err());
}
