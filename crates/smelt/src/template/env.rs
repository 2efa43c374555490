//! The minijinja environment that reproduces transformers' jinja2 sandbox.
//!
//! transformers (`utils/chat_template_utils.py`) renders with
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker,
//! loopcontrols])`, overrides the `tojson` filter with `json.dumps`, and adds the globals
//! `raise_exception`, `strftime_now`, `dict` and `namespace`. Templates also call Python's str/dict
//! methods, which jinja2 exposes and minijinja-contrib's `pycompat` emulates; the sandbox refuses the
//! mutating ones (`list.append`, `dict.update`, ...), and so do we (they are simply unknown here).

use std::fmt::{self, Write as _};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior, Value};

use super::pycompat::{self, Generator};
use super::pyjson::{self, JsonOptions};
use super::source::ITERABLE_FILTER;

/// The error `raise_exception(message)` raises: carried as the source of the minijinja error so that
/// `render` can report the template's own message.
#[derive(Debug)]
pub struct RaisedException(pub String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A fresh environment configured like transformers' (templates are added by the caller).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid"),
    );
    // jinja2's default `Undefined`: prints as "", is falsy, iterates as empty; looking an attribute up
    // on it is an error.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(pycompat::python_methods);
    env.set_formatter(format_value);
    env.add_filter("tojson", tojson);
    env.add_filter(ITERABLE_FILTER, checked_iterable);
    env.add_test("iterable", is_iterable);
    env.add_test("sequence", is_sequence);
    env.add_filter("center", |s: &str, width: Option<usize>| {
        pycompat::pad(s, "center", width.unwrap_or(80).min(1 << 20), ' ')
    });
    env.add_filter("wordcount", |s: &str| {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .count()
    });
    env.add_filter("truncate", truncate);
    env.add_filter("string", |v: Value| {
        if v.kind() == ValueKind::String {
            v
        } else {
            Value::from(py_str(&v))
        }
    });
    // jinja2's map/select/reject/selectattr/rejectattr return generators.
    env.add_filter("map", |state: &mut State, v: Value, args: Rest<ValueOrKwargs>| {
        minijinja::filters::map(state, v, args).map(Generator::value)
    });
    env.add_filter(
        "select",
        |state: &mut State, v: Value, test: Option<String>, args: Rest<ValueOrKwargs>| {
            minijinja::filters::select(state, v, test.map(Into::into), args).map(Generator::value)
        },
    );
    env.add_filter(
        "reject",
        |state: &mut State, v: Value, test: Option<String>, args: Rest<ValueOrKwargs>| {
            minijinja::filters::reject(state, v, test.map(Into::into), args).map(Generator::value)
        },
    );
    env.add_filter(
        "selectattr",
        |state: &mut State, v: Value, attr: String, test: Option<String>, args: Rest<ValueOrKwargs>| {
            minijinja::filters::selectattr(state, v, attr.into(), test.map(Into::into), args).map(Generator::value)
        },
    );
    env.add_filter(
        "rejectattr",
        |state: &mut State, v: Value, attr: String, test: Option<String>, args: Rest<ValueOrKwargs>| {
            minijinja::filters::rejectattr(state, v, attr.into(), test.map(Into::into), args).map(Generator::value)
        },
    );
    env.add_function("raise_exception", raise_exception);
    env
}

/// Printing: Python's `str()` of the value (minijinja's `Display` already follows Python: `None`,
/// `True`, `['a', 1]`, `{'k': 'v'}`). Under autoescaping, which only the `Markup + str` rewrite turns
/// on (see `source`), plain strings are escaped the way markupsafe does it.
fn format_value(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    if value.is_safe() {
        return write!(out, "{value}").map_err(Error::from);
    }
    let text = py_str(value);
    if matches!(state.auto_escape(), AutoEscape::None) {
        return out.write_str(&text).map_err(Error::from);
    }
    for c in text.chars() {
        match c {
            '&' => out.write_str("&amp;"),
            '<' => out.write_str("&lt;"),
            '>' => out.write_str("&gt;"),
            '"' => out.write_str("&#34;"),
            '\'' => out.write_str("&#39;"),
            c => out.write_char(c),
        }
        .map_err(Error::from)?;
    }
    Ok(())
}

/// Python's `str(value)`. minijinja's `Display` already follows Python (`None`, `True`, `['a', 1]`,
/// `{'k': 'v'}`) except for floats (`1e+20`, `1e-07`, `nan`), including floats inside containers.
fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            let mut out = String::new();
            py_repr(&mut out, value, 0);
            out
        }
        _ => value.to_string(),
    }
}

/// Python's `repr`, which is also `str` for numbers and containers.
fn py_repr(out: &mut String, value: &Value, depth: usize) {
    let float = || f64::try_from(value.clone()).ok().filter(|_| !value.is_integer());
    match value.kind() {
        ValueKind::Number => match float() {
            Some(f) if f.is_nan() => out.push_str("nan"),
            Some(f) if f.is_infinite() => out.push_str(if f > 0.0 { "inf" } else { "-inf" }),
            Some(f) => out.push_str(&pyjson::float_repr(f)),
            None => out.push_str(&value.to_string()),
        },
        ValueKind::Seq | ValueKind::Map
            if depth < 64 && value.downcast_object_ref::<minijinja::value::Kwargs>().is_none() =>
        {
            let is_map = value.kind() == ValueKind::Map;
            let (open, close) = match (is_map, value.is_tuple()) {
                (true, _) => ("{", "}"),
                (false, true) => ("(", ")"),
                (false, false) => ("[", "]"),
            };
            out.push_str(open);
            let mut n = 0;
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &item, depth + 1);
                if is_map {
                    out.push_str(": ");
                    py_repr(out, &value.get_item(&item).unwrap_or_default(), depth + 1);
                }
                n += 1;
            }
            if value.is_tuple() && n == 1 {
                out.push(',');
            }
            out.push_str(close);
        }
        _ => {
            let _ = write!(out, "{value:?}");
        }
    }
}

/// The iterable of every `{% for %}` (see `source`): iterating `None` fails as in Python.
fn checked_iterable(value: Value) -> Result<Value, Error> {
    if value.is_none() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "'NoneType' object is not iterable",
        ));
    }
    Ok(value)
}

/// jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`.
fn truncate(s: &str, args: Rest<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let arg = |i: usize, name: &str| -> Result<Option<Value>, Error> {
        Ok(match args.get(i) {
            Some(v) => Some(v.clone()),
            None => kwargs.get::<Option<Value>>(name)?,
        })
    };
    let int = |v: Option<Value>, default: usize| v.map_or(Ok(default), usize::try_from);
    let length = int(arg(0, "length")?, 255)?;
    let killwords = arg(1, "killwords")?.is_some_and(|v| v.is_true());
    let end = arg(2, "end")?.map_or("...".to_string(), |v| v.to_string());
    let leeway = int(arg(3, "leeway")?.filter(|v| !v.is_none()), 5)?;
    kwargs.assert_all_used()?;
    let chars: Vec<char> = s.chars().collect();
    let end_len = end.chars().count();
    if length < end_len {
        return Err(Error::new(ErrorKind::InvalidOperation, "expected length >= len(end)"));
    }
    if chars.len() <= length + leeway {
        return Ok(s.to_string());
    }
    let head: String = chars[..length - end_len].iter().collect();
    if killwords {
        return Ok(head + &end);
    }
    let kept = head.rsplit_once(' ').map_or(head.as_str(), |(before, _)| before);
    Ok(format!("{kept}{end}"))
}

/// jinja2's `is sequence`: `len()` and `[]` work (strings and dicts too; undefined as well).
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined | ValueKind::String | ValueKind::Bytes | ValueKind::Seq | ValueKind::Map
    )
}

/// jinja2's `is iterable`: whether Python's `iter()` accepts the value (strings and undefined do,
/// `None` and numbers do not).
fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
    )
}

fn raise_exception(message: Option<Value>) -> Result<Value, Error> {
    let message = message.map(|m| m.to_string()).unwrap_or_default();
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let opts = JsonOptions::from_args(&args, &kwargs)?;
    // The result is an ordinary (unsafe) string: there is no autoescaping in chat templates.
    Ok(Value::from(pyjson::dumps(value, &opts)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> Result<String, Error> {
        environment().render_str(src, ())
    }

    #[test]
    fn python_split_and_strip() {
        assert_eq!(render("{{ '  a  b c '.split() }}").unwrap(), "['a', 'b', 'c']");
        assert_eq!(render("{{ ' a b c'.split(none, 1) }}").unwrap(), "['a', 'b c']");
        assert_eq!(render("{{ 'a,b,,c'.split(',') }}").unwrap(), "['a', 'b', '', 'c']");
        assert_eq!(render("{{ 'a,b,c'.rsplit(',', 1) }}").unwrap(), "['a,b', 'c']");
        assert_eq!(render("{{ 'a b  c'.rsplit(none, 1) }}").unwrap(), "['a b', 'c']");
        assert_eq!(
            render("{{ '\\x1f x\\n'.strip() }}|{{ 'xxhixx'.strip('x') }}").unwrap(),
            "x|hi"
        );
    }

    #[test]
    fn mutating_methods_are_refused_like_the_sandbox() {
        assert!(render("{% set l = [] %}{{ l.append(1) }}").is_err());
        assert!(render("{% set d = {} %}{{ d.update({'a': 1}) }}").is_err());
    }
}
