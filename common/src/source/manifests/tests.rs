//! Loading manifests once: document formats, ignored kinds, problems, file selection, merging,
//! and the deploy/examples/myapp-prod.yaml example.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Loaded, ManifestError, ProblemError, load};
use crate::model::{Kind, Object, ServiceType, TargetPort};

pub(super) fn service_yaml(name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.{}\n  ports:\n  - port: {port}\n",
        name.len()
    )
}

pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create test dir");
    }
    fs::write(&path, text).expect("write test file");
    path
}

fn load_dir(dir: &Path) -> Loaded {
    load(&[dir.to_path_buf()]).expect("load")
}

/// `Kind ns/name` of every loaded object.
fn refs(loaded: &Loaded) -> Vec<String> {
    loaded
        .objects
        .iter()
        .map(|o| o.object_ref().to_string())
        .collect()
}

fn service_port(loaded: &Loaded, name: &str) -> Option<u16> {
    loaded.objects.iter().find_map(|o| match o {
        Object::Service(s) if &*s.key.name == name => s.ports.first().map(|p| p.port),
        _ => None,
    })
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 1}\n";

#[test]
fn multi_document_yaml_json_and_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "---\n{NAMESPACE}---\n# only a comment\n---\n{DEPLOYMENT}---\n{}",
        service_yaml("web", 80)
    );
    write(dir.path(), "a.yaml", &yaml);
    let json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}"#;
    write(dir.path(), "b.json", &format!("\u{feff}{json}"));
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p1, namespace: shop}}\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n---\napiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: db, namespace: shop}\n  spec: {ports: [{port: 5432}]}\n";
    write(dir.path(), "c.yml", list);
    let loaded = load_dir(dir.path());
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(
        refs(&loaded),
        [
            "Service shop/db",
            "Service shop/web",
            "Pod shop/p1",
            "Node n1",
            "Namespace other",
            "Namespace shop",
        ]
    );
}

#[test]
fn bad_document_is_reported_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n    name: a\n  - port: 70000\n    name: b\n";
    let yaml = format!(
        "{}---\n---\n{bad}---\n{}",
        service_yaml("good", 80),
        service_yaml("also", 81)
    );
    let file = write(dir.path(), "app.yaml", &yaml);
    let loaded = load_dir(dir.path());
    assert_eq!(refs(&loaded), ["Service shop/also", "Service shop/good"]);
    let [problem] = &loaded.problems[..] else {
        panic!("one problem expected: {:?}", loaded.problems);
    };
    assert_eq!(
        problem.document,
        Some(3),
        "documents are 1-based and count empty ones"
    );
    assert_eq!(problem.line, Some(12));
    let message = problem.to_string();
    assert_eq!(
        message,
        format!(
            "{}: document 3 (line 12): Service shop/bad: spec.ports[1].port: 70000 is not in 1..=65535",
            file.display()
        )
    );
}

#[test]
fn bad_list_item_and_bad_json_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: ok}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: Not_OK}}\n";
    write(dir.path(), "list.yaml", list);
    let json = "{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n1\"}}\n\n{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n_2\"}}\n";
    write(dir.path(), "nodes.json", json);
    let loaded = load_dir(dir.path());
    assert_eq!(refs(&loaded), ["Node n1", "Namespace ok"]);
    let messages: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert!(
        messages[0]
            .contains("list.yaml: document 1 (line 1), items[1]: Namespace Not_OK: metadata.name"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("nodes.json: document 2 (line 3): Node n_2: metadata.name"),
        "{messages:?}"
    );
}

#[test]
fn syntax_error_is_a_whole_file_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "ok.yaml", &service_yaml("web", 80));
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: [Service\n",
    );
    write(dir.path(), "broken.json", "{\"apiVersion\": ");
    let loaded = load_dir(dir.path());
    assert_eq!(refs(&loaded), ["Service shop/web"]);
    assert_eq!(loaded.problems.len(), 2);
    for problem in &loaded.problems {
        assert!(
            matches!(problem.error, ProblemError::Syntax(_)),
            "{problem}"
        );
        assert_eq!(problem.document, None);
    }
}

#[test]
fn directory_walk_selects_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "top.yaml", &service_yaml("top", 80));
    write(
        dir.path(),
        "sub/deeper/nested.YML",
        &service_yaml("nested", 80),
    );
    write(dir.path(), "sub/.hidden.yaml", &service_yaml("hidden", 80));
    write(dir.path(), ".git/x.yaml", &service_yaml("git", 80));
    write(dir.path(), "sub/top.yaml~", &service_yaml("backup", 80));
    write(dir.path(), "sub/#top.yaml#", &service_yaml("autosave", 80));
    write(dir.path(), "sub/top.yaml.swp", &service_yaml("swap", 80));
    write(dir.path(), "notes.txt", &service_yaml("notes", 80));
    let loaded = load_dir(dir.path());
    assert_eq!(refs(&loaded), ["Service shop/nested", "Service shop/top"]);
    let explicit = load(&[dir.path().join("notes.txt")]).expect("load file");
    assert_eq!(
        refs(&explicit),
        ["Service shop/notes"],
        "an explicit file loads whatever its name"
    );
}

#[test]
fn later_file_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", &service_yaml("web", 80));
    write(dir.path(), "b/x.yaml", &service_yaml("web", 81));
    write(
        dir.path(),
        "c.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("web", 82),
            service_yaml("web", 83)
        ),
    );
    let loaded = load_dir(dir.path());
    assert_eq!(service_port(&loaded, "web"), Some(83));
    fs::remove_file(dir.path().join("c.yaml")).expect("rm");
    assert_eq!(service_port(&load_dir(dir.path()), "web"), Some(81));
}

#[test]
fn missing_path_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    match load(&[dir.path().to_path_buf(), missing.clone()]) {
        Err(e @ ManifestError::Path { .. }) => {
            assert!(
                e.to_string().contains(&missing.display().to_string()),
                "{e}"
            );
        }
        other => panic!("expected a path error, got {other:?}"),
    }
}

#[test]
fn myapp_prod_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/myapp-prod.yaml");
    let loaded = load(&[path]).expect("load example");
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let count = |kind| loaded.objects.iter().filter(|o| o.kind() == kind).count();
    assert_eq!(
        Kind::ALL.map(count),
        [1, 0, 3, 3, 5],
        "Namespace, Node, Service, EndpointSlice, Pod"
    );
    let services: Vec<_> = loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let [postgres, redis, web] = &services[..] else {
        panic!("three Services expected");
    };
    assert_eq!(postgres.key.to_string(), "myapp-prod/postgres-headless");
    assert!(postgres.headless && postgres.cluster_ips.is_empty());
    assert_eq!(postgres.ports[0].port, 5432);
    assert_eq!(redis.key.to_string(), "myapp-prod/redis-service");
    assert_eq!(
        *redis.cluster_ips,
        ["10.96.1.100".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(
        (redis.ports[0].port, &redis.ports[0].target_port),
        (6379, &TargetPort::Number(6379))
    );
    assert_eq!(web.key.to_string(), "myapp-prod/web-app-service");
    assert_eq!(web.service_type, ServiceType::ClusterIp);
    assert_eq!(
        *web.cluster_ips,
        ["10.96.1.200".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(
        (web.ports[0].port, &web.ports[0].target_port),
        (80, &TargetPort::Number(8080))
    );
    check_example_slices(&loaded);
}

fn check_example_slices(loaded: &Loaded) {
    let slices: Vec<_> = loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let by_service = |name: &str| {
        slices
            .iter()
            .find(|s| s.service_name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no slice for {name}"))
    };
    let pg = by_service("postgres-headless");
    assert_eq!(pg.endpoints.len(), 1);
    assert_eq!(pg.endpoints[0].hostname.as_deref(), Some("postgres-0"));
    assert_eq!((pg.ports[0].name.as_ref(), pg.ports[0].port), ("", 5432));
    let redis = by_service("redis-service");
    assert_eq!(redis.endpoints[0].ip.to_string(), "10.244.2.20");
    assert_eq!(redis.ports[0].port, 6379);
    let web = by_service("web-app-service");
    assert_eq!(web.ports[0].port, 8080);
    let ips: Vec<String> = web.endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.244.1.31", "10.244.2.32", "10.244.3.33"]);
    assert!(
        web.endpoints
            .iter()
            .all(|e| e.ready && e.serving && !e.terminating)
    );
    assert!(web.endpoints.iter().all(|e| e.node_name().is_some()));
    let pod_ips: Vec<String> = loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => p.ips.first().map(ToString::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(pod_ips.len(), 5);
    for endpoint in slices.iter().flat_map(|s| s.endpoints.iter()) {
        assert!(
            pod_ips.contains(&endpoint.ip.to_string()),
            "{} has a Pod",
            endpoint.ip
        );
    }
}

#[test]
fn polls_settle_and_keep_unnamed_bad_documents_by_position() {
    use super::state::State;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().expect("tempdir");
    let two = format!(
        "{}---\n{}",
        service_yaml("web", 80),
        service_yaml("db", 5432)
    );
    let file = write(dir.path(), "a.yaml", &two);
    let stats = Arc::new(super::ManifestStats::default());
    let mut state = State::load(vec![dir.path().into()], stats.clone());
    assert!(state.poll().is_empty(), "nothing changed");
    // The first document loses its name: it cannot be matched by name, so by position.
    let unnamed =
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\nspec: {ports: [{port: 1}]}\n";
    fs::write(&file, format!("{unnamed}---\n{}", service_yaml("db", 5432))).expect("edit");
    assert!(
        state.poll().is_empty(),
        "a change is applied once two polls agree"
    );
    assert!(
        state.poll().is_empty(),
        "the unnamed bad document keeps web"
    );
    assert_eq!(stats.problems_current.load(Ordering::Relaxed), 1);
    assert_eq!(
        state.problems()[0].object.as_deref(),
        Some("Service (unnamed)")
    );
    fs::write(&file, service_yaml("db", 5432)).expect("edit");
    state.poll();
    let events = state.poll();
    let [crate::source::SourceEvent::Delete(r)] = &events[..] else {
        panic!("one Delete expected: {events:?}");
    };
    assert_eq!(r.to_string(), "Service shop/web");
    assert_eq!(stats.problems_current.load(Ordering::Relaxed), 0);
    assert_eq!(stats.problems_total.load(Ordering::Relaxed), 1);
}

#[test]
fn large_files_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\nspec: {{ports: [{{port: 80}}]}}\n"
            )
        })
        .collect();
    write(dir.path(), "many.yaml", &docs.join("---\n"));
    let loaded = load_dir(dir.path());
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(loaded.objects.len(), 3000);
}
