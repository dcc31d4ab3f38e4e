//! View-dependent prompting as threestudio does it (`prompt_processors/base.py`, DreamFusion's
//! trick against multi-face objects): each rendered view is conditioned on the prompt with a
//! suffix naming the side it sees, `", side view"`, `", front view"`, `", back view"` or
//! `", overhead view"`.
//!
//! The rules, applied in this order with later ones winning (threestudio's order):
//! 1. side: every view;
//! 2. front: `-front_threshold < azimuth < front_threshold`;
//! 3. back: `azimuth > 180 - back_threshold` or `azimuth < -180 + back_threshold`;
//! 4. overhead: `elevation > overhead_threshold`;
//!
//! with the azimuth shifted into `[-180, 180)` first and all comparisons strict. Our cameras
//! ([`crate::scene::camera`]) put azimuth 0 at the front (+Z), as threestudio's azimuth 0 is
//! the front view, so angles map one to one. The negative prompt is the same for every view
//! (threestudio's `negative_prompt` per direction is the identity).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::prior::DiffusionPrior;
use crate::scene::camera::Camera;
use crate::weights::LoadError;

/// Where a view looks from: the two camera angles view-dependent prompting reads.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ViewAngles {
    /// Degrees; 0 = front (+Z), growing towards +X. Any value (wrapped into `[-180, 180)`).
    pub azimuth_deg: f32,
    /// Degrees above the ground plane.
    pub elevation_deg: f32,
}

impl ViewAngles {
    /// Angles in degrees.
    pub fn new(azimuth_deg: f32, elevation_deg: f32) -> Self {
        Self {
            azimuth_deg,
            elevation_deg,
        }
    }

    /// The features a camera-conditioned prior takes as `class_labels` (its UNet's
    /// `class_embed_type = "projection"`; MVDream conditions on the camera likewise): sine and
    /// cosine of azimuth and elevation, smooth where the view words jump, so the prior can
    /// tell which way a cube faces.
    pub fn camera_labels(&self) -> [f32; CAMERA_LABELS] {
        let (az, el) = (
            self.azimuth_deg.to_radians(),
            self.elevation_deg.to_radians(),
        );
        [az.sin(), az.cos(), el.sin(), el.cos()]
    }
}

/// Width of [`ViewAngles::camera_labels`].
pub const CAMERA_LABELS: usize = 4;

/// `[views.len(), CAMERA_LABELS]`: the views' [`ViewAngles::camera_labels`].
pub fn camera_labels<B: Backend>(views: &[ViewAngles], device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = views.iter().flat_map(ViewAngles::camera_labels).collect();
    Tensor::from_data(
        TensorData::new(values, [views.len(), CAMERA_LABELS]),
        device,
    )
}

impl From<&Camera> for ViewAngles {
    fn from(camera: &Camera) -> Self {
        Self::new(camera.azimuth_deg, camera.elevation_deg)
    }
}

fn default_front() -> f32 {
    45.0
}
fn default_back() -> f32 {
    45.0
}
fn default_overhead() -> f32 {
    60.0
}

/// The angles that split views into directions (threestudio's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewThresholds {
    /// Half-width of the front sector, degrees (45).
    pub front_threshold: f32,
    /// Half-width of the back sector, degrees (45).
    pub back_threshold: f32,
    /// Elevation above which a view is overhead, degrees (60).
    pub overhead_threshold: f32,
}

impl Default for ViewThresholds {
    fn default() -> Self {
        Self {
            front_threshold: default_front(),
            back_threshold: default_back(),
            overhead_threshold: default_overhead(),
        }
    }
}

/// The direction a view is prompted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewDirection {
    /// Anything not front, back or overhead.
    Side,
    /// Around azimuth 0.
    Front,
    /// Around azimuth 180.
    Back,
    /// Steeply from above.
    Overhead,
}

/// `(azimuth + 180) mod 360 - 180`: an azimuth in `[-180, 180)`, threestudio's
/// `shift_azimuth_deg`.
pub fn shift_azimuth_deg(azimuth_deg: f32) -> f32 {
    (azimuth_deg + 180.0).rem_euclid(360.0) - 180.0
}

impl ViewDirection {
    /// All directions, in threestudio's order (also the order of the cached embeddings).
    pub const ALL: [Self; 4] = [Self::Side, Self::Front, Self::Back, Self::Overhead];

    /// The direction of a view under `thresholds` (see the module docs for the rules).
    pub fn of(view: ViewAngles, thresholds: &ViewThresholds) -> Self {
        let azimuth = shift_azimuth_deg(view.azimuth_deg);
        let mut direction = Self::Side;
        if azimuth > -thresholds.front_threshold && azimuth < thresholds.front_threshold {
            direction = Self::Front;
        }
        if azimuth > 180.0 - thresholds.back_threshold
            || azimuth < -180.0 + thresholds.back_threshold
        {
            direction = Self::Back;
        }
        if view.elevation_deg > thresholds.overhead_threshold {
            direction = Self::Overhead;
        }
        direction
    }

    /// The suffix appended to the prompt (`", front view"`).
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Side => ", side view",
            Self::Front => ", front view",
            Self::Back => ", back view",
            Self::Overhead => ", overhead view",
        }
    }

    /// `prompt` with this direction's suffix.
    pub fn prompt(self, prompt: &str) -> String {
        format!("{prompt}{}", self.suffix())
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The text embeddings one generation needs, computed once: the prompt, its four
/// view-dependent variants and the negative prompt (CFG's unconditional branch).
#[derive(Debug, Clone)]
pub struct PromptEmbeddings<B: Backend> {
    prompt: String,
    negative_prompt: String,
    thresholds: ViewThresholds,
    /// `[1, seq, hidden]`, the prompt as given.
    plain: Tensor<B, 3>,
    /// `[1, seq, hidden]` per direction, in [`ViewDirection::ALL`] order.
    views: Vec<Tensor<B, 3>>,
    /// `[1, seq, hidden]`, the negative prompt.
    uncond: Tensor<B, 3>,
}

impl<B: Backend> PromptEmbeddings<B> {
    /// Encodes the six prompts in one text-encoder pass.
    pub fn new(
        prior: &DiffusionPrior<B>,
        prompt: &str,
        negative_prompt: &str,
        thresholds: ViewThresholds,
    ) -> Result<Self, LoadError> {
        let mut texts = vec![prompt.to_string()];
        texts.extend(ViewDirection::ALL.iter().map(|d| d.prompt(prompt)));
        texts.push(negative_prompt.to_string());
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // [6, seq, hidden]
        let mut all = prior.encode_prompts(&refs)?.split(1, 0);
        let uncond = all.pop().expect("six embeddings");
        let plain = all.remove(0);
        Ok(Self {
            prompt: prompt.to_string(),
            negative_prompt: negative_prompt.to_string(),
            thresholds,
            plain,
            views: all,
            uncond,
        })
    }

    /// The prompt as given (what reward models score against).
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The negative prompt (`""` for plain CFG).
    pub fn negative_prompt(&self) -> &str {
        &self.negative_prompt
    }

    /// The thresholds views are classified with.
    pub fn thresholds(&self) -> &ViewThresholds {
        &self.thresholds
    }

    /// The direction of each view.
    pub fn directions(&self, views: &[ViewAngles]) -> Vec<ViewDirection> {
        views
            .iter()
            .map(|&v| ViewDirection::of(v, &self.thresholds))
            .collect()
    }

    /// The embedding of one direction's prompt, `[1, seq, hidden]`.
    pub fn view(&self, direction: ViewDirection) -> Tensor<B, 3> {
        self.views[direction.index()].clone()
    }

    /// The prompt without suffix, `[1, seq, hidden]`.
    pub fn plain(&self) -> Tensor<B, 3> {
        self.plain.clone()
    }

    /// The negative prompt, `[1, seq, hidden]`.
    pub fn uncond(&self) -> Tensor<B, 3> {
        self.uncond.clone()
    }

    /// The conditional embeddings of a batch of views, `[views, seq, hidden]`: each view's
    /// direction prompt when `view_dependent`, else the plain prompt for all.
    pub fn cond(&self, views: &[ViewAngles], view_dependent: bool) -> Tensor<B, 3> {
        let n = views.len();
        assert!(n > 0, "cond needs at least one view");
        if !view_dependent {
            return self.plain().repeat_dim(0, n);
        }
        let rows = self
            .directions(views)
            .into_iter()
            .map(|d| self.view(d))
            .collect();
        Tensor::cat(rows, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(azimuth: f32, elevation: f32) -> ViewDirection {
        ViewDirection::of(
            ViewAngles::new(azimuth, elevation),
            &ViewThresholds::default(),
        )
    }

    #[test]
    fn camera_labels_tell_apart_views_one_word_lumps_together() {
        let labels = |az: f32, el: f32| ViewAngles::new(az, el).camera_labels();
        let close = |a: [f32; CAMERA_LABELS], b: [f32; CAMERA_LABELS]| {
            a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
        };
        assert!(close(labels(0.0, 0.0), [0.0, 1.0, 0.0, 1.0]));
        assert!(close(labels(90.0, 30.0), [1.0, 0.0, 0.5, 0.75f32.sqrt()]));
        // The same wrapped azimuth, the same labels.
        assert!(close(labels(-90.0, 10.0), labels(270.0, 10.0)));
        // Both "front view", a face and a corner of a cube: the labels differ.
        assert_eq!(dir(0.0, 10.0), dir(40.0, 10.0));
        assert!(!close(labels(0.0, 10.0), labels(40.0, 10.0)));
    }

    #[test]
    fn directions_follow_threestudio() {
        use ViewDirection::*;
        // Front sector (-45, 45), strict.
        assert_eq!(dir(0.0, 0.0), Front);
        assert_eq!(dir(44.9, 10.0), Front);
        assert_eq!(dir(315.1, 10.0), Front);
        assert_eq!(dir(-30.0, 0.0), Front);
        assert_eq!(dir(45.0, 0.0), Side);
        assert_eq!(dir(315.0, 0.0), Side);
        // Side sectors.
        assert_eq!(dir(90.0, 30.0), Side);
        assert_eq!(dir(270.0, 0.0), Side);
        assert_eq!(dir(135.0, 0.0), Side);
        // Back sector (135, 225) exclusive, any wrap.
        assert_eq!(dir(180.0, 0.0), Back);
        assert_eq!(dir(135.1, 0.0), Back);
        assert_eq!(dir(224.9, 0.0), Back);
        assert_eq!(dir(-180.0, 0.0), Back);
        assert_eq!(dir(540.0, 0.0), Back);
        assert_eq!(dir(225.0, 0.0), Side);
        // Overhead wins over everything, strictly above 60 degrees.
        assert_eq!(dir(0.0, 60.0), Front);
        assert_eq!(dir(0.0, 60.1), Overhead);
        assert_eq!(dir(180.0, 89.0), Overhead);
        assert_eq!(dir(90.0, 75.0), Overhead);
        // Below the horizon is not overhead.
        assert_eq!(dir(180.0, -80.0), Back);
    }

    #[test]
    fn suffixes_are_threestudios() {
        let prompts: Vec<String> = ViewDirection::ALL
            .iter()
            .map(|d| d.prompt("a hamburger"))
            .collect();
        assert_eq!(
            prompts,
            [
                "a hamburger, side view",
                "a hamburger, front view",
                "a hamburger, back view",
                "a hamburger, overhead view"
            ]
        );
        assert_eq!(shift_azimuth_deg(180.0), -180.0);
        assert_eq!(shift_azimuth_deg(-190.0), 170.0);
        assert_eq!(shift_azimuth_deg(359.0), -1.0);
    }

    #[test]
    fn thresholds_are_configurable() {
        let t = ViewThresholds {
            front_threshold: 90.0,
            back_threshold: 10.0,
            overhead_threshold: 30.0,
        };
        let d = |a, e| ViewDirection::of(ViewAngles::new(a, e), &t);
        assert_eq!(d(80.0, 0.0), ViewDirection::Front);
        assert_eq!(d(160.0, 0.0), ViewDirection::Side);
        assert_eq!(d(175.0, 0.0), ViewDirection::Back);
        assert_eq!(d(175.0, 31.0), ViewDirection::Overhead);
        let parsed: ViewThresholds = serde_json::from_str(r#"{"front_threshold": 90}"#).unwrap();
        assert_eq!(parsed.back_threshold, 45.0);
        assert_eq!(parsed.front_threshold, 90.0);
    }
}
