//! What configured and fetched text may contain where it ends up in a header.

/// Visible ASCII and spaces only: safe to copy into a request header.
pub fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A scope: non-empty visible ASCII without spaces (scopes are space-joined).
pub fn is_scope(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether two header names are one name to an upstream server: names are
/// case-insensitive, and CGI, WSGI, Rack and PHP read `_` as `-` (both
/// `x-org-id` and `x_org_id` become `HTTP_X_ORG_ID`).
pub fn same_header_name(a: &str, b: &str) -> bool {
    let fold = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_safe_text_and_scopes() {
        assert!(is_header_safe("org 42") && !is_header_safe("a\nb") && !is_header_safe("é"));
        assert!(is_scope("agents:read") && !is_scope("") && !is_scope("a b") && !is_scope("a\tb"));
    }

    #[test]
    fn header_names_fold_case_and_underscores() {
        for spelling in ["x-org-id", "X-Org-Id", "x_org_id", "X_ORG-ID"] {
            assert!(same_header_name(spelling, "x-org-id"), "{spelling}");
        }
        assert!(!same_header_name("x-org-ids", "x-org-id") && !same_header_name("x.org.id", "x-org-id"));
    }
}
