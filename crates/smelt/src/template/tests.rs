use super::*;
use serde_json::json;

fn tpl(src: &str) -> ChatTemplate {
    ChatTemplate::new(
        src,
        SpecialTokens {
            bos_token: Some("<s>".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn render(src: &str, messages: &[Json]) -> anyhow::Result<String> {
    tpl(src).render(messages, &RenderOptions::default())
}

#[test]
fn raise_exception_message_is_the_error() {
    let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Only user roles are supported!') }}{% endif %}ok";
    let err = render(src, &[json!({"role": "system", "content": "x"})])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Only user roles are supported!"), "{err}");
    assert!(err.contains("raised an exception"), "{err}");
    assert_eq!(render(src, &[json!({"role": "user", "content": "x"})]).unwrap(), "ok");
}

#[test]
fn syntax_error_names_the_problem_and_line() {
    let err = ChatTemplate::new("{% for m in messages %}\n{{ m.content }}\n", SpecialTokens::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("chat template syntax error"), "{err}");
    assert!(err.contains("endfor") || err.contains("end of input"), "{err}");
    assert!(err.contains("line"), "{err}");
    let err = ChatTemplate::new("{{ messages[0] + }}", SpecialTokens::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("syntax error") && err.contains("line 1"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
}

#[test]
fn tojson_is_python_json_dumps() {
    let d = json!({"b": 1, "a": [1, 2.5, null, true], "s": "é \"q\"\n", "f": 1e20});
    let mut opts = RenderOptions::default();
    opts.extra.insert("d".into(), d);
    let t = |src: &str| tpl(src).render(&[], &opts).unwrap();
    assert_eq!(
        t("{{ d|tojson }}"),
        r#"{"b": 1, "a": [1, 2.5, null, true], "s": "é \"q\"\n", "f": 1e+20}"#
    );
    assert_eq!(t("{{ d.a|tojson(indent=2) }}"), "[\n  1,\n  2.5,\n  null,\n  true\n]");
    assert_eq!(
        t("{{ d|tojson(separators=(',', ':'), sort_keys=true) }}"),
        r#"{"a":[1,2.5,null,true],"b":1,"f":1e+20,"s":"é \"q\"\n"}"#
    );
    assert_eq!(t("{{ d.s|tojson(ensure_ascii=true) }}"), r#""\u00e9 \"q\"\n""#);
    assert_eq!(t("{{ {}|tojson(indent=2) }}{{ []|tojson }}"), "{}[]");
    // Unlike jinja2's own filter, transformers' does not HTML-escape.
    assert_eq!(t("{{ '<a&b>'|tojson }}"), r#""<a&b>""#);
    let err = tpl("{{ nope|tojson }}").render(&[], &opts).unwrap_err().to_string();
    assert!(err.contains("Undefined is not JSON serializable"), "{err}");
}

#[test]
fn missing_variables_behave_like_jinja2_undefined() {
    let msgs = [json!({"role": "user", "content": "hi"})];
    // Printing an undefined value gives nothing; it is falsy and not defined.
    assert_eq!(
        render("[{{ nope }}]{{ nope is defined }}{% if nope %}x{% endif %}", &msgs).unwrap(),
        "[]False"
    );
    // A missing key or attribute is undefined too; looking further into it is an error.
    assert_eq!(
        render("[{{ messages[0].name }}][{{ messages[0]['tool_calls'] }}]", &msgs).unwrap(),
        "[][]"
    );
    assert!(render("{{ messages[0].name.first }}", &msgs).is_err());
    assert!(render("{{ nope + 'x' }}", &msgs).is_err());
    // Unset special tokens are undefined, not empty strings.
    let t = ChatTemplate::new("{{ eos_token is defined }}{{ bos_token }}", SpecialTokens::default()).unwrap();
    assert_eq!(t.render(&msgs, &RenderOptions::default()).unwrap(), "False");
    // tools/documents are passed as None when not given, as transformers does.
    assert_eq!(
        render(
            "{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}",
            &msgs
        )
        .unwrap(),
        "TrueTrueFalse"
    );
    let err = render("{% for t in tools %}{% endfor %}", &msgs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'NoneType' object is not iterable"), "{err}");
}

#[test]
fn messages_are_prepared_like_transformers() {
    let msgs = [json!({"role": "assistant", "content": null, "reasoning": "why", "tool_calls": [{"id": "x"}]})];
    let src = "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}";
    assert_eq!(
        render(src, &msgs).unwrap(),
        "thinking=why;role=assistant;reasoning=why;tool_calls=[{'id': 'x'}];reasoning_content=why;"
    );
    let err = render("x", &[json!("hi")]).unwrap_err().to_string();
    assert_eq!(err, "chat message 0 must be a JSON object, got a string");
}

#[test]
fn strftime_now_uses_the_given_date_or_the_clock() {
    let t = tpl("{{ strftime_now('%d %b %Y') }}");
    let opts = RenderOptions {
        now: Some((2024, 7, 26)),
        ..Default::default()
    };
    assert_eq!(t.render(&[], &opts).unwrap(), "26 Jul 2024");
    let today = t.render(&[], &RenderOptions::default()).unwrap();
    assert_eq!(today.len(), 11, "{today}");
    let err = t
        .render(
            &[],
            &RenderOptions {
                now: Some((2024, 2, 30)),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("strftime_now"), "{err}");
}

#[test]
fn extra_kwargs_override_and_generation_blocks_render() {
    let mut opts = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    opts.extra.insert("bos_token".into(), json!("<B>"));
    opts.extra.insert("enable_thinking".into(), json!(false));
    let t = tpl("{{ bos_token }}{% generation %}{{ enable_thinking }}{% endgeneration %}{{ add_generation_prompt }}");
    assert_eq!(t.render(&[], &opts).unwrap(), "<B>FalseTrue");
}

#[test]
fn hostile_templates_fail_cleanly() {
    for src in ["{{ 'a' * 100000000000 }}", "{{ range(100000000000)|list|length }}", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"] {
        let start = std::time::Instant::now();
        let r = render(src, &[]);
        assert!(r.is_err(), "{src}: {:?}", r.map(|s| s.len()));
        assert!(start.elapsed().as_secs() < 5, "{src} took {:?}", start.elapsed());
    }
}

#[test]
fn chat_templates_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}
