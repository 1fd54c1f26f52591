//! The Kubernetes manifests pass each Gantry container the variables its binary reads: rendered
//! with `kubectl kustomize` (every overlay, and the production overlay with every trainer pool
//! component), compared with `gantry_runtime::config::VARIABLES`, the list the binaries'
//! configuration is read from.
//!
//! - a variable set in a container's `env` is one its binary reads;
//! - a key of a ConfigMap a container takes whole (`envFrom`) is one some binary taking it reads;
//! - every variable a deployment must set for a binary (its default suits one machine only) is
//!   set for each of its containers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_runtime::config::{variable, VARIABLES};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every object `kubectl kustomize dir` renders.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl is needed to render the manifests (deploy/validate.sh needs it too): {e}"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The renders to check: each overlay, and production with the components it does not have.
fn renders() -> Vec<(String, Vec<Value>)> {
    let k8s = repo().join("k8s");
    let mut out = Vec::new();
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(k8s.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    overlays.sort();
    for dir in overlays {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, render(&dir)));
    }
    let production =
        std::fs::read_to_string(k8s.join("overlays/production/kustomization.yaml")).unwrap();
    let missing: Vec<String> = std::fs::read_dir(k8s.join("components"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|c| !production.contains(&format!("components/{c}\n")))
        .collect();
    if !missing.is_empty() {
        // Inside the repository: kustomize loads nothing from outside a kustomization's tree.
        let dir = tempfile::Builder::new()
            .prefix(".test-render-")
            .tempdir_in(&k8s)
            .unwrap();
        let components: String = missing
            .iter()
            .map(|c| format!("  - ../components/{c}\n"))
            .collect();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [../overlays/production]\ncomponents:\n{components}"
            ),
        )
        .unwrap();
        out.push((
            format!("production with {}", missing.join(", ")),
            render(dir.path()),
        ));
    }
    out
}

/// The binary a container runs, from its image's name (registry and tag aside).
fn binary(image: &str) -> Option<&'static str> {
    let name = image.rsplit('/').next()?.split([':', '@']).next()?;
    match name {
        "gantry-api" => Some("gantry-api"),
        "gantry-auth" => Some("gantry-auth"),
        "gantry-registry" => Some("gantry-registry"),
        n if n.starts_with("gantry-trainer") => Some("gantry-trainer"),
        _ => None,
    }
}

struct Container {
    workload: String,
    binary: &'static str,
    env: BTreeSet<String>,
    config_maps: Vec<String>,
}

fn containers(objects: &[Value]) -> Vec<Container> {
    let mut out = Vec::new();
    for o in objects {
        if !matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet")) {
            continue;
        }
        let workload = format!(
            "{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        let pod = &o["spec"]["template"]["spec"];
        let all = [&pod["containers"], &pod["initContainers"]];
        for c in all.iter().filter_map(|l| l.as_array()).flatten() {
            let Some(binary) = binary(c["image"].as_str().unwrap_or_default()) else {
                continue;
            };
            let env = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect();
            let mut config_maps = Vec::new();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                assert!(
                    from["prefix"].is_null(),
                    "{workload}: envFrom with a prefix renames the variables"
                );
                if let Some(name) = from["configMapRef"]["name"].as_str() {
                    config_maps.push(name.to_owned());
                } else {
                    panic!(
                        "{workload}: envFrom {from}: only ConfigMaps rendered here can be checked"
                    );
                }
            }
            out.push(Container {
                workload: format!(
                    "{workload} container {}",
                    c["name"].as_str().unwrap_or_default()
                ),
                binary,
                env,
                config_maps,
            });
        }
    }
    out
}

#[test]
fn the_manifests_pass_each_container_the_variables_its_binary_reads() {
    let mut checked = 0;
    for (label, objects) in renders() {
        let config_maps: BTreeMap<String, BTreeSet<String>> = objects
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .map(|o| {
                let keys = o["data"]
                    .as_object()
                    .map(|d| d.keys().cloned().collect())
                    .unwrap_or_default();
                (o["metadata"]["name"].as_str().unwrap().to_owned(), keys)
            })
            .collect();
        let containers = containers(&objects);
        let binaries: BTreeSet<&str> = containers.iter().map(|c| c.binary).collect();
        assert_eq!(
            binaries.len(),
            4,
            "{label}: expected the four Gantry binaries, found {binaries:?}"
        );

        // Who takes each ConfigMap whole.
        let mut takers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in &containers {
            for m in &c.config_maps {
                takers.entry(m.as_str()).or_default().insert(c.binary);
            }
        }
        let mut problems = Vec::new();
        for (map, readers) in &takers {
            let Some(keys) = config_maps.get(*map) else {
                problems.push(format!("ConfigMap {map} is taken whole but not rendered"));
                continue;
            };
            for key in keys {
                match variable(key) {
                    None => problems.push(format!("ConfigMap {map}: no binary reads {key}")),
                    Some(v) if !v.read_by.iter().any(|b| readers.contains(b)) => {
                        problems.push(format!(
                            "ConfigMap {map}: {key} is read by {:?}, none of which takes it ({readers:?})",
                            v.read_by
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for c in &containers {
            for name in &c.env {
                match variable(name) {
                    None => problems.push(format!("{}: no binary reads {name}", c.workload)),
                    Some(v) if !v.read_by.contains(&c.binary) => problems.push(format!(
                        "{}: {} does not read {name} (read by {:?})",
                        c.workload, c.binary, v.read_by
                    )),
                    Some(_) => {}
                }
            }
            let mut passed = c.env.clone();
            for m in &c.config_maps {
                passed.extend(config_maps.get(m).cloned().unwrap_or_default());
            }
            for v in VARIABLES
                .iter()
                .filter(|v| v.deployed_for.contains(&c.binary))
            {
                if !passed.contains(v.name) {
                    problems.push(format!(
                        "{}: {} needs {} set in a deployment",
                        c.workload, c.binary, v.name
                    ));
                }
            }
            checked += 1;
        }
        assert!(problems.is_empty(), "{label}:\n  {}", problems.join("\n  "));
    }
    assert!(checked >= 8, "only {checked} containers checked");
}

#[test]
fn a_container_image_names_its_binary() {
    assert_eq!(
        binary("registry.example.com/gantry/gantry-api:0.1.0"),
        Some("gantry-api")
    );
    assert_eq!(binary("gantry-trainer-rocm:dev"), Some("gantry-trainer"));
    assert_eq!(
        binary("gantry-registry@sha256:abc"),
        Some("gantry-registry")
    );
    assert_eq!(binary("nats:2.11-alpine"), None);
}
