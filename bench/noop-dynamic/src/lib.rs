//! An Envoy 1.40 dynamic module (ABI `v0.2.0`) loaded as `edge_auth` that
//! lets every request through. With `effects` in its filter configuration it
//! does only what edge-auth's native build must do to an admitted API-key
//! request, without deciding anything: read the request header map, add six
//! identity headers, and add three `x-ratelimit-*` response headers.
//!
//! Every `envoy_dynamic_module_on_*` hook Envoy requires is exported; those
//! the filter has no use for do nothing. Pointers from Envoy are used only
//! as the ABI documents them, during the hook that received them.

use std::ffi::c_void;
use std::ptr;

#[repr(C)]
#[derive(Clone, Copy)]
struct Buffer {
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

type Ptr = *mut c_void;

const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
const CONTINUE: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: Ptr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(filter: Ptr, header_type: u32, out: *mut HttpHeader) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(filter: Ptr, header_type: u32, key: Buffer, value: Buffer)
        -> bool;
}

const IDENTITY: [(&str, &str); 6] = [
    ("x-org-id", "org_bench"),
    ("x-account-id", "acme"),
    ("x-key-id", "key_00007"),
    ("x-auth-subject", "key_00007"),
    ("x-auth-method", "api_key"),
    ("x-auth-scopes", "agents:read"),
];

const QUOTA: [(&str, &str); 3] =
    [("x-ratelimit-limit", "1000000000000"), ("x-ratelimit-remaining", "999999999999"), ("x-ratelimit-reset", "1")];

fn buffer(text: &str) -> Buffer {
    Buffer { ptr: text.as_ptr(), length: text.len() }
}

fn add(filter: Ptr, header_type: u32, (name, value): (&str, &str)) {
    // SAFETY: `filter` is the hook's; Envoy copies both buffers.
    unsafe { envoy_dynamic_module_callback_http_add_header(filter, header_type, buffer(name), buffer(value)) };
}

/// The filter configuration: whether to apply the effects.
struct Config {
    effects: bool,
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    c"v0.2.0".as_ptr().cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _envoy: Ptr,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy passes the configuration's bytes for the call's length.
    let bytes =
        if config.ptr.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(config.ptr, config.length) } };
    let effects = bytes.windows(7).any(|w| w == b"effects");
    Box::into_raw(Box::new(Config { effects })).cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    // SAFETY: made by `Box::into_raw` in config_new; Envoy destroys it once.
    drop(unsafe { Box::from_raw(config.cast_mut().cast::<Config>()) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, _envoy: Ptr) -> *const c_void {
    config // the filter needs nothing of its own: it is its configuration
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: Ptr,
    filter: *const c_void,
    _end: bool,
) -> u32 {
    // SAFETY: `filter` is the configuration, alive while its filters are.
    if unsafe { &*filter.cast::<Config>() }.effects {
        let mut headers =
            [HttpHeader { key_ptr: ptr::null(), key_length: 0, value_ptr: ptr::null(), value_length: 0 }; 32];
        // SAFETY: the array holds the count Envoy reports, or it is not filled.
        unsafe {
            if envoy_dynamic_module_callback_http_get_headers_size(envoy, REQUEST_HEADER) <= headers.len() {
                envoy_dynamic_module_callback_http_get_headers(envoy, REQUEST_HEADER, headers.as_mut_ptr());
            }
        }
        IDENTITY.into_iter().for_each(|header| add(envoy, REQUEST_HEADER, header));
    }
    CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: Ptr,
    filter: *const c_void,
    _end: bool,
) -> u32 {
    // SAFETY: as in request_headers.
    if unsafe { &*filter.cast::<Config>() }.effects {
        QUOTA.into_iter().for_each(|header| add(envoy, RESPONSE_HEADER, header));
    }
    CONTINUE
}

/// Hooks the filter has no use for: each answers Continue or nothing.
macro_rules! unused_hooks {
    ($($name:ident($($arg:ty),*) $(-> $ret:ty = $value:expr)?;)*) => {$(
        #[no_mangle]
        extern "C" fn $name($(_: $arg),*) $(-> $ret)? { $($value)? }
    )*};
}

unused_hooks! {
    envoy_dynamic_module_on_http_filter_per_route_config_new(Buffer, Buffer) -> *const c_void = ptr::null();
    envoy_dynamic_module_on_http_filter_per_route_config_destroy(*const c_void);
    envoy_dynamic_module_on_http_filter_destroy(*const c_void);
    envoy_dynamic_module_on_http_filter_request_body(Ptr, *const c_void, bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_request_trailers(Ptr, *const c_void) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_response_body(Ptr, *const c_void, bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_response_trailers(Ptr, *const c_void) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_stream_complete(Ptr, *const c_void);
    envoy_dynamic_module_on_http_filter_local_reply(Ptr, *const c_void, u32, Buffer, bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_http_callout_done(Ptr, *const c_void, u64, u32, Ptr, usize, Ptr, usize);
    envoy_dynamic_module_on_http_filter_config_scheduled(Ptr, *const c_void, u64);
    envoy_dynamic_module_on_http_filter_config_http_callout_done(Ptr, *const c_void, u64, u32, Ptr, usize, Ptr, usize);
    envoy_dynamic_module_on_http_filter_scheduled(Ptr, *const c_void, u64);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(Ptr, *const c_void);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(Ptr, *const c_void);
    envoy_dynamic_module_on_http_filter_http_stream_headers(Ptr, *const c_void, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(Ptr, *const c_void, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(Ptr, *const c_void, u64, Ptr, usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(Ptr, *const c_void, u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(Ptr, *const c_void, u64, u32);
    envoy_dynamic_module_on_http_filter_config_http_stream_headers(Ptr, *const c_void, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_config_http_stream_data(Ptr, *const c_void, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers(Ptr, *const c_void, u64, Ptr, usize);
    envoy_dynamic_module_on_http_filter_config_http_stream_complete(Ptr, *const c_void, u64);
    envoy_dynamic_module_on_http_filter_config_http_stream_reset(Ptr, *const c_void, u64, u32);
}
