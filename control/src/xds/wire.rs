//! Fields on the wire that this build does not know.
//!
//! prost skips fields it does not know when it decodes, which is right for most
//! messages and wrong for a policy: an ALLOW with a new restricting field would be
//! widened, and a DENY made only of a new field would never fire. So the bytes of an
//! `istio.security.Authorization` are walked against the field numbers of each of its
//! messages (the tables below); a field they do not list, at any depth, is reported
//! and the policy is treated as invalid. This runs when xDS resources are decoded,
//! never per connection.
//!
//! The tables are checked against the descriptors that `build.rs` compiles from the
//! same `.proto` files as the prost types (see the tests), so they cannot drift.

use prost::encoding::decode_varint;

/// A message type: its full name and the fields it defines.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The protobuf full name, e.g. `istio.security.Match`.
    pub(crate) name: &'static str,
    /// Every field of the message.
    pub(crate) fields: &'static [Field],
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) name: &'static str,
    /// `Some` for a message-typed field (walked in turn), `None` for a scalar, string,
    /// bytes or enum (skipped by wire type).
    pub(crate) message: Option<&'static Schema>,
}

const fn scalar(number: u32, name: &'static str) -> Field {
    Field {
        number,
        name,
        message: None,
    }
}

const fn message(number: u32, name: &'static str, schema: &'static Schema) -> Field {
    Field {
        number,
        name,
        message: Some(schema),
    }
}

/// `istio.security.Authorization`.
pub(crate) static AUTHORIZATION: Schema = Schema {
    name: "istio.security.Authorization",
    fields: &[
        scalar(1, "name"),
        scalar(2, "namespace"),
        scalar(3, "scope"),
        scalar(4, "action"),
        message(5, "rules", &RULE),
        scalar(6, "dry_run"),
    ],
};

static RULE: Schema = Schema {
    name: "istio.security.Rule",
    fields: &[message(1, "clauses", &CLAUSE)],
};

static CLAUSE: Schema = Schema {
    name: "istio.security.Clause",
    fields: &[message(2, "matches", &MATCH)],
};

static MATCH: Schema = Schema {
    name: "istio.security.Match",
    fields: &[
        message(1, "namespaces", &STRING_MATCH),
        message(2, "not_namespaces", &STRING_MATCH),
        message(3, "principals", &STRING_MATCH),
        message(4, "not_principals", &STRING_MATCH),
        message(5, "source_ips", &ADDRESS),
        message(6, "not_source_ips", &ADDRESS),
        message(7, "destination_ips", &ADDRESS),
        message(8, "not_destination_ips", &ADDRESS),
        scalar(9, "destination_ports"),
        scalar(10, "not_destination_ports"),
        message(11, "service_accounts", &SERVICE_ACCOUNT_MATCH),
        message(12, "not_service_accounts", &SERVICE_ACCOUNT_MATCH),
    ],
};

static ADDRESS: Schema = Schema {
    name: "istio.security.Address",
    fields: &[scalar(1, "address"), scalar(2, "length")],
};

static SERVICE_ACCOUNT_MATCH: Schema = Schema {
    name: "istio.security.ServiceAccountMatch",
    fields: &[scalar(1, "namespace"), scalar(2, "service_account")],
};

static STRING_MATCH: Schema = Schema {
    name: "istio.security.StringMatch",
    fields: &[
        scalar(1, "exact"),
        scalar(2, "prefix"),
        scalar(3, "suffix"),
        message(4, "presence", &EMPTY),
    ],
};

static EMPTY: Schema = Schema {
    name: "google.protobuf.Empty",
    fields: &[],
};

/// Why the bytes of a message do not pass the walk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field number the message does not define.
    #[error(
        "field number {number}{} is not defined by {message} in this zpath version \
         (istiod is newer than zpath?)",
        at_suffix(at)
    )]
    UnknownField {
        /// Path of the message holding it, e.g. `rules[0].clauses[0].matches[1]`
        /// (empty at the top).
        at: String,
        /// The message's full name.
        message: &'static str,
        /// The unknown field number.
        number: u64,
    },
    /// Not valid protobuf (prost's decoder refuses these bytes too).
    #[error("malformed protobuf{}: {what}", at_suffix(at))]
    Malformed {
        /// Path of the message where the walk stopped.
        at: String,
        /// What is wrong.
        what: &'static str,
    },
}

fn at_suffix(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" in `{at}`")
    }
}

impl WireError {
    /// The same error seen from the enclosing message: `name[index]` comes first.
    fn within(mut self, name: &str, index: u32) -> Self {
        let (WireError::UnknownField { at, .. } | WireError::Malformed { at, .. }) = &mut self;
        *at = if at.is_empty() {
            format!("{name}[{index}]")
        } else {
            format!("{name}[{index}].{at}")
        };
        self
    }
}

/// Checks that the encoded `istio.security.Authorization` in `bytes` carries only
/// fields this build defines, at every depth.
pub fn check_authorization(bytes: &[u8]) -> Result<(), WireError> {
    walk(&AUTHORIZATION, bytes)
}

/// The most fields any message of the tables has (for per-field occurrence counts).
const MAX_FIELDS: usize = 16;

/// Walks one message. Recursion is bounded by the depth of the tables (six), not by
/// the input.
fn walk(schema: &'static Schema, mut buf: &[u8]) -> Result<(), WireError> {
    let malformed = |what| WireError::Malformed {
        at: String::new(),
        what,
    };
    let mut seen = [0u32; MAX_FIELDS];
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).map_err(|_| malformed("a field key is cut short"))?;
        let number = key >> 3;
        let Some(i) = schema
            .fields
            .iter()
            .position(|f| u64::from(f.number) == number)
        else {
            return Err(WireError::UnknownField {
                at: String::new(),
                message: schema.name,
                number,
            });
        };
        let field = &schema.fields[i];
        let index = seen.get(i).copied().unwrap_or(0);
        if let Some(s) = seen.get_mut(i) {
            *s = s.saturating_add(1);
        }
        let wire_type = key & 7;
        match (field.message, wire_type) {
            (Some(inner), 2) => {
                let payload = length_delimited(&mut buf)
                    .ok_or_else(|| malformed("a length runs past the end"))?;
                walk(inner, payload).map_err(|e| e.within(field.name, index))?;
            }
            (Some(_), _) => return Err(malformed("a message field is not length-delimited")),
            (None, _) => skip(wire_type, &mut buf)
                .ok_or_else(|| malformed("a value is cut short or of an unknown wire type"))?,
        }
    }
    Ok(())
}

/// Takes a length-prefixed payload off the front of `buf`.
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (payload, rest) = buf.split_at(len);
    *buf = rest;
    Some(payload)
}

/// Skips one value of `wire_type`; `None` when it is cut short or the wire type is
/// one protobuf 3 does not use (groups, 6, 7).
fn skip(wire_type: u64, buf: &mut &[u8]) -> Option<()> {
    let fixed = |n: usize, buf: &mut &[u8]| {
        let rest = buf.get(n..)?;
        *buf = rest;
        Some(())
    };
    match wire_type {
        0 => decode_varint(buf).ok().map(|_| ()),
        1 => fixed(8, buf),
        2 => length_delimited(buf).map(|_| ()),
        5 => fixed(4, buf),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
