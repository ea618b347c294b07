//! Envoy's `verify_signature` foreign function as the JWT verifier's host.

use crate::jwt::host_wire;
use crate::jwt::SignatureHost;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::cell::Cell;

pub struct EnvoySignatures {
    /// Cleared the first time the host says it has no such function.
    available: Cell<bool>,
    probed: Cell<bool>,
}

impl Default for EnvoySignatures {
    fn default() -> Self {
        Self { available: Cell::new(true), probed: Cell::new(false) }
    }
}

impl EnvoySignatures {
    /// Whether the host has the function. Asked once, with an empty request:
    /// a host that has it answers (whatever the answer), one that lacks it
    /// says NotFound.
    pub fn available(&self) -> bool {
        if !self.probed.replace(true) {
            if let Err(Status::NotFound) = hostcalls::call_foreign_function(host_wire::FUNCTION, Some(&[])) {
                self.available.set(false);
            }
        }
        self.available.get()
    }
}

impl SignatureHost for EnvoySignatures {
    fn verify_sha256(&self, public_key_der: &[u8], message: &[u8], signature: &[u8]) -> Option<bool> {
        if !self.available.get() {
            return None;
        }
        let arguments = host_wire::encode_arguments(public_key_der, message, signature);
        match hostcalls::call_foreign_function(host_wire::FUNCTION, Some(&arguments)) {
            Ok(Some(result)) => host_wire::decode_result(&result),
            Ok(None) => None,
            Err(Status::NotFound) => {
                log::error!("edge-auth: the host has no {}: RS256 and ES256 tokens are refused", host_wire::FUNCTION);
                self.available.set(false);
                None
            }
            // Anything else: not verified, so refused.
            Err(_) => None,
        }
    }
}
