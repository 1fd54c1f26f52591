//! Errors that teach: when the framework refuses a request's body or parameters, the answer
//! names the field and says what it allows, from the same spec the docs are made of
//! (`driver must be one of cuda, rocm, cpu, any`), instead of the parser's own words.
//!
//! [`Operations`] holds each documented operation's parameters and body schema; [`explain`]
//! turns a refusal into a message for the 400 `bad_request` answer. A refusal it cannot explain
//! keeps the parser's message, cleaned of type names.

use poem_openapi::error::{ParseParamError, ParsePathError, ParseRequestPayloadError};
use serde_json::{Map, Value};

/// One documented operation: its path as segments (`{id}` matching any one) and its definition.
struct Operation {
    segments: Vec<String>,
    method: String,
    op: Value,
}

/// Every documented operation (each admin path under both prefixes), for explaining refusals.
pub struct Operations {
    spec: std::sync::Arc<Value>,
    ops: Vec<Operation>,
}

impl Operations {
    /// From the served spec.
    pub fn new(spec: std::sync::Arc<Value>) -> Self {
        let mut ops = Vec::new();
        for (template, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                for path in std::iter::once(template.clone()).chain(crate::docs::alias_of(template))
                {
                    ops.push(Operation {
                        segments: path.split('/').map(str::to_owned).collect(),
                        method: method.to_uppercase(),
                        op: op.clone(),
                    });
                }
            }
        }
        Self { spec, ops }
    }

    fn find(&self, method: &str, path: &str) -> Option<(&Operation, Vec<(String, String)>)> {
        let segments: Vec<&str> = path.split('/').collect();
        self.ops.iter().find_map(|o| {
            if o.method != method || o.segments.len() != segments.len() {
                return None;
            }
            let mut vars = Vec::new();
            for (t, s) in o.segments.iter().zip(&segments) {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    vars.push((name.to_owned(), (*s).to_owned()));
                } else if t != s {
                    return None;
                }
            }
            Some((o, vars))
        })
    }

    /// The message for a refusal of the framework's, if it is one of a body or a parameter.
    pub fn explain(
        &self,
        err: &poem::Error,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> Option<String> {
        let found = self.find(method, path);
        if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
            let explained = found.and_then(|(o, _)| {
                let schema = body_schema(&o.op, content_type)?;
                explain_body(&self.spec, schema, content_type, body?)
            });
            return Some(explained.unwrap_or_else(|| clean(&e.reason)));
        }
        if let Some(e) = err.downcast_ref::<ParseParamError>() {
            let explained = found.and_then(|(o, _)| {
                let p = param(&o.op, e.name)?;
                let value = query_value(query, e.name);
                Some(explain_param(&self.spec, p, value.as_deref()))
            });
            return Some(
                explained
                    .unwrap_or_else(|| format!("parameter `{}`: {}", e.name, clean(&e.reason))),
            );
        }
        if let Some(e) = err.downcast_ref::<ParsePathError>() {
            // The framework may number path parameters; find the one whose value does not fit.
            let explained = found.and_then(|(o, vars)| {
                vars.iter().find_map(|(name, value)| {
                    let p = param(&o.op, name)?;
                    let schema = resolve(&self.spec, &p["schema"]);
                    check(&self.spec, schema, &Value::String(value.clone()), true)
                        .err()
                        .map(|_| explain_param(&self.spec, p, Some(value)))
                })
            });
            return Some(
                explained.unwrap_or_else(|| {
                    format!("path parameter `{}`: {}", e.name, clean(&e.reason))
                }),
            );
        }
        None
    }
}

/// The parser's words without the framework's type names.
fn clean(reason: &str) -> String {
    let mut s = reason.to_owned();
    while let (Some(start), Some(end)) = (s.find(" (occurred while parsing"), s.find(")")) {
        if end < start {
            break;
        }
        s.replace_range(start..=end, "");
    }
    s.trim_start_matches("parse request payload error: ")
        .replace(
            "Expect a valid enumeration value",
            "not one of the allowed values",
        )
}

fn param<'a>(op: &'a Value, name: &str) -> Option<&'a Value> {
    op["parameters"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn body_schema<'a>(op: &'a Value, content_type: &str) -> Option<&'a Value> {
    let content = op.pointer("/requestBody/content")?.as_object()?;
    let essence = content_type.split(';').next().unwrap_or("").trim();
    content
        .iter()
        .find(|(ct, _)| ct.split(';').next().unwrap_or("").trim() == essence)
        .or_else(|| content.iter().next())
        .and_then(|(_, m)| m.get("schema"))
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r
                .trim_start_matches("#/components/schemas/")
                .replace('/', "~1");
            match spec.pointer(&format!("/components/schemas/{name}")) {
                Some(t) => s = t,
                None => return s,
            }
        } else if let Some(first) = s
            .get("allOf")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 1)
            .and_then(|a| a.first())
        {
            s = first;
        } else {
            return s;
        }
    }
    s
}

fn number_range(schema: &Value) -> String {
    let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
    let show = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        }
    };
    let above = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) if above => format!(" above {} and at most {}", show(lo), show(hi)),
        (Some(lo), None) if above => format!(" above {}", show(lo)),
        (Some(lo), Some(hi)) => format!(" from {} to {}", show(lo), show(hi)),
        (Some(lo), None) => format!(" of at least {}", show(lo)),
        (None, Some(hi)) => format!(" of at most {}", show(hi)),
        (None, None) => String::new(),
    }
}

/// What a schema allows, in words: `one of cuda, rocm, cpu, any`, `an integer from 1 to 200`.
pub fn describe(spec: &Value, schema: &Value) -> String {
    let s = resolve(spec, schema);
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        return format!("one of {}", names.join(", "));
    }
    match s.get("type").and_then(Value::as_str) {
        Some("integer") => {
            let unsigned = s
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with('u'));
            if unsigned && s.get("minimum").is_none() {
                format!(
                    "a whole number of at least 0{}",
                    number_range(s).replace(" of at most", ", at most")
                )
            } else {
                format!("an integer{}", number_range(s))
            }
        }
        Some("number") => format!("a number{}", number_range(s)),
        Some("boolean") => "true or false".into(),
        Some("array") => format!("a list of {}", describe(spec, &s["items"])),
        Some("object") => "an object".into(),
        Some("string") => {
            let lo = s.get("minLength").and_then(Value::as_u64);
            let hi = s.get("maxLength").and_then(Value::as_u64);
            let text: String = match (lo, hi) {
                (Some(lo), Some(hi)) => format!("a string of {lo} to {hi} characters"),
                (None, Some(hi)) => format!("a string of at most {hi} characters"),
                (Some(lo), None) if lo > 0 => format!("a string of at least {lo} characters"),
                _ => "a string".into(),
            };
            match s.get("pattern").and_then(Value::as_str) {
                Some(p) => format!("{text} matching `{p}`"),
                None => text,
            }
        }
        _ => "a valid value".into(),
    }
}

/// Whether `value` fits `schema`; `Err(field path)` names the first place it does not.
/// `text` says the value came as text (a form field, a query or path parameter), so numbers and
/// booleans are read from it.
fn check(spec: &Value, schema: &Value, value: &Value, text: bool) -> Result<(), String> {
    let s = resolve(spec, schema);
    if value.is_null() {
        return if s.get("nullable").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(String::new())
        };
    }
    let value = match (text, value.as_str(), s.get("type").and_then(Value::as_str)) {
        (true, Some(t), Some("integer")) => match t.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Err(String::new()),
        },
        (true, Some(t), Some("number")) => match t.parse::<f64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Err(String::new()),
        },
        (true, Some(t), Some("boolean")) => match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(String::new()),
        },
        _ => value.clone(),
    };
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return if values.contains(&value) {
            Ok(())
        } else {
            Err(String::new())
        };
    }
    let above = s.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
    let in_range = |x: f64| {
        s.get("minimum")
            .and_then(Value::as_f64)
            .is_none_or(|lo| x > lo || (!above && x == lo))
            && s.get("maximum")
                .and_then(Value::as_f64)
                .is_none_or(|hi| x <= hi)
    };
    let fits = match s.get("type").and_then(Value::as_str) {
        Some("integer") => {
            let unsigned = s
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with('u'));
            (value.is_i64() || value.is_u64())
                && value.as_f64().is_some_and(in_range)
                && !(unsigned && value.as_i64().is_some_and(|n| n < 0))
        }
        Some("number") => value.as_f64().is_some_and(in_range),
        Some("boolean") => value.is_boolean(),
        Some("string") => value.as_str().is_some_and(|t| {
            let n = t.chars().count() as u64;
            s.get("minLength")
                .and_then(Value::as_u64)
                .is_none_or(|lo| n >= lo)
                && s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_none_or(|hi| n <= hi)
                && s.get("pattern")
                    .and_then(Value::as_str)
                    .is_none_or(|p| regex::Regex::new(p).is_ok_and(|r| r.is_match(t)))
        }),
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(spec, &s["items"], item, false).map_err(|f| join(&format!("{i}"), &f))?;
                }
                true
            }
            None => false,
        },
        Some("object") => match value.as_object() {
            Some(obj) => {
                check_object(spec, s, obj)?;
                true
            }
            None => false,
        },
        _ => true,
    };
    if fits {
        Ok(())
    } else {
        Err(String::new())
    }
}

fn join(parent: &str, child: &str) -> String {
    if child.is_empty() {
        parent.to_owned()
    } else if child.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{parent}[{child}]")
    } else {
        format!("{parent}.{child}")
    }
}

fn check_object(spec: &Value, s: &Value, obj: &Map<String, Value>) -> Result<(), String> {
    let props = s.get("properties").and_then(Value::as_object);
    for name in s["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if obj.get(name).is_none_or(Value::is_null) {
            return Err(name.to_owned());
        }
    }
    for (name, value) in obj {
        if let Some(prop) = props.and_then(|p| p.get(name)) {
            check(spec, prop, value, false).map_err(|f| join(name, &f))?;
        }
    }
    Ok(())
}

/// The schema of the field at `path` (`a.b`, `a[0]`) of `schema`.
fn field_schema<'a>(spec: &'a Value, schema: &'a Value, path: &str) -> &'a Value {
    let mut s = resolve(spec, schema);
    for part in path.split(['.', '[']).filter(|p| !p.is_empty()) {
        s = if part.ends_with(']') {
            resolve(spec, &s["items"])
        } else {
            match s.pointer(&format!("/properties/{part}")) {
                Some(p) => resolve(spec, p),
                None => return s,
            }
        };
    }
    s
}

fn explain_body(spec: &Value, schema: &Value, content_type: &str, body: &[u8]) -> Option<String> {
    let form = content_type.starts_with("application/x-www-form-urlencoded");
    let value: Value = if form {
        Value::Object(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Some(format!("the body is not valid JSON: {e}")),
        }
    } else {
        return None;
    };
    let top = resolve(spec, schema);
    let Some(obj) = value.as_object() else {
        return Some(format!("the body must be {}", describe(spec, top)));
    };
    let field = if form {
        // Every form value is text: each field is checked as such.
        let mut bad = None;
        for name in top["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if obj.get(name).is_none() {
                bad = Some(name.to_owned());
                break;
            }
        }
        if bad.is_none() {
            for (name, v) in obj {
                if let Some(prop) = top.pointer(&format!("/properties/{name}")) {
                    if check(spec, prop, v, true).is_err() {
                        bad = Some(name.clone());
                        break;
                    }
                }
            }
        }
        bad?
    } else {
        check_object(spec, top, obj).err()?
    };
    let present = field
        .split(['.', '['])
        .next()
        .and_then(|first| obj.get(first))
        .is_some_and(|v| !v.is_null());
    let fs = field_schema(spec, top, &field);
    Some(if present || field.contains(['.', '[']) {
        format!("`{field}` must be {}", describe(spec, fs))
    } else {
        format!("`{field}` is required: {}", describe(spec, fs))
    })
}

fn explain_param(spec: &Value, p: &Value, value: Option<&str>) -> String {
    let kind = match p["in"].as_str() {
        Some("path") => "path parameter",
        Some("header") => "header",
        Some("cookie") => "cookie",
        _ => "query parameter",
    };
    let name = p["name"].as_str().unwrap_or_default();
    let allowed = describe(spec, &p["schema"]);
    match value {
        Some(v) => format!("{kind} `{name}` must be {allowed} (got `{v}`)"),
        None => format!("{kind} `{name}` is required: {allowed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "paths": {},
            "components": { "schemas": {
                "Driver": { "type": "string", "enum": ["cuda", "rocm", "cpu", "any"] },
                "Body": {
                    "type": "object",
                    "required": ["train_path"],
                    "properties": {
                        "train_path": { "type": "string", "maxLength": 4096 },
                        "epochs": { "type": "integer", "format": "uint32", "minimum": 1, "maximum": 200 },
                        "driver": { "$ref": "#/components/schemas/Driver" },
                        "tags": { "type": "array", "items": { "type": "string", "maxLength": 3 } }
                    }
                }
            }}
        })
    }

    fn body(text: &str) -> Option<String> {
        let spec = spec();
        let schema = json!({ "$ref": "#/components/schemas/Body" });
        explain_body(&spec, &schema, "application/json", text.as_bytes())
    }

    #[test]
    fn a_body_refusal_names_the_field_and_what_it_allows() {
        assert_eq!(
            body(r#"{"train_path": null}"#).unwrap(),
            "`train_path` is required: a string of at most 4096 characters"
        );
        assert_eq!(
            body(r#"{"train_path": "/d", "driver": "gpu"}"#).unwrap(),
            "`driver` must be one of cuda, rocm, cpu, any"
        );
        assert_eq!(
            body(r#"{"train_path": "/d", "epochs": 0}"#).unwrap(),
            "`epochs` must be an integer from 1 to 200"
        );
        assert_eq!(
            body(r#"{"train_path": "/d", "epochs": "ten"}"#).unwrap(),
            "`epochs` must be an integer from 1 to 200"
        );
        assert_eq!(
            body(r#"{"train_path": "/d", "tags": ["ok", "long"]}"#).unwrap(),
            "`tags[1]` must be a string of at most 3 characters"
        );
        assert!(body(r#"{"train_path": "/d""#)
            .unwrap()
            .starts_with("the body is not valid JSON"));
        assert_eq!(body("[1]").unwrap(), "the body must be an object");
        assert_eq!(body(r#"{"train_path": "/d", "epochs": 3}"#), None);
    }

    #[test]
    fn a_form_is_read_as_text() {
        let spec = spec();
        let schema = json!({ "$ref": "#/components/schemas/Body" });
        let form = |t: &str| {
            explain_body(
                &spec,
                &schema,
                "application/x-www-form-urlencoded",
                t.as_bytes(),
            )
        };
        assert_eq!(form("train_path=%2Fd&epochs=3"), None);
        assert_eq!(
            form("train_path=%2Fd&epochs=x").unwrap(),
            "`epochs` must be an integer from 1 to 200"
        );
        assert_eq!(
            form("epochs=3").unwrap(),
            "`train_path` is required: a string of at most 4096 characters"
        );
    }

    #[test]
    fn the_parsers_words_lose_the_type_names() {
        assert_eq!(
            clean(
                r#"parse request payload error: Expected input type "string", found null. (occurred while parsing "TrainBody")"#
            ),
            r#"Expected input type "string", found null."#
        );
    }
}
