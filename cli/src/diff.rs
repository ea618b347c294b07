//! What a policy change does, for review in a pull request
//! (`edge-auth policy diff OLD NEW`).
//!
//! Both documents are read by the filter's own parser, so defaults are filled
//! in: leaving out a field that had its default value is no change, and an
//! absent field is no `null`. Keys are compared by id, plans and JWT providers
//! by name, routes as an ordered list (order decides which rule applies), and
//! every other field by path. Secrets (an `oct` JWK's `k`, anything named like
//! a secret) appear only as fingerprints.

use edge_auth::config::PolicyDoc;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// One line per change, grouped by section.
pub fn diff(old: &PolicyDoc, new: &PolicyDoc) -> Vec<String> {
    let (mut old, mut new) = (normalise(old), normalise(new));
    let mut out = Vec::new();
    keys(&mut out, take(&mut old, &["api_keys", "keys"]), take(&mut new, &["api_keys", "keys"]));
    revoked(&mut out, take(&mut old, &["api_keys", "revoked"]), take(&mut new, &["api_keys", "revoked"]));
    routes(&mut out, take(&mut old, &["routes"]), take(&mut new, &["routes"]));
    by_name(
        &mut out,
        "plan",
        named(take(&mut old, &["rate_limits", "plans"])),
        named(take(&mut new, &["rate_limits", "plans"])),
    );
    let providers = |doc: &mut Value| {
        let list = take(doc, &["jwt", "providers"]);
        let mut map = BTreeMap::new();
        for provider in list.as_array().into_iter().flatten() {
            let name = provider.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            map.insert(name, provider.clone());
        }
        map
    };
    by_name(&mut out, "jwt provider", providers(&mut old), providers(&mut new));
    fields(&mut out, "", &old, &new);
    out
}

fn normalise(doc: &PolicyDoc) -> Value {
    let mut value = serde_json::to_value(doc).unwrap_or(Value::Null);
    clean(&mut value, false);
    value
}

/// Drops absent (`null`) members and replaces secrets with fingerprints.
fn clean(value: &mut Value, secret: bool) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for (name, v) in map.iter_mut() {
                clean(v, is_secret(name));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| clean(v, secret)),
        Value::String(text) if secret => *text = fingerprint(text),
        _ => {}
    }
}

/// Member names that hold secret material: a JWK's `k` (and the private
/// members a careless JWK may carry), and anything named like a secret. Names
/// of environment variables (`*_env`) are not secrets.
fn is_secret(name: &str) -> bool {
    const JWK_PRIVATE: [&str; 7] = ["k", "d", "p", "q", "dp", "dq", "qi"];
    let name = name.to_ascii_lowercase();
    !name.ends_with("_env")
        && (JWK_PRIVATE.contains(&name.as_str())
            || ["secret", "password", "pepper", "private_key"].iter().any(|word| name.ends_with(word)))
}

/// Names a secret without revealing it: `sha256:` and the first 8 bytes of its
/// SHA-256, enough to see that it changed.
fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Removes and returns the value at `path` (or `null`), so the generic field
/// diff does not report it twice.
fn take(doc: &mut Value, path: &[&str]) -> Value {
    let Some((last, parents)) = path.split_last() else { return Value::Null };
    let mut at = doc;
    for key in parents {
        match at.get_mut(*key) {
            Some(next) => at = next,
            None => return Value::Null,
        }
    }
    at.as_object_mut().and_then(|o| o.remove(*last)).unwrap_or(Value::Null)
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn keys(out: &mut Vec<String>, old: Value, new: Value) {
    let index = |v: &Value| -> BTreeMap<String, Map<String, Value>> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let record = k.as_object()?.clone();
                Some((record.get("id")?.as_str()?.to_owned(), record))
            })
            .collect()
    };
    let (old, new) = (index(&old), index(&new));
    let describe = |r: &Map<String, Value>| {
        let field = |name: &str| r.get(name).map(compact).unwrap_or_default();
        let mut text = format!("org={} account={}", field("org"), field("account"));
        for optional in ["scopes", "plan", "expires_at"] {
            if let Some(value) = r.get(optional) {
                text.push_str(&format!(" {optional}={}", compact(value)));
            }
        }
        text
    };
    for (id, record) in &new {
        match old.get(id) {
            None => out.push(format!("key + {id} {}", describe(record))),
            Some(before) if before != record => {
                let names: BTreeSet<&String> = before.keys().chain(record.keys()).collect();
                for name in names {
                    let (a, b) = (before.get(name), record.get(name));
                    if a == b {
                        continue;
                    }
                    if name == "hash" {
                        out.push(format!("key ~ {id} hash changed (the key was replaced)"));
                    } else {
                        let show = |v: Option<&Value>| v.map(compact).unwrap_or_else(|| "(none)".into());
                        out.push(format!("key ~ {id} {name}: {} -> {}", show(a), show(b)));
                    }
                }
            }
            Some(_) => {}
        }
    }
    for (id, record) in &old {
        if !new.contains_key(id) {
            out.push(format!("key - {id} {}", describe(record)));
        }
    }
}

fn revoked(out: &mut Vec<String>, old: Value, new: Value) {
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array().into_iter().flatten().filter_map(|id| id.as_str().map(str::to_owned)).collect()
    };
    let (old, new) = (set(&old), set(&new));
    out.extend(new.difference(&old).map(|id| format!("revoked + {id}")));
    out.extend(old.difference(&new).map(|id| format!("revoked - {id} (the key works again)")));
}

fn routes(out: &mut Vec<String>, old: Value, new: Value) {
    let list = |v: &Value| -> Vec<String> { v.as_array().into_iter().flatten().map(compact).collect() };
    let (old, new) = (list(&old), list(&new));
    let removed: Vec<&String> = old.iter().filter(|r| !new.contains(r)).collect();
    let added: Vec<(usize, &String)> = new.iter().enumerate().filter(|(_, r)| !old.contains(r)).collect();
    out.extend(removed.iter().map(|r| format!("route - {r}")));
    out.extend(added.iter().map(|(i, r)| format!("route + routes[{i}] {r}")));
    let kept_old: Vec<&String> = old.iter().filter(|r| new.contains(r)).collect();
    let kept_new: Vec<&String> = new.iter().filter(|r| old.contains(r)).collect();
    if kept_old != kept_new {
        out.push("route order changed (the first matching route applies)".into());
    }
}

fn named(value: Value) -> BTreeMap<String, Value> {
    match value {
        Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

fn by_name(out: &mut Vec<String>, what: &str, old: BTreeMap<String, Value>, new: BTreeMap<String, Value>) {
    for (name, value) in &new {
        match old.get(name) {
            None => out.push(format!("{what} + {name} {}", compact(value))),
            Some(before) if before != value => {
                let mut changes = Vec::new();
                fields(&mut changes, "", before, value);
                out.extend(changes.iter().map(|change| format!("{what} ~ {name}: {change}")));
            }
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|name| !new.contains_key(*name)) {
        out.push(format!("{what} - {name}"));
    }
}

/// Every remaining leaf that differs, by dotted path; an object that appears
/// or disappears is shown leaf by leaf, and an absent value as `(none)`.
fn fields(out: &mut Vec<String>, path: &str, old: &Value, new: &Value) {
    let empty = Map::new();
    fn object<'v>(v: &'v Value, empty: &'v Map<String, Value>) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(map) => Some(map),
            Value::Null => Some(empty),
            _ => None,
        }
    }
    match (object(old, &empty), object(new, &empty)) {
        (Some(a), Some(b)) if !(old.is_null() && new.is_null()) => {
            let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let child = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                fields(out, &child, a.get(name).unwrap_or(&Value::Null), b.get(name).unwrap_or(&Value::Null));
            }
        }
        _ if old != new => {
            let show = |v: &Value| if v.is_null() { "(none)".to_owned() } else { compact(v) };
            out.push(format!("{path}: {} -> {}", show(old), show(new)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_auth::config::parse_doc;

    fn lines(old: &str, new: &str) -> Vec<String> {
        diff(&parse_doc(old.as_bytes()).unwrap(), &parse_doc(new.as_bytes()).unwrap())
    }

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn identical_and_default_equivalent_policies_have_no_changes() {
        assert!(lines(r#"{"api_keys":{}}"#, r#"{"api_keys":{},"mode":"enforce","routes":[]}"#).is_empty());
    }

    #[test]
    fn reports_each_kind_of_change() {
        let old = format!(
            r#"{{"api_keys":{{"keys":[
                {{"id":"k1","hash":"{H1}","org":"o","account":"acme","scopes":["a"]}},
                {{"id":"k2","hash":"{H2}","org":"o","account":"acme"}}],
                "revoked":["k9"]}},
              "rate_limits":{{"plans":{{"std":[{{"name":"b","requests":20,"per_s":10}}]}}}},
              "routes":[{{"prefix":"/a","auth":"none"}},{{"prefix":"/b"}}]}}"#
        );
        let new = format!(
            r#"{{"mode":"shadow","api_keys":{{"keys":[
                {{"id":"k1","hash":"{H2}","org":"o","account":"acme","scopes":["a","b"]}},
                {{"id":"k3","hash":"{H1}","org":"o","account":"beta","plan":"std"}}],
                "revoked":["k2"]}},
              "rate_limits":{{"plans":{{"std":[{{"name":"b","requests":30,"per_s":10}}],"gold":[{{"name":"b","requests":99,"per_s":1}}]}}}},
              "routes":[{{"prefix":"/b"}},{{"prefix":"/a","auth":"none"}},{{"prefix":"/c","scopes":["x"]}}]}}"#
        );
        let out = lines(&old, &new);
        let expect = [
            "key ~ k1 hash changed (the key was replaced)",
            r#"key ~ k1 scopes: ["a"] -> ["a","b"]"#,
            r#"key + k3 org="o" account="beta" plan="std""#,
            r#"key - k2 org="o" account="acme""#,
            "revoked + k2",
            "revoked - k9 (the key works again)",
            "route order changed (the first matching route applies)",
            "plan + gold",
            "plan ~ std:",
            r#"mode: "enforce" -> "shadow""#,
        ];
        for line in expect {
            assert!(out.iter().any(|l| l.starts_with(line)), "missing {line:?} in {out:#?}");
        }
        assert!(out.iter().any(|l| l.starts_with("route + routes[2]") && l.contains("/c")), "{out:#?}");
        assert_eq!(out.len(), 11, "{out:#?}");
    }

    #[test]
    fn secrets_show_as_fingerprints_and_absent_fields_make_no_noise() {
        let jwt = |k: &str| {
            format!(
                r#"{{"jwt":{{"providers":[{{"name":"p","issuer":"i","algorithms":["HS256"],
                    "jwks":{{"keys":[{{"kty":"oct","kid":"a","k":"{k}"}}]}}}}]}}}}"#
            )
        };
        let (old_k, new_k) =
            ("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA");
        let out = lines(&jwt(old_k), &jwt(new_k));
        assert_eq!(out.len(), 1, "{out:#?}");
        let line = &out[0];
        assert!(line.starts_with("jwt provider ~ p: jwks.keys: "), "{line}");
        assert!(line.contains(&fingerprint(old_k)) && line.contains(&fingerprint(new_k)), "{line}");
        assert!(!line.contains(old_k) && !line.contains(new_k) && !line.contains("null"), "{line}");
        let added = lines(r#"{"api_keys":{}}"#, &format!(r#"{{"api_keys":{{}},{}"#, &jwt(old_k)[1..]));
        assert!(added.iter().all(|l| !l.contains(old_k) && !l.contains("null")), "{added:#?}");
        let plans = lines(
            r#"{"api_keys":{}}"#,
            r#"{"api_keys":{},"rate_limits":{"plans":{"s":[{"name":"b","requests":1,"per_s":1}]},"default_plan":"s"}}"#,
        );
        assert_eq!(
            plans,
            [r#"plan + s [{"name":"b","per_s":1,"requests":1}]"#, r#"rate_limits.default_plan: (none) -> "s""#]
        );
    }

    #[test]
    fn secret_names() {
        assert!(is_secret("k") && is_secret("client_secret") && is_secret("pepper"));
        assert!(!is_secret("k_env") && !is_secret("secret_env") && !is_secret("secret_prefixes") && !is_secret("kid"));
    }
}
