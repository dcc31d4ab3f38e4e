//! The judge's measurements: caption retrieval (which of all the world's captions an image
//! matches best) and CLIP score, with a CLIP that was never used as a reward.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::captions::Composition;
use crate::models::clip::{CLIPModel, l2_normalize};
use crate::models::reward::clip_preprocess;
use crate::models::tokenizer::CLIPTokenizer;
use crate::weights::LoadError;

/// `n` two-object captions spread over `group` (every k-th), so that both relations and many
/// items are covered: the captions the evaluation samples.
pub fn spread_pairs(group: &[Composition], n: usize) -> Vec<Composition> {
    let pairs: Vec<Composition> = group.iter().copied().filter(|c| c.is_pair()).collect();
    let step = (pairs.len() / n.max(1)).max(1);
    pairs.into_iter().step_by(step).take(n).collect()
}

/// Retrieval results over a set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    /// Images scored.
    pub images: usize,
    /// Share whose best caption is the right composition ("a and b" = "b and a").
    pub top1: f32,
    /// Share with the right composition among the 5 best captions.
    pub top5: f32,
    /// Chance level of `top1`: one over the number of distinct compositions.
    pub chance: f32,
    /// Mean judge CLIP score (100 x cosine) against the image's own caption.
    pub clip_score: f32,
    /// Of the images whose caption has a [`Composition::binding_swap`] (two colours, two
    /// shapes), the share read as that swap: colours on the wrong shapes.
    #[serde(default)]
    pub binding_swaps: f32,
}

/// A CLIP used only to evaluate, with every caption of the world embedded once.
#[derive(Debug)]
pub struct Judge<B: Backend> {
    model: CLIPModel<B>,
    compositions: Vec<Composition>,
    /// `[captions, d]`, L2-normalised.
    caption_embeds: Tensor<B, 2>,
}

impl<B: Backend> Judge<B> {
    /// Embed every caption of [`Composition::all`] with `model`.
    pub fn new(
        model: CLIPModel<B>,
        tokenizer: &CLIPTokenizer,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        let compositions = Composition::all();
        let mut chunks = Vec::new();
        for chunk in compositions.chunks(512) {
            let captions: Vec<String> = chunk.iter().map(Composition::caption).collect();
            let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
            let ids = tokenizer.input_ids::<B>(&refs, device)?;
            chunks.push(l2_normalize(model.get_text_features(ids)));
        }
        Ok(Self {
            model,
            compositions,
            caption_embeds: Tensor::cat(chunks, 0),
        })
    }

    /// The CLIP of a transformers folder (`config.json`, safetensors, `tokenizer.json`), such
    /// as the shipped `judge/` or `reward/`, with every caption embedded.
    pub fn from_folder(dir: &Path, device: &B::Device) -> Result<Self, LoadError> {
        let (model, _) = CLIPModel::from_folder(dir, device)?;
        Self::new(model, &CLIPTokenizer::from_folder(dir)?, device)
    }

    /// L2-normalised image embeddings, `[n, d]`, of images in `[0, 1]`.
    pub fn image_embeds(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let size = self.model.vision_model.image_size();
        let pixels = clip_preprocess(images, size).expect("images are [n, 3, h, w]");
        l2_normalize(self.model.get_image_features(pixels))
    }

    /// Judge CLIP score (100 x cosine) of each image against `prompt`.
    pub fn clip_scores(&self, images: Tensor<B, 4>, composition: &Composition) -> Vec<f32> {
        let i = self.index(composition);
        let text = self.caption_embeds.clone().slice(i..i + 1);
        let scores = self.image_embeds(images).matmul(text.transpose()) * 100.0;
        scores.into_data().to_vec::<f32>().expect("f32 scores")
    }

    fn index(&self, composition: &Composition) -> usize {
        self.compositions
            .iter()
            .position(|c| c == composition)
            .expect("every composition is listed")
    }

    /// What the judge reads in each image: its best caption, as a canonical composition.
    pub fn readings(&self, images: Tensor<B, 4>) -> Vec<Composition> {
        let sims = self
            .image_embeds(images)
            .matmul(self.caption_embeds.clone().transpose());
        let captions = self.compositions.len();
        let values = sims.into_data().to_vec::<f32>().expect("f32 similarities");
        values
            .chunks(captions)
            .map(|row| {
                let best = (0..captions)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .expect("the world has captions");
                self.compositions[best].canonical()
            })
            .collect()
    }

    /// Retrieval of `targets[i]` from image `i` among all captions.
    pub fn retrieval(&self, images: Tensor<B, 4>, targets: &[Composition]) -> Retrieval {
        let n = targets.len();
        let embeds = self.image_embeds(images);
        // [n, captions]
        let sims = embeds.matmul(self.caption_embeds.clone().transpose());
        let captions = self.compositions.len();
        let values = sims.into_data().to_vec::<f32>().expect("f32 similarities");
        let (mut top1, mut top5, mut score) = (0usize, 0usize, 0.0f32);
        let (mut swappable, mut swapped) = (0usize, 0usize);
        for (i, target) in targets.iter().enumerate() {
            let row = &values[i * captions..(i + 1) * captions];
            let mut order: Vec<usize> = (0..captions).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let right = |&j: &usize| self.compositions[j].canonical() == target.canonical();
            top1 += usize::from(right(&order[0]));
            if let Some(swap) = target.binding_swap() {
                swappable += 1;
                swapped += usize::from(self.compositions[order[0]].canonical() == swap.canonical());
            }
            // Five distinct compositions (a pair's two orders count once).
            let mut distinct: Vec<Composition> = Vec::new();
            for &j in &order {
                let c = self.compositions[j].canonical();
                if !distinct.contains(&c) {
                    distinct.push(c);
                }
                if distinct.len() == 5 {
                    break;
                }
            }
            top5 += usize::from(distinct.contains(&target.canonical()));
            score += 100.0 * row[self.index(target)];
        }
        let distinct: std::collections::HashSet<Composition> = self
            .compositions
            .iter()
            .map(Composition::canonical)
            .collect();
        Retrieval {
            images: n,
            top1: top1 as f32 / n.max(1) as f32,
            top5: top5 as f32 / n.max(1) as f32,
            chance: 1.0 / distinct.len() as f32,
            clip_score: score / n.max(1) as f32,
            binding_swaps: swapped as f32 / swappable.max(1) as f32,
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &CLIPModel<B> {
        &self.model
    }
}

/// The `k` compositions read most often, with their counts ("a red cube (4); ...").
pub fn most_read(readings: &[Composition], k: usize) -> String {
    let mut counts: HashMap<Composition, usize> = HashMap::new();
    for reading in readings {
        *counts.entry(*reading).or_default() += 1;
    }
    let mut counts: Vec<(Composition, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.caption().cmp(&b.0.caption()))
    });
    counts
        .iter()
        .take(k)
        .map(|(c, n)| format!("{} ({n})", c.caption()))
        .collect::<Vec<_>>()
        .join("; ")
}
