//! Python's `json.dumps`, as transformers' `tojson` template filter calls it.
//!
//! transformers replaces jinja2's HTML-escaping `tojson` with
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, so templates see
//! Python's layout: `", "` and `": "` separators (`","` between items once `indent` is set), floats as
//! Python's `repr`, non-ASCII kept (or `\uXXXX`-escaped with `ensure_ascii=True`), and a `TypeError`
//! for values JSON cannot hold (undefined, generators).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

use super::pycompat::{DictView, Generator};

/// How to lay out the JSON: the arguments of `json.dumps` that templates pass.
#[derive(Debug, Clone)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: one line. `Some(s)`: one item per line, each level indented by `s`.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        JsonOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

impl JsonOptions {
    /// The filter's arguments, `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
    /// positionally or by keyword, as the Python function accepts them.
    pub fn from_args(args: &[Value], kwargs: &Kwargs) -> Result<JsonOptions, Error> {
        const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
        if args.len() > NAMES.len() {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                format!(
                    "tojson() takes at most {} positional arguments after the value",
                    NAMES.len()
                ),
            ));
        }
        let mut values: [Option<Value>; 4] = Default::default();
        for (slot, arg) in values.iter_mut().zip(args) {
            *slot = Some(arg.clone());
        }
        for (i, name) in NAMES.iter().enumerate() {
            if let Some(v) = kwargs.get::<Option<Value>>(name)? {
                if values[i].is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson() got multiple values for argument '{name}'"),
                    ));
                }
                values[i] = Some(v);
            }
        }
        kwargs.assert_all_used()?;
        let given = |i: usize| values[i].clone().filter(|v| !v.is_none() && !v.is_undefined());

        let mut opts = JsonOptions {
            ensure_ascii: values[0].as_ref().is_some_and(Value::is_true),
            ..Default::default()
        };
        if let Some(indent) = given(1) {
            opts.indent = Some(match indent.as_str() {
                Some(s) => s.to_string(),
                None => {
                    let n = i64::try_from(indent.clone()).map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson(): indent must be an int or a string, not {}", indent.kind()),
                        )
                    })?;
                    " ".repeat(n.clamp(0, 64) as usize)
                }
            });
            opts.item_separator = ",".into();
        }
        if let Some(seps) = given(2) {
            let items: Vec<Value> = seps.try_iter()?.collect();
            match (
                items.len(),
                items.first().and_then(Value::as_str),
                items.get(1).and_then(Value::as_str),
            ) {
                (2, Some(item), Some(key)) => {
                    opts.item_separator = item.to_string();
                    opts.key_separator = key.to_string();
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson(): separators must be a (item_separator, key_separator) pair of strings",
                    ))
                }
            }
        }
        opts.sort_keys = values[3].as_ref().is_some_and(Value::is_true);
        Ok(opts)
    }
}

/// `json.dumps(value, ...)`.
pub fn dumps(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, opts, 0)?;
    Ok(out)
}

/// The Python type of the template objects that are not plain lists.
fn python_type(value: &Value) -> Option<&'static str> {
    if value.downcast_object_ref::<Generator>().is_some() {
        Some("generator")
    } else {
        value.downcast_object_ref::<DictView>().map(DictView::type_name)
    }
}

fn not_serializable(value: &Value) -> Error {
    let ty = match value.kind() {
        ValueKind::Undefined => "Undefined",
        ValueKind::Bytes => "bytes",
        _ => python_type(value).unwrap_or("object"),
    };
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {ty} is not JSON serializable"),
    )
}

const MAX_DEPTH: usize = 512;

fn write_value(out: &mut String, value: &Value, opts: &JsonOptions, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson(): value nested too deeply",
        ));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, opts, depth, '[', ']', &items, |out, item, depth| {
                write_value(out, item, opts, depth)
            })?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push((key_string(&key)?, item));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, opts, depth, '{', '}', &pairs, |out, (key, item), depth| {
                write_str(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_separator);
                write_value(out, item, opts, depth)
            })?;
        }
        ValueKind::Iterable if python_type(value).is_none() => {
            // minijinja's lazy `list + list`; a list in Python.
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, opts, depth, '[', ']', &items, |out, item, depth| {
                write_value(out, item, opts, depth)
            })?;
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    opts: &JsonOptions,
    depth: usize,
    open: char,
    close: char,
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, item, depth + 1)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings (`1` -> `"1"`, `True` -> `"true"`, `None` -> `"null"`).
fn key_string(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            s
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    })
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        match i128::try_from(value.clone()) {
            Ok(i) => out.push_str(&i.to_string()),
            Err(_) => out.push_str(&value.to_string()),
        }
    } else {
        let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        out.push_str(&float_repr(f));
    }
}

/// Python's `float.__repr__` (shortest round-trip digits; scientific below 1e-4 and from 1e16), with
/// JSON's spellings of the non-finite values.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let body = if (-4..16).contains(&exp) {
        if exp >= n - 1 {
            format!("{digits}{}.0", "0".repeat((exp - (n - 1)) as usize))
        } else if exp >= 0 {
            let point = (exp + 1) as usize;
            format!("{}.{}", &digits[..point], &digits[point..])
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let frac = if n > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{}{frac}e{esign}{:02}", &digits[..1], exp.abs())
    };
    format!("{sign}{body}")
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        for (f, want) in [
            (22.0, "22.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (-1.25e-7, "-1.25e-07"),
            (1e300, "1e+300"),
            (0.0, "0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn strings_escape_like_python() {
        let mut s = String::new();
        write_str(&mut s, "a\"b\\c\n\u{1}\u{7f}é😀", false);
        assert_eq!(s, r#""a\"b\\c\n\u0001\u{7f}é😀""#.replace("\\u{7f}", "\u{7f}"));
        let mut s = String::new();
        write_str(&mut s, "é😀~", true);
        assert_eq!(s, r#""\u00e9\ud83d\ude00~""#);
    }
}
