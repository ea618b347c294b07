//! Signed webhooks (the contract's "Signed webhooks"): the sender's
//! HMAC-SHA256 of the body, checked before the call reaches upstream.
//!
//! Pure functions of the header value, the body and the time, so hosts only
//! buffer the body and hand it over.

use crate::config::{ConfigError, Environment, SignatureFormatDoc, WebhookDoc};
use crate::headers::check_header_name;
use crate::text::{is_header_safe, same_header_name};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

const TAG_LEN: usize = 32;
/// Most `v1` entries one timestamped header may carry (one per live secret).
pub const MAX_V1: usize = 8;
/// Longest accepted signature header value.
pub const MAX_HEADER_LEN: usize = 2048;
/// Shortest accepted secret: shorter ones fall to an offline search.
pub const MIN_SECRET_LEN: usize = 16;
/// Largest `max_body_bytes`: the body is held in memory until checked.
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// Standard base64 (Shopify and others), padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a webhook call was refused; for logs, never for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookError {
    /// No signature header.
    Missing,
    /// A repeated header, an `_` spelling, or a value not in the format.
    Malformed,
    /// No signature in the header is the body's MAC.
    Mismatch,
    /// The timestamp is outside the tolerance.
    Stale,
    /// The body is larger than `max_body_bytes`.
    TooLarge,
}

impl WebhookError {
    /// Whether the header itself is missing or unreadable (`missing_signature`)
    /// rather than wrong (`invalid_signature`).
    pub fn is_missing(self) -> bool {
        matches!(self, WebhookError::Missing | WebhookError::Malformed)
    }
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WebhookError::Missing => "no signature header",
            WebhookError::Malformed => "signature header is repeated or malformed",
            WebhookError::Mismatch => "signature does not match the body",
            WebhookError::Stale => "signature timestamp outside the tolerance",
            WebhookError::TooLarge => "body larger than max_body_bytes",
        })
    }
}

/// A signature header, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// `hex` or `base64`: the MAC of the raw body.
    Body([u8; TAG_LEN]),
    /// `timestamped`: MACs of `<t>.<body>`, any of which may match.
    Timestamped { t: String, at: u64, macs: Vec<[u8; TAG_LEN]> },
}

/// A webhook sender, compiled.
pub struct Webhook {
    pub name: String,
    pub header: String,
    pub format: SignatureFormatDoc,
    pub tolerance_s: u64,
    pub max_body_bytes: u64,
    secret: HmacSha256,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Compiles `webhooks`; secrets come from `env`.
pub fn compile(docs: &[WebhookDoc], env: &dyn Environment) -> Result<Vec<Webhook>, ConfigError> {
    let mut hooks: Vec<Webhook> = Vec::with_capacity(docs.len());
    for (i, doc) in docs.iter().enumerate() {
        let at = |field: &str| format!("webhooks[{i}].{field}");
        if doc.name.is_empty() || !is_header_safe(&doc.name) || doc.name.contains(' ') {
            return Err(ConfigError::new(at("name"), "visible ASCII without spaces"));
        }
        if hooks.iter().any(|h| h.name == doc.name) {
            return Err(ConfigError::new(at("name"), format!("duplicate webhook '{}'", doc.name)));
        }
        check_header_name(&doc.header, &at("header"))?;
        if doc.tolerance_s == 0 {
            return Err(ConfigError::new(at("tolerance_s"), "must be at least 1 second"));
        }
        if !(1..=MAX_BODY_LIMIT).contains(&doc.max_body_bytes) {
            return Err(ConfigError::new(at("max_body_bytes"), format!("must be 1 to {MAX_BODY_LIMIT} bytes")));
        }
        let secret = env.var(&doc.secret_env).unwrap_or_default();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(
                at("secret_env"),
                format!("environment variable {} is missing or shorter than {MIN_SECRET_LEN} bytes", doc.secret_env),
            ));
        }
        let secret = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
            .map_err(|_| ConfigError::new(at("secret_env"), "unusable secret"))?;
        hooks.push(Webhook {
            name: doc.name.clone(),
            header: doc.header.clone(),
            format: doc.format,
            tolerance_s: doc.tolerance_s,
            max_body_bytes: doc.max_body_bytes,
            secret,
        });
    }
    Ok(hooks)
}

impl Webhook {
    /// The one value of this webhook's signature header among the request's.
    pub fn header_value<'h, N: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        headers: &'h [(N, V)],
    ) -> Result<&'h [u8], WebhookError> {
        let mut values = headers.iter().filter(|(n, _)| same_header_name(n.as_ref(), &self.header));
        match (values.next(), values.next()) {
            (None, _) => Err(WebhookError::Missing),
            (Some((name, value)), None) if !name.as_ref().contains('_') => Ok(value.as_ref()),
            // Repeated, or a spelling only some upstreams read as this header.
            _ => Err(WebhookError::Malformed),
        }
    }

    /// Checks a parsed signature against the body at `now_s`. The body's
    /// MAC is computed once and compared with every candidate in constant time.
    pub fn verify(&self, signature: &Signature, body: &[u8], now_s: u64) -> Result<(), WebhookError> {
        if !u64::try_from(body.len()).is_ok_and(|len| len <= self.max_body_bytes) {
            return Err(WebhookError::TooLarge);
        }
        let mut mac = self.secret.clone();
        let candidates: &[[u8; TAG_LEN]] = match signature {
            Signature::Body(tag) => std::slice::from_ref(tag),
            Signature::Timestamped { t, at, macs } => {
                if now_s.abs_diff(*at) > self.tolerance_s {
                    return Err(WebhookError::Stale);
                }
                mac.update(t.as_bytes());
                mac.update(b".");
                macs
            }
        };
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        let matched = candidates.iter().fold(Choice::from(0), |found, tag| found | tag.as_slice().ct_eq(&expected));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(WebhookError::Mismatch)
        }
    }
}

/// Parses a signature header value in `format`. `hex` and `base64` also
/// accept GitHub's `sha256=` in front.
pub fn parse_signature(format: SignatureFormatDoc, value: &[u8]) -> Result<Signature, WebhookError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(WebhookError::Malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| WebhookError::Malformed)?.trim_matches([' ', '\t']);
    match format {
        SignatureFormatDoc::Hex => {
            let text = value.strip_prefix("sha256=").unwrap_or(value);
            hex_tag(text).map(Signature::Body)
        }
        SignatureFormatDoc::Base64 => {
            let text = value.strip_prefix("sha256=").unwrap_or(value);
            let bytes = BASE64.decode(text).map_err(|_| WebhookError::Malformed)?;
            bytes.try_into().map(Signature::Body).map_err(|_| WebhookError::Malformed)
        }
        SignatureFormatDoc::Timestamped => parse_timestamped(value),
    }
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`; other schemes (`v0=`) are ignored, as
/// senders add them for their own reasons.
fn parse_timestamped(value: &str) -> Result<Signature, WebhookError> {
    let mut t: Option<&str> = None;
    let mut macs = Vec::new();
    for item in value.split(',') {
        let (name, text) = item.trim_matches([' ', '\t']).split_once('=').ok_or(WebhookError::Malformed)?;
        match name {
            "t" if t.is_none() => t = Some(text),
            "t" => return Err(WebhookError::Malformed),
            "v1" if macs.len() < MAX_V1 => macs.push(hex_tag(text)?),
            "v1" => return Err(WebhookError::Malformed),
            _ if !name.is_empty() => {}
            _ => return Err(WebhookError::Malformed),
        }
    }
    let t = t.ok_or(WebhookError::Malformed)?;
    let digits = !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit());
    let at = t.parse::<u64>().ok().filter(|_| digits).ok_or(WebhookError::Malformed)?;
    if macs.is_empty() {
        return Err(WebhookError::Malformed);
    }
    Ok(Signature::Timestamped { t: t.to_owned(), at, macs })
}

fn hex_tag(text: &str) -> Result<[u8; TAG_LEN], WebhookError> {
    let bytes = text.as_bytes();
    if bytes.len() != TAG_LEN * 2 {
        return Err(WebhookError::Malformed);
    }
    let mut tag = [0u8; TAG_LEN];
    for (slot, pair) in tag.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return Err(WebhookError::Malformed) };
        let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
        *slot = (digit(*hi).ok_or(WebhookError::Malformed)? << 4) | digit(*lo).ok_or(WebhookError::Malformed)?;
    }
    Ok(tag)
}

/// The header value a sender writes for `body` (for senders and tests:
/// `edge-auth webhook sign`).
pub fn sign(format: SignatureFormatDoc, secret: &[u8], body: &[u8], now_s: u64) -> Option<String> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    let t = now_s.to_string();
    if format == SignatureFormatDoc::Timestamped {
        mac.update(t.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    Some(match format {
        SignatureFormatDoc::Hex => hex,
        SignatureFormatDoc::Base64 => base64::engine::general_purpose::STANDARD.encode(tag),
        SignatureFormatDoc::Timestamped => format!("t={t},v1={hex}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::OnlyVars;

    const SECRET: &str = "whsec_0123456789abcdef";
    const ENV: OnlyVars = OnlyVars(&[("HOOK", SECRET), ("OTHER", "another secret, long enough"), ("SHORT", "short")]);
    const NOW: u64 = 1_800_000_000;

    fn hook(format: SignatureFormatDoc) -> Webhook {
        let doc = WebhookDoc {
            name: "kaie".into(),
            header: "x-kaie-signature".into(),
            secret_env: "HOOK".into(),
            format,
            tolerance_s: 300,
            max_body_bytes: 64,
        };
        compile(&[doc], &ENV).unwrap().pop().unwrap()
    }

    fn check(format: SignatureFormatDoc, header: &str, body: &[u8], now_s: u64) -> Result<(), WebhookError> {
        hook(format).verify(&parse_signature(format, header.as_bytes())?, body, now_s)
    }

    #[test]
    fn rfc4231_case_2_in_every_format() {
        let mac = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let body = b"what do ya want for nothing?";
        assert_eq!(sign(SignatureFormatDoc::Hex, b"Jefe", body, 0).unwrap(), mac);
        assert_eq!(
            sign(SignatureFormatDoc::Base64, b"Jefe", body, 0).unwrap(),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
        assert_eq!(sign(SignatureFormatDoc::Timestamped, b"Jefe", b"x", 12).unwrap().get(..8), Some("t=12,v1="));
    }

    #[test]
    fn good_signatures_pass_in_each_format() {
        use SignatureFormatDoc::*;
        for format in [Hex, Base64, Timestamped] {
            let header = sign(format, SECRET.as_bytes(), b"{\"id\":1}", NOW).unwrap();
            assert_eq!(check(format, &header, b"{\"id\":1}", NOW), Ok(()), "{format:?}");
            assert_eq!(check(format, &header, b"{\"id\":2}", NOW), Err(WebhookError::Mismatch), "{format:?}");
        }
        let hex = sign(Hex, SECRET.as_bytes(), b"", NOW).unwrap();
        assert_eq!(check(Hex, &hex.to_uppercase(), b"", NOW), Ok(()));
        assert_eq!(check(Hex, &format!("sha256={hex}"), b"", NOW), Ok(()));
        let b64 = sign(Base64, SECRET.as_bytes(), b"", NOW).unwrap();
        assert_eq!(check(Base64, b64.trim_end_matches('='), b"", NOW), Ok(()));
    }

    #[test]
    fn timestamped_headers_rotate_and_expire() {
        use SignatureFormatDoc::Timestamped;
        let good = sign(Timestamped, SECRET.as_bytes(), b"b", NOW).unwrap();
        let old = sign(Timestamped, b"the previous secret", b"b", NOW).unwrap();
        let old_v1 = old.split_once(",v1=").unwrap().1;
        // Several v1 (a sender mid-rotation): any one matching is enough.
        assert_eq!(check(Timestamped, &format!("{good},v1={old_v1},v0=ignored"), b"b", NOW), Ok(()));
        assert_eq!(check(Timestamped, &format!("t={NOW},v1={old_v1}"), b"b", NOW), Err(WebhookError::Mismatch));
        assert_eq!(check(Timestamped, &good, b"b", NOW + 300), Ok(()));
        assert_eq!(check(Timestamped, &good, b"b", NOW + 301), Err(WebhookError::Stale));
        assert_eq!(check(Timestamped, &good, b"b", NOW - 301), Err(WebhookError::Stale));
        // The timestamp is signed: moving it breaks the MAC.
        let moved = good.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(check(Timestamped, &moved, b"b", NOW), Err(WebhookError::Mismatch));
    }

    #[test]
    fn malformed_headers_and_large_bodies() {
        use SignatureFormatDoc::*;
        let v1 = "0".repeat(64);
        for (format, header) in [
            (Hex, "abc"),
            (Hex, &*"g".repeat(64)),
            (Base64, "not base64!"),
            (Base64, "AAAA"),
            (Timestamped, &*format!("v1={v1}")),
            (Timestamped, &*format!("t=,v1={v1}")),
            (Timestamped, &*format!("t=-1,v1={v1}")),
            (Timestamped, &*format!("t=1,t=2,v1={v1}")),
            (Timestamped, "t=1"),
            (Timestamped, &*format!("t=1,v1={v1},junk")),
            (Timestamped, &*format!("t=1{}", format!(",v1={v1}").repeat(MAX_V1 + 1))),
        ] {
            assert_eq!(parse_signature(format, header.as_bytes()), Err(WebhookError::Malformed), "{header}");
        }
        assert_eq!(parse_signature(Hex, &[0xff; 64]), Err(WebhookError::Malformed));
        let header = sign(Hex, SECRET.as_bytes(), &[b'x'; 65], NOW).unwrap();
        assert_eq!(check(Hex, &header, &[b'x'; 65], NOW), Err(WebhookError::TooLarge));
    }

    #[test]
    fn the_header_is_read_once_under_one_spelling() {
        let h = hook(SignatureFormatDoc::Hex);
        assert_eq!(h.header_value(&[("X-Kaie-Signature", "a")]), Ok(b"a".as_slice()));
        assert_eq!(h.header_value(&[("host", "a")]), Err(WebhookError::Missing));
        assert_eq!(
            h.header_value(&[("x-kaie-signature", "a"), ("x-kaie-signature", "b")]),
            Err(WebhookError::Malformed)
        );
        assert_eq!(h.header_value(&[("x_kaie_signature", "a")]), Err(WebhookError::Malformed));
    }

    #[test]
    fn configuration_errors_name_the_field_never_the_secret() {
        let doc = |name: &str, secret_env: &str| WebhookDoc {
            name: name.into(),
            header: "x-sig".into(),
            secret_env: secret_env.into(),
            format: SignatureFormatDoc::Hex,
            tolerance_s: 300,
            max_body_bytes: 1024,
        };
        let err = compile(&[doc("a", "SHORT")], &ENV).unwrap_err().to_string();
        assert_eq!(err, "webhooks[0].secret_env: environment variable SHORT is missing or shorter than 16 bytes");
        let err = compile(&[doc("a", "HOOK"), doc("a", "OTHER")], &ENV).unwrap_err().to_string();
        assert_eq!(err, "webhooks[1].name: duplicate webhook 'a'");
        let mut bad = doc("a", "HOOK");
        bad.header = "authorization".into();
        assert!(compile(&[bad], &ENV).unwrap_err().to_string().starts_with("webhooks[0].header:"));
        assert!(!format!("{:?}", hook(SignatureFormatDoc::Hex)).contains(SECRET));
    }
}
