//! The wire format of Envoy's `verify_signature` foreign function: protobuf
//! messages `VerifySignatureArguments { string hash_function = 1; bytes
//! public_key = 2; bytes signature = 3; bytes text = 4; }` and
//! `VerifySignatureResult { bool result = 1; string error = 2; }`.

/// The foreign function's name.
pub const FUNCTION: &str = "verify_signature";

pub fn encode_arguments(public_key_der: &[u8], message: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(public_key_der.len() + message.len() + signature.len() + 32);
    for (field, value) in [(1, &b"sha256"[..]), (2, public_key_der), (3, signature), (4, message)] {
        varint(&mut out, (field << 3) | 2);
        varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out
}

/// The `result` field; `None` if the message cannot be read.
pub fn decode_result(mut bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    while !bytes.is_empty() {
        let (key, rest) = read_varint(bytes)?;
        bytes = rest;
        match (key >> 3, key & 7) {
            (field, 0) => {
                let (value, rest) = read_varint(bytes)?;
                bytes = rest;
                if field == 1 {
                    result = value != 0;
                }
            }
            (_, 2) => {
                let (len, rest) = read_varint(bytes)?;
                bytes = rest.get(usize::try_from(len).ok()?..)?;
            }
            _ => return None,
        }
    }
    Some(result)
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_length_delimited_fields_in_order() {
        let encoded = encode_arguments(b"K", &[7u8; 200], b"SIG");
        let mut expected = vec![0x0a, 6];
        expected.extend_from_slice(b"sha256");
        expected.extend_from_slice(&[0x12, 1, b'K', 0x1a, 3, b'S', b'I', b'G', 0x22, 0xc8, 0x01]);
        expected.extend_from_slice(&[7u8; 200]);
        assert_eq!(encoded, expected);
    }

    #[test]
    fn results_decode_and_garbage_is_refused() {
        assert_eq!(decode_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[0x08, 0x00, 0x12, 0x03, b'b', b'a', b'd']), Some(false));
        assert_eq!(decode_result(&[0x12, 0x03, b'b', b'a', b'd']), Some(false));
        assert_eq!(decode_result(&[]), Some(false));
        assert_eq!(decode_result(&[0x12, 0x09, b'x']), None);
        assert_eq!(decode_result(&[0x0d, 0, 0, 0, 0]), None);
        assert_eq!(decode_result(&[0x08, 0xff]), None);
    }
}
