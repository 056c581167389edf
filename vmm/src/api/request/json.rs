//! JSON bodies → typed requests, with errors that name the field.
//!
//! serde_json reports a wrong type as "invalid type: string "2", expected u8
//! at line 1 column 20", which leaves a user guessing which field. So the
//! body is also replayed through a `Value` walk that prefixes each error with
//! its path (`rate_limiter.ops.size`), and that insists on JSON objects where
//! a struct is expected (serde also takes `[1, 64]` as a struct).

use serde::de::value::StrDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, Unexpected, Visitor,
};
use serde_json::{Map, Value};

use crate::api::ApiResponse;

/// Firecracker's prefix for every body error (`RequestError::SerdeJson`).
const PREFIX: &str = "An error occurred when deserializing the json body of a request";

pub(crate) fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    // Both must accept: the direct parse is serde's own (and refuses
    // duplicate fields, which a `Value` silently merges); the walk refuses
    // what serde would let through (a JSON array where an object is
    // expected) and names the field when either refuses.
    let direct = serde_json::from_slice::<T>(body);
    let walked = match serde_json::from_slice::<Value>(body) {
        Ok(v) => T::deserialize(Tracked { path: "", value: v }).map(|_| ()),
        // Not JSON at all: serde's syntax error, with its position, says it.
        Err(_) => Ok(()),
    };
    match (direct, walked) {
        (Ok(v), Ok(())) => Ok(v),
        (_, Err(e)) | (Err(e), Ok(())) => Err(bad_body(e)),
    }
}

/// A body error in Firecracker's words, for checks made after serde's.
pub(crate) fn bad_body(e: impl std::fmt::Display) -> ApiResponse {
    ApiResponse::bad_request(format!("{PREFIX}: {e}."))
}

/// A JSON value that knows where it sits in the body.
struct Tracked<'p> {
    path: &'p str,
    value: Value,
}

impl<'de> Deserializer<'de> for Tracked<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(map) => visitor.visit_map(Fields::new(self.path, map)),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Object(map) => visitor.visit_map(Fields::new(self.path, map)),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a JSON object",
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple tuple_struct
        map identifier ignored_any
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// The fields of one object, each value wrapped with its path.
struct Fields<'p> {
    parent: &'p str,
    iter: serde_json::map::IntoIter,
    pending: Option<(String, Value)>,
}

impl<'p> Fields<'p> {
    fn new(parent: &'p str, map: Map<String, Value>) -> Self {
        Self {
            parent,
            iter: map.into_iter(),
            pending: None,
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        let k = seed.deserialize(StrDeserializer::<serde_json::Error>::new(&key))?;
        self.pending = Some((key, value));
        Ok(Some(k))
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let Some((key, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        let path = if self.parent.is_empty() {
            key
        } else {
            format!("{}.{key}", self.parent)
        };
        let nested_object = value.is_object();
        seed.deserialize(Tracked { path: &path, value })
            .map_err(|e| {
                // An object's own errors already carry their deeper path.
                if nested_object && e.to_string().starts_with("field `") {
                    e
                } else {
                    de::Error::custom(format!("field `{path}`: {e}"))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        size: u64,
        burst: Option<u64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        count: u8,
        #[serde(default)]
        flag: bool,
        inner: Option<Inner>,
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Mode {
        A,
        #[serde(rename = "2M")]
        B,
    }

    fn err(body: &str) -> String {
        from_json::<Outer>(body.as_bytes())
            .unwrap_err()
            .fault_message()
            .unwrap()
            .to_string()
    }

    #[test]
    fn accepts_what_serde_accepts() {
        let v: Outer =
            from_json(br#"{"count": 2, "inner": {"size": 1, "burst": null}, "mode": "2M"}"#)
                .unwrap();
        assert_eq!(
            v,
            Outer {
                count: 2,
                flag: false,
                inner: Some(Inner {
                    size: 1,
                    burst: None
                }),
                mode: Some(Mode::B),
            }
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = err(r#"{"count": "2"}"#);
        assert!(e.starts_with(PREFIX), "{e}");
        assert!(e.contains("field `count`"), "{e}");
        assert!(e.contains("expected u8"), "{e}");
        let e = err(r#"{"count": 300}"#);
        assert!(e.contains("field `count`") && e.contains("300"), "{e}");
        let e = err(r#"{"count": 1, "flag": 1}"#);
        assert!(e.contains("field `flag`"), "{e}");
        let e = err(r#"{"count": 1, "inner": {"size": -1}}"#);
        assert!(e.contains("field `inner.size`"), "{e}");
        let e = err(r#"{"count": 1, "inner": {"size": 1, "burst": "x"}}"#);
        assert!(e.contains("field `inner.burst`"), "{e}");
        let e = err(r#"{"count": 1, "mode": "C"}"#);
        assert!(
            e.contains("field `mode`") && e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_missing_fields() {
        let e = err(r#"{"count": 1, "bogus": 1}"#);
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = err(r#"{"count": 1, "inner": {"size": 1, "bogus": 1}}"#);
        assert!(
            e.contains("field `inner`") && e.contains("unknown field `bogus`"),
            "{e}"
        );
        let e = err(r#"{}"#);
        assert!(e.contains("missing field `count`"), "{e}");
        let e = err(r#"{"count": 1, "inner": {}}"#);
        assert!(e.contains("missing field `size`"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_serde_positions() {
        let e = err(r#"{"count": 1,"#);
        assert!(e.contains("line 1"), "{e}");
        let e = err("");
        assert!(e.contains("EOF"), "{e}");
    }

    #[test]
    fn arrays_are_not_structs() {
        let e = err(r#"[1]"#);
        assert!(
            e.contains("invalid type: sequence, expected a JSON object"),
            "{e}"
        );
        let e = err(r#"{"count": 1, "inner": [1, null]}"#);
        assert!(e.contains("field `inner`") && e.contains("sequence"), "{e}");
        let e = err("null");
        assert!(e.contains("expected a JSON object"), "{e}");
    }

    #[test]
    fn duplicate_fields_still_refused() {
        // The Value walk would let the last one win; the direct parse refuses.
        let e = err(r#"{"count": 1, "count": 2}"#);
        assert!(e.contains("duplicate field `count`"), "{e}");
    }
}
