//! Property tests, a fixed number of cases each so CI's time is bounded: the config and
//! safetensors loaders never panic on arbitrary input (an error names the fault), a prompt's
//! slug never leaves its folder and is stable, and the .glb writer's output reads back with the
//! mesh it was given.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::nn::LinearConfig;
use proptest::prelude::*;
use rewardsds_engine::export::{ExportConfig, glb_bytes};
use rewardsds_engine::generate::{GenerateConfig, slug};
use rewardsds_engine::mesh::TriMesh;
use rewardsds_engine::weights::load_safetensors;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every leaf key of a preset's config, dotted (`renderer.num_samples_per_ray`).
fn config_keys() -> Vec<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(&path, t, out),
                _ => out.push(path),
            }
        }
    }
    let config = GenerateConfig::preset("fast").unwrap();
    let table: toml::Table = toml::from_str(&config.to_toml()).unwrap();
    let mut keys = Vec::new();
    walk("", &table, &mut keys);
    keys
}

/// TOML values of every kind, with the edges numbers have.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop::sample::select(vec![0i64, 1, -1, 2, 3, 7, 64, 4096, 100_000, i64::MAX])
            .prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec!["nan", "inf", "-inf", "0.0", "-0.0", "1e30", "1e-30"])
            .prop_map(str::to_string),
        "[a-z0-9 _-]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::collection::vec(0i64..100_000, 0..4).prop_map(|v| format!("{v:?}")),
        Just("{}".to_string()),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn the_config_loader_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let _ = GenerateConfig::from_toml(&text);
    }

    #[test]
    fn the_config_loader_never_panics_on_arbitrary_values(
        edits in prop::collection::vec((prop::sample::select(config_keys()), toml_value()), 1..4)
    ) {
        let mut text = String::from("prompt = \"a red cube\"\n");
        for (key, value) in &edits {
            text.push_str(&format!("{key} = {value}\n"));
        }
        // Ok or an error naming the field: never a panic, and an accepted config validates.
        if let Ok(config) = GenerateConfig::from_toml(&text) {
            prop_assert!(config.validate().is_ok());
        }
    }

    #[test]
    fn slugs_stay_in_their_folder_and_are_stable(prompt in "\\PC{0,200}") {
        let s = slug(&prompt);
        prop_assert!(!s.is_empty() && s.len() <= 64, "{s:?}");
        prop_assert!(
            s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{s:?}"
        );
        prop_assert!(!s.starts_with('-') && !s.ends_with('-'), "{s:?}");
        let folder = Path::new("out");
        let path = folder.join(&s);
        prop_assert_eq!(path.parent(), Some(folder));
        prop_assert_eq!(slug(&s), s.clone());
        prop_assert_eq!(slug(&prompt), s);
    }
}

/// A temporary file holding `bytes`.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rewardsds-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A safetensors file: its 8-byte header length, a header naming `tensors` (key, dtype,
/// shape, data offsets, all arbitrary), then `data`.
fn safetensors_bytes(tensors: &[(String, String, Vec<u64>, (u64, u64))], data: &[u8]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    for (key, dtype, shape, (start, end)) in tensors {
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn the_safetensors_loader_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let path = temp_file("arbitrary.safetensors", &bytes);
        let device = Default::default();
        let module = LinearConfig::new(4, 2).init::<NdArray>(&device);
        prop_assert!(load_safetensors(module, &[path], &device).is_err());
    }

    #[test]
    fn the_safetensors_loader_never_panics_on_arbitrary_headers(
        tensors in prop::collection::vec(
            (
                prop::sample::select(vec!["weight", "bias", "other"]).prop_map(String::from),
                prop::sample::select(vec!["F32", "F16", "BF16", "I64", "U8", "F64", "XX"])
                    .prop_map(String::from),
                prop::collection::vec(0u64..6, 0..4),
                (0u64..80, 0u64..80),
            ),
            0..4,
        ),
        data in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let path = temp_file("header.safetensors", &safetensors_bytes(&tensors, &data));
        let device = Default::default();
        let module = LinearConfig::new(4, 2).init::<NdArray>(&device);
        // Loaded exactly, or an error: no panic whatever the header claims.
        let _ = load_safetensors(module, &[path], &device);
    }
}

/// A small indexed mesh: `n` vertices in a box, triangles over them, colours or not.
fn small_mesh() -> impl Strategy<Value = TriMesh> {
    (3usize..24)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::array::uniform3(-5.0f32..5.0), n),
                prop::collection::vec(prop::array::uniform3(0u32..n as u32), 1..24),
                prop::option::of(prop::collection::vec(prop::array::uniform3(0.0f32..1.0), n)),
            )
        })
        .prop_map(|(positions, triangles, colors)| TriMesh {
            positions,
            indices: triangles.into_iter().flatten().collect(),
            colors: colors.unwrap_or_default(),
            ..TriMesh::default()
        })
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn the_glb_writer_output_reads_back_with_the_same_mesh(mesh in small_mesh()) {
        let bytes = match glb_bytes(&mesh, None, &ExportConfig::default()) {
            Ok(bytes) => bytes,
            // Refused (e.g. all corners on one point: no size to scale): an error, not a panic.
            Err(_) => return Ok(()),
        };
        let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
        let blob = gltf.blob.as_deref().unwrap();
        let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
        let reader = primitive.reader(|_| Some(blob));
        let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
        prop_assert_eq!(positions.len(), mesh.positions.len());
        let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
        prop_assert_eq!(indices, mesh.indices.clone());
        prop_assert_eq!(reader.read_colors(0).is_some(), !mesh.colors.is_empty());
    }
}
