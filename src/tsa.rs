//! RFC 3161 time-stamping of anchors: a third party's signed statement that the anchor existed
//! at a time, which the firm's own key cannot give.
//!
//! The request is built and the response checked here with a small DER reader: the response
//! is granted, its `TSTInfo` stamps SHA-256 of exactly the anchor's bytes with our nonce, the
//! CMS `messageDigest` attribute is SHA-256 of that `TSTInfo`, and the signature over the
//! signed attributes verifies with the configured TSA certificate's key (RSA PKCS#1 v1.5 or
//! ECDSA P-256/P-384, with SHA-256). Certificate-chain validation is left to the examiner's
//! tools (`openssl ts -verify`): the TSA certificate is pinned in configuration instead.

use crate::merkle::Hash;

const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
const OID_TST_INFO: &[u8] = &[
    0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x04];
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];

/// One DER element: its tag, its content, and its whole encoding.
#[derive(Clone, Copy, Debug)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// Reads one element from the front of `buf`; returns it and the rest.
fn tlv(buf: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let short = || "truncated DER".to_string();
    let tag = *buf.first().ok_or_else(short)?;
    let first = *buf.get(1).ok_or_else(short)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err("unsupported DER length".into());
        }
        let bytes = buf.get(2..2 + n).ok_or_else(short)?;
        (
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            2 + n,
        )
    };
    let end = header.checked_add(len).ok_or_else(short)?;
    let whole = buf.get(..end).ok_or_else(short)?;
    Ok((
        Tlv {
            tag,
            content: &whole[header..],
            whole,
        },
        &buf[end..],
    ))
}

/// The elements inside a constructed element.
fn children(content: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (t, r) = tlv(rest)?;
        out.push(t);
        rest = r;
    }
    Ok(out)
}

fn expect<'a>(t: Option<&Tlv<'a>>, tag: u8, what: &str) -> Result<Tlv<'a>, String> {
    match t {
        Some(t) if t.tag == tag => Ok(*t),
        _ => Err(format!("{what} is missing or malformed")),
    }
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding a non-negative `n`.
fn integer(n: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    encode(0x02, &bytes)
}

/// A `TimeStampReq` for SHA-256 `hash`, asking for the TSA's certificate.
pub fn request(hash: &Hash, nonce: u64) -> Vec<u8> {
    let alg = encode(0x30, &[encode(0x06, OID_SHA256), vec![0x05, 0x00]].concat());
    let imprint = encode(0x30, &[alg, encode(0x04, hash)].concat());
    let body = [integer(1), imprint, integer(nonce), vec![0x01, 0x01, 0xff]].concat();
    encode(0x30, &body)
}

/// What a checked token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The TSA's time, as it wrote it (GeneralizedTime, e.g. `20261122075012Z`).
    pub gen_time: String,
    /// The token's serial number, hex.
    pub serial: String,
}

/// A certificate's public key: algorithm OID, curve OID (for EC keys), and the key bytes.
struct PublicKey {
    alg: Vec<u8>,
    param: Option<Vec<u8>>,
    key: Vec<u8>,
}

/// The public key of a certificate (DER).
fn certificate_key(cert: &[u8]) -> Result<PublicKey, String> {
    let (c, _) = tlv(cert)?;
    let c = children(c.content)?;
    let tbs = children(expect(c.first(), 0x30, "tbsCertificate")?.content)?;
    let skip = usize::from(tbs.first().is_some_and(|t| t.tag == 0xA0));
    let spki = children(expect(tbs.get(skip + 5), 0x30, "subjectPublicKeyInfo")?.content)?;
    let alg = children(expect(spki.first(), 0x30, "the key algorithm")?.content)?;
    let oid = expect(alg.first(), 0x06, "the key algorithm")?
        .content
        .to_vec();
    let param = alg
        .get(1)
        .filter(|t| t.tag == 0x06)
        .map(|t| t.content.to_vec());
    let bits = expect(spki.get(1), 0x03, "the public key")?.content;
    if bits.first() != Some(&0) {
        return Err("the public key has unused bits".into());
    }
    Ok(PublicKey {
        alg: oid,
        param,
        key: bits[1..].to_vec(),
    })
}

/// Reads a PEM certificate file's first certificate as DER.
pub fn pem_certificate(pem: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("no certificate in the PEM file")?
        + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or("unterminated certificate")?
        + start;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("certificate is not base64: {e}"))
}

/// Checks a `TimeStampResp` (as the TSA returned it) for `hash` and `nonce` against the TSA
/// certificate `cert` (DER).
pub fn verify(
    response: &[u8],
    hash: &Hash,
    nonce: Option<u64>,
    cert: &[u8],
) -> Result<Stamp, String> {
    let (resp, _) = tlv(response)?;
    let resp = children(expect(Some(&resp), 0x30, "TimeStampResp")?.content)?;
    let status = children(expect(resp.first(), 0x30, "PKIStatusInfo")?.content)?;
    let code = expect(status.first(), 0x02, "the status")?.content;
    if code != [0] && code != [1] {
        return Err(format!(
            "the TSA did not grant the request (status {code:?})"
        ));
    }
    let token = children(expect(resp.get(1), 0x30, "the time-stamp token")?.content)?;
    if expect(token.first(), 0x06, "the content type")?.content != OID_SIGNED_DATA {
        return Err("the token is not CMS SignedData".into());
    }
    let explicit = children(expect(token.get(1), 0xA0, "the SignedData")?.content)?;
    let sd = children(expect(explicit.first(), 0x30, "the SignedData")?.content)?;
    let encap = children(expect(sd.get(2), 0x30, "encapContentInfo")?.content)?;
    if expect(encap.first(), 0x06, "the content type")?.content != OID_TST_INFO {
        return Err("the token does not hold a TSTInfo".into());
    }
    let wrapped = children(expect(encap.get(1), 0xA0, "eContent")?.content)?;
    let tst_der = expect(wrapped.first(), 0x04, "eContent")?.content;
    let (tst, _) = tlv(tst_der)?;
    let tst = children(tst.content)?;
    let imprint = children(expect(tst.get(2), 0x30, "messageImprint")?.content)?;
    let alg = children(expect(imprint.first(), 0x30, "the imprint's algorithm")?.content)?;
    if expect(alg.first(), 0x06, "the imprint's algorithm")?.content != OID_SHA256 {
        return Err("the imprint is not SHA-256".into());
    }
    if expect(imprint.get(1), 0x04, "the imprint")?.content != hash {
        return Err("the token stamps different data".into());
    }
    let serial = hex::encode(expect(tst.get(3), 0x02, "the serial number")?.content);
    let gen_time =
        String::from_utf8_lossy(expect(tst.get(4), 0x18, "genTime")?.content).into_owned();
    if let Some(n) = nonce {
        let found = tst[5..].iter().find(|t| t.tag == 0x02).map(|t| t.content);
        if found != Some(&integer(n)[2..]) {
            return Err("the token's nonce is not ours".into());
        }
    }
    // The signer: signedAttrs carry the TSTInfo's digest and are what is signed.
    let signer_infos = sd
        .last()
        .filter(|t| t.tag == 0x31)
        .ok_or("no signerInfos")?;
    let si =
        children(expect(children(signer_infos.content)?.first(), 0x30, "SignerInfo")?.content)?;
    let digest_alg = children(expect(si.get(2), 0x30, "the digest algorithm")?.content)?;
    if expect(digest_alg.first(), 0x06, "the digest algorithm")?.content != OID_SHA256 {
        return Err("the token is not signed with SHA-256".into());
    }
    let attrs = expect(si.get(3), 0xA0, "signedAttrs")?;
    let mut digest_ok = false;
    for attr in children(attrs.content)? {
        let a = children(attr.content)?;
        if expect(a.first(), 0x06, "an attribute")?.content == OID_MESSAGE_DIGEST {
            let values = children(expect(a.get(1), 0x31, "messageDigest")?.content)?;
            digest_ok = expect(values.first(), 0x04, "messageDigest")?.content
                == crate::merkle::sha256(tst_der);
        }
    }
    if !digest_ok {
        return Err("the signed attributes do not carry the TSTInfo's digest".into());
    }
    let signature = expect(si.get(5), 0x04, "the signature")?.content;
    // Signed as a SET (RFC 5652 §5.4): the [0] IMPLICIT tag becomes 0x31.
    let mut signed = attrs.whole.to_vec();
    signed[0] = 0x31;
    let PublicKey { alg, param, key } = certificate_key(cert)?;
    use aws_lc_rs::signature as sig;
    let scheme: &'static dyn sig::VerificationAlgorithm = if alg == OID_RSA {
        &sig::RSA_PKCS1_2048_8192_SHA256
    } else if alg == OID_EC && param.as_deref() == Some(OID_P256) {
        &sig::ECDSA_P256_SHA256_ASN1
    } else if alg == OID_EC && param.as_deref() == Some(OID_P384) {
        &sig::ECDSA_P384_SHA256_ASN1
    } else {
        return Err("the TSA key is neither RSA nor ECDSA P-256/P-384".into());
    };
    sig::UnparsedPublicKey::new(scheme, &key)
        .verify(&signed, signature)
        .map_err(|_| {
            "the token's signature does not verify with the TSA certificate".to_string()
        })?;
    Ok(Stamp { gen_time, serial })
}

/// Asks the TSA at `url` to stamp `hash`; returns the response bytes, checked.
pub async fn stamp(url: &str, hash: &Hash, cert: &[u8]) -> Result<(bytes::Bytes, Stamp), String> {
    let mut nonce = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut nonce))
        .map_err(|e| format!("reading random bytes: {e}"))?;
    let nonce = u64::from_be_bytes(nonce) >> 1;
    let (status, body) = crate::notify::post(
        url,
        "application/timestamp-query",
        bytes::Bytes::from(request(hash, nonce)),
    )
    .await?;
    if status != 200 {
        return Err(format!("the TSA answered HTTP {status}"));
    }
    let stamp = verify(&body, hash, Some(nonce), cert)?;
    Ok((body, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_minimal_der() {
        let req = request(&[7u8; 32], 0x80);
        let (outer, rest) = tlv(&req).unwrap();
        assert!(rest.is_empty());
        let parts = children(outer.content).unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].whole, [0x02, 0x01, 0x01]);
        assert_eq!(
            parts[2].whole,
            [0x02, 0x02, 0x00, 0x80],
            "positive, minimal"
        );
        assert_eq!(parts[3].whole, [0x01, 0x01, 0xff]);
        assert_eq!(integer(0), [0x02, 0x01, 0x00]);
        assert_eq!(encode(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
        assert!(verify(&req, &[7u8; 32], None, &[]).is_err());
    }
}
