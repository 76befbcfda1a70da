//! Doubles in JSON as the protobuf JSON mapping writes them, and so MLflow's API: finite values
//! as numbers (serde_json's shortest form that reads back to the same bits, -0.0 included), NaN
//! and the infinities as the strings "NaN", "Infinity" and "-Infinity", which a JSON number
//! cannot hold. The registry's JSON (the dashboards' API, `albef runs show --format json`) and
//! the MLflow API both write metric values this way, so that every stored value reads back exact.
use serde::Serializer;
use serde_json::Value;

/// The JSON form of a double.
pub fn to_value(v: f64) -> Value {
    match special_name(v) {
        Some(name) => Value::from(name),
        None => Value::from(v),
    }
}

/// `#[serde(serialize_with = "crate::json_float::serialize")]` for an `f64` field.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match special_name(*v) {
        Some(name) => s.serialize_str(name),
        None => s.serialize_f64(*v),
    }
}

/// Reads the raw text of a JSON value: a number (rounded correctly, which serde_json's default
/// number parser does not promise), one of the three strings, or a number in a string (the
/// protobuf JSON mapping allows it). `None` for anything else.
pub fn parse(raw: &str) -> Option<f64> {
    let raw = raw.trim();
    if !raw.starts_with('"') {
        return number(raw);
    }
    match serde_json::from_str::<String>(raw).ok()?.as_str() {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        text => number(text),
    }
}

/// A JSON number's grammar is a subset of Rust's, whose parse is correctly rounded; the words
/// Rust also accepts (inf, nan) are not JSON numbers.
fn number(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit());
    text.parse().ok().filter(|_| numeric)
}

fn special_name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_double_round_trips_through_its_json_form() {
        for v in [
            0.1 + 0.2,
            -0.0,
            0.0,
            1e-320,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            let text = to_value(v).to_string();
            let back = parse(&text).unwrap_or_else(|| panic!("{text} does not parse"));
            assert!(
                back.to_bits() == v.to_bits() || (v.is_nan() && back.is_nan()),
                "{v:?} -> {text} -> {back:?}"
            );
        }
    }

    #[test]
    fn only_numbers_and_the_three_names_parse() {
        assert_eq!(parse("0.30000000000000004"), Some(0.1 + 0.2));
        assert_eq!(parse("1E3"), Some(1000.0));
        assert_eq!(parse("\"1.5\""), Some(1.5));
        for bad in ["inf", "nan", "\"nan\"", "\"-inf\"", "true", "null", "[1]"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
