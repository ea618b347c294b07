//! `edge-auth`: mint and hash API keys, check policies.

mod diff;
mod keygen;

use edge_auth::account::AccountRules;
use edge_auth::api_key::KeyHasher;
use edge_auth::config::SignatureFormatDoc;
use edge_auth::config::{self, Environment, DEFAULT_ACCOUNT_PATTERN, DEFAULT_PEPPER_ENV};
use edge_auth::policy::Policy;
use edge_auth::webhook;
use keygen::{mint, KeySpec};
use std::io::Read;
use std::process::ExitCode;
use std::time::SystemTime;

const USAGE: &str = "\
usage:
  edge-auth key new --account ACCOUNT --org ORG [--scopes a,b] [--plan PLAN]
                    [--expires 90d] [--prefix sk_live_ | --opaque [--prefix P]]
                    [--account-pattern REGEX] [--json]
                    (--opaque, or --prefix '': the key does not carry the account)
  edge-auth key hash KEY|-          (- reads the key from standard input)
  edge-auth policy check FILE
  edge-auth policy diff OLD NEW      (what a rollout changes; both must pass check)
  edge-auth webhook sign [--secret-env NAME] [--format hex|base64|timestamped]
                         [--name N --policy FILE] FILE|-
                                     (the signature header value for a body)
  edge-auth rls --listen ADDR --redis URL [--redis URL ...] [--metrics ADDR]
                                     (the fleet-wide rate-limit service; until SIGTERM)
  edge-auth keys serve --file KEYSET.json --listen ADDR [--path /v1/edge/keys]
                       [--policy FILE] [--max-wait 60] [--history 64]
                                     (the reference key server: ETag, long polls,
                                      changes-only answers; until SIGTERM)

The pepper is read from $EDGE_AUTH_PEPPER.";

/// A failure and the exit code it deserves.
enum Failure {
    Usage(String),
    Failed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["key", "new", rest @ ..] => key_new(rest),
        ["key", "hash", key] => key_hash(key),
        ["policy", "check", file] => policy_check(file),
        ["policy", "diff", old, new] => policy_diff(old, new),
        ["webhook", "sign", rest @ ..] => webhook_sign(rest),
        ["rls", rest @ ..] => edge_auth_rls::main(rest).map_err(|e| match e {
            edge_auth_rls::Error::Usage(_) => Failure::Usage(e.to_string()),
            _ => Failure::Failed(e.to_string()),
        }),
        ["keys", "serve", rest @ ..] => edge_auth_keyserver::main(rest).map_err(|e| match e {
            edge_auth_keyserver::Error::Usage(_) => Failure::Usage(e.to_string()),
            _ => Failure::Failed(e.to_string()),
        }),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Failure::Usage("unknown command".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(why)) => {
            eprintln!("edge-auth: {why}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(why)) => {
            eprintln!("edge-auth: {why}");
            ExitCode::FAILURE
        }
    }
}

fn pepper() -> Result<KeyHasher, Failure> {
    let pepper = std::env::var(DEFAULT_PEPPER_ENV).unwrap_or_default();
    if pepper.is_empty() {
        return Err(Failure::Failed(format!("{DEFAULT_PEPPER_ENV} is not set")));
    }
    KeyHasher::new(pepper.as_bytes()).map_err(|_| Failure::Failed("unusable pepper".into()))
}

fn key_new(args: &[&str]) -> Result<(), Failure> {
    let mut spec = KeySpec {
        prefix: None,
        opaque: false,
        account: String::new(),
        org: String::new(),
        scopes: Vec::new(),
        plan: None,
        expires_at: None,
    };
    let mut json = false;
    let mut pattern = DEFAULT_ACCOUNT_PATTERN.to_owned();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match *flag {
            "--json" => json = true,
            "--opaque" => spec.opaque = true,
            flag => {
                let value = rest.next().ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
                match flag {
                    "--account" => spec.account = value.to_string(),
                    "--org" => spec.org = value.to_string(),
                    "--scopes" => spec.scopes = value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                    "--plan" => spec.plan = Some(value.to_string()),
                    "--prefix" => spec.prefix = Some(value.to_string()),
                    "--account-pattern" => pattern = value.to_string(),
                    "--expires" => {
                        let ttl = humantime::parse_duration(value)
                            .map_err(|e| Failure::Usage(format!("--expires {value}: {e}")))?;
                        let at = SystemTime::now() + ttl;
                        spec.expires_at = Some(humantime::format_rfc3339_seconds(at).to_string());
                    }
                    other => return Err(Failure::Usage(format!("unknown option {other}"))),
                }
            }
        }
    }
    if spec.org.is_empty() {
        return Err(Failure::Usage("--org is required".into()));
    }
    spec.check_form().map_err(Failure::Usage)?;
    // The filter's own rule: the whole account must match the pattern.
    let accounts = AccountRules::new(&pattern, [])
        .map_err(|e| Failure::Usage(format!("--account-pattern: invalid regular expression: {e}")))?;
    if !accounts.is_valid(&spec.account) {
        return Err(Failure::Usage(format!(
            "--account '{}' does not match the account pattern {pattern}",
            spec.account
        )));
    }
    let new = mint(spec, &pepper()?).map_err(|e| Failure::Failed(format!("no randomness: {e}")))?;
    let record = serde_json::to_string(&new.record).map_err(|e| Failure::Failed(e.to_string()))?;
    if json {
        println!("{{\"key\":{},\"record\":{record}}}", serde_json::Value::from(new.key));
    } else {
        println!("API key (shown once; store it now):\n  {}\n", new.key);
        println!("Record for the policy's api_keys.keys or the key server:\n  {record}");
    }
    Ok(())
}

fn key_hash(key: &str) -> Result<(), Failure> {
    let key = if key == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| Failure::Failed(format!("stdin: {e}")))?;
        text.trim().to_owned()
    } else {
        key.to_owned()
    };
    if key.is_empty() {
        return Err(Failure::Usage("empty key".into()));
    }
    println!("{}", pepper()?.hash(&key).to_hex());
    Ok(())
}

/// The process environment, with a stand-in for a secret this machine lacks
/// (the pepper, an HS256 `k_env`): a policy's validity does not depend on the
/// secrets' values. The stand-in is long enough for every length check.
struct CheckEnv;

impl Environment for CheckEnv {
    fn var(&self, name: &str) -> Option<String> {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => Some(value),
            _ => {
                eprintln!("note: {name} is not set here; the filter refuses to start without it");
                // Long enough for every secret a policy names (session keys: 32 bytes).
                Some("policy-check-placeholder-0123456789abcdef".into())
            }
        }
    }
}

fn policy_check(file: &str) -> Result<(), Failure> {
    let json = std::fs::read(file).map_err(|e| Failure::Failed(format!("{file}: {e}")))?;
    let policy = Policy::from_json(&json, &CheckEnv).map_err(|e| Failure::Failed(format!("config: {e}")))?;
    let keys = policy.api_keys.as_ref().map_or(0, |k| k.inline.len());
    println!(
        "{file}: ok ({:?} mode, {keys} keys, {} JWT providers, {} routes)",
        policy.mode,
        policy.jwt_providers.len(),
        policy.routes.len()
    );
    Ok(())
}

fn policy_diff(old: &str, new: &str) -> Result<(), Failure> {
    let read = |file: &str| -> Result<config::PolicyDoc, Failure> {
        let json = std::fs::read(file).map_err(|e| Failure::Failed(format!("{file}: {e}")))?;
        // The same checks as `policy check`: a diff of a broken policy is no review.
        Policy::from_json(&json, &CheckEnv).map_err(|e| Failure::Failed(format!("{file}: config: {e}")))?;
        config::parse_doc(&json).map_err(|e| Failure::Failed(format!("{file}: config: {e}")))
    };
    let changes = diff::diff(&read(old)?, &read(new)?);
    if changes.is_empty() {
        println!("no changes");
    }
    for line in changes {
        println!("{line}");
    }
    Ok(())
}

/// Signs a body as a webhook sender would; the secret comes from the
/// environment (`--secret-env`, or the policy's webhook `--name`).
fn webhook_sign(args: &[&str]) -> Result<(), Failure> {
    let (mut secret_env, mut format, mut name, mut policy, mut file) = (None, None, None, None, None);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().copied().ok_or_else(|| Failure::Usage(format!("{arg} needs a value")));
        match *arg {
            "--secret-env" => secret_env = Some(value()?.to_owned()),
            "--format" => format = Some(value()?),
            "--name" => name = Some(value()?),
            "--policy" => policy = Some(value()?),
            other if file.is_none() && (other == "-" || !other.starts_with("--")) => file = Some(other),
            other => return Err(Failure::Usage(format!("unexpected {other}"))),
        }
    }
    let mut format = match format {
        None => None,
        Some(text) => Some(
            serde_json::from_value::<SignatureFormatDoc>(serde_json::Value::from(text))
                .map_err(|_| Failure::Usage(format!("--format {text}: not hex, base64 or timestamped")))?,
        ),
    };
    if let (Some(name), Some(policy)) = (name, policy) {
        let json = std::fs::read(policy).map_err(|e| Failure::Failed(format!("{policy}: {e}")))?;
        let doc = config::parse_doc(&json).map_err(|e| Failure::Failed(format!("{policy}: config: {e}")))?;
        let hook = doc.webhooks.into_iter().find(|w| w.name == name);
        let hook = hook.ok_or_else(|| Failure::Failed(format!("{policy}: no webhook named '{name}'")))?;
        secret_env = secret_env.or(Some(hook.secret_env));
        format = format.or(Some(hook.format));
    } else if name.is_some() || policy.is_some() {
        return Err(Failure::Usage("--name and --policy go together".into()));
    }
    let secret_env =
        secret_env.ok_or_else(|| Failure::Usage("--secret-env (or --name and --policy) is required".into()))?;
    let file = file.ok_or_else(|| Failure::Usage("which body? FILE or -".into()))?;
    let secret = std::env::var(&secret_env).unwrap_or_default();
    if secret.is_empty() {
        return Err(Failure::Failed(format!("{secret_env} is not set")));
    }
    let body = if file == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).map_err(|e| Failure::Failed(format!("stdin: {e}")))?;
        body
    } else {
        std::fs::read(file).map_err(|e| Failure::Failed(format!("{file}: {e}")))?
    };
    let now_s = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = webhook::sign(format.unwrap_or_default(), secret.as_bytes(), &body, now_s)
        .ok_or_else(|| Failure::Failed("unusable secret".into()))?;
    println!("{header}");
    Ok(())
}
