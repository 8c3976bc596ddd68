//! kong/l402.meta.json names exactly the fields the parser reads. The parser's serde structs in
//! src/config/ are read as text (every `#[derive(Deserialize)]` struct and enum reachable from
//! `RawConfig`) and compared with the schema: the same field names at every level, the same required
//! fields, `additionalProperties: false` where the struct has `deny_unknown_fields`, `null` allowed
//! where the field is an `Option`, and the same enum values. A field added to the parser without the
//! schema (or the other way round) fails here. Whether each value is accepted the same way by both is
//! tested with examples in tests/e2e/test_kong_schema.py.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug)]
struct Field {
    json: String,
    ty: String,
    has_default: bool,
}

#[derive(Debug)]
enum Item {
    Struct { fields: Vec<Field>, deny_unknown: bool, container_default: bool },
    Enum { values: Vec<String> },
}

/// Deserialize structs and enums of the config sources, by Rust name.
fn parse_sources() -> BTreeMap<String, Item> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut items = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.iter().filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut attrs: Vec<String> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if line.starts_with("#[") {
                attrs.push(line.to_owned());
            } else if let Some(rest) = decl(line) {
                let derives = attrs.iter().any(|a| a.starts_with("#[derive(") && a.contains("Deserialize"));
                let serde_attrs: String = attrs.iter().filter(|a| a.starts_with("#[serde(")).cloned().collect();
                let (kind, name) = rest;
                let body_start = i + 1;
                let mut end = body_start;
                while !lines[end].starts_with('}') {
                    end += 1;
                }
                // `Source<T>` (untagged: a value or {"env": NAME}) is unwrapped where it is used.
                if derives && !serde_attrs.contains("untagged") {
                    let body = &lines[body_start..end];
                    let item = if kind == "struct" {
                        Item::Struct {
                            fields: struct_fields(body),
                            deny_unknown: serde_attrs.contains("deny_unknown_fields"),
                            container_default: serde_attrs.contains("default"),
                        }
                    } else {
                        let snake = serde_attrs.contains("rename_all = \"snake_case\"");
                        assert!(
                            snake || serde_attrs.contains("rename_all = \"lowercase\""),
                            "enum {name}: expected lowercase or snake_case variants"
                        );
                        let values = body
                            .iter()
                            .filter(|l| !l.starts_with("#[") && !l.starts_with("//") && !l.is_empty())
                            .map(|l| {
                                let variant = l.trim_end_matches(',');
                                if snake {
                                    snake_case(variant)
                                } else {
                                    variant.to_ascii_lowercase()
                                }
                            })
                            .collect();
                        Item::Enum { values }
                    };
                    items.insert(name.to_owned(), item);
                }
                attrs.clear();
                i = end;
            } else if !line.starts_with("//") {
                attrs.clear();
            }
            i += 1;
        }
    }
    items
}

fn decl(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix("pub(super) ").or_else(|| line.strip_prefix("pub ")).unwrap_or(line);
    for kind in ["struct", "enum"] {
        if let Some(rest) = line.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
            if let Some(name) = rest.strip_suffix(" {") {
                let name = name.split('<').next().unwrap();
                return Some((kind, name));
            }
        }
    }
    None
}

fn struct_fields(body: &[&str]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut attrs = String::new();
    for line in body {
        if line.starts_with("#[") {
            attrs.push_str(line);
            continue;
        }
        if line.starts_with("//") || line.is_empty() {
            continue;
        }
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let (name, ty) = line.trim_end_matches(',').split_once(": ").unwrap_or_else(|| panic!("field line {line:?}"));
        let json = match attrs.split_once("rename = \"") {
            Some((_, rest)) => rest.split('"').next().unwrap().to_owned(),
            None => name.to_owned(),
        };
        out.push(Field { json, ty: ty.to_owned(), has_default: attrs.contains("default") });
        attrs.clear();
    }
    out
}

/// `FailClosed` → `fail_closed`, as serde's `rename_all = "snake_case"` spells variants.
fn snake_case(variant: &str) -> String {
    let mut out = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The named type inside `Option<..>`, `Vec<..>`, `Source<..>`.
fn inner(ty: &str) -> &str {
    let mut t = ty;
    for wrapper in ["Option<", "Vec<", "Source<"] {
        if let Some(rest) = t.strip_prefix(wrapper) {
            t = inner(rest.strip_suffix('>').unwrap());
        }
    }
    t
}

fn types_of(schema: &Value) -> BTreeSet<String> {
    match &schema["type"] {
        Value::String(s) => [s.clone()].into(),
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

fn check(
    items: &BTreeMap<String, Item>,
    rust: &str,
    schema: &Value,
    at: &str,
    seen: &mut BTreeSet<String>,
    errors: &mut Vec<String>,
) {
    seen.insert(rust.to_owned());
    match &items[rust] {
        Item::Enum { values } => {
            let got: BTreeSet<String> = schema["enum"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            let want: BTreeSet<String> = values.iter().cloned().collect();
            if got != want {
                errors.push(format!("{at}: enum {want:?} in the parser, {got:?} in the schema"));
            }
        }
        Item::Struct { fields, deny_unknown, container_default } => {
            let props = schema["properties"].as_object().cloned().unwrap_or_default();
            let want: BTreeSet<&str> = fields.iter().map(|f| f.json.as_str()).collect();
            let got: BTreeSet<&str> = props.keys().map(String::as_str).collect();
            for f in want.difference(&got) {
                errors.push(format!("{at}{f}: read by the parser ({rust}), missing from the schema"));
            }
            for f in got.difference(&want) {
                errors.push(format!("{at}{f}: in the schema, unknown to the parser ({rust})"));
            }
            let here = if at.is_empty() { "config" } else { at.trim_end_matches('.') };
            if *deny_unknown != (schema["additionalProperties"] == Value::Bool(false)) {
                errors.push(format!(
                    "{here}: deny_unknown_fields={deny_unknown} but additionalProperties is {}",
                    schema["additionalProperties"]
                ));
            }
            let required_want: BTreeSet<&str> = fields
                .iter()
                .filter(|f| !f.has_default && !container_default && !f.ty.starts_with("Option<"))
                .map(|f| f.json.as_str())
                .collect();
            let required_got: BTreeSet<&str> = schema["required"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            if required_want != required_got {
                errors
                    .push(format!("{here}: required {required_want:?} in the parser, {required_got:?} in the schema"));
            }
            for f in fields {
                let Some(prop) = props.get(&f.json) else { continue };
                let path = format!("{at}{}", f.json);
                let types = types_of(prop);
                let nullable = f.ty.starts_with("Option<");
                if !types.is_empty() && nullable != types.contains("null") {
                    errors.push(format!("{path}: Option={nullable} but the schema's types are {types:?}"));
                }
                let scalar = match f.ty.trim_start_matches("Option<").trim_end_matches('>') {
                    "bool" => Some("boolean"),
                    "String" => Some("string"),
                    "u8" | "u32" | "u64" => Some("integer"),
                    t if t.starts_with("Vec<") => Some("array"),
                    _ => None,
                };
                if let Some(scalar) = scalar {
                    if !types.contains(scalar) {
                        errors.push(format!("{path}: {} in the parser, {types:?} in the schema", f.ty));
                    }
                }
                let named = inner(&f.ty);
                if items.contains_key(named) {
                    let sub =
                        if f.ty.starts_with("Vec<") || f.ty.starts_with("Option<Vec<") { &prop["items"] } else { prop };
                    let sub_at = if f.ty.contains("Vec<") { format!("{path}[].") } else { format!("{path}.") };
                    let sub_at = if matches!(items[named], Item::Enum { .. }) { path.clone() } else { sub_at };
                    check(items, named, sub, &sub_at, seen, errors);
                }
            }
        }
    }
}

#[test]
fn schema_names_exactly_the_parsers_fields() {
    let items = parse_sources();
    assert!(
        items.contains_key("RawConfig") && items.contains_key("RawRoute"),
        "config structs not found: {:?}",
        items.keys()
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kong/l402.meta.json")).unwrap(),
    )
    .unwrap();
    let schema = &meta["config_schema"];
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    check(&items, "RawConfig", schema, "", &mut seen, &mut errors);
    assert!(errors.is_empty(), "kong/l402.meta.json and src/config disagree:\n  {}", errors.join("\n  "));
    // Every Deserialize type of the config is reachable (so none escaped the comparison).
    let unreached: Vec<_> = items.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(unreached.is_empty(), "config types not reached from RawConfig: {unreached:?}");
}

#[test]
fn the_comparison_catches_a_missing_field() {
    let items = parse_sources();
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("kong/l402.meta.json")).unwrap(),
    )
    .unwrap();
    let mut schema = meta["config_schema"].clone();
    schema["properties"]["node"]["properties"].as_object_mut().unwrap().remove("timeout_ms");
    schema["properties"]["routes"]["items"]["properties"]["lifetime_s"]["type"] = Value::from("integer");
    schema["properties"]["invoice"].as_object_mut().unwrap().remove("additionalProperties");
    let mut errors = Vec::new();
    check(&items, "RawConfig", &schema, "", &mut BTreeSet::new(), &mut errors);
    let text = errors.join("\n");
    assert!(text.contains("node.timeout_ms: read by the parser"), "{text}");
    assert!(text.contains("routes[].lifetime_s: Option=true"), "{text}");
    assert!(text.contains("invoice: deny_unknown_fields=true"), "{text}");
}
