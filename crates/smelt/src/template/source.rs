//! Source rewrites where jinja2 (as transformers runs it) and minijinja differ in ways no setting covers.
//!
//! * `{% generation %}…{% endgeneration %}` comes from transformers' `AssistantTracker` extension and
//!   renders its body unchanged. jinja2 compiles the body into a call block, a scope of its own (a
//!   `{% set %}` inside does not leak out); minijinja's bare `{% with %}…{% endwith %}` is exactly that.
//! * `{% for x in EXPR %}`: jinja2 fails on iterating `None` ("'NoneType' object is not iterable"), e.g.
//!   over `tools` when none were given, while minijinja loops zero times. The iterable goes through the
//!   `__smelt_iterable` filter, which fails the same way.
//! * `{{ "a"|safe + b }}`: `|safe` makes a Python `Markup`, and `Markup + str` HTML-escapes the `str`
//!   even though autoescaping is off. minijinja applies that rule only under autoescaping, so such print
//!   tags (a `safe` filter and a `+`, and no `~`, whose meaning autoescaping would change) are evaluated
//!   inside `{% autoescape true %}` and printed as they are; the formatter escapes like markupsafe.
//!
//! Rewrites keep each tag's whitespace-control marks (`-`, `+`), and disable the block-tag trimming
//! (`trim_blocks`/`lstrip_blocks`) for block tags that replace a print tag, so the output is unchanged.

/// The filter name the `for` rewrite inserts.
pub const ITERABLE_FILTER: &str = "__smelt_iterable";

/// Applies all rewrites. Text, comments and `{% raw %}` sections are copied unchanged.
pub fn rewrite(source: &str) -> String {
    let mut out = String::with_capacity(source.len() + 64);
    let mut rest = source;
    // Up to the next tag or comment.
    while let Some(pos) = next_open(rest) {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if rest.starts_with("{#") {
            let end = rest.find("#}").map_or(rest.len(), |e| e + 2);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let is_block = rest.starts_with("{%");
        let Some(end) = tag_end(rest, if is_block { "%}" } else { "}}" }) else {
            break; // unterminated: leave it for the parser to report
        };
        let tag = &rest[..end];
        let (open, inner, close) = split_tag(tag);
        if is_block {
            match first_word(inner) {
                "raw" => {
                    let body_end = find_endraw(&rest[end..]).map_or(rest.len(), |e| end + e);
                    out.push_str(&rest[..body_end]);
                    rest = &rest[body_end..];
                    continue;
                }
                "generation" if inner.trim() == "generation" => out.push_str(&format!("{{%{open} with {close}%}}")),
                "endgeneration" if inner.trim() == "endgeneration" => {
                    out.push_str(&format!("{{%{open} endwith {close}%}}"))
                }
                "for" => match rewrite_for(inner) {
                    Some(new_inner) => out.push_str(&format!("{{%{open}{new_inner}{close}%}}")),
                    None => out.push_str(tag),
                },
                _ => out.push_str(tag),
            }
        } else if needs_markup_semantics(inner) {
            let open = if open == "-" { "-" } else { "+" };
            let close = if close == "-" { "-" } else { "+" };
            out.push_str(&format!(
                "{{%{open} autoescape true +%}}{{{{ ({})|safe }}}}{{%+ endautoescape {close}%}}",
                inner.trim()
            ));
        } else {
            out.push_str(tag);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Offset of the next `{{`, `{%` or `{#`.
fn next_open(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    (0..bytes.len().saturating_sub(1)).find(|&i| bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#'))
}

/// Offset just past the closing delimiter of the tag `s` starts with: the first `close` outside string
/// literals and brackets (jinja2's lexer balances brackets, so `{{ {'a': {}} }}` closes at the end).
fn tag_end(s: &str, close: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 2;
    let mut depth = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"') => i = skip_string(bytes, i, q),
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            _ => {
                let marked = matches!(bytes[i], b'-' | b'+');
                let at = if marked { i + 1 } else { i };
                if depth == 0 && bytes[at..].starts_with(close.as_bytes()) {
                    return Some(at + close.len());
                }
                i += 1;
            }
        }
    }
    None
}

/// Index just past the string literal opened by `quote` at `start`.
fn skip_string(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// `{%- inner +%}` -> (`-`, ` inner `, `+`).
fn split_tag(tag: &str) -> (&str, &str, &str) {
    let inner = &tag[2..tag.len() - 2];
    let (open, inner) = match inner.as_bytes().first() {
        Some(b'-' | b'+') => (&inner[..1], &inner[1..]),
        _ => ("", inner),
    };
    match inner.as_bytes().last() {
        Some(b'-' | b'+') => (open, &inner[..inner.len() - 1], &inner[inner.len() - 1..]),
        _ => (open, inner, ""),
    }
}

fn first_word(inner: &str) -> &str {
    let t = inner.trim_start();
    &t[..t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(t.len())]
}

/// A token of a jinja expression, as far as the rewrites need to know: words, strings, single
/// punctuation characters; with its byte range and bracket depth.
struct Token {
    start: usize,
    end: usize,
    depth: usize,
}

fn tokens(s: &str) -> Vec<Token> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut depth) = (0, 0usize);
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if b == b'\'' || b == b'"' {
            i = skip_string(bytes, i, b);
        } else if b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80 {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80) {
                i += 1;
            }
        } else {
            if matches!(b, b')' | b']' | b'}') {
                depth = depth.saturating_sub(1);
            }
            i += 1;
        }
        out.push(Token { start, end: i, depth });
        if matches!(b, b'(' | b'[' | b'{') {
            depth += 1;
        }
    }
    out
}

/// ` for a, b in EXPR if COND recursive ` -> ` for a, b in (EXPR)|__smelt_iterable if COND recursive `.
/// jinja2 parses the iterable without conditional expressions, so it ends at a top-level `if` or
/// `recursive`.
fn rewrite_for(inner: &str) -> Option<String> {
    let toks = tokens(inner);
    let word = |t: &Token| &inner[t.start..t.end];
    let in_at = toks.iter().position(|t| t.depth == 0 && word(t) == "in")?;
    let expr_start = toks.get(in_at + 1)?.start;
    let expr_end = toks[in_at + 1..]
        .iter()
        .find(|t| t.depth == 0 && matches!(word(t), "if" | "recursive"))
        .map_or(inner.trim_end().len(), |t| t.start);
    let expr = inner[expr_start..expr_end].trim_end();
    if expr.is_empty() {
        return None;
    }
    // What followed the expression, from the whitespace after it.
    let rest = &inner[expr_start + expr.len()..];
    Some(format!("{}({expr})|{ITERABLE_FILTER}{rest}", &inner[..expr_start]))
}

/// A print expression whose `+` may meet a `Markup` made by `|safe`.
fn needs_markup_semantics(inner: &str) -> bool {
    let toks = tokens(inner);
    let word = |i: usize| toks.get(i).map_or("", |t: &Token| &inner[t.start..t.end]);
    let has_safe = (0..toks.len()).any(|i| word(i) == "|" && word(i + 1) == "safe");
    let has_plus = (0..toks.len()).any(|i| word(i) == "+");
    let has_tilde = (0..toks.len()).any(|i| word(i) == "~");
    has_safe && has_plus && !has_tilde
}

/// Offset just past the `{% endraw %}` tag in `s`.
fn find_endraw(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find("{%") {
        let start = from + p;
        let end = start + tag_end(&s[start..], "%}")?;
        if split_tag(&s[start..end]).1.trim() == "endraw" {
            return Some(end);
        }
        from = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_becomes_a_scope_keeping_whitespace_marks() {
        assert_eq!(
            rewrite("a{%- generation -%}b{% endgeneration %}c{%generation+%}d{%+ endgeneration%}"),
            "a{%- with -%}b{% endwith %}c{% with +%}d{%+ endwith %}"
        );
    }

    #[test]
    fn for_iterables_are_checked() {
        assert_eq!(
            rewrite("{% for m in messages %}"),
            "{% for m in (messages)|__smelt_iterable %}"
        );
        assert_eq!(
            rewrite("{%- for k, v in d.items() if k != 'x' -%}"),
            "{%- for k, v in (d.items())|__smelt_iterable if k != 'x' -%}"
        );
        assert_eq!(
            rewrite("{% for x in f(a if b else c) recursive %}"),
            "{% for x in (f(a if b else c))|__smelt_iterable recursive %}"
        );
        assert_eq!(
            rewrite("{% for x in ['%}', 'in'] %}"),
            "{% for x in (['%}', 'in'])|__smelt_iterable %}"
        );
    }

    #[test]
    fn markup_plus_is_evaluated_under_autoescape() {
        assert_eq!(
            rewrite("{{- 'a'|safe + b -}}\n{{ 'a'|safe ~ b }}{{ a + b }}"),
            "{%- autoescape true +%}{{ ('a'|safe + b)|safe }}{%+ endautoescape -%}\n{{ 'a'|safe ~ b }}{{ a + b }}"
        );
    }

    #[test]
    fn leaves_other_text_alone() {
        let src =
            "{# {% generation %} #}{% raw %}{% for x in y %}{% endraw %}{{ {'a': {'b': 1}} }}{% if a %}{% endif %}";
        assert_eq!(rewrite(src), src);
        assert_eq!(rewrite("{% if x"), "{% if x");
        assert_eq!(rewrite("{ {a} }"), "{ {a} }");
    }
}
