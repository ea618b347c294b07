//! The protobuf messages of Envoy's rate-limit service protocol
//! (`envoy.service.ratelimit.v3`), encoded and decoded by hand: the filter
//! needs one request and one response, and a protobuf library would weigh
//! more in the module than these few wire rules.

/// `RateLimitRequest`: field 1 `domain`, 2 `descriptors`, 3 `hits_addend`.
pub struct RateLimitRequest<'a> {
    pub domain: &'a str,
    pub descriptors: Vec<Descriptor>,
    pub hits_addend: u32,
}

/// `RateLimitDescriptor`: field 1 `entries` (`key` = 1, `value` = 2).
pub struct Descriptor {
    pub entries: Vec<(&'static str, String)>,
}

impl RateLimitRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 96 * self.descriptors.len());
        bytes_field(&mut out, 1, self.domain.as_bytes());
        for descriptor in &self.descriptors {
            let mut message = Vec::new();
            for (key, value) in &descriptor.entries {
                let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
                bytes_field(&mut entry, 1, key.as_bytes());
                bytes_field(&mut entry, 2, value.as_bytes());
                bytes_field(&mut message, 1, &entry);
            }
            bytes_field(&mut out, 2, &message);
        }
        if self.hits_addend != 0 {
            varint(&mut out, 3 << 3);
            varint(&mut out, u64::from(self.hits_addend));
        }
        out
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(n: u64) -> Self {
        match n {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// What the filter reads of a `RateLimitResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitResponse {
    pub overall: Code,
    pub statuses: Vec<DescriptorStatus>,
}

/// What the filter reads of a `DescriptorStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    /// `current_limit.requests_per_unit`.
    pub limit: u64,
    pub remaining: u64,
    /// `duration_until_reset`, in nanoseconds.
    pub until_reset_ns: u64,
}

/// A message that does not follow the protobuf wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// One field of a message: its number and its value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads a message's fields in order.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or(Malformed)?;
            self.rest = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(n);
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        if len > self.rest.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn next(&mut self) -> Option<Result<(u64, Value<'a>), Malformed>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(self.field())
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), Malformed> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.take(8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                Value::Bytes(self.take(len)?)
            }
            5 => self.take(4).map(|_| Value::Fixed)?,
            _ => return Err(Malformed),
        };
        Ok((key >> 3, value))
    }
}

fn fields(bytes: &[u8]) -> Reader<'_> {
    Reader { rest: bytes }
}

impl RateLimitResponse {
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut response = Self::default();
        let mut reader = fields(bytes);
        while let Some(field) = reader.next() {
            match field? {
                (1, Value::Varint(code)) => response.overall = Code::from_wire(code),
                (2, Value::Bytes(status)) => response.statuses.push(DescriptorStatus::decode(status)?),
                _ => {}
            }
        }
        Ok(response)
    }
}

impl DescriptorStatus {
    fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut status = Self::default();
        let mut reader = fields(bytes);
        while let Some(field) = reader.next() {
            match field? {
                (1, Value::Varint(code)) => status.code = Code::from_wire(code),
                (2, Value::Bytes(limit)) => {
                    let mut limit = fields(limit);
                    while let Some(field) = limit.next() {
                        if let (1, Value::Varint(requests)) = field? {
                            status.limit = requests;
                        }
                    }
                }
                (3, Value::Varint(remaining)) => status.remaining = remaining,
                (4, Value::Bytes(duration)) => status.until_reset_ns = duration_ns(duration)?,
                _ => {}
            }
        }
        Ok(status)
    }
}

/// `google.protobuf.Duration` (1 `seconds`, 2 `nanos`) in nanoseconds,
/// saturating; negative durations count as zero.
fn duration_ns(bytes: &[u8]) -> Result<u64, Malformed> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut reader = fields(bytes);
    while let Some(field) = reader.next() {
        match field? {
            // int64 and int32 travel as two's-complement varints.
            (1, Value::Varint(n)) => seconds = n as i64,
            (2, Value::Varint(n)) => nanos = i64::from(n as i32),
            _ => {}
        }
    }
    let seconds = u64::try_from(seconds).unwrap_or(0);
    let nanos = u64::try_from(nanos).unwrap_or(0);
    Ok(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_as_protobuf() {
        let request = RateLimitRequest {
            domain: "d",
            descriptors: vec![Descriptor { entries: vec![("k", "v".to_owned())] }],
            hits_addend: 300,
        };
        // domain; descriptors[0] { entries[0] { key "k", value "v" } }; hits_addend 300
        let expected = [0x0a, 1, b'd', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 0xac, 0x02];
        assert_eq!(request.encode(), expected);
        let one = RateLimitRequest { domain: "d", descriptors: vec![], hits_addend: 0 };
        assert_eq!(one.encode(), [0x0a, 1, b'd'], "hits_addend 0 is the default and is left out");
    }

    #[test]
    fn responses_decode_and_unknown_fields_are_skipped() {
        // overall OVER_LIMIT; statuses[0] { code OVER_LIMIT, current_limit { rpu 100, unit 2, name "x" },
        // limit_remaining 0, duration_until_reset { seconds 3, nanos 500 } }; raw_body "no"; a fixed64 field 9.
        let status = [0x08, 2, 0x12, 7, 0x08, 100, 0x10, 2, 0x1a, 1, b'x', 0x18, 0, 0x22, 5, 0x08, 3, 0x10, 0xf4, 0x03];
        let mut bytes = vec![0x08, 2, 0x12, status.len() as u8];
        bytes.extend_from_slice(&status);
        bytes.extend_from_slice(&[0x2a, 2, b'n', b'o', 0x49, 1, 2, 3, 4, 5, 6, 7, 8]);
        let response = RateLimitResponse::decode(&bytes).unwrap();
        assert_eq!(response.overall, Code::OverLimit);
        assert_eq!(
            response.statuses,
            [DescriptorStatus { code: Code::OverLimit, limit: 100, remaining: 0, until_reset_ns: 3_000_000_500 }]
        );
        assert_eq!(RateLimitResponse::decode(&[]).unwrap(), RateLimitResponse::default());
    }

    #[test]
    fn malformed_responses_are_errors_never_panics() {
        for bytes in [
            &[0x12, 5, 1][..],
            &[0x08][..],
            &[0x0b][..],
            &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
        ] {
            assert_eq!(RateLimitResponse::decode(bytes), Err(Malformed), "{bytes:?}");
        }
    }
}
