//! The Envoy dynamic-module ABI (`v0.2.0`, Envoy 1.40): the only `unsafe`
//! in the crate. Declarations follow Envoy's
//! `source/extensions/dynamic_modules/abi/abi.h`; only what the filter uses
//! is declared. Every exported hook runs inside `catch_unwind`, so a panic
//! never unwinds into Envoy: a request fails closed (503) and a
//! configuration is refused.

use super::config::Config;
use super::filter::{BodyStatus, Filter, Paused};
use std::borrow::Cow;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// The ABI this module is built against: Envoy 1.40's. Envoy only warns on
/// a mismatch, so the module must be rebuilt (and re-tested) for every
/// Envoy upgrade; see docs/native.md.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

const NULL_HEADER: HttpHeader =
    HttpHeader { key_ptr: ptr::null(), key_length: 0, value_ptr: ptr::null(), value_length: 0 };

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    const NULL: Self = Self { ptr: ptr::null(), length: 0 };
}

impl HttpHeader {
    fn of(name: &str, value: &str) -> Self {
        Self { key_ptr: name.as_ptr(), key_length: name.len(), value_ptr: value.as_ptr(), value_length: value.len() }
    }
}

// envoy_dynamic_module_type_http_header_type
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
// envoy_dynamic_module_type_http_callout_init_result / _result
const CALLOUT_INIT_SUCCESS: u32 = 0;
const CALLOUT_SUCCESS: u32 = 0;
// Filter status enums: Continue is 0 in each; StopIteration (headers,
// trailers) and StopIterationAndBuffer (body) are 1.
const CONTINUE: u32 = 0;
const STOP: u32 = 1;
// envoy_dynamic_module_type_on_http_filter_request_body_status
const STOP_NO_BUFFER: u32 = 3;
// envoy_dynamic_module_type_http_body_type
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;

type Ptr = *mut c_void;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: Ptr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(filter: Ptr, header_type: u32, result: *mut HttpHeader) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: Ptr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: Ptr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: Ptr,
        status: u32,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: Ptr);
    fn envoy_dynamic_module_callback_http_get_body_size(filter: Ptr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: Ptr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: Ptr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(filter: Ptr) -> bool;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: Ptr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: Ptr,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: Ptr,
        name: ModuleBuffer,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: Ptr,
        name: ModuleBuffer,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: Ptr,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: Ptr,
        id: usize,
        labels: *mut ModuleBuffer,
        labels_size: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: Ptr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: Ptr) -> Ptr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: Ptr);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: Ptr, event_id: u64);
}

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Writes a line to Envoy's log (the `dynamic_modules` logger).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// A callout's answer: its headers and body (both empty when it failed).
pub struct CalloutAnswer {
    pub ok: bool,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CalloutAnswer {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A header name as text. Every name Envoy's codecs accept is ASCII, which
/// is borrowed as it is: decoding UTF-8 cost more than the rest of reading
/// the headers (about 100 instructions a name). Anything else is copied,
/// lossily.
fn name_text(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        String::from_utf8_lossy(bytes)
    }
}

/// A request the host should send (a callout).
pub struct Callout<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers included (`:method`, `:path`, `:authority`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub timeout_ms: u64,
}

impl Callout<'_> {
    fn raw_headers(&self) -> Vec<HttpHeader> {
        self.headers.iter().map(|(n, v)| HttpHeader::of(n, v)).collect()
    }
}

/// Envoy's side of one HTTP stream's filter, valid during a hook.
pub struct FilterHandle(Ptr);

impl FilterHandle {
    /// Every request header, repeated names included, as Envoy holds them:
    /// borrowed, not copied (a name that is not UTF-8 is copied, lossily).
    /// The view borrows the handle, and setting or removing a header takes
    /// it mutably, so no header can change under the view.
    pub fn request_headers(&self) -> Vec<(Cow<'_, str>, &[u8])> {
        self.headers(REQUEST_HEADER)
    }

    /// Upstream's response headers, as [`Self::request_headers`].
    pub fn response_headers(&self) -> Vec<(Cow<'_, str>, &[u8])> {
        self.headers(RESPONSE_HEADER)
    }

    fn headers(&self, header_type: u32) -> Vec<(Cow<'_, str>, &[u8])> {
        // SAFETY: the array has room for the count Envoy reported; the
        // buffers Envoy fills point into the request's header map, valid
        // while the map is unchanged: the view lives no longer than this
        // handle (one hook), and the map changes only through `&mut self`.
        unsafe {
            let count = envoy_dynamic_module_callback_http_get_headers_size(self.0, header_type);
            // Most requests' headers fit on the stack.
            let mut stack = [NULL_HEADER; 32];
            let mut heap = Vec::new();
            let raw = match stack.get_mut(..count) {
                Some(raw) => raw,
                None => {
                    heap.resize(count, NULL_HEADER);
                    heap.as_mut_slice()
                }
            };
            if count == 0 || !envoy_dynamic_module_callback_http_get_headers(self.0, header_type, raw.as_mut_ptr()) {
                return Vec::new();
            }
            raw.iter()
                .map(|h| (name_text(bytes(h.key_ptr, h.key_length)), bytes(h.value_ptr, h.value_length)))
                .collect()
        }
    }

    /// Adds a header without looking for one of the same name first
    /// (cheaper than a set): for a name the request no longer carries. An
    /// empty value is not added.
    pub fn add_request_header(&mut self, name: &str, value: &str) {
        self.add(REQUEST_HEADER, name, value);
    }

    pub fn add_response_header(&mut self, name: &str, value: &str) {
        self.add(RESPONSE_HEADER, name, value);
    }

    fn add(&mut self, header_type: u32, name: &str, value: &str) {
        // SAFETY: the buffers point into live strings; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    pub fn remove_request_header(&mut self, name: &str) {
        self.set(REQUEST_HEADER, name, None);
    }

    pub fn set_response_header(&mut self, name: &str, value: &str) {
        self.set(RESPONSE_HEADER, name, Some(value));
    }

    fn set(&mut self, header_type: u32, name: &str, value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: the buffers point into live strings; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
        }
    }

    /// Answers the request locally.
    pub fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &str, details: &str) {
        let mut raw: Vec<HttpHeader> = headers.iter().map(|(n, v)| HttpHeader::of(n, v)).collect();
        // SAFETY: the array and buffers outlive the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// The request body's parts: what Envoy buffered so far, then what the
    /// current body hook received (outside a body hook, only the first).
    /// The received part is left out when it is the buffer itself (a filter
    /// before this one buffered the body and resumed).
    fn request_body_parts(&self) -> &'static [u32] {
        // SAFETY: a live filter pointer, handed to this hook by Envoy.
        if unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.0) } {
            &[BUFFERED_REQUEST_BODY]
        } else {
            &[BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY]
        }
    }

    /// How many bytes of the request body have arrived.
    pub fn request_body_size(&self) -> usize {
        let parts = self.request_body_parts().iter();
        // SAFETY: a live filter pointer; an absent body counts 0.
        parts.map(|&part| unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, part) }).sum()
    }

    /// The request body that has arrived, as one copy.
    pub fn request_body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.request_body_size());
        for &part in self.request_body_parts() {
            // SAFETY: the array has room for the count Envoy reported; the
            // buffers stay valid until the end of the hook and are copied
            // before it ends.
            unsafe {
                let count = envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, part);
                let mut chunks = vec![EnvoyBuffer { ptr: ptr::null(), length: 0 }; count];
                if count == 0 || !envoy_dynamic_module_callback_http_get_body_chunks(self.0, part, chunks.as_mut_ptr())
                {
                    continue;
                }
                for chunk in &chunks {
                    body.extend_from_slice(bytes(chunk.ptr, chunk.length));
                }
            }
        }
        body
    }

    pub fn continue_decoding(&mut self) {
        // SAFETY: a live filter pointer, handed to this hook by Envoy.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Sends a callout whose answer comes to this filter's
    /// `http_callout_done`; `None` if Envoy could not start it.
    pub fn callout(&self, callout: &Callout<'_>) -> Option<u64> {
        let mut headers = callout.raw_headers();
        let mut id = 0u64;
        // SAFETY: every pointer refers to memory alive for the call.
        let init = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(callout.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(callout.body),
                callout.timeout_ms,
            )
        };
        (init == CALLOUT_INIT_SUCCESS).then_some(id)
    }

    pub fn increment_counter(&self, id: usize, value: u64) {
        // SAFETY: no labels; a live filter pointer.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(self.0, id, ptr::null_mut(), 0, value);
        }
    }
}

/// Envoy's side of a filter configuration, valid during a config hook.
pub struct ConfigHandle(Ptr);

impl ConfigHandle {
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0;
        // SAFETY: the name outlives the call; `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == 0).then_some(id)
    }

    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0;
        // SAFETY: as in `define_counter`.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == 0).then_some(id)
    }

    pub fn increment_counter(&self, id: usize, value: u64) {
        // SAFETY: no labels; a live config pointer.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(self.0, id, ptr::null_mut(), 0, value);
        }
    }

    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: no labels; a live config pointer.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(self.0, id, ptr::null_mut(), 0, value);
        }
    }

    /// Sends a callout whose answer comes to the configuration's
    /// `http_callout_done` (on the main thread).
    pub fn callout(&self, callout: &Callout<'_>) -> Option<u64> {
        let mut headers = callout.raw_headers();
        let mut id = 0u64;
        // SAFETY: every pointer refers to memory alive for the call.
        let init = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(callout.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(callout.body),
                callout.timeout_ms,
            )
        };
        (init == CALLOUT_INIT_SUCCESS).then_some(id)
    }

    /// A scheduler that runs `config_scheduled` on the main thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: a live config pointer; Envoy allocates the scheduler, and
        // `Scheduler`'s drop deletes it.
        let raw = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!raw.is_null()).then_some(Scheduler(raw))
    }
}

/// A configuration's scheduler: `commit` may be called from any thread
/// (the ABI's purpose for it); it is deleted when dropped.
pub struct Scheduler(Ptr);

// SAFETY: the ABI documents the scheduler as the way to reach the main
// thread from threads the module manages; commit is thread-safe, and
// delete happens once, from drop.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self`.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self) {
        // SAFETY: the scheduler is live until drop.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, 0) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted exactly once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// Bytes Envoy lent for the duration of a hook.
///
/// # Safety
/// `data` must point to `length` readable bytes (or be null with any length).
unsafe fn bytes<'a>(data: *const u8, length: usize) -> &'a [u8] {
    if data.is_null() || length == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data, length)
    }
}

/// Runs a hook's body; a panic is logged and turned into `fallback`.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log(LogLevel::Error, &format!("edge-auth: panic in {hook}; failing closed"));
        fallback
    })
}

/// Runs a request hook's body; a panic is logged and answered 503
/// `auth_unavailable`, and Envoy gets `refused`.
fn fail_closed_on_panic<T>(hook: &str, envoy: Ptr, refused: T, body: impl FnOnce(&mut FilterHandle) -> T) -> T {
    let mut envoy = FilterHandle(envoy);
    catch_unwind(AssertUnwindSafe(|| body(&mut envoy))).unwrap_or_else(|_| {
        log(LogLevel::Error, &format!("edge-auth: panic in {hook}; answering 503"));
        super::filter::fail_closed(&mut envoy);
        refused
    })
}

/// A callout's answer as Envoy lent it.
///
/// # Safety
/// The arrays must hold the given counts of valid headers and buffers.
unsafe fn answer(
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
    max_body: usize,
) -> CalloutAnswer {
    let headers: &[HttpHeader] =
        if headers.is_null() { &[] } else { std::slice::from_raw_parts(headers, headers_size) };
    let chunks: &[EnvoyBuffer] = if chunks.is_null() { &[] } else { std::slice::from_raw_parts(chunks, chunks_size) };
    let headers = headers
        .iter()
        .map(|h| {
            (
                String::from_utf8_lossy(bytes(h.key_ptr, h.key_length)).into_owned(),
                bytes(h.value_ptr, h.value_length).to_vec(),
            )
        })
        .collect();
    let size: usize = chunks.iter().map(|c| c.length).sum();
    let mut ok = result == CALLOUT_SUCCESS;
    let mut body = Vec::new();
    if size > max_body {
        ok = false;
    } else {
        for chunk in chunks {
            body.extend_from_slice(bytes(chunk.ptr, chunk.length));
        }
    }
    CalloutAnswer { ok, headers, body }
}

// ---------------------------------------------------------------- hooks ---

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guarded("program_init", ptr::null(), || {
        super::logger::install();
        ABI_VERSION.as_ptr()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: Ptr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded("http_filter_config_new", ptr::null(), || {
        // SAFETY: Envoy lends both buffers for the duration of the hook.
        let (name, json) = unsafe { (bytes(name.ptr, name.length), bytes(config.ptr, config.length)) };
        into_module(Config::new(&ConfigHandle(config_envoy), name, json))
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    // SAFETY: made by `into_module` in config_new; Envoy destroys it once.
    guarded("http_filter_config_destroy", (), || unsafe { drop_module::<Config>(config) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    guarded("http_filter_per_route_config_new", ptr::null(), || {
        log(LogLevel::Error, "edge-auth: config: per-route configuration is not supported; give routes in the policy");
        ptr::null()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const c_void) {}

/// A value handed to Envoy as a module pointer (null for none), until
/// [`drop_module`] takes it back.
fn into_module<T>(value: Option<T>) -> *const c_void {
    value.map_or(ptr::null(), |value| Box::into_raw(Box::new(value)).cast::<c_void>().cast_const())
}

/// Takes back and drops what [`into_module`] handed to Envoy.
///
/// # Safety
/// `module` must be null or come from `into_module::<T>`, dropped once.
unsafe fn drop_module<T>(module: *const c_void) {
    if !module.is_null() {
        drop(Box::from_raw(module.cast::<T>().cast_mut()));
    }
}

/// The configuration behind a module pointer.
///
/// # Safety
/// `config` must come from `config_new` and not yet be destroyed.
unsafe fn config_ref<'a>(config: *const c_void) -> Option<&'a Config> {
    config.cast::<Config>().as_ref()
}

/// The filter behind a module pointer.
///
/// # Safety
/// `filter` must come from `filter_new` and not yet be destroyed; Envoy
/// calls a stream's hooks on one thread, one at a time.
unsafe fn filter_mut<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
    filter.cast::<Filter>().cast_mut().as_mut()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _filter_envoy: Ptr) -> *const c_void {
    guarded("http_filter_new", ptr::null(), || {
        // SAFETY: Envoy keeps the configuration alive while it has filters.
        into_module(unsafe { config_ref(config) }.map(Filter::new))
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    // SAFETY: made by `into_module` in filter_new; Envoy destroys it once.
    guarded("http_filter_destroy", (), || unsafe { drop_module::<Filter>(filter) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: Ptr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    fail_closed_on_panic("request_headers", filter_envoy, STOP, |envoy| {
        // SAFETY: see `filter_mut`.
        match unsafe { filter_mut(filter) }.map(|f| f.on_request_headers(envoy, end_of_stream)) {
            Some(Paused::No) => CONTINUE,
            Some(Paused::Yes) => STOP,
            // No filter: fail closed.
            None => {
                log(LogLevel::Error, "edge-auth: request_headers without a filter; answering 503");
                super::filter::fail_closed(envoy);
                STOP
            }
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: Ptr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    fail_closed_on_panic("request_body", filter_envoy, STOP_NO_BUFFER, |envoy| {
        // SAFETY: see `filter_mut`.
        match unsafe { filter_mut(filter) }.map(|f| f.on_request_body(envoy, end_of_stream)) {
            Some(BodyStatus::Continue) => CONTINUE,
            Some(BodyStatus::Buffer) => STOP,
            // Answered (or no filter, which the headers hook answered).
            Some(BodyStatus::Refused) | None => STOP_NO_BUFFER,
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(filter_envoy: Ptr, filter: *const c_void) -> u32 {
    fail_closed_on_panic("request_trailers", filter_envoy, STOP, |envoy| {
        // SAFETY: see `filter_mut`.
        match unsafe { filter_mut(filter) }.map(|f| f.on_request_trailers(envoy)) {
            Some(Paused::No) => CONTINUE,
            Some(Paused::Yes) | None => STOP,
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: Ptr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guarded("http_filter_response_headers", CONTINUE, || {
        // SAFETY: see `filter_mut`.
        if let Some(f) = unsafe { filter_mut(filter) } {
            f.on_response_headers(&mut FilterHandle(filter_envoy));
        }
        CONTINUE
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: Ptr,
    _filter: *const c_void,
    _eos: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_envoy: Ptr, _filter: *const c_void) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_envoy: Ptr, _filter: *const c_void) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: Ptr,
    _filter: *const c_void,
    _status: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: Ptr,
    filter: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    fail_closed_on_panic("http_callout_done", filter_envoy, (), |envoy| {
        // SAFETY: Envoy lends the arrays for the duration of the hook.
        let answer = unsafe { answer(result, headers, headers_size, chunks, chunks_size, super::filter::MAX_ANSWER) };
        // SAFETY: see `filter_mut`.
        if let Some(f) = unsafe { filter_mut(filter) } {
            f.on_callout_done(envoy, callout_id, &answer);
        }
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: Ptr,
    config: *const c_void,
    _event: u64,
) {
    guarded("http_filter_config_scheduled", (), || {
        // SAFETY: see `config_ref`; scheduled events stop before destroy.
        if let Some(config) = unsafe { config_ref(config) } {
            config.on_tick(&ConfigHandle(config_envoy));
        }
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: Ptr,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    guarded("http_filter_config_http_callout_done", (), || {
        // SAFETY: Envoy lends the arrays for the duration of the hook.
        let answer = unsafe { answer(result, headers, headers_size, chunks, chunks_size, crate::remote::MAX_BODY) };
        // SAFETY: see `config_ref`.
        if let Some(config) = unsafe { config_ref(config) } {
            config.on_fetched(&ConfigHandle(config_envoy), callout_id, answer);
        }
    });
}

// Hooks Envoy requires but the filter has no use for: streamed callouts,
// per-stream scheduling, watermarks.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_envoy: Ptr, _filter: *const c_void, _event: u64) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: Ptr,
    _filter: *const c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: Ptr,
    _filter: *const c_void,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: Ptr,
    _filter: *const c_void,
    _stream: u64,
    _headers: *const HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: Ptr,
    _filter: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: Ptr,
    _filter: *const c_void,
    _stream: u64,
    _trailers: *const HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: Ptr,
    _filter: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: Ptr,
    _filter: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _envoy: Ptr,
    _config: *const c_void,
    _stream: u64,
    _headers: *const HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _envoy: Ptr,
    _config: *const c_void,
    _stream: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _envoy: Ptr,
    _config: *const c_void,
    _stream: u64,
    _trailers: *const HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _envoy: Ptr,
    _config: *const c_void,
    _stream: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _envoy: Ptr,
    _config: *const c_void,
    _stream: u64,
    _reason: u32,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_borrowed_when_ascii_and_never_misread() {
        assert!(matches!(name_text(b"x-api-key"), Cow::Borrowed("x-api-key")));
        assert_eq!(name_text(b"x-caf\xc3\xa9"), "x-café");
        assert_eq!(name_text(b"x-\xff"), "x-\u{fffd}");
    }
}
