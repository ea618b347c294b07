//! What configured and fetched text may contain where it ends up in a header.

/// Visible ASCII and spaces only: safe to copy into a request header.
pub fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A scope: non-empty visible ASCII without spaces (scopes are space-joined).
pub fn is_scope(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_text_and_scopes() {
        assert!(is_header_safe("org 42") && !is_header_safe("a\nb") && !is_header_safe("é"));
        assert!(is_scope("agents:read") && !is_scope("") && !is_scope("a b") && !is_scope("a\tb"));
    }
}
