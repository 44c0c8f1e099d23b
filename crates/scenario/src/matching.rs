//! What "the expected message" means for each kind of expectation, and the "why not" that a
//! failure report shows.

use serde_json::Value;

/// Where a JSON value differs from the expected subset: the path (`$.a.b[2]`) and what differs.
pub(crate) fn json_subset(expected: &Value, got: &Value) -> Result<(), String> {
    subset_at("$", expected, got)
}

fn subset_at(path: &str, expected: &Value, got: &Value) -> Result<(), String> {
    match (expected, got) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, want_value) in want {
                let at = format!("{path}.{key}");
                match have.get(key) {
                    Some(have_value) => subset_at(&at, want_value, have_value)?,
                    None => return Err(format!("{at} is missing (expected {want_value})")),
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => {
            if want.len() != have.len() {
                return Err(format!(
                    "{path}: expected an array of {} elements, got {}",
                    want.len(),
                    have.len()
                ));
            }
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                subset_at(&format!("{path}[{i}]"), w, h)?;
            }
            Ok(())
        }
        // 1 and 1.0 are the same number (TOML writes floats where JSON may write integers).
        (Value::Number(w), Value::Number(h)) if w.as_f64() == h.as_f64() => Ok(()),
        (w, h) if w == h => Ok(()),
        (w, h) => Err(format!("{path}: expected {w}, got {h}")),
    }
}

/// Where two byte strings first differ, for the report.
pub(crate) fn first_difference(expected: &[u8], got: &[u8]) -> String {
    match expected.iter().zip(got).position(|(a, b)| a != b) {
        Some(i) => format!(
            "they differ first at byte {i} (expected {:02x}, got {:02x})",
            expected[i], got[i]
        ),
        None => format!(
            "expected {} bytes, got {} bytes (equal up to byte {})",
            expected.len(),
            got.len(),
            expected.len().min(got.len())
        ),
    }
}

/// Where two texts first differ, as a character index, for long texts.
pub(crate) fn text_difference(expected: &str, got: &str) -> Option<String> {
    if expected.chars().count() < 40 && got.chars().count() < 40 {
        return None;
    }
    let i = expected
        .chars()
        .zip(got.chars())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| expected.chars().count().min(got.chars().count()));
    Some(format!("they differ first at character {i}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_subset_checks_only_the_keys_given() {
        let got = json!({"type": "tick", "n": 3, "extra": {"a": 1, "b": [1, 2]}});
        assert_eq!(json_subset(&json!({"type": "tick"}), &got), Ok(()));
        assert_eq!(json_subset(&json!({"n": 3.0}), &got), Ok(()));
        assert_eq!(json_subset(&json!({"extra": {"b": [1, 2]}}), &got), Ok(()));
        assert_eq!(
            json_subset(&json!({"type": "tock"}), &got),
            Err("$.type: expected \"tock\", got \"tick\"".into())
        );
        assert_eq!(
            json_subset(&json!({"extra": {"c": true}}), &got),
            Err("$.extra.c is missing (expected true)".into())
        );
        assert_eq!(
            json_subset(&json!({"extra": {"b": [1]}}), &got),
            Err("$.extra.b: expected an array of 1 elements, got 2".into())
        );
        assert_eq!(
            json_subset(&json!({"extra": {"b": [1, 5]}}), &got),
            Err("$.extra.b[1]: expected 5, got 2".into())
        );
    }

    #[test]
    fn byte_differences_name_the_offset() {
        assert_eq!(
            first_difference(&[1, 2, 3], &[1, 9, 3]),
            "they differ first at byte 1 (expected 02, got 09)"
        );
        assert_eq!(
            first_difference(&[1, 2], &[1, 2, 3]),
            "expected 2 bytes, got 3 bytes (equal up to byte 2)"
        );
    }
}
