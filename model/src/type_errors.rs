//! Every type error of one JSON value, not only the first.
//!
//! serde stops at the first field it cannot read, so an operator fixing a file met one type
//! error per run. [`deserialize_all`] reads the value, and after each error takes the field
//! that failed out of the value and reads it again, until it reads or nothing more can be
//! learnt. Each error keeps the path of the field in the value the caller gave (an array whose
//! element was taken out keeps its original indices), in the document path form of every other
//! problem (`operations[1].method`).
//!
//! Taking a field out can cause errors of its own: a required field is then missing, an enum
//! has no variant left. Those are the echo of an error already reported, so the reading stops
//! there without reporting them.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Beyond this many errors in one value the rest are not looked for: each round reads the whole
/// value again, and a hostile value could hold an error per element.
const MAX_ERRORS: usize = 50;

/// One step of a path in a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field that could not be read: its path (empty: the value itself) and serde's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError {
    pub path: String,
    pub message: String,
}

/// Reads `value` as a `T`, or lists every error found in it. `Some` only when the value read
/// as it was given (never a value with fields taken out).
pub fn deserialize_all<T: DeserializeOwned>(value: Value) -> Result<T, Vec<TypeError>> {
    let mut value = value;
    whole_numbers(&mut value);
    let mut errors: Vec<TypeError> = Vec::new();
    let mut taken = Taken::default();
    // Echo rounds report nothing but take a node each: bounded too.
    for _ in 0..MAX_ERRORS * 4 {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) if errors.is_empty() => return Ok(t),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let at = segments(e.path());
        let message = e.inner().to_string();
        let original = taken.original(&at);
        // The node to take out so that the next reading goes past this error, and whether the
        // error is the echo of one already reported.
        let (culprit, reported, echo) =
            if let Some(field) = quoted_after(&message, "unknown field `") {
                // The path names the field itself, or (for some deserialisers) its object.
                let key = Seg::Key(field.to_owned());
                let (mut c, mut o) = (at.clone(), original.clone());
                if at.last() != Some(&key) {
                    c.push(key.clone());
                    o.push(key);
                }
                (c, o, false)
            } else if let Some(field) = quoted_after(&message, "missing field `") {
                let mut missing = original.clone();
                missing.push(Seg::Key(field.to_owned()));
                // The object that lacks it goes, as a whole: serde reports a missing field once it
                // has read the object's other fields, so their errors are in already.
                let echo = taken.contains(&missing);
                (at, original, echo)
            } else {
                let echo = taken.below(&original);
                (at, original, echo)
            };
        if !echo {
            errors.push(TypeError {
                path: render(&reported),
                message,
            });
        }
        // The value itself cannot be taken out: nothing more to learn.
        if culprit.is_empty() || !take(&mut value, &culprit) {
            return Err(errors);
        }
        let original = taken.original(&culprit);
        taken.record(&culprit, original);
    }
    errors.push(TypeError {
        path: String::new(),
        message: format!("more than {MAX_ERRORS} type errors; fix these first"),
    });
    Err(errors)
}

/// Writes every whole number spelled as a float (`60.0`, `1e3`) as the integer it is. JSON
/// Schema counts `60.0` as the integer 60, and so do the management API's clients and YAML
/// files; serde would refuse it for an integer field.
pub fn whole_numbers(value: &mut Value) {
    // Every integer up to 2^64 is one float; past that no integer field can hold it anyway.
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                if (0.0..U64_END).contains(&f) {
                    *value = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *value = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// The text between `prefix` and the next backtick of `message`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The segments of a serde path, up to the first step serde could not name.
fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    let mut out = Vec::new();
    for s in path {
        match s {
            Segment::Seq { index } => out.push(Seg::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push(Seg::Key(key.clone()))
            }
            // Past an untracked step the path would be a guess; the enclosing field is not.
            Segment::Unknown => break,
        }
    }
    out
}

/// `operations[1].url-template`.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// Removes the node at `path`; false when there is none.
fn take(root: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = root;
    for s in parents {
        let next = match (s, node) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match (last, node) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// What was taken out, in the coordinates of the value as given.
#[derive(Default)]
struct Taken {
    paths: Vec<Vec<Seg>>,
    /// Array (original path) → original indices of its elements taken out, ascending.
    elements: HashMap<Vec<Seg>, Vec<usize>>,
}

impl Taken {
    /// A path in the value as it is now → the same node's path in the value as given.
    fn original(&self, current: &[Seg]) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::with_capacity(current.len());
        for s in current {
            match s {
                Seg::Index(i) => {
                    let mut j = *i;
                    if let Some(gone) = self.elements.get(&out) {
                        for g in gone {
                            if *g <= j {
                                j += 1;
                            }
                        }
                    }
                    out.push(Seg::Index(j));
                }
                Seg::Key(_) => out.push(s.clone()),
            }
        }
        out
    }

    fn record(&mut self, current: &[Seg], original: Vec<Seg>) {
        if let (Some(Seg::Index(_)), Some((Seg::Index(o), array))) =
            (current.last(), original.split_last())
        {
            let gone = self.elements.entry(array.to_vec()).or_default();
            let at = gone.partition_point(|g| g < o);
            gone.insert(at, *o);
        }
        self.paths.push(original);
    }

    fn contains(&self, path: &[Seg]) -> bool {
        self.paths.iter().any(|p| p == path)
    }

    /// Whether something at or below `path` was taken out: an error there is its echo.
    fn below(&self, path: &[Seg]) -> bool {
        self.paths.iter().any(|p| p.starts_with(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    #[allow(dead_code)]
    struct Inner {
        method: String,
        #[serde(default)]
        limit: u64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    #[allow(dead_code)]
    enum Mode {
        Fast,
        Slow(u32),
    }

    /// Sorted by path: the order fields are read in is the map's, which depends on features.
    fn errors(v: Value) -> Vec<(String, String)> {
        let mut got: Vec<(String, String)> = deserialize_all::<Outer>(v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect();
        got.sort();
        got
    }

    #[test]
    fn every_type_error_with_its_path() {
        let got = errors(json!({
            "name": "n",
            "count": "many",
            "bogus": 1,
            "flag": "yes",
            "items": [{"method": "GET", "limit": -1}, {"method": 5}, {"method": "GET", "extra": true}],
            "tags": [1, "ok", 2],
        }));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bogus",
                "count",
                "flag",
                "items[0].limit",
                "items[1].method",
                "items[2].extra",
                "tags[0]",
                "tags[2]",
            ],
            "{got:#?}"
        );
        assert!(got[0].1.starts_with("unknown field `bogus`"), "{got:?}");
        assert!(
            got[1].1.starts_with("invalid type: string \"many\""),
            "{got:?}"
        );
    }

    #[test]
    fn echoes_of_a_taken_field_are_not_reported() {
        // `name` is required: taking it out must not add "missing field `name`".
        let got = errors(json!({"name": 5, "count": "x"}));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "count");
        assert_eq!(got[1].0, "name");
        // A genuinely missing field is reported, and the object lacking it taken out so that
        // the rest is still read.
        let got = errors(json!({"name": "n", "inner": {"limit": 1}, "count": "x"}));
        assert_eq!(
            got.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["count", "inner"],
            "{got:?}"
        );
        assert!(got[1].1.contains("missing field `method`"), "{got:?}");
        let got = errors(json!({"count": 1}));
        assert_eq!(got, [("".into(), "missing field `name`".into())]);
        // An enum's payload: the enum's own "no variant" echo is not reported.
        let got = errors(json!({"name": "n", "mode": {"slow": "x"}}));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "mode.slow");
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_one_error() {
        let got = errors(json!("orders"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "");
        assert!(deserialize_all::<Outer>(json!({"name": "n"})).is_ok());
    }

    #[test]
    fn whole_floats_are_integers() {
        let v = json!({"name": "n", "count": 3.0, "items": [{"method": "GET", "limit": 1e3}]});
        let o = deserialize_all::<Outer>(v).unwrap();
        assert_eq!((o.count, o.items[0].limit), (3, 1000));
        let got = errors(json!({"name": "n", "count": 3.5}));
        assert_eq!(got[0].0, "count", "{got:?}");
        let got = errors(json!({"name": "n", "count": -1.0}));
        assert!(got[0].1.contains("-1"), "{got:?}");
    }

    #[test]
    fn a_hostile_value_is_cut_short() {
        let tags: Vec<Value> = (0..10_000).map(|i| json!(i)).collect();
        let got = deserialize_all::<Outer>(json!({"name": "n", "tags": tags})).unwrap_err();
        assert_eq!(got.len(), MAX_ERRORS + 1);
        assert!(
            got[MAX_ERRORS].message.contains("fix these first"),
            "{got:?}"
        );
        assert_eq!(
            got[MAX_ERRORS - 1].path,
            format!("tags[{}]", MAX_ERRORS - 1)
        );
    }
}
