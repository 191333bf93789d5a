//! Just enough DER to tell a private key file by its ASN.1 shape.

use super::DerKey;

/// One TLV: its tag, content, and what follows it.
pub(super) fn tlv(s: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, s) = s.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur in keys
    }
    let (&first, s) = s.split_first()?;
    let (len, s) = if first < 0x80 {
        (usize::from(first), s)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || s.len() < n || s[0] == 0 {
            return None; // indefinite, oversized or non-minimal
        }
        let len = s[..n].iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
        if len < 0x80 {
            return None; // non-minimal
        }
        (len, &s[n..])
    };
    if s.len() < len {
        return None;
    }
    Some((tag, &s[..len], &s[len..]))
}

/// The elements of a constructed value's content.
pub(super) fn elements(mut s: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (tag, content, rest) = tlv(s)?;
        out.push((tag, content));
        s = rest;
        if out.len() > 16 {
            return None;
        }
    }
    Some(out)
}

pub(super) const SEQUENCE: u8 = 0x30;
pub(super) const INTEGER: u8 = 0x02;
pub(super) const OCTET_STRING: u8 = 0x04;
pub(super) const OID: u8 = 0x06;

/// A small non-negative INTEGER's value.
pub(super) fn small_int(e: (u8, &[u8])) -> Option<u8> {
    match e {
        (INTEGER, [v]) if *v < 0x80 => Some(*v),
        _ => None,
    }
}

/// An AlgorithmIdentifier: a SEQUENCE that starts with an OID; its OID.
pub(super) fn algorithm(e: (u8, &[u8])) -> Option<&[u8]> {
    if e.0 != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = tlv(e.1)?;
    (tag == OID && !oid.is_empty()).then_some(oid)
}

/// 1.2.840.113549 (RSADSI), then `.1.5` (PKCS#5 PBES) or `.1.12.1` (PKCS#12 PBE).
const PKCS5_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05];
const PKCS12_PBE_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01];
/// 1.2.840.113549.1.7.1 (data) and .7.2 (signedData).
const PKCS7_DATA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const PKCS7_SIGNED_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// Whether `file` (all of it) is a DER private key, and which.
pub(crate) fn der_key(file: &[u8]) -> Option<DerKey> {
    let (tag, content, rest) = tlv(file)?;
    if tag != SEQUENCE || !rest.iter().all(|b| matches!(b, b'\r' | b'\n')) || rest.len() > 2 {
        return None;
    }
    let e = elements(content)?;
    let version = e.first().and_then(|v| small_int(*v));
    let all_ints = |n: usize| e.len() >= n && e[..n].iter().all(|(t, _)| *t == INTEGER);
    match (version, e.len()) {
        // PrivateKeyInfo / OneAsymmetricKey: version, algorithm, key, [0] attrs, [1] public key.
        (Some(0 | 1), 3..=5)
            if algorithm(e[1]).is_some()
                && e[2].0 == OCTET_STRING
                && e[3..].iter().all(|(t, _)| matches!(t, 0xa0 | 0x81 | 0xa1)) =>
        {
            Some(DerKey::Pkcs8)
        }
        // ECPrivateKey: version 1, key, [0] parameters, [1] public key.
        (Some(1), 2..=4)
            if e[1].0 == OCTET_STRING && e[2..].iter().all(|(t, _)| matches!(t, 0xa0 | 0xa1)) =>
        {
            Some(DerKey::Sec1)
        }
        // RSAPrivateKey: version, n, e, d, p, q, dp, dq, qinv (, otherPrimeInfos).
        (Some(0), 9) if all_ints(9) => Some(DerKey::Pkcs1),
        (Some(1), 10) if all_ints(9) && e[9].0 == SEQUENCE => Some(DerKey::Pkcs1),
        // DSA: version 0, p, q, g, y, x.
        (Some(0), 6) if all_ints(6) => Some(DerKey::Dsa),
        // PFX: version 3, authSafe ContentInfo (, macData).
        (Some(3), 2..=3)
            if algorithm(e[1]).is_some_and(|o| o == PKCS7_DATA_OID || o == PKCS7_SIGNED_OID) =>
        {
            Some(DerKey::Pkcs12)
        }
        // EncryptedPrivateKeyInfo: a password-based scheme, then the ciphertext.
        (None, 2)
            if e[1].0 == OCTET_STRING
                && algorithm(e[0])
                    .is_some_and(|o| o.starts_with(PKCS5_OID) || o.starts_with(PKCS12_PBE_OID)) =>
        {
            Some(DerKey::EncryptedPkcs8)
        }
        _ => None,
    }
}
