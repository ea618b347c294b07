//! Property tests over structured requests: the credential parser never
//! accepts two credentials and never panics; the decision is deterministic.

use proptest::prelude::*;

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_owned()),
        Just("Authorization".to_owned()),
        Just("AUTHORIZATION".to_owned()),
        Just("x-api-key".to_owned()),
        Just("X-Api-Key".to_owned()),
        Just("x-account-id".to_owned()),
        Just("x-org-id".to_owned()),
        "[a-z-]{1,12}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Bearer sk_live_acme_secret".to_vec()),
        Just(b"UserKey sk_live_acme_secret".to_vec()),
        Just(b"Bearer pk_live_x".to_vec()),
        Just(b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.".to_vec()),
        Just(b"sk_live_acme_secret, other".to_vec()),
        "(Bearer|bearer|UserKey|Basic|) ?[ -~]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let path = prop_oneof![
        Just("/s/x".to_owned()),
        Just("/public/../s".to_owned()),
        Just("/jwt".to_owned()),
        "/[a-z./]{0,20}"
    ];
    let method = prop_oneof![Just("GET"), Just("POST")];
    (method, path, prop::collection::vec((header_name(), header_value()), 0..5)).prop_map(|(method, path, headers)| {
        let mut data = format!("{method}\n{path}").into_bytes();
        for (name, value) in headers {
            data.push(b'\n');
            data.extend_from_slice(name.as_bytes());
            data.push(b':');
            data.extend(value.into_iter().filter(|&b| b != b'\n'));
        }
        data
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn credential_parsing_never_accepts_two_credentials(data in request()) {
        edge_auth::fuzzing::credential(&data);
    }

    #[test]
    fn decisions_are_deterministic_and_never_panic(data in request()) {
        edge_auth::fuzzing::decision(&data);
    }
}
