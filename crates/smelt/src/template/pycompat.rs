//! Python behaviour of values that chat templates rely on and minijinja does not have by itself.
//!
//! * Methods of `str`, `dict` and `list` (`s.strip()`, `d.items()`, ...): minijinja-contrib's
//!   `pycompat` covers most; this adds the rest and fixes `strip`/`split` to Python's rules. The
//!   mutating ones (`list.append`, `dict.update`, ...) stay unknown, which matches transformers'
//!   immutable sandbox refusing them.
//! * Generators (what jinja2's `map`/`select`/... return) and dict views (`d.items()`): they iterate
//!   like lists, but `json.dumps` refuses them, and a generator has no length and is always true.

use std::fmt;
use std::sync::Arc;

use minijinja::value::{from_args, Enumerator, Object, ObjectRepr, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// The unknown-method callback: Python methods on strings, dicts and lists.
pub fn python_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(result) = str_method(s, method, args)? {
            return Ok(result);
        }
    } else if value.kind() == ValueKind::Map && !value.is_kwargs() {
        if let Some(kind) = match method {
            "items" => Some(DictViewKind::Items),
            "keys" => Some(DictViewKind::Keys),
            "values" => Some(DictViewKind::Values),
            _ => None,
        } {
            let () = from_args(args)?;
            return DictView::of(value, kind);
        }
    } else if value.kind() == ValueKind::Seq && method == "index" {
        let (needle,): (Value,) = from_args(args)?;
        return match value.try_iter()?.position(|v| v == needle) {
            Some(i) => Ok(Value::from(i)),
            None => Err(invalid(format!("{needle:?} is not in list"))),
        };
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// The `str` methods that pycompat lacks or gets wrong; `None` defers to pycompat.
fn str_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    let v = match method {
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<Value>,) = from_args(args)?;
            let set: Option<Vec<char>> = match chars.filter(|c| !c.is_none()) {
                Some(c) => Some(
                    c.as_str()
                        .ok_or_else(|| invalid("strip arg must be None or str"))?
                        .chars()
                        .collect(),
                ),
                None => None,
            };
            let stripped = |c: char| set.as_ref().map_or_else(|| is_py_space(c), |set| set.contains(&c));
            Value::from(match method {
                "strip" => s.trim_matches(stripped),
                "lstrip" => s.trim_start_matches(stripped),
                _ => s.trim_end_matches(stripped),
            })
        }
        "split" | "rsplit" => py_split(s, method == "rsplit", args)?,
        "swapcase" => {
            let () = from_args(args)?;
            Value::from(
                s.chars()
                    .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
                        if c.is_uppercase() {
                            Box::new(c.to_lowercase())
                        } else if c.is_lowercase() {
                            Box::new(c.to_uppercase())
                        } else {
                            Box::new(std::iter::once(c))
                        }
                    })
                    .collect::<String>(),
            )
        }
        "casefold" => {
            let () = from_args(args)?;
            Value::from(s.to_lowercase())
        }
        "index" | "rindex" => {
            let (needle,): (&str,) = from_args(args)?;
            let found = if method == "index" {
                s.find(needle)
            } else {
                s.rfind(needle)
            };
            match found {
                Some(byte) => Value::from(s[..byte].chars().count()),
                None => return Err(invalid("substring not found")),
            }
        }
        "removeprefix" => {
            let (prefix,): (&str,) = from_args(args)?;
            Value::from(s.strip_prefix(prefix).unwrap_or(s))
        }
        "removesuffix" => {
            let (suffix,): (&str,) = from_args(args)?;
            Value::from(s.strip_suffix(suffix).unwrap_or(s))
        }
        "partition" | "rpartition" => {
            let (sep,): (&str,) = from_args(args)?;
            if sep.is_empty() {
                return Err(invalid("empty separator"));
            }
            let found = if method == "partition" {
                s.find(sep)
            } else {
                s.rfind(sep)
            };
            let parts = match found {
                Some(i) => [&s[..i], sep, &s[i + sep.len()..]],
                None if method == "partition" => [s, "", ""],
                None => ["", "", s],
            };
            Value::from(minijinja::value::Tuple::from(parts.map(Value::from)))
        }
        "zfill" | "ljust" | "rjust" | "center" => {
            let (width, fill): (usize, Option<&str>) = from_args(args)?;
            let width = width.min(1 << 20);
            let fill = match fill.map(|f| f.chars().collect::<Vec<_>>()) {
                Some(f) if f.len() == 1 => f[0],
                Some(_) => return Err(invalid("the fill character must be exactly one character long")),
                None => ' ',
            };
            Value::from(pad(s, method, width, fill))
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

/// `str.zfill`, `ljust`, `rjust`, `center` (CPython's centring: the odd extra space goes left when
/// the padding is odd and the width is odd... as `(pad // 2) + (pad & width & 1)` on the left).
pub fn pad(s: &str, method: &str, width: usize, fill: char) -> String {
    let len = s.chars().count();
    if width <= len {
        return s.to_string();
    }
    let pad = width - len;
    let rep = |n: usize| std::iter::repeat_n(fill, n).collect::<String>();
    match method {
        "zfill" => match s.strip_prefix(['+', '-']) {
            Some(rest) => format!("{}{}{rest}", &s[..1], "0".repeat(pad)),
            None => format!("{}{s}", "0".repeat(pad)),
        },
        "ljust" => format!("{s}{}", rep(pad)),
        "rjust" => format!("{}{s}", rep(pad)),
        _ => {
            let left = pad / 2 + (pad & width & 1);
            format!("{}{s}{}", rep(left), rep(pad - left))
        }
    }
}

/// `str.isspace` for one character: Unicode whitespace plus the ASCII separators \x1c..\x1f.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.split(sep=None, maxsplit=-1)` and `str.rsplit`.
fn py_split(s: &str, reverse: bool, args: &[Value]) -> Result<Value, Error> {
    let (sep, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
    let max = maxsplit.filter(|m| *m >= 0).map(|m| m as usize);
    let sep = match sep.filter(|v| !v.is_none()) {
        Some(v) => {
            let sep = v
                .as_str()
                .ok_or_else(|| invalid(format!("must be str or None, not {}", v.kind())))?
                .to_string();
            if sep.is_empty() {
                return Err(invalid("empty separator"));
            }
            Some(sep)
        }
        None => None,
    };
    let parts: Vec<String> = match (sep, reverse) {
        (Some(sep), false) => match max {
            Some(n) => s.splitn(n + 1, sep.as_str()).map(String::from).collect(),
            None => s.split(sep.as_str()).map(String::from).collect(),
        },
        (Some(sep), true) => {
            let mut v: Vec<String> = match max {
                Some(n) => s.rsplitn(n + 1, sep.as_str()).map(String::from).collect(),
                None => s.rsplit(sep.as_str()).map(String::from).collect(),
            };
            v.reverse();
            v
        }
        (None, false) => split_whitespace(s, max),
        (None, true) => {
            let rev: String = s.chars().rev().collect();
            let mut v: Vec<String> = split_whitespace(&rev, max)
                .into_iter()
                .map(|p| p.chars().rev().collect())
                .collect();
            v.reverse();
            v
        }
    };
    Ok(Value::from_iter(parts))
}

/// Python's `str.split()` without a separator: runs of whitespace separate, leading whitespace is
/// dropped, and after `max` splits the rest (left-stripped) is the last item.
fn split_whitespace(s: &str, max: Option<usize>) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = s.trim_start_matches(is_py_space);
    while !rest.is_empty() {
        if max.is_some_and(|m| parts.len() == m) {
            parts.push(rest.to_string());
            break;
        }
        let end = rest.find(is_py_space).unwrap_or(rest.len());
        parts.push(rest[..end].to_string());
        rest = rest[end..].trim_start_matches(is_py_space);
    }
    parts
}

/// What jinja2's `map`/`select`/`reject`/`selectattr`/`rejectattr` return: a generator. It iterates
/// like the list, but is always true, has no length, and `json.dumps` refuses it.
#[derive(Debug)]
pub struct Generator(Vec<Value>);

impl Generator {
    pub fn value(items: Vec<Value>) -> Value {
        Value::from_object(Generator(items))
    }
}

/// An iterator that does not reveal its length (so `|length` fails, as `len()` does on a generator).
struct Unsized<I>(I);

impl<I: Iterator> Iterator for Unsized<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
}

impl Object for Generator {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Iter(Box::new(Unsized(self.0.clone().into_iter())))
    }

    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<generator object>")
    }
}

#[derive(Debug, Clone, Copy)]
enum DictViewKind {
    Items,
    Keys,
    Values,
}

/// `d.items()`, `d.keys()`, `d.values()`: iterable with a length; printed and refused by `json.dumps`
/// as Python does.
#[derive(Debug)]
pub struct DictView {
    kind: DictViewKind,
    items: Vec<Value>,
}

impl DictView {
    fn of(dict: &Value, kind: DictViewKind) -> Result<Value, Error> {
        let mut items = Vec::new();
        for key in dict.try_iter()? {
            items.push(match kind {
                DictViewKind::Keys => key,
                DictViewKind::Values => dict.get_item(&key)?,
                DictViewKind::Items => {
                    let value = dict.get_item(&key)?;
                    Value::from(minijinja::value::Tuple::from([key, value]))
                }
            });
        }
        Ok(Value::from_object(DictView { kind, items }))
    }

    /// Python's type name, as `json.dumps` reports it.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            DictViewKind::Items => "dict_items",
            DictViewKind::Keys => "dict_keys",
            DictViewKind::Values => "dict_values",
        }
    }
}

impl Object for DictView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.items.clone())
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", self.type_name(), Value::from(self.items.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_like_cpython() {
        assert_eq!(pad("x", "center", 5, ' '), "  x  ");
        assert_eq!(pad("ab", "center", 5, '*'), "**ab*");
        assert_eq!(pad("abc", "center", 6, ' '), " abc  ");
        assert_eq!(pad("-42", "zfill", 6, ' '), "-00042");
        assert_eq!(pad("long", "rjust", 2, ' '), "long");
    }
}
