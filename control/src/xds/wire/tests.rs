//! The field tables against the compiled descriptors, and the walk over hand-encoded
//! messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};

use super::*;
use crate::proto::istio::security as xsec;

/// The descriptors `build.rs` compiled from the same `.proto` files as the prost types.
fn descriptors() -> FileDescriptorSet {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/zpath_descriptors.bin"));
    FileDescriptorSet::decode(&bytes[..]).unwrap()
}

fn find<'a>(set: &'a FileDescriptorSet, full_name: &str) -> &'a DescriptorProto {
    set.file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .map(move |m| (format!("{}.{}", f.package(), m.name()), m))
        })
        .find(|(n, _)| n == full_name)
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("{full_name} not in the descriptors"))
}

/// Every schema reachable from `root`, each once.
fn reachable(root: &'static Schema) -> Vec<&'static Schema> {
    let mut out: Vec<&'static Schema> = vec![root];
    let mut i = 0;
    while let Some(s) = out.get(i).copied() {
        for f in s.fields {
            if let Some(m) = f.message {
                if !out.iter().any(|o| o.name == m.name) {
                    out.push(m);
                }
            }
        }
        i += 1;
    }
    out
}

#[test]
fn field_tables_match_the_compiled_descriptors() {
    let set = descriptors();
    let schemas = reachable(&AUTHORIZATION);
    assert_eq!(
        schemas.len(),
        8,
        "Authorization and the seven messages inside it"
    );
    for schema in schemas {
        let desc = find(&set, schema.name);
        let want: BTreeSet<(i32, String, Option<String>)> = desc
            .field
            .iter()
            .map(|f| {
                let inner = (f.r#type() == Type::Message)
                    .then(|| f.type_name().trim_start_matches('.').to_string());
                (f.number(), f.name().to_string(), inner)
            })
            .collect();
        let have: BTreeSet<(i32, String, Option<String>)> = schema
            .fields
            .iter()
            .map(|f| {
                (
                    f.number as i32,
                    f.name.to_string(),
                    f.message.map(|m| m.name.to_string()),
                )
            })
            .collect();
        assert_eq!(have, want, "fields of {}", schema.name);
        assert!(schema.fields.len() <= MAX_FIELDS);
    }
}

fn string_match(kind: xsec::string_match::MatchType) -> xsec::StringMatch {
    xsec::StringMatch {
        match_type: Some(kind),
    }
}

/// A policy with every field of every message set (destructured, so that a field
/// added to the proto does not compile until it is set here).
fn everything() -> xsec::Authorization {
    use xsec::string_match::MatchType;
    let address = xsec::Address {
        address: vec![10, 0, 0, 0],
        length: 8,
    };
    let xsec::Address { .. } = address.clone();
    let sa = xsec::ServiceAccountMatch {
        namespace: "ns".into(),
        service_account: "sa".into(),
    };
    let xsec::ServiceAccountMatch { .. } = sa.clone();
    let strings = vec![
        string_match(MatchType::Exact("a".into())),
        string_match(MatchType::Prefix("b".into())),
        string_match(MatchType::Suffix("c".into())),
        string_match(MatchType::Presence(())),
    ];
    let m = xsec::Match {
        namespaces: strings.clone(),
        not_namespaces: strings.clone(),
        service_accounts: vec![sa.clone()],
        not_service_accounts: vec![sa],
        principals: strings.clone(),
        not_principals: strings,
        source_ips: vec![address.clone()],
        not_source_ips: vec![address.clone()],
        destination_ips: vec![address.clone()],
        not_destination_ips: vec![address],
        destination_ports: vec![80, 443],
        not_destination_ports: vec![22],
    };
    let rule = xsec::Rule {
        clauses: vec![xsec::Clause {
            matches: vec![m.clone(), m],
        }],
    };
    xsec::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: xsec::Scope::WorkloadSelector as i32,
        action: xsec::Action::Deny as i32,
        rules: vec![rule.clone(), rule],
        dry_run: true,
    }
}

#[test]
fn every_field_prost_writes_is_known() {
    let bytes = everything().encode_to_vec();
    assert_eq!(check_authorization(&bytes), Ok(()));
    assert_eq!(check_authorization(&[]), Ok(()));
}

fn key(number: u32, wire_type: WireType) -> Vec<u8> {
    let mut b = Vec::new();
    encode_key(number, wire_type, &mut b);
    b
}

/// Field `number` holding `payload` (length-delimited).
pub(crate) fn nested(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = key(number, WireType::LengthDelimited);
    encode_varint(payload.len() as u64, &mut b);
    b.extend_from_slice(payload);
    b
}

#[test]
fn an_unknown_field_inside_a_match_is_found_with_its_path() {
    let known = xsec::Match {
        destination_ports: vec![80],
        ..Default::default()
    };
    let mut m = known.encode_to_vec();
    m.extend(key(990, WireType::Varint));
    m.push(1);
    let mut bytes = xsec::Authorization {
        name: "p".into(),
        ..Default::default()
    }
    .encode_to_vec();
    // rules[0] = { clauses[0] = { matches[0] = known, matches[1] = m } }
    let clause = [nested(2, &known.encode_to_vec()), nested(2, &m)].concat();
    bytes.extend(nested(5, &nested(1, &clause)));
    // prost reads it as if field 990 were not there.
    let decoded = xsec::Authorization::decode(&bytes[..]).unwrap();
    assert_eq!(decoded.rules[0].clauses[0].matches[1], known);
    let e = check_authorization(&bytes).unwrap_err();
    assert_eq!(
        e,
        WireError::UnknownField {
            at: "rules[0].clauses[0].matches[1]".into(),
            message: "istio.security.Match",
            number: 990,
        }
    );
    assert!(e.to_string().contains("field number 990"), "{e}");
}

#[test]
fn unknown_fields_at_the_top_and_in_the_deepest_message_are_found() {
    let top = [
        xsec::Authorization::default().encode_to_vec(),
        key(7, WireType::ThirtyTwoBit),
        vec![0; 4],
    ]
    .concat();
    assert!(matches!(
        check_authorization(&top),
        Err(WireError::UnknownField { at, number: 7, .. }) if at.is_empty()
    ));
    // presence = google.protobuf.Empty { 1: "x" }
    let empty_with_field = nested(1, b"x");
    let string_match = nested(4, &empty_with_field);
    let m = nested(1, &string_match);
    let bytes = nested(5, &nested(1, &nested(2, &m)));
    assert!(matches!(
        check_authorization(&bytes),
        Err(WireError::UnknownField { at, message: "google.protobuf.Empty", number: 1 })
            if at == "rules[0].clauses[0].matches[0].namespaces[0].presence[0]"
    ));
}

#[test]
fn bytes_that_are_not_protobuf_are_malformed_not_a_panic() {
    for bad in [
        &[0x2a, 0x05, 0x0a][..], // rules: length past the end
        &[0x28, 0x01],           // rules as a varint
        &[0x0b],                 // a group
        &[0x80],                 // a key cut short
        &[0x08],                 // name as a varint with no value
    ] {
        assert!(
            matches!(check_authorization(bad), Err(WireError::Malformed { .. })),
            "{bad:?}"
        );
    }
    let good = everything().encode_to_vec();
    for cut in 0..good.len() {
        let _ = check_authorization(&good[..cut]);
    }
}
