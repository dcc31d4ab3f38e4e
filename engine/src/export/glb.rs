//! The glTF document and its binary buffer, built with `gltf-json` and framed as GLB by
//! `gltf::binary::Glb`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use glam::Vec3;
use gltf::binary::{Glb, Header};
use gltf::json::{
    self, Index,
    accessor::{ComponentType, GenericComponentType, Type},
    buffer::Target,
    image::MimeType,
    material::{AlphaMode, PbrBaseColorFactor, PbrMetallicRoughness, StrengthFactor},
    mesh::{Mode, Semantic},
    texture::{self, MagFilter, MinFilter, WrappingMode},
    validation::{Checked::Valid, USize64},
};
use image::RgbImage;
use serde_json::{Value, json};

use super::{ExportConfig, ExportError, place_on_ground};
use crate::mesh::{Aabb, TriMesh};

/// The `.glb` file for `mesh`: placed on the ground and scaled as `config` says. With a
/// `texture` (a baked base colour, sRGB), `mesh.uvs` map it and it is embedded as PNG.
pub fn glb_bytes(
    mesh: &TriMesh,
    texture: Option<&RgbImage>,
    config: &ExportConfig,
) -> Result<Vec<u8>, ExportError> {
    encode(mesh, texture, config).map(|(bytes, _, _)| bytes)
}

/// The file, the placed mesh it holds and the scale applied.
pub(super) fn encode(
    mesh: &TriMesh,
    texture: Option<&RgbImage>,
    config: &ExportConfig,
) -> Result<(Vec<u8>, TriMesh, f32), ExportError> {
    config.validate()?;
    check(mesh)?;
    if texture.is_some() && mesh.uvs.len() != mesh.vertex_count() {
        return Err(ExportError::InvalidMesh(format!(
            "a texture needs one UV per vertex: {} UVs for {} vertices",
            mesh.uvs.len(),
            mesh.vertex_count()
        )));
    }
    let (mut placed, scale) = place_on_ground(mesh, config.target_size)?;
    if placed.normals.len() != placed.vertex_count() {
        placed.compute_smooth_normals();
    }
    let bytes = build(&placed, texture, config)?;
    Ok((bytes, placed, scale))
}

/// Rejects what would make an invalid file, naming the problem.
fn check(mesh: &TriMesh) -> Result<(), ExportError> {
    if mesh.is_empty() {
        return Err(ExportError::EmptyMesh);
    }
    let n = mesh.vertex_count();
    let invalid = |s: String| Err(ExportError::InvalidMesh(s));
    if !mesh.indices.len().is_multiple_of(3) {
        return invalid(format!(
            "{} indices is not a whole number of triangles",
            mesh.indices.len()
        ));
    }
    if let Some(i) = mesh.indices.iter().find(|&&i| i as usize >= n) {
        return invalid(format!("index {i} is out of range for {n} vertices"));
    }
    for (name, len) in [
        ("normals", mesh.normals.len()),
        ("colors", mesh.colors.len()),
    ] {
        if len != 0 && len != n {
            return invalid(format!("{len} {name} for {n} vertices"));
        }
    }
    let finite = |v: &[[f32; 3]]| v.iter().flatten().all(|x| x.is_finite());
    for (name, values) in [
        ("positions", &mesh.positions),
        ("normals", &mesh.normals),
        ("colors", &mesh.colors),
    ] {
        if !finite(values) {
            return invalid(format!("{name} hold NaN or infinity"));
        }
    }
    if !mesh.uvs.iter().flatten().all(|x| x.is_finite()) {
        return invalid("uvs hold NaN or infinity".into());
    }
    Ok(())
}

/// The binary chunk under construction and the document that describes it.
struct Builder {
    root: json::Root,
    bin: Vec<u8>,
}

impl Builder {
    /// Appends `bytes` as a buffer view (4-byte aligned, as accessors need).
    fn view(&mut self, bytes: &[u8], target: Option<Target>) -> Index<json::buffer::View> {
        let offset = self.bin.len();
        self.bin.extend_from_slice(bytes);
        self.bin.resize(self.bin.len().next_multiple_of(4), 0);
        self.root.push(json::buffer::View {
            buffer: Index::new(0),
            byte_length: USize64(bytes.len() as u64),
            byte_offset: Some(USize64(offset as u64)),
            byte_stride: None,
            name: None,
            target: target.map(Valid),
            extensions: None,
            extras: None,
        })
    }

    /// Appends a tightly packed accessor over its own view.
    fn accessor(
        &mut self,
        bytes: &[u8],
        count: usize,
        component: ComponentType,
        type_: Type,
        target: Target,
        min_max: Option<(Value, Value)>,
    ) -> Index<json::Accessor> {
        let view = self.view(bytes, Some(target));
        let (min, max) = min_max.unzip();
        self.root.push(json::Accessor {
            buffer_view: Some(view),
            byte_offset: None,
            count: USize64(count as u64),
            component_type: Valid(GenericComponentType(component)),
            extensions: None,
            extras: None,
            type_: Valid(type_),
            min,
            max,
            name: None,
            normalized: false,
            sparse: None,
        })
    }
}

impl Builder {
    /// Embeds `image` as PNG with a trilinear sampler: the bake dilates every chart into the
    /// empty texels around it, so mip levels blend a chart with its own colours.
    fn texture(&mut self, image: &RgbImage, name: &str) -> Result<texture::Info, ExportError> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ExportError::Encode(format!("texture PNG: {e}")))?;
        let view = self.view(&png, None);
        let source = self.root.push(json::Image {
            buffer_view: Some(view),
            mime_type: Some(MimeType("image/png".into())),
            name: Some(format!("{name}_base_color")),
            uri: None,
            extensions: None,
            extras: None,
        });
        let sampler = self.root.push(json::texture::Sampler {
            mag_filter: Some(Valid(MagFilter::Linear)),
            min_filter: Some(Valid(MinFilter::LinearMipmapLinear)),
            name: None,
            wrap_s: Valid(WrappingMode::ClampToEdge),
            wrap_t: Valid(WrappingMode::ClampToEdge),
            extensions: None,
            extras: None,
        });
        let index = self.root.push(json::Texture {
            name: None,
            sampler: Some(sampler),
            source,
            extensions: None,
            extras: None,
        });
        Ok(texture::Info {
            index,
            tex_coord: 0,
            extensions: None,
            extras: None,
        })
    }
}

fn vec3_bytes(values: &[[f32; 3]]) -> Vec<u8> {
    values
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn build(
    mesh: &TriMesh,
    texture: Option<&RgbImage>,
    config: &ExportConfig,
) -> Result<Vec<u8>, ExportError> {
    let mut b = Builder {
        root: json::Root::default(),
        bin: Vec::new(),
    };
    let n = mesh.vertex_count();

    // Indices: 16-bit when every index fits below the restart value 65535 (half the bytes).
    let indices = if n <= u16::MAX as usize {
        let bytes: Vec<u8> = mesh
            .indices
            .iter()
            .flat_map(|&i| (i as u16).to_le_bytes())
            .collect();
        b.accessor(
            &bytes,
            mesh.indices.len(),
            ComponentType::U16,
            Type::Scalar,
            Target::ElementArrayBuffer,
            None,
        )
    } else {
        let bytes: Vec<u8> = mesh.indices.iter().flat_map(|i| i.to_le_bytes()).collect();
        b.accessor(
            &bytes,
            mesh.indices.len(),
            ComponentType::U32,
            Type::Scalar,
            Target::ElementArrayBuffer,
            None,
        )
    };

    // POSITION must carry its bounds.
    let bounds = mesh.bounds().unwrap_or(Aabb::new(Vec3::ZERO, Vec3::ZERO));
    let positions = b.accessor(
        &vec3_bytes(&mesh.positions),
        n,
        ComponentType::F32,
        Type::Vec3,
        Target::ArrayBuffer,
        Some((json!(bounds.min.to_array()), json!(bounds.max.to_array()))),
    );
    // NORMAL must be unit length; re-normalise what scaling or the caller left.
    let normals: Vec<[f32; 3]> = mesh
        .normals
        .iter()
        .map(|v| Vec3::from(*v).try_normalize().unwrap_or(Vec3::Y).to_array())
        .collect();
    let normals = b.accessor(
        &vec3_bytes(&normals),
        n,
        ComponentType::F32,
        Type::Vec3,
        Target::ArrayBuffer,
        None,
    );
    let mut attributes = BTreeMap::from([
        (Valid(Semantic::Positions), positions),
        (Valid(Semantic::Normals), normals),
    ]);
    if !mesh.colors.is_empty() {
        let colors: Vec<[f32; 3]> = mesh
            .colors
            .iter()
            .map(|c| c.map(|v| v.clamp(0.0, 1.0)))
            .collect();
        let colors = b.accessor(
            &vec3_bytes(&colors),
            n,
            ComponentType::F32,
            Type::Vec3,
            Target::ArrayBuffer,
            None,
        );
        attributes.insert(Valid(Semantic::Colors(0)), colors);
    }

    let base_color_texture = match texture {
        Some(image) => {
            let uvs: Vec<u8> = mesh
                .uvs
                .iter()
                .flatten()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let uvs = b.accessor(
                &uvs,
                n,
                ComponentType::F32,
                Type::Vec2,
                Target::ArrayBuffer,
                None,
            );
            attributes.insert(Valid(Semantic::TexCoords(0)), uvs);
            Some(b.texture(image, &config.name)?)
        }
        None => None,
    };

    let m = &config.material;
    let material = b.root.push(json::Material {
        name: Some(config.name.clone()),
        alpha_mode: Valid(AlphaMode::Opaque),
        double_sided: m.double_sided,
        pbr_metallic_roughness: PbrMetallicRoughness {
            base_color_factor: PbrBaseColorFactor(m.base_color),
            metallic_factor: StrengthFactor(m.metallic),
            roughness_factor: StrengthFactor(m.roughness),
            base_color_texture,
            ..Default::default()
        },
        ..Default::default()
    });
    let mesh_index = b.root.push(json::Mesh {
        extensions: None,
        extras: None,
        name: Some(config.name.clone()),
        primitives: vec![json::mesh::Primitive {
            attributes,
            extensions: None,
            extras: None,
            indices: Some(indices),
            material: Some(material),
            mode: Valid(Mode::Triangles),
            targets: None,
        }],
        weights: None,
    });
    let node = b.root.push(json::Node {
        mesh: Some(mesh_index),
        name: Some(config.name.clone()),
        ..Default::default()
    });
    let scene = b.root.push(json::Scene {
        extensions: None,
        extras: None,
        name: Some(config.name.clone()),
        nodes: vec![node],
    });
    b.root.scene = Some(scene);

    let mut extras = config.extras.clone();
    if let Some(prompt) = &config.prompt {
        extras.insert("prompt".into(), Value::String(prompt.clone()));
    }
    b.root.asset = json::Asset {
        generator: Some(config.generator.clone()),
        extras: if extras.is_empty() {
            None
        } else {
            Some(
                serde_json::value::to_raw_value(&extras)
                    .map_err(|e| ExportError::Encode(e.to_string()))?,
            )
        },
        ..Default::default()
    };
    b.root.push(json::Buffer {
        byte_length: USize64(b.bin.len() as u64),
        name: None,
        uri: None,
        extensions: None,
        extras: None,
    });

    let json = b
        .root
        .to_vec()
        .map_err(|e| ExportError::Encode(e.to_string()))?;
    Glb {
        // `to_vec` writes the header from the chunks; these fields are not read.
        header: Header {
            magic: *b"glTF",
            version: 2,
            length: 0,
        },
        json: Cow::Owned(json),
        bin: Some(Cow::Owned(b.bin)),
    }
    .to_vec()
    .map_err(|e| ExportError::Encode(e.to_string()))
}
