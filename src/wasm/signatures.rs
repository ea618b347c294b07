//! Envoy's `verify_signature` foreign function as the JWT verifier's host.

use crate::jwt::host_wire;
use crate::jwt::SignatureHost;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::cell::Cell;

#[derive(Default)]
pub struct EnvoySignatures {
    /// Whether the host has the function: unknown until probed, and `false`
    /// from the first time the host says it has no such function.
    available: Cell<Option<bool>>,
}

impl EnvoySignatures {
    /// Whether the host has the function. Asked once, with an empty request:
    /// a host that has it answers (whatever the answer), one that lacks it
    /// says NotFound.
    pub fn available(&self) -> bool {
        if let Some(known) = self.available.get() {
            return known;
        }
        let found = !matches!(hostcalls::call_foreign_function(host_wire::FUNCTION, Some(&[])), Err(Status::NotFound));
        self.available.set(Some(found));
        found
    }
}

impl SignatureHost for EnvoySignatures {
    fn verify_sha256(&self, public_key_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        if self.available.get() == Some(false) {
            return None;
        }
        let arguments = host_wire::encode_arguments(public_key_der, message, signature);
        match hostcalls::call_foreign_function(host_wire::FUNCTION, Some(&arguments)) {
            Ok(Some(result)) => host_wire::decode_result(&result),
            Ok(None) => None,
            Err(Status::NotFound) => {
                log::error!("edge-auth: the host has no {}: RS256 and ES256 tokens are refused", host_wire::FUNCTION);
                self.available.set(Some(false));
                None
            }
            // Anything else: not verified, so refused.
            Err(_) => None,
        }
    }
}
