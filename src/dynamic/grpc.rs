//! gRPC's length-prefixed framing, for the fleet-wide limiter's unary call
//! made as a plain HTTP/2 callout (the ABI has no gRPC client).

/// A message as one uncompressed gRPC frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(message.len().saturating_add(5));
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The message of a body holding exactly one uncompressed frame.
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    let (length, message) = rest.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    (compressed == 0 && message.len() == length).then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_odd_bodies_are_refused() {
        assert_eq!(frame(b"abc"), b"\0\0\0\0\x03abc");
        assert_eq!(unframe(&frame(b"abc")), Some(&b"abc"[..]));
        assert_eq!(unframe(&frame(b"")), Some(&b""[..]));
        assert_eq!(unframe(b""), None);
        assert_eq!(unframe(b"\0\0\0\0\x04abc"), None);
        assert_eq!(unframe(b"\x01\0\0\0\x03abc"), None);
        assert_eq!(unframe(b"\0\0\0\0\x02abc"), None);
    }
}
