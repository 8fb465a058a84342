//! Detached OpenPGP signatures over downloads: which file a signature covers, which key must
//! have made it, and the check itself.

use std::io::Read;
use std::sync::Arc;

use pgp::composed::{Deserializable, DetachedSignature};
use pgp::packet::SignatureType;
use pgp::types::KeyDetails;
use serde::{Deserialize, Serialize};

use super::keys::TrustedKey;

/// What a published signature covers.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Signs {
    /// The checksum list (Ubuntu's `SHA256SUMS.gpg` over `SHA256SUMS`): verified before any
    /// line of the list is read.
    #[default]
    ChecksumList,
    /// The image file itself (Armbian's `<image>.asc`): verified over the downloaded image,
    /// after its digest matched the checksum list.
    Image,
}

/// A detached signature to check, and the key that must have made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub url: String,
    pub key: Arc<TrustedKey>,
    pub signs: Signs,
}

/// Why a signature did not vouch for its file.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not an OpenPGP signature at all.
    Unreadable(String),
    /// Well-formed signatures, none of them by the expected key; their issuers.
    OtherSigner(Vec<String>),
    /// Made by the expected key, but not over these bytes (or otherwise invalid).
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Unreadable(e) => write!(f, "it is not an OpenPGP signature ({e})"),
            Rejection::OtherSigner(ids) if ids.is_empty() => {
                write!(f, "it names no signing key")
            }
            Rejection::OtherSigner(ids) => {
                write!(f, "it was made by another key ({})", ids.join(", "))
            }
            Rejection::Invalid(e) => write!(
                f,
                "it was made by that key but does not match the file's bytes: the file (or \
                 the signature) was altered ({e})"
            ),
        }
    }
}

/// Checks that one of the detached signatures in `sig` (armored or binary) was made by `key`
/// (its primary key or a signing subkey) over exactly the bytes `data` yields.
pub fn verify(sig: &[u8], key: &TrustedKey, data: impl Read) -> Result<(), Rejection> {
    // A file may hold several signatures (older Ubuntu releases add one by a retired key);
    // one this parser cannot read does not hide the others.
    let mut sigs = Vec::new();
    let mut unreadable = None;
    for s in DetachedSignature::from_reader_many(sig)
        .map_err(|e| Rejection::Unreadable(e.to_string()))?
        .0
    {
        match s {
            Ok(s) => sigs.push(s),
            Err(e) => unreadable = unreadable.or(Some(e.to_string())),
        }
    }
    if sigs.is_empty() {
        return Err(Rejection::Unreadable(
            unreadable.unwrap_or_else(|| "no signature packet".into()),
        ));
    }
    let pk = key.public_key();
    let ours = |s: &DetachedSignature| {
        let by_fpr = s.signature.issuer_fingerprint().into_iter().any(|f| {
            *f == pk.fingerprint()
                || pk
                    .public_subkeys
                    .iter()
                    .any(|sk| *f == sk.key.fingerprint())
        });
        let by_id = s.signature.issuer_key_id().into_iter().any(|id| {
            *id == pk.legacy_key_id()
                || pk
                    .public_subkeys
                    .iter()
                    .any(|sk| *id == sk.key.legacy_key_id())
        });
        by_fpr || by_id
    };
    let (mine, others): (Vec<_>, Vec<_>) = sigs.iter().partition(|s| ours(s));
    let Some(first) = mine.first() else {
        return Err(Rejection::OtherSigner(others.iter().map(issuer).collect()));
    };
    // Several signatures by our key over the same bytes: any valid one will do. The data
    // is read once, into memory, only when there is more than one to try.
    if mine.len() == 1 {
        return check_one(first, key, data);
    }
    let mut bytes = Vec::new();
    let mut data = data;
    data.read_to_end(&mut bytes)
        .map_err(|e| Rejection::Invalid(format!("cannot read the file: {e}")))?;
    let mut last = Rejection::Invalid("no signature".into());
    for s in mine {
        match check_one(s, key, &bytes[..]) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check_one(s: &DetachedSignature, key: &TrustedKey, data: impl Read) -> Result<(), Rejection> {
    if !matches!(
        s.signature.typ(),
        Some(SignatureType::Binary | SignatureType::Text)
    ) {
        return Err(Rejection::Invalid(format!(
            "a {:?} signature, not one over a document",
            s.signature.typ()
        )));
    }
    let pk = key.public_key();
    let by_primary = s
        .signature
        .issuer_fingerprint()
        .into_iter()
        .any(|f| *f == pk.fingerprint())
        || s.signature
            .issuer_key_id()
            .into_iter()
            .any(|id| *id == pk.legacy_key_id());
    if by_primary {
        return s
            .signature
            .verify(&pk.primary_key, data)
            .map_err(|e| Rejection::Invalid(e.to_string()));
    }
    // A subkey: only one whose binding verifies and allows signing.
    let sub = pk.public_subkeys.iter().find(|sk| {
        (s.signature
            .issuer_fingerprint()
            .into_iter()
            .any(|f| *f == sk.key.fingerprint())
            || s.signature
                .issuer_key_id()
                .into_iter()
                .any(|id| *id == sk.key.legacy_key_id()))
            && sk.verify_bindings(&pk.primary_key).is_ok()
            && sk.signatures.iter().any(|b| b.key_flags().sign())
    });
    match sub {
        Some(sk) => s
            .signature
            .verify(&sk.key, data)
            .map_err(|e| Rejection::Invalid(e.to_string())),
        None => Err(Rejection::Invalid(
            "by a subkey that is not bound to the key for signing".into(),
        )),
    }
}

/// How a signature names its maker: the fingerprint when it carries one, else the key ID.
fn issuer(s: &&DetachedSignature) -> String {
    if let Some(f) = s.signature.issuer_fingerprint().first() {
        return super::keys::group_fingerprint(&format!("{f:X}"));
    }
    match s.signature.issuer_key_id().first() {
        Some(id) => format!("key ID {}", hex::encode_upper(id.as_ref())),
        None => "an unnamed key".into(),
    }
}
