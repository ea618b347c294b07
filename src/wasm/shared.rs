//! Proxy-wasm shared data as the rate limiter's store: one map per `vm_id`,
//! shared by every worker of the Envoy process.

use crate::store::{Cas, Conflict, SharedStore};
use proxy_wasm::hostcalls;

pub struct HostStore;

/// The host creates a missing key whatever CAS it is given, and checks the
/// CAS only on an existing key; a CAS no key can hold makes creation fail
/// when another worker created the key first. The host's counter would have
/// to land exactly on this value for the guard to miss.
const CREATE_ONLY: u32 = u32::MAX;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Cas) -> Result<(), Conflict> {
        let cas = match cas {
            Cas::Any => 0,
            Cas::Absent => CREATE_ONLY,
            Cas::Match(cas) => cas,
        };
        hostcalls::set_shared_data(key, Some(value), Some(cas)).map_err(|_| Conflict)
    }
}
