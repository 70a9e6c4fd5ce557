//! The `.xml` answers of the Mydex routes: the JSON structure mirrored under `<response>`,
//! each object key an element (dataset, `instance_N`, field; a row id `N` becomes
//! `<row id="N">`), each scalar its text.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Renders `value` as `<response>...</response>`.
pub(super) fn render(value: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response>");
    write_children(&mut out, value);
    out.push_str("</response>\n");
    out
}

fn write_children(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                // A transactional row, keyed by its id.
                if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
                    out.push_str("<row id=\"");
                    out.push_str(key);
                    out.push_str("\">");
                    write_children(out, v);
                    out.push_str("</row>");
                    continue;
                }
                // Keys are dataset and field names (validated snake case) or fixed words;
                // anything else could not be an element name and is skipped, not escaped.
                if !is_xml_name(key) {
                    continue;
                }
                out.push('<');
                out.push_str(key);
                out.push('>');
                write_children(out, v);
                out.push_str("</");
                out.push_str(key);
                out.push('>');
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str("<item>");
                write_children(out, item);
                out.push_str("</item>");
            }
        }
        Value::String(s) => out.push_str(&quick_xml::escape::escape(s.as_str())),
        Value::Null => {}
        other => out.push_str(&other.to_string()),
    }
}

fn is_xml_name(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !s.to_ascii_lowercase().starts_with("xml")
}

/// An XML answer.
pub(super) fn response(value: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/xml; charset=utf-8")], render(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_json_and_escapes_text() {
        let v = serde_json::json!({"ds_home": {"instance_0": {"field_home_street": {"value": "1 <High> & Co", "access": {"r": {"a": 1, "s": "A"}}}}}});
        assert_eq!(
            render(&v),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response><ds_home><instance_0><field_home_street>\
             <value>1 &lt;High&gt; &amp; Co</value><access><r><a>1</a><s>A</s></r></access>\
             </field_home_street></instance_0></ds_home></response>\n"
        );
        let rows = serde_json::json!({"7": {"id": "7", "ds_id": "7", "field_x": null}});
        assert_eq!(
            render(&rows),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<response><row id=\"7\"><id>7</id><ds_id>7</ds_id><field_x></field_x></row></response>\n"
        );
    }
}
