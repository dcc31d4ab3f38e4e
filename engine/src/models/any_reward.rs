//! One type for every reward model the engine loads, so a config's `reward` can name any of
//! them: CLIPScore ([`ClipScore`]), LAION's aesthetic predictor ([`AestheticPredictor`]) and
//! ImageReward ([`ImageRewardScorer`]). What a folder holds decides which one it is, never a
//! silent fallback: a folder that is none of them is an error saying what each needs.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::image_reward::ImageRewardScorer;
use super::reward::{AestheticPredictor, ClipScore, RewardError, RewardModel};
use crate::weights::LoadError;

/// A loaded reward model of any kind.
#[derive(Debug)]
pub enum AnyReward<B: Backend> {
    /// CLIPScore (a `CLIPModel` folder with its tokenizer).
    ClipScore(ClipScore<B>),
    /// LAION's aesthetic head on CLIP ViT-L/14 image embeddings (the prompt is ignored).
    Aesthetic(AestheticPredictor<B>),
    /// ImageReward v1.0 (BLIP).
    ImageReward(ImageRewardScorer<B>),
}

impl<B: Backend> AnyReward<B> {
    /// The reward in `dir`: ImageReward if it holds `med_config.json`, CLIPScore if it holds a
    /// CLIP `config.json` (and tokenizer files). The aesthetic predictor needs two folders
    /// ([`AnyReward::aesthetic`]).
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        if dir.join("med_config.json").is_file() {
            let (scorer, _) = ImageRewardScorer::from_folder(dir, device)?;
            return Ok(Self::ImageReward(scorer));
        }
        if dir.join("config.json").is_file() {
            let (scorer, _) = ClipScore::from_folder(dir, device)?;
            return Ok(Self::ClipScore(scorer));
        }
        Err(LoadError::MissingFile {
            path: dir.join("config.json"),
            hint: Some(
                "a reward folder is a CLIP model (config.json and tokenizer files: CLIPScore) or \
                 ImageReward (med_config.json, vocab.txt and ImageReward.pt)"
                    .into(),
            ),
        })
    }

    /// LAION's aesthetic predictor: the CLIP vision tower from `clip_dir`, the head from
    /// `head` (its published `.pth`, or a safetensors copy, or a folder holding one).
    pub fn aesthetic(clip_dir: &Path, head: &Path, device: &B::Device) -> Result<Self, LoadError> {
        let (predictor, _) = AestheticPredictor::from_files(clip_dir, head, device)?;
        Ok(Self::Aesthetic(predictor))
    }

    /// The same reward on an autodiff backend whose inner backend is `B`, sharing the weights
    /// with their gradients off (reward feedback differentiates into the images only).
    pub fn autodiff<AD: AutodiffBackend<InnerBackend = B>>(&self) -> AnyReward<AD> {
        match self {
            Self::ClipScore(r) => AnyReward::ClipScore(r.autodiff()),
            Self::Aesthetic(r) => AnyReward::Aesthetic(r.autodiff()),
            Self::ImageReward(r) => AnyReward::ImageReward(r.autodiff()),
        }
    }

    fn inner(&self) -> &dyn RewardModel<B> {
        match self {
            Self::ClipScore(r) => r,
            Self::Aesthetic(r) => r,
            Self::ImageReward(r) => r,
        }
    }
}

impl<B: Backend> RewardModel<B> for AnyReward<B> {
    fn score(&self, images: Tensor<B, 4>, prompt: &str) -> Result<Tensor<B, 1>, RewardError> {
        self.inner().score(images, prompt)
    }

    fn name(&self) -> &'static str {
        self.inner().name()
    }
}
