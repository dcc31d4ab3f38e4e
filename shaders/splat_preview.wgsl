// Gaussian splats for the live preview: one screen-aligned quad per Gaussian, spanned by the
// eigenvectors of its projected 2D covariance (EWA splatting, as 3DGS rasterises), shaded with
// the Gaussian's falloff and alpha-blended back to front (the plugin sorts the quads).

#import bevy_pbr::mesh_functions::get_world_from_local
#import bevy_pbr::mesh_view_bindings::view

// x: splat size multiplier, y: opacity multiplier.
@group(#{MATERIAL_BIND_GROUP}) @binding(0) var<uniform> params: vec4<f32>;

struct Vertex {
    @builtin(instance_index) instance_index: u32,
    // The Gaussian's centre (all four corners share it).
    @location(0) position: vec3<f32>,
    // Which corner: (+-1, +-1).
    @location(1) corner: vec2<f32>,
    // Covariance in the mesh's space: (xx, xy, xz) and (yy, yz, zz).
    @location(2) cov_a: vec3<f32>,
    @location(3) cov_b: vec3<f32>,
    // Linear RGB and opacity.
    @location(4) color: vec4<f32>,
};

struct VertexOutput {
    @builtin(position) clip_position: vec4<f32>,
    // Position in the quad in standard deviations along its two axes.
    @location(0) offset: vec2<f32>,
    @location(1) color: vec4<f32>,
};

// 3DGS: a 0.3 px^2 low-pass keeps every splat at least about a pixel wide.
const LOW_PASS: f32 = 0.3;
// Alphas below 1/255 change no pixel; 3DGS skips them too.
const MIN_ALPHA: f32 = 0.003921569;
// 3DGS clamps the projected centre to 1.3x the frustum before the Jacobian: splats far
// outside the view would otherwise blow up.
const FRUSTUM_CLAMP: f32 = 1.3;

fn culled() -> VertexOutput {
    var out: VertexOutput;
    // Outside the clip volume: the quad is dropped.
    out.clip_position = vec4<f32>(2.0, 2.0, 2.0, 1.0);
    out.offset = vec2<f32>(0.0);
    out.color = vec4<f32>(0.0);
    return out;
}

@vertex
fn vertex(v: Vertex) -> VertexOutput {
    let opacity = min(v.color.a * params.y, 1.0);
    if opacity < MIN_ALPHA {
        return culled();
    }
    let world_from_local = get_world_from_local(v.instance_index);
    let centre_world = world_from_local * vec4<f32>(v.position, 1.0);
    let centre_view = (view.view_from_world * centre_world).xyz;
    let clip = view.clip_from_world * centre_world;
    if clip.w <= 0.0 {
        return culled();
    }

    // Covariance in view space: W M Sigma M^T W^T, with M the mesh's linear part (it may be
    // scaled or rotated) and W the camera's rotation.
    let m = mat3x3<f32>(world_from_local[0].xyz, world_from_local[1].xyz, world_from_local[2].xyz);
    let w = mat3x3<f32>(
        view.view_from_world[0].xyz,
        view.view_from_world[1].xyz,
        view.view_from_world[2].xyz,
    );
    let vm = w * m;
    let s = params.x * params.x;
    let sigma = s * mat3x3<f32>(
        vec3<f32>(v.cov_a.x, v.cov_a.y, v.cov_a.z),
        vec3<f32>(v.cov_a.y, v.cov_b.x, v.cov_b.y),
        vec3<f32>(v.cov_a.z, v.cov_b.y, v.cov_b.z),
    );
    let sigma_view = vm * sigma * transpose(vm);

    // The projection's Jacobian in pixels (y up). Bevy's view space looks down -z.
    let half_size = 0.5 * view.viewport.zw;
    let fx = view.clip_from_view[0][0] * half_size.x;
    let fy = view.clip_from_view[1][1] * half_size.y;
    var j0: vec3<f32>;
    var j1: vec3<f32>;
    if view.clip_from_view[3][3] == 1.0 {
        // Orthographic: a linear map.
        j0 = vec3<f32>(fx, 0.0, 0.0);
        j1 = vec3<f32>(0.0, fy, 0.0);
    } else {
        let depth = -centre_view.z;
        let limit = FRUSTUM_CLAMP / vec2<f32>(view.clip_from_view[0][0], view.clip_from_view[1][1]);
        let t = clamp(centre_view.xy / depth, -limit, limit);
        j0 = vec3<f32>(fx / depth, 0.0, fx * t.x / depth);
        j1 = vec3<f32>(0.0, fy / depth, fy * t.y / depth);
    }
    let a = dot(j0, sigma_view * j0) + LOW_PASS;
    let b = dot(j0, sigma_view * j1);
    let c = dot(j1, sigma_view * j1) + LOW_PASS;

    // Eigen-decomposition of [[a, b], [b, c]]: the quad's axes.
    let mid = 0.5 * (a + c);
    let radius = length(vec2<f32>(0.5 * (a - c), b));
    let lambda1 = mid + radius;
    let lambda2 = max(mid - radius, 0.1);
    var axis1 = vec2<f32>(1.0, 0.0);
    if abs(b) > 1e-12 {
        axis1 = normalize(vec2<f32>(b, lambda1 - a));
    } else if c > a {
        axis1 = vec2<f32>(0.0, 1.0);
    }
    let axis2 = vec2<f32>(-axis1.y, axis1.x);

    // Out to where the falloff drops below 1/255: o exp(-r^2 / 2) = 1/255.
    let extent = sqrt(2.0 * log(opacity / MIN_ALPHA));
    let sd = min(sqrt(vec2<f32>(lambda1, lambda2)), vec2<f32>(4096.0));
    let offset_px = extent * (v.corner.x * sd.x * axis1 + v.corner.y * sd.y * axis2);

    var out: VertexOutput;
    out.clip_position = clip + vec4<f32>(offset_px / half_size * clip.w, 0.0, 0.0);
    out.offset = v.corner * extent;
    out.color = vec4<f32>(v.color.rgb, opacity);
    return out;
}

@fragment
fn fragment(in: VertexOutput) -> @location(0) vec4<f32> {
    // 3DGS caps a single splat's alpha at 0.99.
    let alpha = min(in.color.a * exp(-0.5 * dot(in.offset, in.offset)), 0.99);
    if alpha < MIN_ALPHA {
        discard;
    }
    return vec4<f32>(in.color.rgb, alpha);
}
