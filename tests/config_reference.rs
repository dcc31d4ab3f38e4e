//! docs/config.md is the reference of every `GenerateConfig` key: this test keeps it true.
//!
//! The keys come from the config itself, not from a list kept here:
//! - every leaf of `GenerateConfig::default().to_toml()` (tables flattened to dotted paths,
//!   the elements of an array of tables as `array[].key`), with its default value;
//! - every optional field that is unset by default (serde_json writes it as `null`, where
//!   TOML leaves it out); one that holds a table is given as an empty table (`[guidance.ism]`)
//!   and parsed, so its own keys come out with the defaults they take when it is present (a
//!   key serde says such a table must have is `required`);
//! - the keys a preset sets that the default does not (the elements of
//!   `resolution_milestones`), each either `required` in its element or `unset`.
//!
//! docs/config.md lists each key as a table row `` | `key.path` | default | meaning | ``, the
//! default being a TOML value in backticks (`` `7.5` ``, `` `"auto"` ``, `` `[0.9, 0.99]` ``),
//! `unset` (an optional key, absent by default) or `required` (a key an array element, or an
//! optional table once given, must have). The test fails when a key is missing from the doc,
//! when a default differs, and when the doc has a row for a key the config does not have.
//!
//! `cargo test --test config_reference -- --ignored --nocapture` prints the expected rows.

use std::collections::{BTreeMap, BTreeSet};

use rewardsds::engine::generate::{GenerateConfig, PRESETS};

const DOC_PATH: &str = "docs/config.md";
const DOC: &str = include_str!("../docs/config.md");

/// What the doc must say a key's default is.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// The value it takes when the config does not set it.
    Value(toml::Value),
    /// Optional: absent unless set.
    Unset,
    /// An array element must set it.
    Required,
}

impl Expected {
    /// As the doc writes it.
    fn render(&self) -> String {
        match self {
            Self::Value(v) => format!("`{}`", render_value(v)),
            Self::Unset => "unset".into(),
            Self::Required => "required".into(),
        }
    }
}

/// A TOML value on one line, as it would follow `key = `.
fn render_value(value: &toml::Value) -> String {
    match value {
        // Floats serialised from f32 carry the f32's binary expansion: print the shortest
        // f32 that round-trips, as a reader writes it.
        toml::Value::Float(f) if ((*f as f32) as f64 - f).abs() <= 1e-7 * f.abs() => {
            let short = format!("{}", *f as f32);
            if short.contains(['.', 'e', 'i', 'n']) {
                short
            } else {
                format!("{short}.0")
            }
        }
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_value(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Equal as TOML values, floats within a relative 1e-6 (a doc writes `0.92` for the f32
/// 0.9200000166893005) and an integer equal to a float of the same value.
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value::{Array, Float, Integer, Table};
    let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-6 * x.abs().max(y.abs());
    match (a, b) {
        (Float(x), Float(y)) => close(*x, *y),
        (Float(x), Integer(y)) | (Integer(y), Float(x)) => close(*x, *y as f64),
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Table(x), Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn is_array_of_tables(value: &toml::Value) -> bool {
    value
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(toml::Value::is_table))
}

/// Every leaf key path of `value` under `prefix` with its value. An array of tables adds its
/// elements' keys as `prefix[].key` (values of the first element that has the key); an empty
/// array or an array of plain values is a leaf.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                flatten(&join(prefix, key), value, out);
            }
        }
        value if is_array_of_tables(value) => {
            for element in value.as_array().unwrap() {
                let mut inner = BTreeMap::new();
                flatten("", element, &mut inner);
                for (key, value) in inner {
                    out.entry(format!("{prefix}[].{key}")).or_insert(value);
                }
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

fn toml_table(config: &GenerateConfig) -> toml::Table {
    toml::from_str(&config.to_toml()).expect("the config's own TOML parses")
}

fn leaves(config: &GenerateConfig) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    flatten("", &toml::Value::Table(toml_table(config)), &mut out);
    out
}

/// Key paths serde_json writes as `null`: the optional fields left unset.
fn null_paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Null => out.push(prefix.to_string()),
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                null_paths(&join(prefix, key), value, out);
            }
        }
        _ => {}
    }
}

fn unset_paths(config: &GenerateConfig) -> Vec<String> {
    let json = serde_json::to_value(config).expect("the config serialises to JSON");
    let mut out = Vec::new();
    null_paths("", &json, &mut out);
    out
}

/// `table` with an empty table inserted at the dotted `path`.
fn with_empty_table(mut table: toml::Table, path: &str) -> toml::Table {
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().expect("a path has a key");
    let mut at = &mut table;
    for key in keys {
        at = at
            .entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("the parent of an optional field is a table");
    }
    at.insert(last.to_string(), toml::Value::Table(toml::Table::new()));
    table
}

/// `base` with the unset optional field at `path` given as a table: empty, plus a string for
/// each field serde says the table must have (`missing field `source``), which are returned
/// as required. `None` when the field is not a table (a string, a number, an enum name).
fn with_optional_table(base: &GenerateConfig, path: &str) -> Option<(GenerateConfig, Vec<String>)> {
    let mut table = with_empty_table(toml_table(base), path);
    let mut required = Vec::new();
    loop {
        let error = match toml::from_str::<GenerateConfig>(&toml::to_string(&table).unwrap()) {
            Ok(config) => return Some((config, required)),
            Err(error) => error.to_string(),
        };
        if let Some(rest) = error.split("missing field `").nth(1) {
            let field = rest.split('`').next().unwrap().to_string();
            assert!(
                !required.contains(&field),
                "`{path}.{field}` is required but a string does not fill it: {error}"
            );
            let mut at = &mut table;
            for key in path.split('.') {
                at = at[key].as_table_mut().unwrap();
            }
            at.insert(field.clone(), toml::Value::String("x".into()));
            required.push(field);
            continue;
        }
        // An empty table given to a struct fails on a missing field (above); anything else
        // means the field is no table.
        assert!(required.is_empty(), "cannot fill `{path}`: {error}");
        return None;
    }
}

/// Every key path the config has, with what the doc must say of its default.
fn expected_keys() -> BTreeMap<String, Expected> {
    let default = GenerateConfig::default();
    let mut expected: BTreeMap<String, Expected> = leaves(&default)
        .into_iter()
        .map(|(path, value)| (path, Expected::Value(value)))
        .collect();

    // Optional fields unset by default; one that holds a table is given as an empty table,
    // which brings out its own keys (and its own unset options: the worklist).
    let mut work: Vec<(GenerateConfig, String)> = unset_paths(&default)
        .into_iter()
        .map(|path| (default.clone(), path))
        .collect();
    while let Some((base, path)) = work.pop() {
        expected.insert(path.clone(), Expected::Unset);
        let Some((config, required)) = with_optional_table(&base, &path) else {
            continue; // A scalar option (a string, a number, a backend name).
        };
        let prefix = format!("{path}.");
        for (key, value) in leaves(&config) {
            if let Some(name) = key.strip_prefix(&prefix) {
                let want = if required.iter().any(|r| r == name) {
                    Expected::Required
                } else {
                    Expected::Value(value)
                };
                expected.insert(key, want);
            }
        }
        for inner in unset_paths(&config) {
            if inner.starts_with(&prefix) {
                work.push((config.clone(), inner));
            }
        }
    }

    // Keys only a preset sets: the elements of arrays of tables.
    for name in PRESETS {
        let preset = GenerateConfig::preset(name).expect("a known preset");
        let table = toml_table(&preset);
        for path in leaves(&preset).into_keys() {
            if expected.contains_key(&path) {
                continue;
            }
            let (array, key) = path
                .split_once("[].")
                .unwrap_or_else(|| panic!("preset `{name}` sets `{path}`, which is neither in the default config nor an optional field: teach this test where it comes from"));
            expected.insert(path.clone(), element_key(&table, array, key));
        }
    }
    expected
}

/// Whether an element of the array of tables at `array` must give `key`: the first element
/// that has it parses without it (`unset`) or not (`required`).
fn element_key(table: &toml::Table, array: &str, key: &str) -> Expected {
    let mut table = table.clone();
    let mut at = &mut table;
    let mut keys: Vec<&str> = array.split('.').collect();
    let last = keys.pop().unwrap();
    for k in keys {
        at = at[k].as_table_mut().unwrap();
    }
    let elements = at[last].as_array_mut().unwrap();
    let element = elements
        .iter_mut()
        .find(|e| e.get(key).is_some())
        .unwrap()
        .as_table_mut()
        .unwrap();
    element.remove(key);
    match toml::from_str::<GenerateConfig>(&toml::to_string(&table).unwrap()) {
        Ok(config) => {
            let mut out = BTreeMap::new();
            flatten("", &toml::Value::Table(toml_table(&config)), &mut out);
            match out.get(&format!("{array}[].{key}")) {
                Some(value) => Expected::Value(value.clone()),
                None => Expected::Unset,
            }
        }
        Err(_) => Expected::Required,
    }
}

/// The doc's reference rows: key path -> default cell, in the doc's order.
fn doc_rows() -> Vec<(String, String, usize)> {
    DOC.lines()
        .enumerate()
        .filter(|(_, line)| line.starts_with("| `"))
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(
                cells.len() >= 4,
                "{DOC_PATH}:{}: a reference row has three cells: {line}",
                i + 1
            );
            let key = cells[1].trim_matches('`').to_string();
            (key, cells[2].to_string(), i + 1)
        })
        .collect()
}

/// Whether the doc's default cell says what `expected` is.
fn cell_matches(cell: &str, expected: &Expected) -> bool {
    match expected {
        Expected::Unset => cell == "unset",
        Expected::Required => cell == "required",
        Expected::Value(value) => {
            let Some(literal) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                return false;
            };
            match toml::from_str::<toml::Table>(&format!("v = {literal}")) {
                Ok(parsed) => same_value(&parsed["v"], value),
                Err(_) => false,
            }
        }
    }
}

#[test]
fn docs_config_md_lists_every_key_with_its_default_and_no_other() {
    let expected = expected_keys();
    let rows = doc_rows();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, cell, line) in &rows {
        if !seen.insert(key.clone()) {
            problems.push(format!("{DOC_PATH}:{line}: `{key}` is listed twice"));
        }
        match expected.get(key) {
            None => problems.push(format!(
                "{DOC_PATH}:{line}: `{key}` is not a key of GenerateConfig (renamed or removed?)"
            )),
            Some(want) if !cell_matches(cell, want) => problems.push(format!(
                "{DOC_PATH}:{line}: `{key}`'s default is {}, the doc says {cell}",
                want.render()
            )),
            Some(_) => {}
        }
    }
    for (key, want) in &expected {
        if !seen.contains(key) {
            problems.push(format!(
                "{DOC_PATH}: no row for `{key}` (default {}): add `| `{key}` | {} | <meaning> |`",
                want.render(),
                want.render()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/config.md is out of step with GenerateConfig ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// What docs/config.md says about partial tables and presets, checked.
#[test]
fn docs_config_md_claims_about_defaults_hold() {
    // A key left out of a file takes the default config's value (the `fast` preset) ...
    let config = GenerateConfig::from_toml("prompt = \"a red cube\"").unwrap();
    let mut fast = GenerateConfig::preset("fast").unwrap();
    fast.prompt = "a red cube".into();
    assert_eq!(config, fast);
    assert_eq!(
        GenerateConfig::default(),
        GenerateConfig::preset("fast").unwrap()
    );
    // ... but a table given in part takes its own struct's defaults for the rest: a
    // `[guidance]` table without `guidance_scale` or `[guidance.reward]` is CFG 100, plain SDS.
    let partial =
        GenerateConfig::from_toml("prompt = \"a red cube\"\n[guidance]\nnegative_prompt = \"\"\n")
            .unwrap();
    assert_eq!(partial.guidance.guidance_scale, 100.0);
    assert!(partial.guidance.reward.is_none());
    assert_ne!(fast.guidance.guidance_scale, 100.0);
    // A saved config.toml runs again as it was.
    assert_eq!(GenerateConfig::from_toml(&fast.to_toml()).unwrap(), fast);
    // Unknown keys are refused, naming the key.
    let err = GenerateConfig::from_toml("prompt = \"a\"\n[guidance]\ncfg = 7\n").unwrap_err();
    assert!(err.to_string().contains("cfg"), "{err}");
    // `t_min` / `t_max` also take a plain number.
    let c = GenerateConfig::from_toml("prompt = \"a\"\n[guidance]\nt_min = 0.1\n").unwrap();
    assert_eq!((c.guidance.t_min.start, c.guidance.t_min.end), (0.1, 0.1));
}

/// Prints the rows docs/config.md must have (the meaning column left for a person).
#[test]
#[ignore]
fn print_expected_rows() {
    println!("{}", GenerateConfig::default().to_toml());
    for (key, want) in expected_keys() {
        println!("| `{key}` | {} | |", want.render());
    }
}
