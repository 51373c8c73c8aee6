//! Decoding xDS payloads (`Any`) into the generated wire types, by type URL.

use prost::Message;
use prost_types::Any;

use super::state::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use super::XdsError;
use crate::proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use crate::proto::istio::security::Authorization;
use crate::proto::istio::workload::Address;

/// A decoded payload of one of the subscribed types.
// Short-lived (decoded, converted, dropped), so the size gap between variants costs
// nothing worth an allocation per resource.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedResource {
    /// `istio.workload.Address` (a workload or a service).
    Address(Address),
    /// `istio.security.Authorization`.
    Authorization(Authorization),
}

/// Decodes `any` according to its type URL.
pub fn decode_resource(any: &Any) -> Result<DecodedResource, XdsError> {
    match any.type_url.as_str() {
        ADDRESS_TYPE_URL => decode_address(&any.value).map(DecodedResource::Address),
        AUTHORIZATION_TYPE_URL => {
            decode_authorization(&any.value).map(DecodedResource::Authorization)
        }
        other => Err(XdsError::UnknownType(other.to_string())),
    }
}

/// Decodes the bytes of an `istio.workload.Address`.
pub fn decode_address(bytes: &[u8]) -> Result<Address, XdsError> {
    Address::decode(bytes).map_err(|source| XdsError::Decode {
        type_url: ADDRESS_TYPE_URL,
        source,
    })
}

/// Decodes the bytes of an `istio.security.Authorization`.
pub fn decode_authorization(bytes: &[u8]) -> Result<Authorization, XdsError> {
    Authorization::decode(bytes).map_err(|source| XdsError::Decode {
        type_url: AUTHORIZATION_TYPE_URL,
        source,
    })
}

/// Wraps a message as the `Any` of its type URL (servers and tests).
pub fn to_any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

/// Fuzz entry point: arbitrary bytes are decoded as an `Address`, an
/// `Authorization` and a whole `DeltaDiscoveryResponse`; every decoded resource is
/// passed to `convert` (where the domain `TryFrom` conversion plugs in). The
/// response is also run through the subscription state machine. Must never panic.
pub fn fuzz_decode<F: FnMut(&DecodedResource)>(data: &[u8], mut convert: F) {
    if let Ok(a) = decode_address(data) {
        convert(&DecodedResource::Address(a));
    }
    if let Ok(a) = decode_authorization(data) {
        convert(&DecodedResource::Authorization(a));
    }
    let _ = super::wire::check_authorization(data);
    if let Ok(resp) = DeltaDiscoveryResponse::decode(data) {
        let mut handler = DecodingHandler {
            convert: &mut convert,
        };
        let mut state = super::SubscriptionState::new(
            Default::default(),
            [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL],
        );
        let _ = state.handle_response(resp, &mut handler);
        let _ = state.initial_requests();
    }
}

struct DecodingHandler<'a, F: FnMut(&DecodedResource)> {
    convert: &'a mut F,
}

impl<F: FnMut(&DecodedResource)> super::XdsHandler for DecodingHandler<'_, F> {
    fn apply(
        &mut self,
        _type_url: &str,
        added: Vec<super::XdsResource>,
        _removed: Vec<String>,
    ) -> Result<(), Vec<super::RejectedResource>> {
        let mut rejected = Vec::new();
        for r in added {
            match decode_resource(&r.resource) {
                Ok(d) => (self.convert)(&d),
                Err(e) => rejected.push(super::RejectedResource::new(r.name, e.to_string())),
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(rejected)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::proto::istio::security::{Action, Clause, Match, Rule, Scope};
    use crate::proto::istio::workload::{address, Workload};

    pub(crate) fn sample_address() -> Address {
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: "cluster1//v1/Pod/default/echo".into(),
                name: "echo".into(),
                namespace: "default".into(),
                addresses: vec![vec![10, 0, 0, 5]],
                service_account: "echo".into(),
                ..Default::default()
            })),
        }
    }

    pub(crate) fn sample_authorization() -> Authorization {
        Authorization {
            name: "deny-80".into(),
            namespace: "default".into(),
            scope: Scope::Namespace as i32,
            action: Action::Deny as i32,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    }],
                }],
            }],
            dry_run: false,
        }
    }

    #[test]
    fn decodes_by_type_url() {
        let a = sample_address();
        let any = to_any(ADDRESS_TYPE_URL, &a);
        assert_eq!(decode_resource(&any).unwrap(), DecodedResource::Address(a));
        let p = sample_authorization();
        let any = to_any(AUTHORIZATION_TYPE_URL, &p);
        assert_eq!(
            decode_resource(&any).unwrap(),
            DecodedResource::Authorization(p)
        );
    }

    #[test]
    fn unknown_type_and_garbage_are_errors() {
        let any = Any {
            type_url: "type.googleapis.com/foo".into(),
            value: vec![],
        };
        assert!(matches!(
            decode_resource(&any),
            Err(XdsError::UnknownType(_))
        ));
        let any = Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(matches!(
            decode_resource(&any),
            Err(XdsError::Decode { .. })
        ));
    }

    /// Known bytes pin the field numbers: a workload uid is field 20 (tag 0xa2 0x01)
    /// inside Address.workload (field 1).
    #[test]
    fn field_numbers_match_the_istio_wire_format() {
        let a = Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: "u".into(),
                ..Default::default()
            })),
        };
        assert_eq!(a.encode_to_vec(), vec![0x0a, 0x04, 0xa2, 0x01, 0x01, b'u']);
        let p = Authorization {
            dry_run: true,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        // rules=5 { clauses=1 { matches=2 { destination_ports=9 packed [80] } } }, dry_run=6
        assert_eq!(
            p.encode_to_vec(),
            vec![0x2a, 0x07, 0x0a, 0x05, 0x12, 0x03, 0x4a, 0x01, 80, 0x30, 0x01]
        );
    }

    #[test]
    fn fuzz_function_survives_the_seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/xds_decode");
        let mut n = 0;
        let mut converted = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_decode(&data, |_| converted += 1);
            n += 1;
        }
        assert!(n >= 4, "seed corpus missing in {}", dir.display());
        assert!(converted > 0, "no seed decoded into a resource");
    }

    #[test]
    fn fuzz_function_survives_truncations_and_bit_flips() {
        let seeds = [
            to_any(ADDRESS_TYPE_URL, &sample_address()).value,
            to_any(AUTHORIZATION_TYPE_URL, &sample_authorization()).value,
        ];
        for seed in seeds {
            for cut in 0..seed.len() {
                fuzz_decode(&seed[..cut], |_| {});
            }
            for i in 0..seed.len() {
                for bit in 0..8 {
                    let mut m = seed.clone();
                    m[i] ^= 1 << bit;
                    fuzz_decode(&m, |_| {});
                }
            }
        }
    }
}
