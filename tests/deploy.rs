//! Checks of deploy/ that run without Docker: the files parse, name only services and files
//! that exist, and the settings the daemon reads, `.env.example` and the README table agree.

#[path = "common/kibana.rs"]
mod kibana;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(rel: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    merge_keys(YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}")).remove(0))
}

/// Applies YAML merge keys (`<<: *anchor`), as Compose does; the parser leaves them as keys.
fn merge_keys(y: Yaml) -> Yaml {
    match y {
        Yaml::Hash(h) => {
            let merge = Yaml::String("<<".into());
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(Yaml::Hash(base)) = h.get(&merge).cloned().map(merge_keys) {
                out.extend(base);
            }
            for (k, v) in h {
                if k != merge {
                    out.insert(k, merge_keys(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.into_iter().map(merge_keys).collect()),
        other => other,
    }
}

fn keys(y: &Yaml) -> Vec<String> {
    y.as_hash().map(|h| h.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// The variables the daemon reads (from its command line definition).
fn daemon_vars() -> BTreeSet<String> {
    nasa_ingest::config::env_var_names()
}

#[test]
fn compose_names_only_services_and_files_that_exist() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    let names: BTreeSet<String> = keys(services).into_iter().collect();
    for needed in ["kafka", "kafka-init", "postgres", "nasa-ingest", "elasticsearch", "kibana", "filebeat", "kibana-setup", "kafka-ui"] {
        assert!(names.contains(needed), "service {needed}");
    }
    let volumes: BTreeSet<String> = keys(&compose["volumes"]).into_iter().collect();
    let deploy = root().join("deploy");
    for name in &names {
        let svc = &services[name.as_str()];
        for dep in keys(&svc["depends_on"]) {
            assert!(names.contains(&dep), "{name} depends on unknown service {dep}");
        }
        for v in svc["volumes"].as_vec().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(deploy.join(source).exists(), "{name} mounts missing {source}");
            } else if !source.starts_with('/') {
                assert!(volumes.contains(source), "{name} uses undeclared volume {source}");
            }
        }
        if let Some(context) = svc["build"]["context"].as_str() {
            let dockerfile = svc["build"]["dockerfile"].as_str().unwrap();
            assert!(deploy.join(context).join(dockerfile).exists(), "{name}: {context}/{dockerfile}");
        }
        if !svc["healthcheck"].is_badvalue() {
            assert!(svc["healthcheck"]["test"].as_vec().is_some(), "{name}: healthcheck test");
        }
    }
    // Cold start order: the daemon waits for its topics and a healthy Postgres.
    let daemon = &services["nasa-ingest"];
    assert_eq!(daemon["depends_on"]["kafka-init"]["condition"].as_str(), Some("service_completed_successfully"));
    assert_eq!(daemon["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(services["kafka-ui"]["ports"][0].as_str(), Some("8080:8080"));
    assert_eq!(services["postgres"]["image"].as_str(), Some("postgres:16"));
    let init = services["kafka-init"]["command"][0].as_str().unwrap();
    assert!(init.contains("--create") && init.contains(".dlq"), "the init service creates images and images.dlq");
    // The split profile: same image, one role each.
    for (svc, producer, consumer) in [("nasa-producer", "true", "false"), ("nasa-consumer", "false", "true")] {
        let s = &services[svc];
        assert_eq!(s["profiles"][0].as_str(), Some("split"));
        assert_eq!(s["image"].as_str(), daemon["image"].as_str());
        assert_eq!(s["environment"]["PRODUCER_ENABLED"].as_str(), Some(producer));
        assert_eq!(s["environment"]["CONSUMER_ENABLED"].as_str(), Some(consumer));
    }
    // The image's VOLUME /data: each daemon service mounts it, a named volume where the outbox
    // lives (producer role) or a tmpfs, so that no anonymous volume is left behind.
    for svc in ["nasa-ingest", "nasa-producer", "nasa-consumer"] {
        let s = &services[svc];
        let named = s["volumes"].as_vec().into_iter().flatten().filter_map(|v| v.as_str()).find(|v| v.ends_with(":/data"));
        let tmpfs = s["tmpfs"].as_vec().into_iter().flatten().any(|v| v.as_str() == Some("/data"));
        let producer = s["environment"]["PRODUCER_ENABLED"].as_str() != Some("false");
        if producer {
            assert!(named.is_some(), "{svc}: the producer's outbox (/data) is on a named volume");
        } else {
            assert!(named.is_some() || tmpfs, "{svc}: /data is mounted (a volume or tmpfs), else Docker makes an anonymous volume");
        }
    }
    let vars = daemon_vars();
    for svc in ["nasa-ingest", "nasa-producer", "nasa-consumer"] {
        for var in keys(&services[svc]["environment"]) {
            assert!(vars.contains(&var), "{svc} sets {var}, which the daemon does not read");
        }
    }
}

#[test]
fn filebeat_parses_container_logs_as_ecs_json_with_docker_metadata() {
    let fb = yaml("deploy/filebeat.yml");
    let input = &fb["filebeat.inputs"][0];
    assert_eq!(input["type"].as_str(), Some("filestream"));
    let parsers = input["parsers"].as_vec().unwrap();
    assert!(!parsers[0]["container"].is_badvalue(), "container parser first");
    let ndjson = &parsers[1]["ndjson"];
    assert_eq!(ndjson["target"].as_str(), Some(""));
    for flag in ["overwrite_keys", "expand_keys", "add_error_key"] {
        assert_eq!(ndjson[flag].as_bool(), Some(true), "{flag}");
    }
    let processors = input["processors"].as_vec().unwrap();
    assert!(processors.iter().any(|p| !p["add_docker_metadata"].is_badvalue()));
    assert!(fb["output.elasticsearch"]["hosts"].as_vec().is_some());
}

#[test]
fn kibana_saved_objects_give_a_data_view_and_a_saved_search() {
    let text = std::fs::read_to_string(root().join("deploy/kibana/saved-objects.ndjson")).unwrap();
    let objects: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let view = objects.iter().find(|o| o["type"] == "index-pattern").expect("a data view");
    assert_eq!(view["attributes"]["title"], "filebeat-*");
    let search = objects.iter().find(|o| o["type"] == "search").expect("a saved search");
    let columns: Vec<&str> = search["attributes"]["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(columns[..3], ["log.level", "message", "labels.actor"]);
    assert_eq!(search["references"][0]["id"], view["id"]);
}

/// Kibana as code (issue 26): beside the saved search, a saved search "one image" (its lines by
/// `trace.id`, oldest first) and a dashboard (image events by stage over time, restarts by actor,
/// dead letters by reason) whose panels all exist in the file; every reference resolves; and every
/// field they read is mapped by the ECS template the lines are checked against (deploy/ecs/),
/// aggregated ones as keyword or date. That the daemon's lines carry them: tests/search.rs, on a
/// real run.
#[test]
fn kibana_objects_are_whole_and_read_only_fields_the_ecs_template_maps() {
    let objects = kibana::saved_objects();
    let find = |kind: &str, id: &str| objects.iter().find(|o| o["type"] == kind && o["id"] == id);
    let ids: BTreeSet<String> = objects.iter().map(|o| format!("{}/{}", o["type"], o["id"])).collect();
    assert_eq!(ids.len(), objects.len(), "ids are unique");
    for o in &objects {
        for r in o["references"].as_array().into_iter().flatten() {
            assert!(find(r["type"].as_str().unwrap(), r["id"].as_str().unwrap()).is_some(), "{} refers to a missing {r}", o["id"]);
        }
    }
    let one = find("search", "nasa-ingest-one-image").expect("the saved search \"one image\"");
    let query: serde_json::Value =
        serde_json::from_str(one["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"].as_str().unwrap()).unwrap();
    assert_eq!(kibana::kql_terms(query["query"]["query"].as_str().unwrap()), [("trace.id".to_owned(), None)]);
    assert_eq!(one["attributes"]["sort"][0], serde_json::json!(["@timestamp", "asc"]), "oldest first: the image's way through");
    // The stack's status page links trace ids to that search, the query filled in.
    let link = yaml("deploy/docker-compose.yml")["services"]["nasa-ingest"]["environment"]["LOG_SEARCH_URL"].as_str().unwrap().to_owned();
    assert!(link.contains("/app/discover#/view/nasa-ingest-one-image?") && link.contains("trace.id:%22{trace_id}%22"), "{link}");

    let dashboard = objects.iter().find(|o| o["type"] == "dashboard").expect("a dashboard");
    let panels: Vec<serde_json::Value> = serde_json::from_str(dashboard["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
    let refs = dashboard["references"].as_array().unwrap();
    let shown: Vec<&str> = panels
        .iter()
        .map(|p| {
            let r = refs.iter().find(|r| r["name"] == p["panelRefName"]).unwrap_or_else(|| panic!("panel {p} has its reference"));
            r["id"].as_str().unwrap()
        })
        .collect();
    let uses = kibana::field_uses(&objects);
    let aggregated_by = |id: &str| -> Vec<&str> {
        uses.iter().filter(|u| u.object == id && matches!(u.how, kibana::Use::Aggregated(_))).map(|u| u.field.as_str()).collect()
    };
    for wanted in [["@timestamp", "event.action"].as_slice(), &["labels.actor"], &["error.type"]] {
        assert!(shown.iter().any(|id| aggregated_by(id) == wanted), "a panel counts by {wanted:?}: {shown:?}");
    }

    let template: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("deploy/ecs/opensearch-template.json")).unwrap()).unwrap();
    for u in &uses {
        let mapped = template_type(&template, &u.field)
            .unwrap_or_else(|| panic!("{} reads {}, which the ECS template does not map", u.object, u.field));
        if let kibana::Use::Aggregated(agg) = &u.how {
            let fits = if agg == "date_histogram" { mapped == "date" } else { mapped == "keyword" };
            assert!(fits, "{} aggregates {} by {agg}, mapped as {mapped}", u.object, u.field);
        }
    }
}

/// The type deploy/ecs/opensearch-template.json gives `field` (a dotted ECS name). `labels.*` are
/// ECS's custom keywords: the labels object, whose strings the template's dynamic rule makes keyword.
fn template_type(template: &serde_json::Value, field: &str) -> Option<String> {
    let mappings = &template["template"]["mappings"];
    let mut node = mappings;
    for part in field.split('.') {
        if node["type"] == "object" && node["properties"].get(part).is_none() && field.starts_with("labels.") {
            let dynamic = mappings["dynamic_templates"].as_array()?.iter().find_map(|t| t.get("strings_as_keyword"))?;
            return dynamic["mapping"]["type"].as_str().map(str::to_owned);
        }
        node = node["properties"].get(part)?;
    }
    node["type"].as_str().map(str::to_owned)
}

#[test]
fn dockerfile_copies_what_exists_runs_as_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(root().join(source).exists(), "COPY source {source} missing");
        }
    }
    assert!(text.contains("cargo build --release --locked"), "built as the README builds it");
    assert!(text.lines().any(|l| l.starts_with("USER ") && !l.contains("root")));
    // The check is the daemon's own (`nasa-ingest healthcheck`, which reads HTTP_ADDR), not a
    // fixed URL: with another HTTP_ADDR a fixed one fails, and under host networking another
    // process could answer it.
    let healthcheck: String = text.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect();
    assert!(healthcheck.contains("CMD [\"nasa-ingest\", \"healthcheck\"]"), "{healthcheck}");
    assert!(!text.contains("curl"), "no curl in the image");
    // Buildable by the legacy builder too: no BuildKit-only syntax.
    assert!(!text.contains("--mount") && !text.contains("# syntax="), "the Dockerfile needs BuildKit");
    assert!(text.contains("VOLUME [\"/data\"]") && text.contains("DATA_DIR=/data"));
    assert!(Path::new(&root().join(".gitignore")).exists());
    assert!(std::fs::read_to_string(root().join(".gitignore")).unwrap().lines().any(|l| l == "deploy/.env"));
}

/// README.md's configuration table and deploy/.env.example are made from the settings'
/// definitions (name, default and description): each must be what the generator makes now.
#[test]
fn env_example_and_the_readme_table_are_what_the_settings_make() {
    use nasa_ingest::config::docs;
    let example = std::fs::read_to_string(root().join("deploy/.env.example")).unwrap();
    assert_same(&example, &docs::env_example(), "deploy/.env.example");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = docs::readme_part(&readme).unwrap_or_else(|| {
        panic!("README.md lacks the generated configuration table between {:?} and {:?}", docs::README_BEGIN, docs::README_END)
    });
    assert_same(table, &docs::readme_table(), "README.md's configuration table");
    // What the generator lists is what the daemon reads.
    let listed: BTreeSet<String> = example
        .lines()
        .filter_map(|l| l.strip_prefix('#').and_then(|l| l.split_once('=')).map(|(k, _)| k.to_owned()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
        .collect();
    assert_eq!(listed, daemon_vars(), ".env.example vs the daemon");
    // The values shown for the container are the image's own.
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for (var, value) in docs::CONTAINER_VALUES {
        assert!(dockerfile.contains(&format!("{var}={value}")), "deploy/Dockerfile sets {var}={value}");
    }
}

/// docs/dead-letters.md's table of reasons is made from the reasons' one list (src/dlq/reason.rs).
#[test]
fn the_table_of_dead_letter_reasons_is_what_the_reasons_make() {
    use nasa_ingest::dlq::docs;
    let page = std::fs::read_to_string(root().join(docs::PAGE)).unwrap();
    let table = docs::MARKERS.part(&page).unwrap_or_else(|| {
        panic!("{} lacks the generated table of reasons between {:?} and {:?}", docs::PAGE, docs::MARKERS.begin, docs::MARKERS.end)
    });
    assert_same(table, &docs::reasons_table(), "docs/dead-letters.md's table of reasons");
}

/// Equal, or a panic naming the first line that differs and the command that regenerates the file.
fn assert_same(found: &str, made: &str, what: &str) {
    if found == made {
        return;
    }
    let (found_lines, made_lines): (Vec<&str>, Vec<&str>) = (found.lines().collect(), made.lines().collect());
    let at = found_lines.iter().zip(&made_lines).position(|(a, b)| a != b).unwrap_or(found_lines.len().min(made_lines.len()));
    panic!(
        "{what} differs from what the code makes, at line {}:\n  found: {:?}\n  made:  {:?}\nrun `{}` to regenerate it",
        at + 1,
        found_lines.get(at).copied().unwrap_or("(end)"),
        made_lines.get(at).copied().unwrap_or("(end)"),
        nasa_ingest::config::docs::REGENERATE
    );
}
