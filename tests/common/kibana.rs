//! deploy/kibana/saved-objects.ndjson as the tests read it: the objects, and what each asks of the
//! daemon's lines (the fields its columns, sort, aggregations and KQL query name, and the values
//! the query looks for). Self-contained: tests/deploy.rs takes it without the harness.
#![allow(dead_code)]

use serde_json::Value;

/// Fields the shipper adds to each line (Filebeat's `add_docker_metadata`), not the daemon.
pub const SHIPPER_FIELDS: [&str; 1] = ["container.name"];

/// The saved objects Kibana imports, in the file's order.
pub fn saved_objects() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kibana/saved-objects.ndjson");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// A field an object reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldUse {
    /// The object's id.
    pub object: String,
    pub field: String,
    pub how: Use,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// A column or sort of a saved search.
    Shown,
    /// Bucketed by an aggregation (`terms`, `date_histogram`): the field must be aggregatable.
    Aggregated(String),
    /// `field : "value"` in a KQL query (None: `field : *`, the field exists).
    Queried(Option<String>),
}

/// Every field the objects read, and how.
pub fn field_uses(objects: &[Value]) -> Vec<FieldUse> {
    let mut uses = Vec::new();
    for o in objects {
        let object = o["id"].as_str().unwrap_or("").to_owned();
        let mut add = |field: &str, how: Use| uses.push(FieldUse { object: object.clone(), field: field.to_owned(), how });
        let a = &o["attributes"];
        for column in a["columns"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            add(column, Use::Shown);
        }
        for sort in a["sort"].as_array().into_iter().flatten() {
            add(sort[0].as_str().unwrap(), Use::Shown);
        }
        if let Some(state) = a["visState"].as_str() {
            let state: Value = serde_json::from_str(state).unwrap();
            for agg in state["aggs"].as_array().into_iter().flatten() {
                if let Some(field) = agg["params"]["field"].as_str() {
                    add(field, Use::Aggregated(agg["type"].as_str().unwrap().to_owned()));
                }
            }
        }
        if let Some(source) = a["kibanaSavedObjectMeta"]["searchSourceJSON"].as_str() {
            let source: Value = serde_json::from_str(source).unwrap();
            for (field, value) in kql_terms(source["query"]["query"].as_str().unwrap_or("")) {
                add(&field, Use::Queried(value));
            }
        }
    }
    uses
}

/// The `field : value` terms of a KQL query joined by `and`/`or`: (field, Some(value)) for a
/// value (quotes removed), (field, None) for `*`.
pub fn kql_terms(query: &str) -> Vec<(String, Option<String>)> {
    let mut terms = Vec::new();
    for clause in query.split(" and ").flat_map(|c| c.split(" or ")) {
        let Some((field, value)) = clause.split_once(':') else { continue };
        let value = value.trim().trim_matches('"');
        terms.push((field.trim().to_owned(), (value != "*").then(|| value.to_owned())));
    }
    terms
}

/// Whether a parsed log line gives `field` what `how` asks: the field is there, and for a
/// queried value it has it (`message` is full text: it contains the phrase).
pub fn line_answers(line: &Value, field: &str, how: &Use) -> bool {
    let Some(value) = line.get(field) else { return false };
    match how {
        Use::Queried(Some(wanted)) if field == "message" => value.as_str().is_some_and(|m| m.contains(wanted.as_str())),
        Use::Queried(Some(wanted)) => value.as_str() == Some(wanted.as_str()),
        _ => !value.is_null(),
    }
}
