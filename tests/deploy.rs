//! Checks of deploy/ that run without Docker: the files parse, name only services and files
//! that exist, and the settings the daemon reads, `.env.example` and the README table agree.

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
